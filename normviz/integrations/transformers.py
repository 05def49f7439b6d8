"""Hugging Face ``Trainer``: ``NormvizCallback(path, every=1, **recorder_options)``.

::

    from normviz.integrations.transformers import NormvizCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[NormvizCallback("run.h5", every=10)])
    trainer.train()

What it does
------------
- ``on_train_begin(model=...)``: creates a :class:`normviz.Recorder` on the unwrapped
  model (``trainer.model``; under DDP the hooks sit on the module inside the wrapper).
- ``on_step_end``: ``rec.step(loss=...)`` once per optimizer step (the Trainer calls it
  once per ``gradient_accumulation_steps`` micro-batches).
- Evaluation: a forward of the model in eval mode (the Trainer's evaluation loop) is an
  eval pass; the first one after each optimizer step is recorded as the run's eval series
  ``eval`` (:meth:`normviz.Recorder.evaluating`, ``run.eval.h5``), as in script mode.
- ``on_train_end``: closes the file. (The Trainer has no exception event: a run that
  raises is closed when the callback is garbage-collected or at interpreter exit, and
  the file keeps every published row either way — see docs/recording.md.)
- Under DDP (``args.world_size > 1``) every rank records ``run.rank{N}.h5``.

The loss
--------
The Trainer's per-step loss lives in a private device tensor that callbacks do not see,
and ``on_log`` comes after ``on_step_end`` and only every ``logging_steps``. The
callback therefore takes the ``loss`` a Hugging Face model returns (``outputs.loss``,
present when the batch has labels) from a forward hook, as a device tensor: no host
synchronisation per step (the recorder copies scalars to the host in batches). Over
accumulated micro-batches it is averaged — or summed when the Trainer passes
``num_items_in_batch`` (the model then already divides by the whole window's token
count). When the model returns no loss (e.g. a ``compute_loss`` override or label
smoothing), the step has no ``loss`` scalar.

When gradients are read
-----------------------
In the recorder's global optimizer step pre-hook, when the Trainer calls
``optimizer.step()``: accumulated over micro-batches, **after** unscaling (accelerate's
``GradScaler`` unscales in ``clip_grad_norm_`` or in ``scaler.step``, both before the
optimizer's own ``step``) and **after** clipping (``max_grad_norm``, applied before
``on_pre_optimizer_step``). A step skipped by the scaler (non-finite gradients) reads
the gradients at ``rec.step()`` instead; they are already zeroed by then (the Trainer
calls ``model.zero_grad()`` before ``on_step_end``), so that row's gradient statistics
are NaN.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "normviz.integrations.transformers needs Hugging Face transformers: pip install 'normviz[transformers]'"
    ) from exc

import torch

from normviz.integrations import rank_path

__all__ = ["NormvizCallback"]


class _LossHook:
    """Forward hook on the model: keep the training loss it returns, on the device."""

    __slots__ = ("callback",)

    def __init__(self, callback: NormvizCallback) -> None:
        self.callback = callback

    def __call__(self, module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not module.training:
            return None
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.callback.add_loss(loss.detach().reshape(()), summed=kwargs.get("num_items_in_batch") is not None)
        return None


class NormvizCallback(TrainerCallback):
    """Record per-layer statistics of a Hugging Face ``Trainer`` run into ``path``.

    Parameters
    ----------
    path:
        The run file. Under DDP each rank writes ``<stem>.rank<N><suffix>``.
    every:
        Record every ``every``-th optimizer step (step 0 always).
    **recorder_options:
        Passed to :class:`normviz.Recorder` (``label``, ``meta``, ``statistics``, …).
    """

    def __init__(self, path: str | os.PathLike[str], every: int = 1, **recorder_options: Any) -> None:
        self.path = path
        self.every = every
        self.recorder_options = recorder_options
        self.recorder: Any = None
        self.run_path: Any = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._loss_summed = False
        self._loss_handle: Any = None
        self._eval_handles: list[Any] = []
        self._eval_block: Any = None  # the open Recorder.evaluating() block of an eval-mode forward

    def add_loss(self, loss: torch.Tensor, *, summed: bool) -> None:
        """One micro-batch's loss (a detached 0-d tensor, never read here); ``summed``: the model
        returned a sum over the step's tokens (the Trainer passed ``num_items_in_batch``)."""
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1
        self._loss_summed = summed

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.recorder is not None or model is None:
            return
        from normviz.record.recorder import Recorder

        world = int(getattr(args, "world_size", 1) or 1)
        rank = int(getattr(args, "process_index", 0) or 0)
        self.run_path = rank_path(self.path, rank, world)
        options = dict(self.recorder_options)
        options.setdefault("rank", rank)
        options.setdefault("world_size", world)
        self.recorder = Recorder(model, self.run_path, every=self.every, **options)
        self._loss_handle = model.register_forward_hook(_LossHook(self), with_kwargs=True)
        self._eval_handles = [model.register_forward_pre_hook(self._eval_begin),
                              model.register_forward_hook(self._eval_end, always_call=True)]

    def _eval_begin(self, module: torch.nn.Module, args: Any) -> None:
        rec = self.recorder
        if module.training or rec is None or rec.closed or self._eval_block is not None:
            return
        self._eval_block = rec.evaluating()
        self._eval_block.__enter__()

    def _eval_end(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        block, self._eval_block = self._eval_block, None
        if block is not None:
            block.__exit__(None, None, None)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rec = self.recorder
        if rec is None or rec.closed:
            return
        scalars: dict[str, Any] = {}
        if self._loss_sum is not None:
            loss = self._loss_sum if self._loss_summed else self._loss_sum / self._loss_count
            scalars["loss"] = loss
        self._loss_sum, self._loss_count, self._loss_summed = None, 0, False
        rec.step(**scalars)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and close the file (idempotent)."""
        if self._loss_handle is not None:
            self._loss_handle.remove()
            self._loss_handle = None
        for handle in self._eval_handles:
            handle.remove()
        self._eval_handles = []
        if self.recorder is not None:
            self.recorder.close()

    def __del__(self) -> None:  # a run that raised never reaches on_train_end
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
