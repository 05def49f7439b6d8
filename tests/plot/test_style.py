from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from normviz.plot.palette import CYCLE
from normviz.plot.style import (
    STYLE_DIR,
    STYLES,
    figure_size,
    figure_width,
    new_figure,
    style_context,
    style_path,
)

FONT_KEYS = (
    "font.size",
    "axes.titlesize",
    "axes.labelsize",
    "xtick.labelsize",
    "ytick.labelsize",
    "legend.fontsize",
)


def rc_snapshot() -> dict:
    # rc_context deliberately leaves "backend" alone; compare everything else.
    snap = dict(matplotlib.rcParams)
    snap.pop("backend", None)
    return snap


def test_style_names_and_files():
    assert STYLES == ("paper", "paper-wide", "slides", "notebook")
    for name in STYLES:
        assert style_path(name).is_file()
        assert style_path(name).parent == STYLE_DIR


def test_expected_widths():
    assert figure_width("paper") == pytest.approx(3.25)
    assert figure_width("paper-wide") == pytest.approx(6.75)
    assert figure_width("slides") > figure_width("notebook") > figure_width("paper")


@pytest.mark.parametrize("name", STYLES)
def test_context_applies_style_and_restores_rcparams(name):
    before = rc_snapshot()
    with style_context(name):
        rc = matplotlib.rcParams
        assert rc["figure.figsize"][0] == pytest.approx(figure_width(name))
        assert rc["pdf.fonttype"] == 42
        assert rc["ps.fonttype"] == 42
        assert rc["svg.fonttype"] == "path"
        assert rc["svg.hashsalt"] == "normviz"
        assert rc["text.usetex"] is False
        assert rc["figure.constrained_layout.use"] is True
        assert rc["savefig.bbox"] in (None, "standard")  # keep the exact width
        assert rc["font.sans-serif"][0] == "DejaVu Sans"
        fig = new_figure(name)
        assert fig.get_size_inches()[0] == pytest.approx(figure_width(name))
    assert rc_snapshot() == before


@pytest.mark.parametrize("name", STYLES)
def test_palette_is_the_colour_cycle(name):
    # The .mplstyle files repeat palette.CYCLE; keep the two in step.
    with style_context(name):
        colours = [
            to_hex(c, keep_alpha=False).upper()
            for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        ]
    assert colours == list(CYCLE)


def test_paper_fonts_are_readable_at_print_size():
    for name in ("paper", "paper-wide"):
        with style_context(name):
            sizes = [matplotlib.rcParams[k] for k in FONT_KEYS]
            assert all(isinstance(s, float) and 7 <= s <= 9 for s in sizes), sizes
            assert 8 <= matplotlib.rcParams["font.size"] <= 9
            assert matplotlib.rcParams["lines.linewidth"] <= 1.25
            assert matplotlib.rcParams["savefig.dpi"] >= 300


def test_context_restores_rcparams_after_error():
    before = rc_snapshot()
    with pytest.raises(KeyError), style_context("slides"):
        raise KeyError("boom")
    assert rc_snapshot() == before


def test_context_ignores_user_rc_by_default_and_restores_it():
    with matplotlib.rc_context({"axes.grid": True, "lines.color": "red"}):
        with style_context("paper"):
            assert matplotlib.rcParams["axes.grid"] is False
            assert matplotlib.rcParams["lines.color"] != "red"
        with style_context("paper", after_reset=False):
            assert matplotlib.rcParams["axes.grid"] is True
        assert matplotlib.rcParams["axes.grid"] is True
        assert matplotlib.rcParams["lines.color"] == "red"


def test_new_figure_is_not_a_pyplot_figure():
    before_nums = plt.get_fignums()
    before = rc_snapshot()
    fig = new_figure("paper", nrows_hint=2)
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == before_nums
    assert fig.canvas.manager is None
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    assert rc_snapshot() == before


def test_new_figure_takes_figure_settings_from_the_style():
    assert new_figure("paper").dpi == 150
    assert new_figure("slides").dpi == 100


def test_height_grows_with_rows_and_is_capped():
    w, h1 = figure_size("paper")
    assert (w, h1) == pytest.approx((3.25, 3.25 * 0.75))
    assert figure_size("paper", nrows_hint=2)[1] == pytest.approx(2 * h1)
    assert figure_size("paper", nrows_hint=20)[1] == pytest.approx(9.0)
    assert figure_size("paper", height_ratio=0.5)[1] == pytest.approx(3.25 * 0.5)
    # A row across the page is not as tall as 3/4 of the page width.
    assert figure_size("paper-wide")[1] < 0.5 * figure_width("paper-wide")
    fig = new_figure("notebook", height_ratio=0.5, nrows_hint=3)
    assert tuple(fig.get_size_inches()) == pytest.approx((7.0, 7.0 * 0.5 * 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height_ratio": 0},
        {"height_ratio": -1.0},
        {"nrows_hint": 0},
        {"nrows_hint": 1.5},
    ],
)
def test_bad_size_arguments(kwargs):
    with pytest.raises(ValueError):
        new_figure("paper", **kwargs)


def test_unknown_style_lists_valid_names():
    for call in (
        lambda: figure_width("poster"),
        lambda: new_figure("poster"),
        lambda: style_context("poster"),
        lambda: style_path("Paper"),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert all(name in message for name in STYLES)


@pytest.mark.parametrize("name", STYLES)
def test_long_figure_titles_wrap_between_parts_inside_the_figure(name):
    from normviz.plot.common import _text_width, wrap_title

    parts = ["channels and groups of layer encoder.layers.11.attention.output.norm", "a-long-experiment-name", "Group"]
    with style_context(name):
        fig = new_figure(name)
        width = fig.get_figwidth() * 72
        title = wrap_title(parts, width)
        size = matplotlib.font_manager.FontProperties(size="medium").get_size_in_points()
        lines = title.split("\n")
        assert title.replace("\n", " · ") == " · ".join(parts)  # broken between parts only
        assert (len(lines) > 1) == (_text_width(" · ".join(parts), size) > width)
        for line in lines:
            # A part longer than the width stays whole on its own line; every joined line fits.
            assert _text_width(line, size) <= width or line in parts
    assert wrap_title(["a", "b"], 1000.0) == "a · b"
