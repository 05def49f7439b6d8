"""What the built-in renderers draw equals what the runs recorded."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from renderer_runs import by_kind, shared_runs

import normviz
from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot.palette import kind_color


@pytest.fixture(scope="module")
def contract_runs(tmp_path_factory):
    return shared_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def kind_runs(contract_runs):
    return by_kind(contract_runs)


def by_gid(fig: Figure, gid: str, cls: type = object):
    """The one artist of ``fig`` (of type ``cls``) with this gid."""
    found = fig.findobj(match=lambda a: isinstance(a, cls) and a.get_gid() == gid)
    assert len(found) == 1, f"{len(found)} artists with gid {gid!r}"
    return found[0]


def gids(fig: Figure, prefix: str) -> list[str]:
    return sorted({a.get_gid() for a in fig.findobj(match=lambda a: str(a.get_gid() or "").startswith(prefix))})


def test_gradient_flow_heatmap_is_the_recorded_gradient_norm(kind_runs):
    run = kind_runs["batch"]
    fig = normviz.plot(run, "gradient-flow")
    names, values = run.grad("grad_norm")
    mesh = by_gid(fig, f"grad_norm:{run.label}")
    np.testing.assert_allclose(np.ma.filled(mesh.get_array(), np.nan), values.T, rtol=1e-6)
    # mean and max |grad| lines, and the update ratio, per layer
    for stat in ("grad_abs_mean", "grad_abs_max", "update_ratio"):
        j = len(names) - 1
        line = by_gid(fig, f"{stat}:{run.label}:{names[j]}")
        np.testing.assert_allclose(line.get_ydata(), run.grad(stat)[1][:, j], rtol=1e-6)
        np.testing.assert_array_equal(line.get_xdata(), run.steps)


def test_gradient_flow_compares_runs_on_one_log_scale(kind_runs):
    runs = [kind_runs["batch"], kind_runs["none"]]
    fig = normviz.plot(runs, "gradient-flow", layers="0")
    meshes = [by_gid(fig, f"grad_norm:{r.label}") for r in runs]
    assert meshes[0].get_array().shape == (1, len(runs[0].steps))  # the layers glob keeps layer "0" only
    assert meshes[0].norm.vmin == meshes[1].norm.vmin and meshes[0].norm.vmax == meshes[1].norm.vmax
    assert by_gid(fig, f"update_ratio:{runs[0].label}").get_color() == kind_color("batch")


def test_covariate_shift_bands_are_the_recorded_percentiles(kind_runs):
    run = kind_runs["batch"]
    fig = normviz.plot(run, "covariate-shift")
    levels = run.layout.percentile_levels
    for role in ("input", "output"):
        pct = run.stat("percentiles", "1", role)
        for level in (15, 50, 85):
            line = by_gid(fig, f"p{level}:{run.label}:1:{role}")
            np.testing.assert_allclose(line.get_ydata(), pct[:, levels.index(level)], rtol=1e-6)


def test_covariate_shift_drift_lines(kind_runs):
    run = kind_runs["group"]
    fig = normviz.plot(run, "covariate-shift")
    drawn = gids(fig, "drift:")
    # conv 0's output is the GroupNorm's input: drawn once, as the norm's input
    assert f"drift:{run.label}:1:input" in drawn and f"drift:{run.label}:0:output" not in drawn
    expected = analysis.channel_drift(run.stat("channel_mean", "1", "input"), run.stat("channel_var", "1", "input"))
    np.testing.assert_allclose(by_gid(fig, f"drift:{run.label}:1:input").get_ydata(), expected)


def test_covariate_shift_lines_up_a_run_without_norm(kind_runs):
    runs = [kind_runs["batch"], kind_runs["none"]]
    fig = normviz.plot(runs, "covariate-shift")
    # the run without norm has no layer "1": its conv output stands for the norm's input
    assert f"drift:{runs[1].label}:0:output" in gids(fig, "drift:")
    none_band = by_gid(fig, f"p50:{runs[1].label}:0:output")
    np.testing.assert_allclose(none_band.get_ydata(), runs[1].stat("percentiles", "0", "output")[:, 4], rtol=1e-6)


def test_loss_lines_are_the_loss_scalar_and_steps_option(kind_runs):
    runs = [kind_runs["batch"], kind_runs["layer"]]
    fig = normviz.plot(runs, "loss")
    for run in runs:
        line = by_gid(fig, f"loss:{run.label}")
        np.testing.assert_allclose(line.get_ydata(), run.scalar("loss"))
        np.testing.assert_array_equal(line.get_xdata(), run.scalar_steps)
        assert line.get_color() == kind_color(run.norm_kind)
    fig = normviz.plot(runs[0], "loss", steps="1:3")
    np.testing.assert_array_equal(by_gid(fig, f"loss:{runs[0].label}").get_xdata(), [1, 2])


def test_histograms_mesh_is_the_recorded_histogram(kind_runs):
    run = kind_runs["layer"]
    fig = normviz.plot(run, "histograms")
    for role in ("input", "output"):
        mesh = by_gid(fig, f"hist:{run.label}:1:{role}")
        hist = run.stat("hist", "1", role).astype(float)
        np.testing.assert_array_equal(np.ma.filled(mesh.get_array(), 0.0), np.where(hist > 0, hist, 0.0).T)
        edges = run.hist_edges("1", role)
        y = mesh.get_coordinates()[:, 0, 1]
        np.testing.assert_allclose(y[1:-1], edges, rtol=1e-6)  # one under- and one overflow bin around them


def test_channels_points_are_channel_statistics_and_beta(kind_runs):
    run = kind_runs["instance"]
    fig = normviz.plot(run, "channels")
    last = len(run.steps) - 1
    line = by_gid(fig, f"channels:{run.label}:1:output:{run.steps[last]}", Line2D)
    np.testing.assert_allclose(line.get_ydata(), run.stat("channel_mean", "1", "output")[last], rtol=1e-6)
    # γ and β are recorded after the update: the forward pass of the last step used the previous row's
    beta = run.module_stat("bias", "1")[last - 1]
    np.testing.assert_allclose(by_gid(fig, "beta").get_ydata(), beta, rtol=1e-6)
    # InstanceNorm holds every (sample, channel) at mean 0, so each channel's output mean is its β
    np.testing.assert_allclose(line.get_ydata(), beta, atol=1e-5)


def test_channels_batchnorm_running_statistics(kind_runs):
    run = kind_runs["batch"]
    fig = normviz.plot(run, "channels")
    line = by_gid(fig, "running:running_mean:0")
    np.testing.assert_allclose(line.get_ydata(), run.module_stat("running_mean", "1")[:, 0], rtol=1e-6)
    batch = by_gid(fig, "batch:channel_mean:0")
    np.testing.assert_allclose(batch.get_ydata(), run.stat("channel_mean", "1", "input")[:, 0], rtol=1e-6)


def test_channels_without_any_norm_layer_says_so(kind_runs, tmp_path):
    import torch
    from torch import nn

    from normviz.testing import record_run

    run = record_run(tmp_path / "plain.h5", nn.Sequential(nn.Linear(3, 2)), lambda g: torch.randn(4, 3, generator=g),
                     steps=2)
    with pytest.raises(MissingDataError, match="no norm layer"):
        normviz.plot(run, "channels")


def test_nonfinite_runs_are_drawn_up_to_the_divergence(contract_runs):
    run = contract_runs.nonfinite[0]
    fig = normviz.plot(run, "gradient-flow")
    assert by_gid(fig, f"grad_norm:{run.label}").get_array().shape[1] == 3  # steps 0, 1 and 2 (the divergence)
    marks = fig.findobj(match=lambda a: a.get_gid() == "nonfinite")
    assert marks and all(np.all(np.asarray(m.get_xdata()) == 2) for m in marks)
    fig = normviz.plot(run, "histograms")
    assert fig.findobj(match=lambda a: a.get_gid() == "nonfinite")


# --------------------------------------------------------------------------- review fixes


@pytest.fixture(scope="module")
def two_bn_run(tmp_path_factory):
    """Two BatchNorm layers ("1": 32 channels, "3": 6); 12 of the 32 channels stored."""
    import torch
    from torch import nn

    from normviz.testing import record_run

    model = nn.Sequential(nn.Conv2d(3, 32, 1), nn.BatchNorm2d(32), nn.Conv2d(32, 6, 1), nn.BatchNorm2d(6))
    return record_run(tmp_path_factory.mktemp("two_bn") / "two-bn.h5", model,
                      lambda g: torch.randn(4, 3, 5, 5, generator=g), steps=3, max_channels=12)


def _group_axes(fig):
    return [ax for ax in fig.axes if ax.get_title(loc="left").startswith("group ")]


def test_channels_group_boxes_of_one_run_are_labelled_by_layer(two_bn_run):
    fig = normviz.plot(two_bn_run, "channels")
    for ax in _group_axes(fig):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1\nBatchNorm", "3\nBatchNorm"]


def test_channels_max_layers_one_is_the_shallowest(two_bn_run):
    fig = normviz.plot(two_bn_run, "channels", max_layers=1)
    assert {g.split(":")[2] for g in gids(fig, "channels:")} == {"1"}
    assert analysis.select_names(["a", "b", "c"], None, 1) == ["a"]


def test_channels_thinned_evenly_with_true_channel_numbers(two_bn_run):
    run = two_bn_run
    index = [int(i) for i in run.channel_index("1", "input")]
    assert len(index) == 12
    fig = normviz.plot(run, "channels", layers="1", max_channels=4)
    last = run.steps[len(run.steps) - 1]
    line = by_gid(fig, f"channels:{run.label}:1:input:{last}", Line2D)
    x = line.get_xdata()
    np.testing.assert_allclose(np.diff(x), np.diff(x)[0])  # equal spacing
    ax = line.axes
    keep = analysis.pick_rows(12, 4)
    want = [str(index[k]) for k in keep]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == want  # the true channel numbers, not the stored positions
    assert ax.get_xlabel() == "channel (4 of 32)"
    mean = run.stat("channel_mean", "1", "input")[len(run.steps) - 1][keep]
    np.testing.assert_allclose(line.get_ydata(), mean, rtol=1e-6)


def test_channels_output_is_after_affine_with_beta_gamma_reference(two_bn_run):
    run = two_bn_run
    fig = normviz.plot(run, "channels")
    titles = [ax.get_title(loc="right") for ax in fig.axes]
    assert "output (after γ/β)" in titles
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "groups out (after γ/β)" in legend and "0 / 1 (before γ/β)" in legend
    last = len(run.steps) - 1
    used = analysis.forward_row(run.steps, last)
    beta = run.module_stat("bias", "3")[used]
    gamma = run.module_stat("weight", "3")[used]
    np.testing.assert_allclose(by_gid(fig, "reference:group_mean:3\nBatchNorm").get_ydata(), beta, rtol=1e-6)
    np.testing.assert_allclose(by_gid(fig, "reference:group_scale:3\nBatchNorm").get_ydata(), np.abs(gamma),
                               rtol=1e-6)
    # BatchNorm's output group means are the channels' β (training-mode batch statistics).
    q = run.stat("group_mean", "3", "output")[last]
    assert np.ptp(q) == pytest.approx(np.ptp(beta), abs=1e-4)


@pytest.mark.parametrize("style", ["paper", "paper-wide", "slides", "notebook"])
def test_covariate_shift_legend_fits_the_figure(tmp_path_factory, style):
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from torch import nn

    from normviz.testing import record_run

    key = "long_names"
    if key not in _LONG:
        block = nn.Sequential()
        for i in range(5):
            block.add_module(f"encoder_stage{i}_conv", nn.Linear(4, 4))
            block.add_module(f"encoder_stage{i}_batchnorm", nn.BatchNorm1d(4))
        _LONG[key] = record_run(tmp_path_factory.mktemp("long") / "long.h5", block,
                                lambda g: torch.randn(8, 4, generator=g), steps=3)
    fig = normviz.plot(_LONG[key], "covariate-shift", style=style)
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert len(fig.legends[0].get_texts()) >= 5
    assert box.x0 >= -0.5 and box.x1 <= fig.bbox.width + 0.5


_LONG: dict[str, object] = {}


def test_gradient_flow_heatmap_ticks_fit_short_panels(contract_runs, kind_runs):
    from normviz.plot.renderers.gradient_flow import layer_tick_rows

    assert layer_tick_rows(13, 30.0, 8.0) == [0, 5, 10]  # 13 rows of 2.3 pt: a label every 5 rows
    assert layer_tick_rows(4, 200.0, 8.0) == [0, 1, 2, 3]
    runs = [kind_runs[k] for k in ("batch", "layer", "instance", "group", "rms", "none")] * 2
    fig = normviz.plot(runs, "gradient-flow", style="paper")
    heat = [ax for ax in fig.axes if ax.get_title(loc="left").endswith("per-layer gradient norm")]
    assert len(heat) == 12
    height = fig.get_figheight() * 72.0
    for ax in heat:
        ticks = ax.get_yticks()
        size = ax.get_yticklabels()[0].get_fontsize()
        rows = ax.get_ylim()[0] - ax.get_ylim()[1]
        pt_per_row = ax.get_position().height * height / rows
        if len(ticks) > 1:
            assert np.min(np.diff(ticks)) * pt_per_row >= size  # labels do not overlap


def test_a_run_of_mixed_norms_is_named_by_its_label(tmp_path):
    """Item 7: the loss legend of a model with BatchNorm and LayerNorm says its label, not "mixed"."""
    import torch
    from torch import nn

    from normviz.testing import record_run

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.LayerNorm(4))
    run = record_run(tmp_path / "both.h5", model, lambda g: torch.randn(6, 3, generator=g), steps=2,
                     label="bn-then-ln")
    assert run.norm_kind == "mixed"
    fig = normviz.plot(run, "loss")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bn-then-ln"]
