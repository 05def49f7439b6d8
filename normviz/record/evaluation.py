"""Eval passes as series of their own: :meth:`normviz.Recorder.evaluating`.

An :class:`EvalRecorder` is a Recorder of the same model that writes one eval series, an
ordinary run file beside the training run's (:mod:`normviz.store.series`). Its hooks are
installed only from the start of a marked pass to its end, observe the first forward
pass of the model in it, in whatever mode the model is (a BatchNorm in eval mode
normalizes with its running statistics: that is the distribution the series shows), and
read no gradients. Each row is stored at the training step the pass ran in. Its layout is
fixed by its first pass, as a training run's is by its first recorded step.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from torch import nn

from normviz.errors import NormvizError
from normviz.record.recorder import Recorder
from normviz.store import series


class EvalRecorder(Recorder):
    """The recorder of one eval series of ``parent``'s run."""

    def __init__(self, parent: Recorder, name: str) -> None:
        self._SERIES = series.check_name(name)
        options = dict(parent._series_options)
        label = options.pop("label")
        super().__init__(parent._model, series.series_path(parent.path, name), every=1,
                         label=f"{label} ({name})", **options)
        self._hooks.arm(False)  # armed only during a marked pass
        self._extra_meta = {"series": name, "series_of": parent.path.name}
        self._step_now: int | None = None
        self._last_step = -1
        self._done: Any = None

    def begin(self, step: int) -> None:
        """A marked pass starts in training step ``step``; one pass per step is recorded."""
        self._step_now = None if step == self._last_step else step
        if self._step_now is None:
            return
        self._hooks.arm(True)
        self._done = self._model.register_forward_hook(self._after_forward)

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        # The first forward pass of the model is the one recorded: the rest of the pass runs unobserved.
        self._hooks.arming.armed = False

    def end(self) -> None:
        """The marked pass ended: write its row (if the model ran), take the hooks off."""
        step, self._step_now = self._step_now, None
        if step is None:
            return
        self._done.remove()
        self._hooks.arm(False)
        try:
            if self._observer.results:  # a recorded layer ran
                self._scalars.add(step, time.time() - self._t0, {})
                self._record_row(step)
                self._last_step = step
        finally:
            self._observer.end_step()


def begin_series(parent: Recorder, name: str) -> EvalRecorder | None:
    """The recorder of ``parent``'s eval series ``name``; None (with a warning, training goes
    on) if it cannot be made, unless ``parent`` was made with ``on_error="raise"``."""
    series.check_name(name)
    try:
        return EvalRecorder(parent, name)
    except NormvizError as exc:
        if parent._series_options["on_error"] == "raise":
            raise
        warnings.warn(f"normviz: eval series {name!r} is not recorded: {exc}", RuntimeWarning, stacklevel=4)
        return None
