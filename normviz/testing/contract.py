"""The renderer contract (:class:`RendererContract`), and runs with statistics hidden (:func:`hide`)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from normviz.errors import MissingDataError


class HiddenRun:
    """A read-only view of a run in which some statistics and scalars are missing.

    Every attribute is the run's own, except that asking for a hidden name
    raises :class:`MissingDataError` exactly as the reader does for a
    statistic that was never recorded, and listings (``statistics``,
    ``scalar_names``, ``scalars``) leave hidden names out.
    """

    def __init__(self, run: Any, hidden: Iterable[str]) -> None:
        self._run = run
        self.hidden = frozenset(hidden)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def __repr__(self) -> str:
        return f"HiddenRun({self._run!r}, hidden={sorted(self.hidden)})"

    def _check(self, name: str, what: str = "statistic") -> None:
        if name in self.hidden:
            raise MissingDataError(f"{self._run.path}: {what} {name!r} was not recorded in this run", statistic=name)

    def stat(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._check(name)
        return self._run.stat(name, *args, **kwargs)

    def stat_all(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._check(name)
        return self._run.stat_all(name, *args, **kwargs)

    def grad(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._check(name, "gradient statistic")
        return self._run.grad(name, *args, **kwargs)

    def module_stat(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._check(name)
        return self._run.module_stat(name, *args, **kwargs)

    def hist_edges(self, *args: Any, **kwargs: Any) -> Any:
        self._check("hist")
        return self._run.hist_edges(*args, **kwargs)

    def scalar(self, name: str) -> Any:
        self._check(name, "scalar")
        return self._run.scalar(name)

    @property
    def statistics(self) -> dict[str, list[str]]:
        return {g: [n for n in names if n not in self.hidden] for g, names in self._run.statistics.items()}

    @property
    def scalar_names(self) -> list[str]:
        return [n for n in self._run.scalar_names if n not in self.hidden]

    @property
    def scalars(self) -> dict[str, Any]:
        return {k: v for k, v in self._run.scalars.items() if k not in self.hidden}


def hide(run: Any, *names: str) -> HiddenRun:
    """``run`` as if the statistics or scalars ``names`` had not been recorded."""
    return HiddenRun(run, names)


def _everything(run: Any) -> set[str]:
    names = {n for group in run.statistics.values() for n in group}
    return names | set(run.scalar_names)


def _rc_snapshot() -> dict[str, Any]:
    import matplotlib

    # copy() reads the stored values without resolving the backend.
    return {key: value for key, value in matplotlib.rcParams.copy().items()}


def _fignums() -> list[int]:
    import sys

    pyplot = sys.modules.get("matplotlib.pyplot")
    return list(pyplot.get_fignums()) if pyplot is not None else []


@dataclass
class RendererContract:
    """Checks a :class:`~normviz.datatypes.Renderer` against the renderer contract.

    Parameters
    ----------
    renderer
        The renderer under test.
    runs
        Runs it can draw, compared in one figure (e.g. several norm kinds).
    small
        Runs with one layer and one recorded step (may be empty: not checked).
    nonfinite
        Runs whose values became non-finite (may be empty: not checked).
    options
        Options passed to every ``draw`` call.
    style
        Style the figure is created in (sizes only; drawing happens outside
        any style so that rcParams changes would be seen).
    """

    renderer: Any
    runs: Sequence[Any]
    small: Sequence[Any] = ()
    nonfinite: Sequence[Any] = ()
    options: dict[str, Any] = field(default_factory=dict)
    style: str = "paper"

    def draw(self, runs: Sequence[Any], **options: Any) -> tuple[Any, Any]:
        """Draw ``runs`` into a fresh figure; return ``(figure given, result)``."""
        from normviz.plot.style import new_figure

        fig = new_figure(self.style)
        result = self.renderer.draw(list(runs), fig, **{**self.options, **options})
        return fig, result

    def _label(self) -> str:
        return f"renderer {self.renderer.name!r}"

    def check_returns_figure(self, runs: Sequence[Any] | None = None) -> None:
        """``draw`` returns the very Figure it was given, with axes, and it saves."""
        fig, result = self.draw(self.runs if runs is None else runs)
        assert result is fig, f"{self._label()} returned {result!r}, not the Figure it was given"
        assert fig.axes, f"{self._label()} drew no axes"
        fig.savefig(io.BytesIO(), format="png", dpi=50)

    def check_global_state(self) -> None:
        """Drawing and saving leave pyplot's figures and rcParams untouched."""
        before_figs, before_rc = _fignums(), _rc_snapshot()
        fig, _ = self.draw(self.runs)
        fig.savefig(io.BytesIO(), format="png", dpi=50)
        after_figs, after_rc = _fignums(), _rc_snapshot()
        assert after_figs == before_figs, (
            f"{self._label()} changed pyplot's figures: {before_figs} -> {after_figs} (use the Figure given)"
        )
        changed = sorted(k for k in set(before_rc) | set(after_rc) if before_rc.get(k) != after_rc.get(k))
        assert not changed, f"{self._label()} changed rcParams: {changed}"

    def check_small(self) -> None:
        """Works on runs with one layer and one recorded step."""
        for run in self.small:
            self.check_returns_figure([run])

    def check_nonfinite(self) -> None:
        """Does not crash on runs whose values became non-finite."""
        for run in self.nonfinite:
            self.check_returns_figure([run])

    def check_missing_data(self) -> None:
        """Each required statistic, when absent, gives a MissingDataError that names it."""
        for name in sorted(self.renderer.requires):
            runs = [hide(run, name) for run in self.runs]
            try:
                self.draw(runs)
            except MissingDataError as exc:
                assert name in str(exc), (
                    f"{self._label()}: MissingDataError without {name!r} does not name it: {exc}"
                )
            else:
                raise AssertionError(f"{self._label()} drew without the statistic {name!r} it requires")
        empty = [hide(run, *_everything(run)) for run in self.runs]
        try:
            self.draw(empty)
        except MissingDataError as exc:
            assert str(exc).strip(), f"{self._label()}: MissingDataError with an empty message"
        else:
            raise AssertionError(f"{self._label()} drew runs with nothing recorded instead of MissingDataError")

    def check_all(self) -> None:
        """Every check above."""
        self.check_returns_figure()
        self.check_global_state()
        self.check_small()
        self.check_nonfinite()
        self.check_missing_data()
