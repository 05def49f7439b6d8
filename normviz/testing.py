"""Test helpers for renderer plugins: the contract every renderer must keep.

A renderer plugin's tests can check its renderer the way normviz checks its
own::

    from normviz.testing import RendererContract, record_contract_runs

    def test_my_renderer(tmp_path):
        runs = record_contract_runs(tmp_path)      # or runs of your own models
        RendererContract(MY_RENDERER, runs.full, small=runs.small,
                         nonfinite=runs.nonfinite).check_all()

The contract (:meth:`RendererContract.check_all`):

- ``draw(runs, fig)`` returns the Figure it was given, and that figure can be
  saved;
- drawing leaves pyplot's figure list and ``matplotlib.rcParams`` as they were
  (no pyplot state machine, no ``plt.gca()``, no rcParams changes);
- it works on a run with one layer and one recorded step;
- it does not crash on a run whose values became non-finite;
- when a statistic it ``requires`` is absent, it raises
  :class:`~normviz.errors.MissingDataError` whose message names that
  statistic; with nothing recorded at all it raises MissingDataError too.

Absent statistics are simulated by :func:`hide`, a view of a run in which the
named statistics and scalars were never recorded (the reader's own errors), so
no special file is needed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normviz.errors import MissingDataError

__all__ = [
    "ContractRuns",
    "HiddenRun",
    "RendererContract",
    "TextBox",
    "drawn_texts",
    "hide",
    "record_contract_runs",
    "text_collisions",
]


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


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class TextBox:
    """A text drawn on a figure: its string, what it is, and its corners in pixels."""

    text: str
    role: str
    corners: tuple[tuple[float, float], ...]
    group: int = 0  # tick labels of one axis share a group (they need a gap between them)

    def describe(self) -> str:
        return f"{self.role} {self.text!r}"


def _roles(fig: Any) -> dict[int, str]:
    """What each text artist of ``fig`` is (figure title, tick label, …), by id, for messages."""
    from matplotlib.legend import Legend

    roles: dict[int, str] = {}
    if getattr(fig, "_suptitle", None) is not None:
        roles[id(fig._suptitle)] = "figure title"
    for ax in fig.axes:
        for title in (ax.title, ax._left_title, ax._right_title):
            roles[id(title)] = "axes title"
        for axis in (ax.xaxis, ax.yaxis):
            roles[id(axis.label)] = "axis label"
            roles[id(axis.offsetText)] = "axis offset"
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                roles[id(tick.label1)] = roles[id(tick.label2)] = "tick label"
                tick.label1._normviz_axis = tick.label2._normviz_axis = axis
    for legend in fig.findobj(Legend):
        for text in [*legend.get_texts(), legend.get_title()]:
            roles[id(text)] = "legend text"
    return roles


def _group(text: Any) -> int:
    """An id shared by the tick labels of one axis (0 for other texts)."""
    axis = getattr(text, "_normviz_axis", None)
    return id(axis) if axis is not None else 0


def _corners(text: Any, renderer: Any) -> tuple[tuple[float, float], ...]:
    """The four corners of a (possibly rotated) text's box, in pixels.

    ``get_window_extent`` is the axis-aligned box around the rotated text; the
    rotated rectangle inside it has the same centre, and its sides follow from
    the box's width and height (W = w|cos| + h|sin|, H = w|sin| + h|cos|).
    Adjacent rotated tick labels overlap as boxes without their glyphs touching.
    """
    import math

    box = text.get_window_extent(renderer)
    angle = math.radians(text.get_rotation() % 180.0)
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    det = c * c - s * s
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    if abs(det) < 1e-3 or s < 1e-6:  # upright (or near 45 degrees: the box is the best we know)
        return ((box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1))
    w = max(0.0, (box.width * c - box.height * s) / det)
    h = max(0.0, (box.height * c - box.width * s) / det)
    ux, uy = math.cos(angle), math.sin(angle)  # along the text
    vx, vy = -uy, ux  # across it
    return tuple(
        (cx + a * w / 2 * ux + b * h / 2 * vx, cy + a * w / 2 * uy + b * h / 2 * vy)
        for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    )


def _saved_dpi(fig: Any, dpi: float | None) -> float:
    import matplotlib

    if dpi is not None:
        return float(dpi)
    saved = matplotlib.rcParams["savefig.dpi"]
    return float(fig.dpi if saved == "figure" else saved)


def drawn_texts(fig: Any, *, dpi: float | None = None) -> list[TextBox]:
    """Every non-empty text a draw of ``fig`` at ``dpi`` puts on the canvas.

    ``dpi`` defaults to ``rcParams["savefig.dpi"]`` (a style's value inside its
    :func:`~normviz.plot.style.style_context`), so extents are those of the saved
    file. Only texts actually drawn count: tick labels outside the view, invisible
    and empty texts are left out.
    """
    from matplotlib.text import Text

    dpi = _saved_dpi(fig, dpi)
    drawn: list[Any] = []
    original = Text.draw

    def draw(self: Any, renderer: Any) -> Any:
        result = original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, renderer))
        return result

    old_dpi = fig.dpi
    Text.draw = draw  # type: ignore[method-assign]
    try:
        fig.set_dpi(dpi)
        fig.draw_without_rendering()  # the layout and every artist's extent, no pixels
        roles = _roles(fig)  # after the draw: axes make their tick labels while drawing
        boxes = [TextBox(t.get_text(), roles.get(id(t), "text"), _corners(t, r), _group(t)) for t, r in drawn]
    finally:
        Text.draw = original  # type: ignore[method-assign]
        fig.set_dpi(old_dpi)
    return boxes


def _overlap(a: TextBox, b: TextBox) -> float:
    """How deep two convex boxes overlap, in pixels (separating axes); <= 0 when apart."""
    import math

    depth = math.inf
    for poly in (a.corners, b.corners):
        for i in range(4):
            (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % 4]
            nx, ny = y0 - y1, x1 - x0
            norm = math.hypot(nx, ny)
            if norm == 0:
                continue
            nx, ny = nx / norm, ny / norm
            pa = [x * nx + y * ny for x, y in a.corners]
            pb = [x * nx + y * ny for x, y in b.corners]
            depth = min(depth, min(max(pa), max(pb)) - max(min(pa), min(pb)))
            if depth <= 0:
                return depth
    return depth


def text_collisions(
    fig: Any, *, tolerance: float = 1.0, tick_gap: float = 2.0, dpi: float | None = None
) -> list[str]:
    """Where the texts of ``fig`` collide, as drawn at ``dpi`` (default: the saved dpi).

    One message per pair of texts (titles, axis labels, tick labels, legend texts,
    any other text) that overlap by more than ``tolerance`` pixels, and per text
    that reaches more than ``tolerance`` pixels outside the figure. Tick labels of
    one axis must also stand ``tick_gap`` points apart: "115" and "198" 0.7 pt
    apart read as "115198". An empty list: every text is readable. Call it inside
    the style's :func:`~normviz.plot.style.style_context` for the style's saved dpi.
    """
    dpi = _saved_dpi(fig, dpi)
    gap_px = tick_gap * dpi / 72.0
    boxes = drawn_texts(fig, dpi=dpi)
    width, height = fig.get_figwidth() * dpi, fig.get_figheight() * dpi
    problems = []
    for box in boxes:
        xs = [x for x, _ in box.corners]
        ys = [y for _, y in box.corners]
        out = max(-min(xs), -min(ys), max(xs) - width, max(ys) - height)
        if out > tolerance:
            problems.append(f"{box.describe()} reaches {out:.1f} px outside the figure")
    spans = [(min(x for x, _ in b.corners), max(x for x, _ in b.corners), min(y for _, y in b.corners),
              max(y for _, y in b.corners)) for b in boxes]
    margin = max(gap_px, tolerance)
    for i, a in enumerate(boxes):
        ax0, ax1, ay0, ay1 = spans[i]
        for j in range(i + 1, len(boxes)):
            bx0, bx1, by0, by1 = spans[j]
            if bx0 > ax1 + margin or ax0 > bx1 + margin or by0 > ay1 + margin or ay0 > by1 + margin:
                continue  # far apart: no need for the exact test
            b = boxes[j]
            depth = _overlap(a, b)
            if a.group and a.group == b.group and depth > -gap_px:
                problems.append(f"{a.describe()} and {b.describe()} are {-depth:.1f} px apart (< {tick_gap:g} pt)")
            elif depth > tolerance:
                problems.append(f"{a.describe()} overlaps {b.describe()} by {depth:.1f} px")
    return problems


# --------------------------------------------------------------------------- runs


@dataclass
class ContractRuns:
    """Runs for :class:`RendererContract`: ``full`` (several kinds), ``small``, ``nonfinite``."""

    full: list[Any]
    small: list[Any]
    nonfinite: list[Any]


def _tiny_cnn(kind: str) -> Any:
    from torch import nn

    from normviz.experiments.models import make_norm

    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), make_norm(kind, 4, dims=2), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )


def record_run(
    path: str | os.PathLike[str],
    model: Any,
    make_batch: Any,
    *,
    steps: int = 4,
    lr: float = 0.05,
    poison_at: int | None = None,
    **recorder: Any,
) -> Any:
    """Train ``model`` for ``steps`` SGD steps under a Recorder and open the run.

    ``make_batch(generator)`` returns an input batch; the loss is the mean
    square of the output. ``poison_at`` sets the first parameter to +inf before
    that step, so the run turns non-finite there. Extra keyword arguments go to
    :class:`normviz.Recorder`.
    """
    import torch

    import normviz

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with normviz.Recorder(model, path, **recorder) as rec:
        for step in range(steps):
            if poison_at is not None and step == poison_at:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("inf"))
            opt.zero_grad()
            loss = model(make_batch(gen)).float().square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    return normviz.open(path)


def record_contract_runs(
    folder: str | os.PathLike[str], *, kinds: Sequence[str] = ("batch", "layer", "none"), steps: int = 4,
    plugins: Any = None,
) -> ContractRuns:
    """Record small CPU runs for the contract into ``folder`` (a few seconds).

    ``full``: a tiny CNN (conv → norm → ReLU → conv → pool → linear) per kind in
    ``kinds``, experiment ``"contract"``; ``small``: a lone BatchNorm1d layer,
    one recorded step; ``nonfinite``: the CNN with BatchNorm, made non-finite
    at step 2. ``plugins`` is passed to the recorders (a PluginHost).
    """
    import torch
    from torch import nn

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def images(gen: Any) -> Any:
        return torch.randn(4, 3, 4, 4, generator=gen) * 2 + 1

    def vectors(gen: Any) -> Any:
        return torch.randn(6, 4, generator=gen) + 3

    extra = {} if plugins is None else {"plugins": plugins}
    full = [
        record_run(folder / f"contract-{kind}.h5", _tiny_cnn(kind), images, steps=steps, experiment="contract",
                   label=f"contract-{kind}", norm_kind=kind, **extra)
        for kind in kinds
    ]
    small = [record_run(folder / "small.h5", nn.Sequential(nn.BatchNorm1d(4)), vectors, steps=1, label="small",
                        **extra)]
    nonfinite = [record_run(folder / "nonfinite.h5", _tiny_cnn("batch"), images, steps=steps, poison_at=2,
                            label="nonfinite", norm_kind="batch", **extra)]
    return ContractRuns(full, small, nonfinite)
