"""What a renderer reads from its runs: which runs, which recorded rows, which layer.

:func:`as_runs` takes the runs a renderer is given; :func:`parse_steps` and
:func:`step_rows` turn the ``steps`` option (training steps) into recorded rows, which
:func:`divergence` cuts where a run first held a non-finite value; :func:`focus_layer`
picks the layer several runs are compared on; :func:`module_channels` reads a module
tensor on the channels a site stores. Nothing here draws.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from normviz import analysis
from normviz.errors import MissingDataError, UsageError
from normviz.plot.looks import shades

__all__ = [
    "as_runs",
    "divergence",
    "focus_layer",
    "module_channels",
    "parse_steps",
    "step_rows",
]


def as_runs(runs: Any) -> list[Any]:
    """A Run, a path, or a sequence of them, as a list of runs (paths are opened)."""
    from normviz.store.reader import Run, open_run

    if isinstance(runs, (Run, str, os.PathLike)) or hasattr(runs, "stat"):
        runs = [runs]
    out = []
    for item in runs:
        out.append(open_run(item) if isinstance(item, (str, os.PathLike)) else item)
    if not out:
        raise UsageError("no run given to draw")
    return out


def parse_steps(spec: str | slice | None) -> slice | None:
    """Parse a ``--steps`` value ``"START:STOP"`` (training steps, STOP excluded).

    Either side may be empty (``"100:"``, ``":500"``); a single number ``"N"``
    means step N alone. A :class:`slice` or None is returned as given.

    Raises
    ------
    UsageError
        For anything else, e.g. ``"a:b"``, a negative step or STOP ≤ START.
    """
    if spec is None or isinstance(spec, slice):
        return spec
    text = str(spec).strip()
    parts = text.split(":")
    start: int | None
    stop: int | None
    try:
        if len(parts) == 1:
            n = int(parts[0])
            start, stop = n, n + 1
        elif len(parts) == 2:
            start = int(parts[0]) if parts[0].strip() else None
            stop = int(parts[1]) if parts[1].strip() else None
        else:
            raise ValueError
    except ValueError:
        raise UsageError(f"--steps {text!r}: expected START:STOP in training steps, e.g. 0:1000") from None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise UsageError(f"--steps {text!r}: training steps are counted from 0")
    if start is not None and stop is not None and stop <= start:
        raise UsageError(f"--steps {text!r}: STOP must be greater than START")
    return slice(start, stop)


def step_rows(run: Any, steps: str | slice | None) -> slice:
    """The recorded rows of ``run`` within the ``steps`` option (training steps).

    Raises
    ------
    MissingDataError
        When no recorded step lies in the range.
    """
    sl = parse_steps(steps)
    if sl is None:
        rows = slice(0, len(run.steps))
    else:
        rows = analysis.rows_for_steps(run.steps, sl.start, sl.stop)
    if rows.stop <= rows.start:
        where = "" if sl is None else f" between steps {sl.start}:{sl.stop}"
        raise MissingDataError(f"{run.path}: no recorded step{where}")
    return rows


def divergence(run: Any, rows: slice, *, grad_norm: Any = None) -> tuple[slice, int | None]:
    """Cut ``rows`` after the first non-finite row; return it and its training step.

    The row where values first became non-finite is kept (it is drawn as far as
    it is finite, and marked); later rows are dropped. The rows are checked as
    :func:`normviz.analysis.run_divergence` checks them (every site's ``nonfinite``
    count, and ``grad_norm``); a renderer that has read ``run.grad("grad_norm",
    steps=rows)`` already passes its values as ``grad_norm``, which is then not read again.
    """
    if grad_norm is None:
        first = analysis.run_divergence(run, rows)
    else:
        first = analysis.first_nonfinite(*_nonfinite_flags(run, rows), grad_norm)
    if first is None:
        return rows, None
    return slice(rows.start, rows.start + first + 1), int(run.steps[rows.start + first])


def _nonfinite_flags(run: Any, rows: slice) -> list[Any]:
    """The ``nonfinite`` counts of every site as :func:`normviz.analysis.first_nonfinite` takes
    them (NaN where a site held a non-finite value); none when they were not recorded."""
    try:
        _, counts = run.stat_all("nonfinite", steps=rows)
    except MissingDataError:
        return []
    return [np.where(np.asarray(counts) > 0, np.nan, 0.0)]


def focus_layer(runs: Sequence[Any], layers: str | None = None, *, deepest: bool = False) -> str | None:
    """The layer to show when several runs are compared on one layer.

    Candidates are the norm layers (``kind`` not None) of each run matching the
    ``layers`` glob, or, when no norm layer matches, any matching layer. The
    name found in most runs wins; ties go to the shallowest (or, with
    ``deepest``, the deepest) in model order. None when nothing matches.
    """
    counts: dict[str, int] = {}
    order: dict[str, tuple[int, int]] = {}
    for r, run in enumerate(runs):
        names = [layer.name for layer in run.layers]
        norms = [layer.name for layer in run.layers if layer.kind is not None]
        chosen = analysis.select_names(norms, layers)
        if not chosen:
            chosen = analysis.select_names(names, layers) if layers is not None else []
        for name in chosen:
            counts[name] = counts.get(name, 0) + 1
            order.setdefault(name, (names.index(name), r))
    if not counts:
        return None
    sign = -1 if deepest else 1
    return min(counts, key=lambda n: (-counts[n], sign * order[n][0], order[n][1]))


def module_channels(run: Any, name: str, layer: str, role: str = "output", *, steps: slice | None = None) -> Any:
    """A module tensor (``weight``, ``bias``, ``running_mean``, …) on the channels a site stores.

    Per-channel series of wide layers are thinned to the channels listed by
    ``run.channel_index(layer, role)``; module tensors are thinned the same way
    or stored whole. Either way the result is ``[S, len(channel_index)]``.

    Raises
    ------
    MissingDataError
        When the tensor was not recorded, or its width matches neither.
    """
    values = np.asarray(run.module_stat(name, layer, steps=steps))
    index = np.asarray(run.channel_index(layer, role))
    if values.shape[1] == len(index):
        return values
    if len(index) and values.shape[1] > int(index.max()):
        return values[:, index]
    raise MissingDataError(
        f"{run.path}: {name!r} of layer {layer!r} has {values.shape[1]} values, "
        f"which do not line up with its {len(index)} stored channels"
    )


def layer_shades(names: Sequence[str], color: str, limit: int) -> list[tuple[str, str]]:
    """The layers of one run to draw as lines, evenly spaced in depth (at most ``limit``), each with
    its shade of the run's ``color``: lighter for shallower layers."""
    shown = analysis.select_names(names, None, limit)
    return list(zip(shown, shades(color, len(shown))))


def depth_order(name_lists: Sequence[Sequence[str]]) -> dict[str, int]:
    """Every run's layers on one depth axis, in forward order (first seen first): runs whose layers
    differ still put a shared layer at the same position."""
    order: dict[str, int] = {}
    for names in name_lists:
        for name in names:
            order.setdefault(name, len(order))
    return order
