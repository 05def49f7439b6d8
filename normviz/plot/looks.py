"""How runs are told apart in a figure: colour, line style, marker, legend entry and name.

Runs of distinct norm kinds are coloured by kind (:mod:`normviz.plot.palette`); runs that
share one kind, by label (:func:`run_looks`). The legend helpers here build the entries
that :func:`normviz.plot.layout.figure_legend` places.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.colors import to_hex, to_rgb
from matplotlib.lines import Line2D

from normviz.default_plugins.norm_kinds import BUILTIN_KINDS
from normviz.plot.palette import (
    kind_color,
    kind_linestyle,
    kind_marker,
    kind_sort_key,
    label_colors,
    registered,
)

__all__ = [
    "KIND_NAMES",
    "NONFINITE_COLOR",
    "RunLook",
    "kind_name",
    "legend_title",
    "look_handles",
    "nonfinite_handle",
    "run_looks",
    "shades",
    "sort_runs",
]

#: Colour of non-finite markers (a red outside the Okabe–Ito kind colours).
NONFINITE_COLOR = "#E8000B"

#: Readable names of the built-in kinds (their descriptors' labels), and of a run of several.
KIND_NAMES: dict[str, str] = {k.name: k.label for k in BUILTIN_KINDS} | {"mixed": "mixed norms"}


def kind_name(kind: str | None) -> str:
    """``"batch"`` → ``"BatchNorm"``: the label a kind's descriptor gives; a kind nothing
    registers is returned as given."""
    key = "none" if kind is None else str(kind)
    if key in KIND_NAMES:
        return KIND_NAMES[key]
    found = registered(key)
    return found.label if found is not None else key


def sort_runs(runs: Sequence[Any]) -> list[Any]:
    """Runs in display order: by norm kind (batch … none), then label."""
    return sorted(runs, key=lambda r: (kind_sort_key(r.norm_kind), r.label))


@dataclass(frozen=True)
class RunLook:
    """How one run is drawn: colour, line style, marker and legend text."""

    color: str
    linestyle: Any
    marker: str
    label: str
    kind: str


_SAME_KIND_STYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3)))


def run_looks(runs: Sequence[Any]) -> list[RunLook]:
    """One :class:`RunLook` per run, in the order given.

    Runs of distinct kinds are coloured by kind and named by kind (a run of
    kind ``mixed``, by its label). Runs that all
    share one kind (e.g. Pre-LN vs Post-LN) are coloured and named by label.
    Otherwise runs are coloured by kind, and runs sharing a kind are told apart
    by line style and named ``"kind: label"``.
    """
    kinds = [r.norm_kind for r in runs]
    if len(runs) > 1 and len(set(kinds)) == 1:
        colors = label_colors(r.label for r in runs)
        return [
            RunLook(colors[r.label], kind_linestyle(r.norm_kind), kind_marker(r.norm_kind), r.label, r.norm_kind)
            for r in runs
        ]
    if len(set(kinds)) == len(kinds):
        # "mixed" says nothing about a run: it is named by its label.
        return [
            RunLook(kind_color(r.norm_kind), kind_linestyle(r.norm_kind), kind_marker(r.norm_kind),
                    str(r.label) if r.norm_kind == "mixed" else str(r.norm_kind), str(r.norm_kind))
            for r in runs
        ]
    seen: dict[str, int] = {}
    looks = []
    for r in runs:
        i = seen.get(r.norm_kind, 0)
        seen[r.norm_kind] = i + 1
        looks.append(
            RunLook(
                kind_color(r.norm_kind),
                _SAME_KIND_STYLES[i % len(_SAME_KIND_STYLES)],
                kind_marker(r.norm_kind),
                f"{r.norm_kind}: {r.label}",
                r.norm_kind,
            )
        )
    return looks


def shades(color: str, n: int, *, lightest: float = 0.6) -> list[str]:
    """``n`` shades of ``color`` from light (mixed with ``lightest`` white) to full."""
    r, g, b = to_rgb(color)
    if n <= 1:
        return [to_hex((r, g, b))]
    return [to_hex((r * (1 - t) + t, g * (1 - t) + t, b * (1 - t) + t)) for t in np.linspace(lightest, 0.0, n)]


def look_handles(looks: Sequence[RunLook]) -> tuple[list[Line2D], list[str]]:
    """Legend handles for runs (one per distinct legend text)."""
    handles, labels = [], []
    for look in looks:
        if look.label in labels:
            continue
        handles.append(Line2D([], [], color=look.color, linestyle=look.linestyle))
        labels.append(look.label)
    return handles, labels


def nonfinite_handle() -> Line2D:
    """The legend handle of :func:`normviz.plot.artists.mark_nonfinite`'s line."""
    return Line2D([], [], color=NONFINITE_COLOR, linestyle=(0, (2, 1)), linewidth=0.8)


def legend_title(runs: Sequence[Any]) -> str | None:
    """None when the legend names norm kinds; ``"<Kind> runs"`` when it names labels."""
    kinds = [r.norm_kind for r in runs]
    if len(runs) > 1 and len(set(kinds)) == 1:
        return f"{kind_name(kinds[0])} runs"
    return None
