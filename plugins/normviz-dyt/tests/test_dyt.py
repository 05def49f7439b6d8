"""normviz-dyt, tested the way users meet it: installed, found through the entry point."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import importlib.metadata  # noqa: E402
import json  # noqa: E402

import normviz_dyt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from normviz_dyt import DyT, convert_layernorms  # noqa: E402
from torch import nn  # noqa: E402

import normviz  # noqa: E402
from normviz.datatypes import NormSpec  # noqa: E402
from normviz.errors import MissingDataError  # noqa: E402
from normviz.plot.palette import kind_color  # noqa: E402
from normviz.plugins import get_plugin_host  # noqa: E402
from normviz.testing import RendererContract, record_run  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DIST = "normviz-dyt"
PROVIDER = f"{DIST} {importlib.metadata.version(DIST)}"
EXPERIMENT = "tiny-transformer"


# --------------------------------------------------------------------------- models


class Block(nn.Module):
    """A pre-norm transformer MLP block: x + fc2(gelu(fc1(norm(x))))."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class TinyTransformer(nn.Module):
    """Tokens (batch, tokens, 6) → embedding → pre-norm blocks → final norm → mean over tokens → head."""

    def __init__(self, d: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = TinyTransformer()
    return convert_layernorms(model) if kind == "dyt" else model


def tokens(gen: torch.Generator) -> torch.Tensor:
    # Wide inputs, so that α·x reaches tanh's flat part for a fair share of values.
    return torch.randn(4, 5, 6, generator=gen) * 3


DYT_LAYERS = ["blocks.0.norm", "blocks.1.norm", "norm"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """DyT and LayerNorm runs of one experiment, a one-layer one-step DyT run, a DyT run gone non-finite."""
    folder = tmp_path_factory.mktemp("dyt-runs")
    full = [
        record_run(folder / f"{EXPERIMENT}-{kind}.h5", make_model(kind), tokens, steps=6, lr=0.05,
                   experiment=EXPERIMENT, label=kind)
        for kind in ("dyt", "layer")
    ]
    other = tmp_path_factory.mktemp("dyt-other")
    small = record_run(other / "small.h5", nn.Sequential(DyT(4)), lambda g: torch.randn(6, 4, generator=g) * 4,
                       steps=1, label="small")
    nonfinite = record_run(other / "nonfinite.h5", make_model("dyt"), tokens, steps=5, poison_at=2,
                           label="nonfinite")
    return {"folder": folder, "dyt": full[0], "layer": full[1], "small": small, "nonfinite": nonfinite}


# --------------------------------------------------------------------------- the module


def test_dyt_computes_gamma_tanh_alpha_x_plus_beta():
    torch.manual_seed(0)
    layer = DyT(5)
    assert layer.alpha.shape == (1,) and layer.alpha.item() == 0.5
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
        layer.alpha.fill_(0.7)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(layer(x), layer.weight * torch.tanh(0.7 * x) + layer.bias)

    conv = DyT(4, channels_last=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 5.0))
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(conv(x), torch.tanh(0.5 * x) * torch.arange(1.0, 5.0).reshape(1, 4, 1, 1))


def test_convert_layernorms_replaces_every_layernorm():
    model = convert_layernorms(TinyTransformer(d=8, depth=2))
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if name in DYT_LAYERS}
    assert kinds == dict.fromkeys(DYT_LAYERS, "DyT")
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert model.norm.normalized_shape == (8,)
    assert model(torch.randn(2, 3, 6)).shape == (2, 3)


# --------------------------------------------------------------------------- the plugin, found as installed


def test_found_through_the_entry_point():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="normviz")}
    assert eps["dyt"].value == "normviz_dyt"
    assert eps["dyt"].dist.name == DIST
    host = get_plugin_host()
    assert host.sources["dyt"] == PROVIDER
    assert "dyt" not in host.failures
    assert host.pm.get_plugin("dyt") is normviz_dyt
    assert host.renderers()["dyt"] is normviz_dyt.RENDERER
    statistics = host.statistics()
    assert {"dyt_alpha", "dyt_saturation"} <= set(statistics)
    for what, name in (("renderer", "dyt"), ("statistic", "dyt_alpha"), ("statistic", "dyt_saturation")):
        assert host.owner(what, name) == PROVIDER


class DynamicTanh(nn.Module):
    """The paper's reference implementation, as a look-alike the plugin also recognises."""

    def __init__(self, c: int, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.ones(1) * 0.5)
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))


def test_classification():
    host = get_plugin_host()
    assert host.classify("a", DyT(8)) == NormSpec("dyt", channel_dim=-1, group_dims=None)
    assert host.classify("b", DyT(8, channels_last=False)) == NormSpec("dyt", channel_dim=1, group_dims=None)
    assert host.classify("c", DynamicTanh(8, channels_last=True)) == NormSpec("dyt", channel_dim=-1, group_dims=None)
    assert host.classify("d", DynamicTanh(8, channels_last=False)).channel_dim == 1
    assert host.classify("e", nn.LayerNorm(8)).kind == "layer"  # the built-ins still classify the rest
    assert host.classify("f", nn.Linear(8, 8)) is None
    blocked = get_plugin_host(blocked=["dyt"])
    assert blocked.classify("a", DyT(8)) is None  # without the plugin normviz does not know DyT


def test_runs_hold_the_dyt_kind_and_statistics_on_dyt_sites_only(runs):
    dyt, layer = runs["dyt"], runs["layer"]
    assert dyt.norm_kind == "dyt" and layer.norm_kind == "layer"
    assert [info.name for info in dyt.layers if info.kind == "dyt"] == DYT_LAYERS
    assert {info.module_type for info in dyt.layers if info.kind == "dyt"} == {"DyT"}
    assert {"dyt_alpha", "dyt_saturation"} <= set(dyt.statistics["act"])
    assert not {"dyt_alpha", "dyt_saturation"} & set(layer.statistics["act"])
    for name in DYT_LAYERS:
        assert dyt.stat("dyt_alpha", name, "output").shape == (6,)
        assert dyt.stat("dyt_saturation", name, "input").shape == (6,)
        with pytest.raises(MissingDataError):
            dyt.stat("dyt_alpha", name, "input")
        with pytest.raises(MissingDataError):
            dyt.stat("dyt_saturation", name, "output")
    with pytest.raises(MissingDataError):
        dyt.stat("dyt_alpha", "embed")
    # γ and β are DyT's weight and bias: normviz records them like any norm's affine.
    assert dyt.module_stat("weight", "norm").shape == (6, 8)


def test_recorded_alpha_and_saturation_equal_the_module_and_a_direct_computation(tmp_path):
    model = make_model("dyt")
    dyts = {name: m for name, m in model.named_modules() if isinstance(m, DyT)}
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in dyts}

    def capture(name):
        def hook(module, args):
            seen[name].append((args[0].detach().clone(), module.alpha.detach().clone()))
        return hook

    handles = [m.register_forward_pre_hook(capture(name)) for name, m in dyts.items()]
    gen = torch.Generator().manual_seed(2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    steps, every = 7, 2
    with normviz.Recorder(model, tmp_path / "dyt.h5", every=every) as rec:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(tokens(gen)).square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    for h in handles:
        h.remove()
    run = normviz.open(tmp_path / "dyt.h5")
    assert list(run.steps) == [0, 2, 4, 6]
    for name in dyts:
        alphas = np.array([float(a) for _, a in seen[name]], dtype=np.float32)
        recorded = run.stat("dyt_alpha", name)
        # The α each recorded step's forward pass used, exactly.
        np.testing.assert_array_equal(recorded, alphas[run.steps])
        assert np.ptp(alphas) > 1e-3, "α did not train"
        assert recorded[0] == np.float32(0.5)
        direct = np.array([((x * a).abs() > 2.0).double().mean().item() for x, a in seen[name]])
        np.testing.assert_allclose(run.stat("dyt_saturation", name, "input"), direct[run.steps], rtol=1e-6, atol=0)
    saturation = np.concatenate([run.stat("dyt_saturation", n, "input") for n in dyts])
    assert saturation.max() > 0.01 and saturation.min() < 0.99, "a test that sees neither saturated nor linear values"
    # The α after the last step is the module's current value, one step later than the last row.
    assert float(dyts["norm"].alpha.detach()) != run.stat("dyt_alpha", "norm")[-1]


# --------------------------------------------------------------------------- the renderer


def test_renderer_keeps_the_contract_on_dyt_runs(runs):
    contract = RendererContract(
        normviz_dyt.RENDERER, [runs["dyt"], runs["layer"]], small=[runs["small"]], nonfinite=[runs["nonfinite"]]
    )
    contract.check_all()
    # A DyT run alone, too.
    RendererContract(normviz_dyt.RENDERER, [runs["dyt"]]).check_returns_figure()


def _line(fig, gid):
    found = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == gid]
    assert len(found) == 1, f"{gid}: {len(found)} lines"
    return found[0]


def test_renderer_draws_the_recorded_numbers_coloured_by_kind(runs):
    dyt, layer = runs["dyt"], runs["layer"]
    fig = normviz.plot([dyt, layer], "dyt")
    for name in DYT_LAYERS:
        np.testing.assert_array_equal(_line(fig, f"dyt_alpha:dyt:{name}").get_ydata(), dyt.stat("dyt_alpha", name))
        np.testing.assert_array_equal(_line(fig, f"dyt_saturation:dyt:{name}").get_ydata(),
                                      dyt.stat("dyt_saturation", name, "input"))
        for run in (dyt, layer):
            np.testing.assert_array_equal(_line(fig, f"std:{run.label}:{name}").get_ydata(), run.stat("std", name))
    # One colour per kind: the deepest layer in the kind's own colour, shallower ones lighter.
    def color(gid):
        return to_hex(_line(fig, gid).get_color())

    assert color("dyt_alpha:dyt:norm") == kind_color("dyt").lower()
    assert color("std:dyt:norm") == kind_color("dyt").lower()
    assert color("std:layer:norm") == kind_color("layer").lower()
    assert color("std:dyt:blocks.0.norm") != kind_color("dyt").lower()
    # The LayerNorm run has no α or saturation lines, only its output std.
    assert not [ln for ax in fig.axes for ln in ax.get_lines() if str(ln.get_gid()).startswith("dyt_alpha:layer")]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["dyt", "layer"]  # the runs' order
    assert "LayerNorm vs DyT" in " ".join(ax.get_title(loc="left") for ax in fig.axes)
    # Options: one layer, a step range.
    fig = normviz.plot([dyt, layer], "dyt", layers="norm", steps="2:5")
    np.testing.assert_array_equal(_line(fig, "dyt_alpha:dyt:norm").get_xdata(), [2, 3, 4])
    assert not [ln for ax in fig.axes for ln in ax.get_lines() if "blocks" in str(ln.get_gid())]


def test_renderer_names_what_is_missing(runs):
    with pytest.raises(MissingDataError, match="dyt_alpha"):
        normviz.plot([runs["layer"]], "dyt")
    with pytest.raises(MissingDataError, match="no DyT layer matches"):
        normviz.plot([runs["dyt"]], "dyt", layers="embed")


# --------------------------------------------------------------------------- the command line


def _normviz(capsys, *args):
    """Run the ``normviz`` command in this process; returns (exit code, stdout, stderr)."""
    from normviz.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_normviz_plugins_lists_the_kind_statistics_and_renderer(capsys):
    code, out, err = _normviz(capsys, "plugins", "--json")
    assert code == 0, err
    data = json.loads(out)
    renderers = {r["name"]: r for r in data["renderers"]}
    assert renderers["dyt"]["provider"] == PROVIDER
    assert renderers["dyt"]["description"]
    statistics = {s["name"]: s for s in data["statistics"]}
    for name in ("dyt_alpha", "dyt_saturation"):
        assert statistics[name]["provider"] == PROVIDER
        assert statistics[name]["default"] is True
    assert {"name": "dyt", "provider": PROVIDER} in data["norm_kinds"]
    assert {"name": "dyt", "provider": PROVIDER} in data["plugins"]
    assert "dyt" not in data["failures"]


def test_dyt_and_layernorm_models_train_and_plot(runs, tmp_path, capsys):
    for kind in ("dyt", "layer"):
        loss = runs[kind].scalar("loss")
        assert np.isfinite(loss).all() and loss[-1] < loss[0], f"{kind} did not train: {loss}"
    out = tmp_path / "figures"
    code, stdout, stderr = _normviz(capsys, "plot", str(runs["folder"]), "--out", str(out), "--format", "png")
    assert code == 0, stderr
    figure = out / f"{EXPERIMENT}-dyt.png"
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(figure) in stdout
    # The built-in figures draw DyT runs too: nothing skipped, nothing failed.
    for name in ("covariate-shift", "channels", "gradient-flow", "histograms", "loss"):
        assert (out / f"{EXPERIMENT}-{name}.png").is_file(), stderr
    # Only the renderers whose data these runs lack by design skip, each saying why: `ranks` (a
    # run of one process has no ranks to compare) and those of opt-in statistics not asked for.
    skipped = [line for line in stderr.splitlines() if "skipped" in line]
    reasons = {"ranks": "single rank", "massive": "it is opt-in", "attention": "they are opt-in",
               "bn-gap": "it is opt-in"}
    assert sorted(line.split("'")[1] for line in skipped) == sorted(reasons)
    for line in skipped:
        assert reasons[line.split("'")[1]] in line, line
    assert "failed" not in stderr


def test_channels_figure_draws_group_boxes_only_for_kinds_with_groups(runs):
    # DyT normalizes no group: its summaries are empty, so only the LayerNorm run gets boxes.
    fig = normviz.plot([runs["dyt"], runs["layer"]], "channels")
    group_axes = [ax for ax in fig.axes if ax.get_title(loc="left").startswith("group ")]
    assert len(group_axes) == 2
    for ax in group_axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["layer"]
        assert len(ax.patches) == 2  # the input and the output box
