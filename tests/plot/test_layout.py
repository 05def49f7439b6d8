"""Every built-in figure, in every style, on real models' runs: no text collides or leaves the figure.

The runs (``real_runs`` in conftest.py) come from unmodified training scripts of a
ResNet-18 in torchvision's layout and a Hugging Face GPT-2 (real layer names, 41
layers, a 512-channel stage, 20 BatchNorms, 9 LayerNorms), the ResNet-18 as two
torchrun ranks, and the built-in seed CNN with its six norm kinds. Each figure is
drawn as ``normviz plot`` draws it and measured at the style's saved size and dpi
(:func:`normviz.testing.text_collisions`): the single runs in every style, the
comparisons of several runs in the default style (the whole test stays within a
minute on two cores).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.lines import Line2D

import normviz
from normviz.errors import MissingDataError
from normviz.merge import merge_ranks
from normviz.plot.api import _draw
from normviz.plot.style import STYLES, style_context
from normviz.plugins import get_plugin_host
from normviz.testing import text_collisions

BUILT_IN = ("channels", "covariate-shift", "gradient-flow", "histograms", "loss", "ranks")


@pytest.fixture(scope="module")
def run_sets(real_runs: Any) -> dict[str, list[Any]]:
    opened: list[Any] = []

    def load(*paths: Any) -> list[Any]:
        runs = [normviz.open(p) for p in paths]
        opened.extend(runs)
        return runs

    sets = {
        "resnet18": load(real_runs.resnet18),
        "gpt2": load(real_runs.gpt2),
        "resnet18+gpt2": load(real_runs.resnet18, real_runs.gpt2),
        "resnet18 ranks": merge_ranks(load(*real_runs.ranks)),
        "seed-cnn": load(*sorted(real_runs.seed_cnn.glob("*.h5"))),
    }
    yield sets
    for run in opened:
        run.close()


#: Drawn in the default style only (a minute for the whole test): comparisons of several runs.
PAPER_ONLY = ("seed-cnn", "resnet18+gpt2")


def _applies(renderer: str, name: str, style: str) -> bool:
    if style != "paper" and name in PAPER_ONLY:
        return False
    # ranks draws multi-rank runs only (it says so); the rank files are drawn by the other renderers
    # in the paper style (their names are the ResNet-18's, drawn in every style).
    if renderer == "ranks":
        return name == "resnet18 ranks"
    return name != "resnet18 ranks" or style == "paper"


@pytest.mark.parametrize("style", STYLES)
def test_no_text_collides_in_any_builtin_figure(run_sets: dict[str, list[Any]], style: str) -> None:
    renderers = get_plugin_host(entrypoints=False).renderers()
    problems, drawn = [], Counter()
    for renderer in BUILT_IN:
        for name, runs in run_sets.items():
            if not _applies(renderer, name, style):
                continue
            with style_context(style):
                try:
                    fig = _draw(renderers[renderer], runs, style, {})
                except MissingDataError:
                    continue  # skipped by `normviz plot` too, with its reason (e.g. ranks' histogram edges differ)
                found = text_collisions(fig) + _unlabelled_axes(fig)
            drawn[renderer] += 1
            problems += [f"{renderer} / {name} / {style}: {p}" for p in found]
    assert not problems, "\n".join(problems)
    many = 5 if style == "paper" else 2
    assert drawn == {"channels": many, "covariate-shift": many, "gradient-flow": many,
                     "histograms": many - (style == "paper"), "loss": many, "ranks": 1}


#: Two line colours closer than this (Euclidean distance in RGB, 0..1) read as one colour.
SAME_COLOUR = 0.15


def _unlabelled_axes(fig: Any) -> list[str]:
    """Axes whose tick labels are switched on but all blank: thinned away to nothing."""
    out = []
    for ax in fig.axes:
        if not ax.axison:
            continue
        for axis in (ax.xaxis, ax.yaxis):
            ticks = axis._update_ticks()
            shown = [t for t in ticks if t.label1.get_visible()]
            if shown and not any(t.label1.get_text().strip() for t in shown):
                out.append(f"{axis.axis_name} axis of {ax.get_title(loc='left')!r} has ticks but no label")
    return out


def _line_keys(ax: Any) -> list[tuple[str, str]]:
    keys = []
    for line in ax.get_lines():
        if line.get_gid() in (None, "nonfinite") or line.get_transform() != ax.transData:
            continue  # reference lines and markers
        style = line.get_linestyle()
        if style in ("None", "none", " ", ""):
            style = f"marker {line.get_marker()}"
        keys.append((to_hex(line.get_color()), str(style)))
    return keys


def _look_alikes(keys: list[tuple[str, str]]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Pairs of lines in one style whose colours are near-identical shades."""
    out = []
    for i, (ca, sa) in enumerate(keys):
        for cb, sb in keys[i + 1:]:
            if sa == sb and float(np.linalg.norm(np.subtract(to_rgb(ca), to_rgb(cb)))) < SAME_COLOUR:
                out.append(((ca, sa), (cb, sb)))
    return out


@pytest.mark.parametrize("renderer", ["covariate-shift", "gradient-flow", "loss"])
def test_lines_of_one_panel_differ_in_colour_or_style(run_sets: dict[str, list[Any]], renderer: str) -> None:
    """Nine BatchNorm layers of one run must not come out as nine look-alike shades of one line."""
    renderers = get_plugin_host(entrypoints=False).renderers()
    for name in ("resnet18", "gpt2", "seed-cnn"):
        with style_context("paper"):
            fig = _draw(renderers[renderer], run_sets[name], "paper", {})
        for ax in fig.axes:
            if renderer == "covariate-shift" and ax.get_subplotspec().rowspan.stop == ax.get_gridspec().nrows:
                continue  # the percentile bands: three edges of one band per run
            same = _look_alikes(_line_keys(ax))
            assert not same, f"{renderer} / {name}: lines look alike {same} in {ax.get_title(loc='left')!r}"


def test_line_keys_sees_data_lines_only() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="red", gid="a")
    ax.plot([0, 1], [1, 0], color="red", gid="b")
    ax.axhline(0.5, color="red", gid="ref")
    ax.add_line(Line2D([0, 1], [0, 1], color="red"))
    assert _line_keys(ax) == [("#ff0000", "-"), ("#ff0000", "-")]
    assert len(_look_alikes([("#0072b2", "-"), ("#1a80ba", "-"), ("#1a80ba", "--"), ("#d55e00", "-")])) == 1


def test_text_collisions_finds_overlaps_gaps_and_texts_outside() -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.set_xticks([0.0, 0.5, 1.0], ["0", "1", "2"])
    assert text_collisions(fig, dpi=100) == []
    ax.set_title("a long title on the left", loc="left")
    ax.set_title("on the right", loc="right")
    ax.set_xticks([0.0, 0.02, 1.0], ["100", "200", "300"])  # adjacent tick labels overprint
    fig.text(0.99, 0.5, "beyond the edge")
    found = text_collisions(fig, dpi=100)
    assert any("'a long title on the left' overlaps axes title 'on the right'" in p for p in found), found
    assert any("tick label '100' and tick label '200'" in p for p in found), found
    assert any("'beyond the edge' reaches" in p for p in found), found
    # Rotated tick labels whose boxes overlap but whose glyphs do not are not a collision.
    fig = Figure(figsize=(3, 2), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.set_xticks([0.0, 0.3, 0.6], ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"], rotation=30, ha="right")
    assert not [p for p in text_collisions(fig, dpi=100) if "overlaps" in p]


def test_covariate_shift_says_what_it_draws_on_a_deep_model(run_sets: dict[str, list[Any]]) -> None:
    """Item 6: which of the 41 layers are drawn, what the drift is, and what "(in)"/"(out)" mean."""
    with style_context("paper"):
        fig = normviz.plot(run_sets["resnet18"], "covariate-shift")
    top = fig.axes[0].get_title(loc="left").replace("\n", " ")
    assert "9 of 21 layers, evenly spaced in depth" in top  # 20 BatchNorm inputs and the fc output
    assert "sym. KL" in top and "floored at 5 %" in top
    legend = fig.legends[0]
    assert "in: a norm layer's input; out: a layer's output" in legend.get_title().get_text()
    entries = [t.get_text() for t in legend.get_texts()]
    assert len(entries) == 9 and entries[0].startswith("bn1 (in)") and entries[-1] == "fc (out) Linear"


def test_channels_gives_input_and_output_their_own_scales_and_every_row_its_labels(run_sets) -> None:
    """Item 7: a LayerNorm's input std of 0.02 is not flattened on its output's axis."""
    with style_context("paper"):
        fig = normviz.plot(run_sets["gpt2"], "channels")
    panels = [ax for ax in fig.axes if ax.get_title(loc="left") == "input" or
              ax.get_title(loc="right") == "output (after γ/β)"]
    assert len(panels) == 4  # transformer.h.0.ln_1 and transformer.ln_f, input and output
    for inp, out in zip(panels[::2], panels[1::2]):
        assert inp.get_shared_y_axes().get_siblings(inp) == [inp]
        span_in, span_out = np.ptp(inp.get_ylim()), np.ptp(out.get_ylim())
        assert span_in < 0.5 * span_out  # LayerNorm: its input is far narrower than its output
        assert inp.get_xlabel().startswith("channel") and out.get_xlabel().startswith("channel")
    headings = [ax.get_title(loc="left") for ax in fig.axes if ax.get_gid() == "heading"]
    assert headings == ["transformer.h.0.ln_1 LayerNorm", "transformer.ln_f LayerNorm"]


def test_channel_ticks_of_a_wide_layer_keep_their_ends_and_stand_apart(run_sets) -> None:
    """Item 5: "115198 313396 511" no more; the first and last channel stay labelled."""
    with style_context("paper"):
        fig = normviz.plot(run_sets["resnet18"], "channels")
        found = text_collisions(fig)
    assert not found
    wide = [ax for ax in fig.axes if ax.get_xlabel() == "channel (24 of 512)"]
    assert len(wide) == 2
    for ax in wide:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0] == "0" and labels[-1] == "511"
