"""Plugin loading: built-ins through the same door, entry points, failures reported by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import normviz
from normviz.datatypes import Renderer
from normviz.errors import PluginError
from normviz.hookspecs import hookimpl
from normviz.plugins import DEFAULT_PLUGINS, get_plugin_host


def _fake_dist(root, name, module, source):
    """A distribution on sys.path with one entry point in the normviz group."""
    info = root / f"{name}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[normviz]\n{name} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


BROKEN_IMPORT = "raise ImportError('this plugin is broken')\n"
RAISING_RENDERER = """
from normviz.datatypes import Renderer
from normviz.hookspecs import hookimpl

def draw(runs, fig, **options):
    raise ValueError("boom")

@hookimpl
def normviz_register_renderers(register):
    register(Renderer("explodes", draw, "always raises"))
"""


@pytest.fixture
def plugin_env(tmp_path):
    site = tmp_path / "site"
    _fake_dist(site, "broken-plugin", "broken_plugin_mod", BROKEN_IMPORT)
    _fake_dist(site, "raising-plugin", "raising_plugin_mod", RAISING_RENDERER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "MPLBACKEND": "Agg"}
    return env


def test_builtins_are_registered_by_name():
    host = get_plugin_host(entrypoints=False)
    assert set(DEFAULT_PLUGINS) <= {name for name, _ in host.pm.list_name_plugin()}
    assert all(host.sources[name] == "built-in" for name in DEFAULT_PLUGINS)
    assert {"covariate-shift", "channels", "gradient-flow", "histograms", "loss"} <= set(host.renderers())


def test_blocking_a_builtin():
    host = get_plugin_host(entrypoints=False, blocked=["normviz.default_plugins.loss"])
    assert "loss" not in host.renderers()


def test_duplicate_renderer_names_are_an_error_naming_both():
    class Dup:
        @hookimpl
        def normviz_register_renderers(self, register):
            register(Renderer("loss", lambda runs, fig: fig, "a second loss"))

    host = get_plugin_host(entrypoints=False, extra=[Dup()])
    with pytest.raises(PluginError, match="registered twice"):
        host.renderers()


def test_plugin_that_fails_to_import_is_reported_and_the_rest_load(plugin_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "normviz", "plugins", "--json"], capture_output=True, text=True, env=plugin_env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "broken-plugin" in data["failures"] and "broken" in data["failures"]["broken-plugin"]
    renderers = {r["name"]: r["provider"] for r in data["renderers"]}
    assert renderers["explodes"] == "raising-plugin 1.2.3"
    assert renderers["loss"] == "built-in"
    hidden = subprocess.run(
        [sys.executable, "-m", "normviz", "plugins", "--json"], capture_output=True, text=True,
        env={**plugin_env, "NORMVIZ_LOAD_PLUGINS": ""}, cwd=tmp_path,
    )
    assert "explodes" not in {r["name"] for r in json.loads(hidden.stdout)["renderers"]}


def test_renderer_that_raises_does_not_stop_the_others(plugin_env, tmp_path):
    path = tmp_path / "r.h5"
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with normviz.Recorder(model, path) as rec:
        for _ in range(3):
            loss = model(torch.randn(5, 3)).square().mean()
            loss.backward()
            rec.step(loss=loss)
    proc = subprocess.run(
        [sys.executable, "-m", "normviz", "plot", str(path), "--out", "figs", "--format", "png", "-q"],
        capture_output=True, text=True, env=plugin_env, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "explodes" in proc.stderr and "raising-plugin" in proc.stderr and "boom" in proc.stderr
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert any("loss" in n for n in written) and any("gradient-flow" in n for n in written)
    assert not any("explodes" in n for n in written)
    assert not any(n.startswith(".") or n.endswith(".tmp") for n in written)  # nothing half-written


def test_the_only_renderer_asked_for_raising_is_reported_as_such(plugin_env, tmp_path):
    """Not "1 renderer(s) failed; the other figures were written" when no other figure was asked for."""
    path = tmp_path / "r.h5"
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with normviz.Recorder(model, path) as rec:
        loss = model(torch.randn(5, 3)).square().mean()
        loss.backward()
        rec.step(loss=loss)
    proc = subprocess.run(
        [sys.executable, "-m", "normviz", "plot", str(path), "--out", "figs", "--renderer", "explodes"],
        capture_output=True, text=True, env=plugin_env, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "1 renderer failed (explodes); no figure was written" in proc.stderr
    assert "other figures" not in proc.stderr


def test_plugin_named_explicitly_by_module(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_mod.py").write_text(RAISING_RENDERER.replace("explodes", "mine"))
    monkeypatch.syspath_prepend(str(tmp_path))
    host = get_plugin_host(entrypoints=False, extra=["my_plugin_mod"])
    assert "mine" in host.renderers()
    with pytest.raises(PluginError, match="cannot import"):
        get_plugin_host(entrypoints=False, extra=["no_such_module_here"])


def test_norm_kinds_are_registered_descriptors_the_built_ins_too():
    from normviz.datatypes import NormKind
    from normviz.default_plugins.norm_kinds import BUILTIN_KINDS
    from normviz.plot.palette import KIND_COLORS, KIND_ORDER

    host = get_plugin_host(entrypoints=False)
    kinds = host.norm_kinds()
    assert list(kinds) == list(KIND_ORDER) == ["batch", "layer", "instance", "group", "rms", "none"]
    assert all(host.owner("norm kind", k) == "built-in" for k in kinds)
    assert {k: v.color for k, v in kinds.items()} == KIND_COLORS
    assert kinds["batch"] == BUILTIN_KINDS[0] and kinds["batch"].label == "BatchNorm" and kinds["batch"].per_channel
    blocked = get_plugin_host(entrypoints=False, blocked=["normviz.default_plugins.norm_kinds"])
    assert blocked.norm_kinds() == {}
    assert blocked.classify("0", nn.BatchNorm1d(3)) is None  # the same plugin classifies

    class Plugin:
        @hookimpl
        def normviz_register_norm_kinds(self, register):
            register(NormKind("wn", "WeightNorm", "none: the weights are normalized", color="#56B4E9"))

    host = get_plugin_host(entrypoints=False, extra=[Plugin()])
    assert host.norm_kinds()["wn"].label == "WeightNorm"
    assert set(host.norm_kinds()) == {*KIND_ORDER, "wn"} and host.owner("norm kind", "wn") != "built-in"


def test_a_plugin_kind_is_named_and_coloured_by_its_descriptor(monkeypatch):
    from normviz import plugins as plugins_mod
    from normviz.datatypes import NormKind
    from normviz.plot import looks, palette

    kinds = {"wn": NormKind("wn", "WeightNorm", "", color="#123456", linestyle=(0, (1, 1)), marker="P")}
    monkeypatch.setattr(plugins_mod, "registered_norm_kinds", lambda: kinds)
    assert looks.kind_name("wn") == "WeightNorm"
    assert palette.kind_color("wn") == "#123456" and palette.kind_marker("wn") == "P"
    assert palette.kind_linestyle("wn") == (0, (1, 1))
    assert palette.kind_color("batch") == "#0072B2"  # the built-ins need no host
    assert looks.kind_name("unheard-of") == "unheard-of"
