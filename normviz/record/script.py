"""Zero-code recording: run an unmodified training script with a Recorder attached.

``normviz record train.py -- ARGS`` runs the script as ``python train.py ARGS`` would
(:func:`run_as_main`) with three temporary global hooks:

- a global module forward pre-hook finds the model: the first module called at the
  top level (not inside another module's forward) in training mode, with trainable
  parameters, under grad mode. The Recorder attaches to it there, before its first
  forward runs, so step 0 is recorded;
- a global optimizer step post-hook counts steps: each ``optimizer.step()`` of an
  optimizer holding that model's parameters closes one step (``rec.step()``). A loop
  without an optimizer (a hand-written update) marks its steps with
  :func:`mark_step` instead (``normviz.mark_step()``, a no-op outside script mode);
- ``Tensor.backward`` is wrapped to remember the last scalar it was called on, which
  is recorded as the ``loss`` scalar (no host sync: the tensor is kept, not read).

A top-level forward of the model in eval mode is an eval pass: the first one in each step
is recorded as the run's eval series (:meth:`normviz.Recorder.evaluating`).

What it cannot find: a second model (a GAN's discriminator — only the first trained
model is recorded), a model trained only through ``torch.autograd.backward`` on
non-scalar tensors (no loss recorded, statistics still are), and steps of a loop that
neither calls ``optimizer.step()`` nor :func:`mark_step` (nothing is recorded, and
``normviz record`` says so and exits 2). See docs/recording.md, "Script mode".
"""

from __future__ import annotations

import builtins
import io
import os
import sys
import types
import warnings
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normviz.errors import NormvizError, UsageError
from normviz.store.series import series_files

#: The script recorder of the running ``normviz record SCRIPT``, for :func:`mark_step`.
_ACTIVE: ScriptRecorder | None = None


class _StopTraining(BaseException):
    """Raised from the step counter once ``--steps`` steps are done."""


class NoStepError(NormvizError):
    """The script trained a model, but no step of it was ever closed."""


def run_as_main(script: Path, argv: list[str]) -> None:
    """Execute *script* the way ``python script argv…`` does, in this process.

    As CPython does for a script: the module is a fresh ``__main__`` (in
    ``sys.modules`` while it runs, so pickling and multiprocessing find its
    classes), ``__file__`` is the absolute path (the working folder joined to the
    path as given), ``sys.argv`` is
    ``[script as given, *argv]``, and ``sys.path[0]`` is the folder of the script
    with symbolic links resolved (so a module beside it imports); the working
    folder is left as it is, so relative paths resolve as they would. Everything
    is restored afterwards, also when the script raises.
    """
    # CPython joins the working folder and the path as given, without normalising "..".
    path = str(script) if os.path.isabs(script) else os.path.join(os.getcwd(), str(script))
    with io.open_code(path) as fh:
        source = fh.read()
    code = compile(source, path, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=path, __cached__=None, __package__=None, __spec__=None, __annotations__={},
        __loader__=SourceFileLoader("__main__", path), __builtins__=builtins,
    )
    saved_main, saved_argv, saved_path0 = sys.modules.get("__main__"), sys.argv, sys.path[0] if sys.path else None
    sys.modules["__main__"] = main
    sys.argv = [str(script), *argv]
    folder = os.path.dirname(os.path.realpath(path))
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.append(folder)
    try:
        exec(code, main.__dict__)  # noqa: S102 - running the user's script is the point
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path and sys.path[0] == folder:
            sys.path[0] = saved_path0
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


def mark_step(**scalars: Any) -> bool:
    """Close one training step of the script being recorded by ``normviz record SCRIPT``.

    For training loops that update the weights without ``optimizer.step()`` (a
    hand-written SGD update): call it once per step, after the update and before the
    gradients are zeroed (they are read now). Keyword arguments are scalars, as for
    ``Recorder.step``; the last scalar ``backward()`` was called on is the ``loss``
    unless one is given. Outside ``normviz record`` it does nothing, so the script
    still runs as plain Python.

    Returns
    -------
    bool
        Whether a step was closed: False outside script mode, before the model was
        found, and when the script's steps are counted at ``optimizer.step()``
        (the first way a step is closed is kept for the whole run).
    """
    recorder = _ACTIVE
    if recorder is None:
        return False
    return recorder.mark_step(scalars)


class ScriptRecorder:
    """Finds the trained model of a running script and records it."""

    def __init__(self, path: Path, *, every: int = 1, max_steps: int | None = None, **options: Any) -> None:
        self.path = path
        self.every = every
        self.max_steps = max_steps
        self.options = options
        self.recorder: Any = None
        self.model: nn.Module | None = None
        self.forwards = 0  # top-level forward passes of the model in training mode
        self.counted_by: str | None = None  # "optimizer.step()" or "mark_step()": how steps are closed
        self._depth = 0
        self._last_loss: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._original_backward = torch.Tensor.backward
        self._mixed_warned = False
        self._eval_block: Any = None  # the open Recorder.evaluating() block of an eval-mode forward

    @property
    def steps(self) -> int:
        """Steps closed so far."""
        return 0 if self.recorder is None else int(self.recorder.steps_seen)

    # -- hooks ------------------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._depth == 0:
            self._end_eval()  # a pass whose forward raised left its block open
            if module is self.model and not module.training:
                # The model in eval mode: an eval pass, recorded as the run's eval series.
                self._eval_block = self.recorder.evaluating()
                self._eval_block.__enter__()
        if self._depth == 0 and module.training and torch.is_grad_enabled():
            if self.recorder is None and any(p.requires_grad for p in module.parameters()):
                from normviz.record.recorder import Recorder

                self.model = module
                self.recorder = Recorder(module, self.path, every=self.every, **self.options)
            if module is self.model:
                self.forwards += 1
        self._depth += 1
        return None

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._end_eval()
        return None

    def _end_eval(self) -> None:
        block, self._eval_block = self._eval_block, None
        if block is not None:
            block.__exit__(None, None, None)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.recorder is None or self.model is None:
            return None
        ours = {id(p) for p in self.model.parameters()}
        if not any(id(p) in ours for g in optimizer.param_groups for p in g["params"]):
            return None
        self._close_step("optimizer.step()", {})
        return None

    def mark_step(self, scalars: dict[str, Any]) -> bool:
        """:func:`mark_step` of the running script."""
        if self.recorder is None:
            return False
        return self._close_step("mark_step()", scalars)

    def _close_step(self, how: str, scalars: dict[str, Any]) -> bool:
        if self.counted_by is None:
            self.counted_by = how
        elif how != self.counted_by:
            if not self._mixed_warned:
                self._mixed_warned = True
                warnings.warn(
                    f"normviz: this script's steps are counted at {self.counted_by}; {how} is ignored",
                    RuntimeWarning, stacklevel=4,
                )
            return False
        self._end_eval()
        if "loss" not in scalars and self._last_loss is not None:
            scalars = {"loss": self._last_loss, **scalars}
        self._last_loss = None
        self.recorder.step(**scalars)
        if self.max_steps is not None and self.steps >= self.max_steps:
            raise _StopTraining
        return True

    # -- running ----------------------------------------------------------------------------
    def run(self, script: Path, argv: list[str]) -> int:
        """Run *script* with *argv*; returns its exit status. The file is closed in every case.

        Raises
        ------
        UsageError
            No model was trained: no file was written.
        NoStepError
            A model was trained but no step was closed (the script exited 0).
        Exception
            Whatever the script raised (the steps closed before are in the file).

        A run that closed no step leaves no file, however the script ended.
        """
        global _ACTIVE
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
        torch.Tensor.backward = backward  # type: ignore[method-assign,assignment]
        _ACTIVE = self
        status = 0
        try:
            run_as_main(script, argv)
        except _StopTraining:
            status = 0
        except SystemExit as exc:
            code = exc.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
        finally:
            _ACTIVE = None
            torch.Tensor.backward = original  # type: ignore[method-assign]
            for handle in self._handles:
                handle.remove()
            if self.recorder is not None:
                self._end_eval()
                self.recorder.close()
                if self.steps == 0:
                    for path in [self.path, *series_files(self.path).values()]:
                        path.unlink(missing_ok=True)  # it would hold the layout and no step
        if self.recorder is None:
            raise UsageError(
                f"{script}: no model was trained (no module with trainable parameters ran in training mode "
                "under grad mode); nothing was recorded"
            )
        if self.steps == 0 and status == 0:
            raise NoStepError(
                f"{script}: found the model ({type(self.model).__name__}, {self.forwards} training forward "
                "passes) but no optimizer.step() on its parameters, so no step was recorded and no file written; "
                "call normviz.mark_step() after each update in the script, or record with normviz.Recorder "
                "(docs/recording.md, 'Script mode')"
            )
        return status
