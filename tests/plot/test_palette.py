from __future__ import annotations

import inspect
import re

import pytest
from matplotlib.colors import is_color_like
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle

from normviz.plot import palette
from normviz.plot.palette import (
    CYCLE,
    FALLBACK_COLORS,
    KIND_COLORS,
    KIND_LINESTYLES,
    KIND_MARKERS,
    KIND_ORDER,
    LABEL_COLORS,
    OKABE_ITO,
    kind_color,
    kind_linestyle,
    kind_marker,
    kind_sort_key,
    label_colors,
    sort_kinds,
)

HEX = re.compile(r"^#[0-9A-F]{6}$")
UNKNOWN = ["dyt", "mixed", "weight", "scale", "power", "batch-renorm", "switchable"]


def test_kind_order():
    assert KIND_ORDER == ("batch", "layer", "instance", "group", "rms", "none")
    assert (
        set(KIND_COLORS) == set(KIND_LINESTYLES) == set(KIND_MARKERS) == set(KIND_ORDER)
    )


def test_all_colours_are_valid_hex():
    colours = [
        *OKABE_ITO.values(),
        *KIND_COLORS.values(),
        *CYCLE,
        *FALLBACK_COLORS,
        *LABEL_COLORS,
    ]
    colours += [kind_color(k) for k in UNKNOWN]
    for colour in colours:
        assert HEX.match(colour), colour
        assert is_color_like(colour)


def test_okabe_ito_values():
    # The published palette; a typo here would silently break colour-blind safety.
    assert set(OKABE_ITO.values()) == {
        "#000000",
        "#E69F00",
        "#56B4E9",
        "#009E73",
        "#F0E442",
        "#0072B2",
        "#D55E00",
        "#CC79A7",
    }
    assert set(CYCLE) == set(OKABE_ITO.values())
    assert len(CYCLE) == len(set(CYCLE))


def test_builtin_kinds_are_distinct_in_colour_linestyle_and_marker():
    assert len(set(KIND_COLORS.values())) == len(KIND_ORDER)
    assert len({repr(s) for s in KIND_LINESTYLES.values()}) == len(KIND_ORDER)
    assert len(set(KIND_MARKERS.values())) == len(KIND_ORDER)
    assert KIND_COLORS["none"] in ("#000000", "#999999", "#7F7F7F", "#808080")
    assert all(c in OKABE_ITO.values() for c in KIND_COLORS.values())


def test_cycle_starts_with_kind_colours_in_kind_order():
    # Plain ax.plot calls in kind order then match kind_color.
    assert CYCLE[:5] == tuple(KIND_COLORS[k] for k in KIND_ORDER[:5])


def test_builtin_lookup_is_case_insensitive_and_none_is_baseline():
    assert kind_color("Batch") == KIND_COLORS["batch"]
    assert kind_color(" layer ") == KIND_COLORS["layer"]
    assert kind_color(None) == KIND_COLORS["none"]
    assert kind_marker(None) == KIND_MARKERS["none"]
    assert kind_linestyle(None) == KIND_LINESTYLES["none"]


def test_unknown_kinds_use_fallbacks_distinct_from_builtins():
    builtin_styles = {repr(s) for s in KIND_LINESTYLES.values()}
    for kind in UNKNOWN:
        assert kind_color(kind) in FALLBACK_COLORS
        assert kind_color(kind) not in KIND_COLORS.values()
        assert repr(kind_linestyle(kind)) not in builtin_styles
        assert kind_marker(kind) not in KIND_MARKERS.values()


def test_unknown_kinds_are_stable():
    # Same answer on every call, and pinned values: a salted hash() or a
    # random choice would change these between processes.
    for kind in UNKNOWN:
        assert kind_color(kind) == kind_color(kind) == kind_color(kind.upper())
        assert kind_linestyle(kind) == kind_linestyle(kind)
        assert kind_marker(kind) == kind_marker(kind)
    assert kind_color("dyt") == "#56B4E9"
    assert kind_linestyle("dyt") == (0, (3, 5, 1, 5))
    assert kind_marker("dyt") == "*"


def test_unknown_kinds_spread_over_fallbacks():
    names = [f"kind{i}" for i in range(200)]
    assert {kind_color(n) for n in names} == set(FALLBACK_COLORS)
    assert len({repr(kind_linestyle(n)) for n in names}) > 3
    assert len({kind_marker(n) for n in names}) > 3


@pytest.mark.parametrize("kind", [*KIND_ORDER, *UNKNOWN])
def test_styles_are_accepted_by_matplotlib(kind):
    line = Line2D(
        [0, 1],
        [0, 1],
        color=kind_color(kind),
        linestyle=kind_linestyle(kind),
        marker=kind_marker(kind),
    )
    assert line.get_marker() == kind_marker(kind)
    MarkerStyle(kind_marker(kind))


def test_yellow_is_not_used_for_lines():
    # Yellow is unreadable as a thin line on white.
    assert OKABE_ITO["yellow"] not in FALLBACK_COLORS
    assert OKABE_ITO["yellow"] not in LABEL_COLORS


def test_sort_kinds():
    kinds = [
        "none",
        "dyt",
        "layer",
        "batch",
        "mixed",
        "layer",
        "rms",
        "group",
        "instance",
    ]
    assert sort_kinds(kinds) == [
        "batch",
        "layer",
        "instance",
        "group",
        "rms",
        "dyt",
        "mixed",
        "none",
    ]
    assert sort_kinds([]) == []
    # Duplicates that differ in case collapse; the first spelling is kept.
    assert sort_kinds(["Layer", "layer", "batch"]) == ["batch", "Layer"]
    assert sorted(["none", "zeta", "batch"], key=kind_sort_key) == [
        "batch",
        "zeta",
        "none",
    ]


def test_label_colors_sorted_and_order_independent():
    a = label_colors(["Post-LN", "Pre-LN", "Post-LN"])
    b = label_colors(["Pre-LN", "Post-LN"])
    assert a == b
    assert list(a) == ["Post-LN", "Pre-LN"]
    assert a["Post-LN"] == LABEL_COLORS[0] and a["Pre-LN"] == LABEL_COLORS[1]


def test_label_colors_first_appearance_and_wraparound():
    labels = [f"run{i}" for i in range(len(LABEL_COLORS) + 2)]
    colours = label_colors(reversed(labels), sort=False)
    assert list(colours) == list(reversed(labels))
    values = list(colours.values())
    assert len(set(values[: len(LABEL_COLORS)])) == len(LABEL_COLORS)
    assert values[len(LABEL_COLORS)] == values[0]
    assert label_colors([]) == {}


def test_palette_does_not_import_matplotlib():
    # Kept cheap to import: the CLI and readers use it without drawing.
    source = inspect.getsource(palette)
    assert not re.search(r"^\s*(import|from)\s+matplotlib", source, re.MULTILINE)
