"""Zero-code recording: run an unmodified training script with a Recorder attached.

``normviz record train.py -- ARGS`` runs the script as ``__main__`` (its own argparse
and ``if __name__ == "__main__":`` work as usual) with three temporary global hooks:

- a global module forward pre-hook finds the model: the first module called at the
  top level (not inside another module's forward) in training mode, with trainable
  parameters, under grad mode. The Recorder attaches to it there, before its first
  forward runs, so step 0 is recorded;
- a global optimizer step post-hook counts steps: each ``optimizer.step()`` of an
  optimizer holding that model's parameters closes one step (``rec.step()``);
- ``Tensor.backward`` is wrapped to remember the last scalar it was called on, which
  is recorded as the ``loss`` scalar (no host sync: the tensor is kept, not read).

What it cannot find: a second model (a GAN's discriminator — only the first trained
model is recorded), a model trained only through ``torch.autograd.backward`` on
non-scalar tensors (no loss recorded, statistics still are), and training loops that
never call ``optimizer.step()`` (no steps are counted; nothing is recorded).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normviz.errors import NormvizError


class _StopTraining(BaseException):
    """Raised from the optimizer hook once ``--steps`` steps are done."""


class ScriptRecorder:
    """Finds the trained model of a running script and records it."""

    def __init__(self, path: Path, *, every: int = 1, max_steps: int | None = None, **options: Any) -> None:
        self.path = path
        self.every = every
        self.max_steps = max_steps
        self.options = options
        self.recorder: Any = None
        self.model: nn.Module | None = None
        self._depth = 0
        self._last_loss: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._original_backward = torch.Tensor.backward

    # -- hooks ------------------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._depth == 0 and self.recorder is None and module.training and torch.is_grad_enabled():
            if any(p.requires_grad for p in module.parameters()):
                from normviz.record.recorder import Recorder

                self.model = module
                self.recorder = Recorder(module, self.path, every=self.every, **self.options)
        self._depth += 1
        return None

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        return None

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        rec = self.recorder
        if rec is None or self.model is None:
            return None
        ours = {id(p) for p in self.model.parameters()}
        if not any(id(p) in ours for g in optimizer.param_groups for p in g["params"]):
            return None
        scalars = {"loss": self._last_loss} if self._last_loss is not None else {}
        self._last_loss = None
        rec.step(**scalars)
        if self.max_steps is not None and rec.steps_seen >= self.max_steps:
            raise _StopTraining
        return None

    # -- running ----------------------------------------------------------------------------
    def run(self, script: Path, argv: list[str]) -> int:
        """Run *script* with *argv*; returns its exit status. The file is closed in every case."""
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook

        recorder = self
        original = self._original_backward

        def backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if tensor.numel() == 1:
                recorder._last_loss = tensor.detach()
            return original(tensor, *args, **kwargs)

        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post, always_call=True),
            register_optimizer_step_post_hook(self._after_step),
        ]
        torch.Tensor.backward = backward  # type: ignore[method-assign]
        saved_argv = sys.argv
        sys.argv = [str(script), *argv]
        status = 0
        try:
            runpy.run_path(str(script), run_name="__main__")
        except _StopTraining:
            status = 0
        except SystemExit as exc:
            code = exc.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
        finally:
            sys.argv = saved_argv
            torch.Tensor.backward = original  # type: ignore[method-assign]
            for handle in self._handles:
                handle.remove()
            if self.recorder is not None:
                self.recorder.close()
        if self.recorder is None:
            raise NormvizError(
                f"{script}: no model was trained (no module with trainable parameters ran in training mode); "
                "nothing was recorded"
            )
        return status
