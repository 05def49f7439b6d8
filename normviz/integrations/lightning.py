"""PyTorch Lightning: ``NormvizCallback(path, every=1, **recorder_options)``.

::

    from normviz.integrations.lightning import NormvizCallback

    trainer = L.Trainer(callbacks=[NormvizCallback("run.h5", every=10)])
    trainer.fit(model, train_dataloader)

What it does
------------
- ``on_train_start``: creates a :class:`normviz.Recorder` on the ``LightningModule``
  (after the strategy has moved it to its device and wrapped it; the sanity-check
  validation before it runs in eval mode and is never recorded).
- ``on_train_batch_end``: calls ``rec.step(loss=...)`` only when the optimizer actually
  stepped, i.e. when ``trainer.global_step`` advanced. With ``accumulate_grad_batches=k``
  one recorded step spans ``k`` batches; its ``loss`` is the sum of the ``k`` normalised
  micro-batch losses Lightning reports (= the mean loss of the window), kept as a device
  tensor: no host synchronisation per step.
- ``on_validation_batch_start`` / ``_end``: the first batch of each validation run (first
  dataloader) is an eval pass, recorded as the run's eval series ``eval``
  (:meth:`normviz.Recorder.evaluating`, ``run.eval.h5``) at the optimizer step it follows,
  however ``validation_step`` calls the model; the sanity check before training is not.
- ``on_fit_end``, ``on_exception`` and ``teardown``: close the file (idempotent).
- Under DDP (``trainer.world_size > 1``) every rank records its own file,
  ``run.h5`` -> ``run.rank0.h5``, ``run.rank1.h5``, …, with rank and world size in the
  metadata.

When gradients are read
-----------------------
The recorder reads gradients at the optimizer step (a global optimizer step hook):
accumulated over micro-batches, **after** AMP unscaling and **after** gradient clipping
(``gradient_clip_val``), i.e. what the optimizer applies.

With ``precision="16-mixed"`` Lightning runs the closure (forward, backward), unscales,
calls ``on_before_optimizer_step``, clips, then ``scaler.step(optimizer)``: the
recorder's pre-hook sees the final gradients. With 32-bit and ``bf16-mixed`` precision
Lightning instead passes the closure to ``optimizer.step(closure)``, so forward,
backward and clipping run *inside* the step, after every pre-hook. The recorder
handles any closure step (LBFGS too) by reading the gradients in its optimizer step
**post**-hook instead (``p.grad`` still holds the clipped gradients then: Lightning
zeroes them at the start of the next closure). The weight norm and the update ratio
are unaffected (weights do not change inside the closure).

A step that ``GradScaler`` skips (non-finite gradients) still advances
``trainer.global_step``; the recorder then reads the gradients at ``rec.step()``.
"""

from __future__ import annotations

import os
from typing import Any

try:  # the unified package first, then the standalone one
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "normviz.integrations.lightning needs PyTorch Lightning: pip install 'normviz[lightning]'"
        ) from exc

import torch

from normviz.integrations import rank_path

__all__ = ["NormvizCallback"]


class NormvizCallback(Callback):
    """Record per-layer statistics of a Lightning run into ``path`` (one file per rank).

    Parameters
    ----------
    path:
        The run file. Under DDP each rank writes ``<stem>.rank<N><suffix>``.
    every:
        Record every ``every``-th optimizer step (step 0 always).
    **recorder_options:
        Passed to :class:`normviz.Recorder` (``label``, ``meta``, ``statistics``,
        ``max_channels``, ``flush_every``, ``overwrite``, …).
    """

    def __init__(self, path: str | os.PathLike[str], every: int = 1, **recorder_options: Any) -> None:
        super().__init__()
        self.path = path
        self.every = every
        self.recorder_options = recorder_options
        self.recorder: Any = None
        self.run_path: Any = None
        self._last_global_step = 0
        self._loss_sum: torch.Tensor | None = None
        self._eval_block: Any = None  # the open Recorder.evaluating() block of a validation batch

    # -- lifecycle -------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            return
        from normviz.record.recorder import Recorder

        rank, world = int(trainer.global_rank), int(trainer.world_size)
        self.run_path = rank_path(self.path, rank, world)
        options = dict(self.recorder_options)
        options.setdefault("rank", rank)
        options.setdefault("world_size", world)
        self.recorder = Recorder(pl_module, self.run_path, every=self.every, **options)
        self._last_global_step = int(trainer.global_step)
        self._loss_sum = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        rec = self.recorder
        if rec is not None and not rec.closed:
            # One training_step is one forward pass, even when it calls submodules directly
            # (the recorder's root pre-hook only sees ``pl_module(...)`` calls).
            rec.begin_forward()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rec = self.recorder
        if rec is None or rec.closed:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            loss = loss.detach()
            if pl_module.automatic_optimization:
                # Lightning reports each micro-batch's loss divided by accumulate_grad_batches.
                self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            else:
                self._loss_sum = loss
        gs = int(trainer.global_step)
        if gs == self._last_global_step:
            return  # accumulating: the optimizer has not stepped yet
        for _ in range(gs - self._last_global_step - 1):
            rec.step()  # several optimizers stepped in one batch: one step() each
        scalars = {} if self._loss_sum is None else {"loss": self._loss_sum}
        rec.step(**scalars)
        self._last_global_step = gs
        self._loss_sum = None

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        rec = self.recorder
        if rec is None or rec.closed or batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking:
            return
        self._end_eval()
        self._eval_block = rec.evaluating()
        self._eval_block.__enter__()

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._end_eval()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    # -- helpers -----------------------------------------------------------------------------------
    def _end_eval(self) -> None:
        block, self._eval_block = self._eval_block, None
        if block is not None:
            block.__exit__(None, None, None)

    def _close(self) -> None:
        self._end_eval()
        if self.recorder is not None:
            self.recorder.close()

    def state_dict(self) -> dict[str, Any]:
        return {"path": str(self.run_path) if self.run_path is not None else None}


def _loss_of(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs if outputs.numel() == 1 else None
    if isinstance(outputs, dict):
        value = outputs.get("loss")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value
    return None
