"""Every archived schema version (tests/data/schema-*) stays readable, and reads as it did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import normviz
from normviz.store import schema

DATA = Path(__file__).resolve().parents[1] / "data"
VERSIONS = sorted(p.name.removeprefix("schema-") for p in DATA.glob("schema-*"))


def _same(got, want):
    want = np.array([np.nan if v is None else v for v in np.ravel(want)], dtype=np.float64).reshape(np.shape(want))
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float64), want)


def test_every_minor_version_up_to_today_is_archived():
    assert "1.0" in VERSIONS
    major, minor = (int(x) for x in schema.SCHEMA_VERSION.split("."))
    assert {f"{major}.{m}" for m in range(minor + 1)} <= set(VERSIONS)


@pytest.mark.parametrize("version", VERSIONS)
def test_archived_run_reads_as_it_was_written(version):
    folder = DATA / f"schema-{version}"
    want = json.loads((folder / "expected.json").read_text())
    with normviz.open(folder / "cnn-mixed.h5") as run:
        assert run.schema_version == want["schema_version"] == version
        assert [[l.name, l.kind, l.module_type, l.channels, l.calls] for l in run.layers] == want["layers"]
        _same(run.steps, want["steps"])
        _same(run.scalar_steps, want["scalar_steps"])
        _same(run.scalar("loss"), want["loss"])
        _same(run.scalar("note"), want["note"])
        assert [int(i) for i in run.channel_index("1", "input")] == want["channel_index_1_input"]
        _same(run.stat("channel_mean", "1", "input"), want["channel_mean_1_input"])
        _same(run.stat("percentiles", "4", "output"), want["percentiles_4_output"])
        _same(run.stat("hist", "9", "input"), want["hist_9_input"])
        _same(run.stat("group_scale", "4", "input"), want["group_scale_4_input"])
        _same(run.module_stat("running_var", "1"), want["running_var_1"])
        names, grad_norm = run.grad("grad_norm")
        assert names == want["grad_names"]
        _same(grad_norm, want["grad_norm"])
        _same(run.grad("update_ratio")[1], want["update_ratio"])
        assert run.meta.get("user") == want["meta_user"]
        if "eval_steps" in want:  # schema 1.4: an eval series beside the run
            ev = run.eval()
            _same(ev.steps, want["eval_steps"])
            _same(ev.stat("channel_mean", "1", "output"), want["eval_channel_mean_1_output"])
            assert [ev.meta.get("series"), ev.meta.get("series_of")] == want["eval_meta_series"]


@pytest.mark.parametrize("version", VERSIONS)
def test_archived_run_is_drawn_by_every_builtin_renderer(version, tmp_path):
    from normviz.plot.api import render_to_files

    path = DATA / f"schema-{version}" / "cnn-mixed.h5"
    report = render_to_files([path], tmp_path, formats="png",
                             renderers=["channels", "covariate-shift", "gradient-flow", "histograms", "loss"])
    assert not report.failures and not report.skipped
    assert len(report.written) == 5
