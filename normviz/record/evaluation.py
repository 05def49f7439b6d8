"""Eval passes as series of their own: :meth:`normviz.Recorder.evaluating`.

An :class:`EvalSeries` writes one eval series through a Recorder of the same model in series
mode: an ordinary run file beside the training run's (:mod:`normviz.store.series`). Its hooks
are installed only from the start of a marked pass to its end, observe the first forward
pass of the model in it, in whatever mode the model is (a BatchNorm in eval mode normalizes
with its running statistics: that is the distribution the series shows), and read no
gradients. Each row is stored at the training step the pass ran in. Its layout is fixed by
its first pass, as a training run's is by its first recorded step.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from torch import nn

from normviz.errors import NormvizError
from normviz.store import series

if TYPE_CHECKING:
    from normviz.record.recorder import Recorder


class EvalSeries:
    """Eval series ``name`` of ``parent``'s run."""

    def __init__(self, parent: Recorder, name: str) -> None:
        options = dict(parent._series_options)
        label = options.pop("label")
        # A recorder of the same class in series mode: any mode, no gradients, its own file.
        self.recorder = type(parent)(parent._model, series.series_path(parent.path, name), every=1,
                                     label=f"{label} ({name})", _series=name, **options)
        self.recorder._hooks.arm(False)  # armed only during a marked pass
        self.recorder._extra_meta = {"series": name, "series_of": parent.path.name}
        self._step: int | None = None
        self._last_step = -1
        self._done: Any = None

    def begin(self, step: int) -> None:
        """A marked pass starts in training step ``step``; one pass per step is recorded."""
        self._step = None if step == self._last_step else step
        if self._step is None:
            return
        self.recorder._hooks.arm(True)
        self._done = self.recorder._model.register_forward_hook(self._after_forward)

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        # The first forward pass of the model is the one recorded: the rest of the pass runs unobserved.
        self.recorder._hooks.arming.armed = False

    def end(self) -> None:
        """The marked pass ended: write its row (if a recorded layer ran), take the hooks off."""
        step, self._step = self._step, None
        if step is None:
            return
        rec = self.recorder
        self._done.remove()
        rec._hooks.arm(False)
        try:
            if rec._observer.results:
                rec._scalars.add(step, time.time() - rec._t0, {})
                rec._record_row(step)
                self._last_step = step
        finally:
            rec._observer.end_step()

    def close(self) -> None:
        """Write what is pending and close the series' file; a series none of whose passes ran
        a recorded layer leaves no file (it would claim a series with no row)."""
        self.recorder.close()
        if self._last_step < 0:
            self.recorder.path.unlink(missing_ok=True)


def begin_series(parent: Recorder, name: str) -> EvalSeries | None:
    """Eval series ``name`` of ``parent``'s run; None (with a warning, training goes on) if its
    recorder cannot be made, unless ``parent`` was made with ``on_error="raise"``."""
    series.check_name(name)
    try:
        return EvalSeries(parent, name)
    except NormvizError as exc:
        if parent._series_options["on_error"] == "raise":
            raise
        warnings.warn(f"normviz: eval series {name!r} is not recorded: {exc}", RuntimeWarning, stacklevel=4)
        return None
