"""normviz.plot() and render_to_files(): figures, files, failure isolation, reproducible bytes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import matplotlib
import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from renderer_runs import by_kind, shared_runs

import normviz
from normviz.datatypes import Renderer
from normviz.errors import MissingDataError, UsageError
from normviz.hookspecs import hookimpl
from normviz.plot.api import figure_name, group_runs, parse_steps, plot, render_to_files
from normviz.plot.style import figure_width
from normviz.plugins import get_plugin_host


@pytest.fixture(scope="module")
def contract_runs(tmp_path_factory):
    return shared_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def kind_runs(contract_runs):
    return by_kind(contract_runs)


def test_plot_returns_a_figure_outside_pyplot(kind_runs):
    before_figs, before_rc = plt.get_fignums(), dict(matplotlib.rcParams.copy())
    fig = normviz.plot([kind_runs["batch"].path, kind_runs["none"]], "loss", style="paper-wide")
    assert isinstance(fig, Figure)
    assert fig.get_figwidth() == pytest.approx(figure_width("paper-wide"))
    assert plt.get_fignums() == before_figs and dict(matplotlib.rcParams.copy()) == before_rc


def test_plot_rejects_unknown_names(kind_runs):
    with pytest.raises(UsageError, match="unknown renderer 'nope'.*loss"):
        plot(kind_runs["batch"], "nope")
    with pytest.raises(UsageError, match="unknown style"):
        plot(kind_runs["batch"], "loss", style="poster")


def test_parse_steps():
    assert parse_steps("10:20") == slice(10, 20)
    assert parse_steps(":20") == slice(None, 20)
    assert parse_steps("5:") == slice(5, None)
    assert parse_steps("7") == slice(7, 8)
    assert parse_steps(None) is None
    for bad in ("a:b", "1:2:3", "-1:4", "5:5"):
        with pytest.raises(UsageError, match="--steps"):
            parse_steps(bad)


def test_steps_outside_the_run_is_missing_data(kind_runs):
    with pytest.raises(MissingDataError, match="no recorded step between steps 100:200"):
        plot(kind_runs["batch"], "histograms", steps="100:200")


def test_figure_names_are_safe():
    assert figure_name("../../etc/passwd") == "etc_passwd"
    assert figure_name("a/b\\c d") == "a_b_c_d"
    assert figure_name("..") == "run"
    assert figure_name("a..b") == "a_b"
    assert figure_name("seed-cnn") == "seed-cnn"


def test_runs_are_grouped_by_experiment(kind_runs, contract_runs):
    groups = group_runs([kind_runs["none"], kind_runs["batch"], *contract_runs.small])
    assert list(groups) == ["contract", "small"]
    assert [r.norm_kind for r in groups["contract"]] == ["batch", "none"]  # kind order, none last


class Broken:
    """A plugin whose renderers raise or lack data."""

    @hookimpl
    def normviz_register_renderers(self, register):
        def boom(runs, fig, **options):
            raise RuntimeError("kaboom\nsecond line")

        def empty(runs, fig, **options):
            raise MissingDataError("needs 'dyt_alpha'")

        register(Renderer("boom", boom, "raises"))
        register(Renderer("empty", empty, "lacks data"))


def test_render_to_files_isolates_a_failing_renderer(kind_runs, tmp_path):
    host = get_plugin_host(entrypoints=False, extra=[Broken()])
    calls = []
    report = render_to_files(
        [kind_runs["batch"], kind_runs["layer"]], tmp_path / "figs", renderers=["boom", "loss", "empty"],
        formats=("png", "svg"), host=host, progress=calls.append,
    )
    assert sorted(p.name for p in report.written) == ["contract-loss.png", "contract-loss.svg"]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["contract-loss.png", "contract-loss.svg"]
    assert list(report.failures) == ["boom"]
    message = report.failures["boom"]
    assert "'boom'" in message and "Broken" in message and "kaboom" in message and "\n" not in message
    assert "dyt_alpha" in report.skipped["empty"]
    assert calls == [1, 1, 1]


def test_render_to_files_rejects_bad_usage_before_drawing(kind_runs, tmp_path):
    for kwargs in ({"renderers": ["nope"]}, {"formats": "png,gif"}, {"style": "poster"}, {"steps": "x"}):
        with pytest.raises(UsageError):
            render_to_files([kind_runs["batch"]], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


DRAW = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import normviz
    from normviz.plot.api import render_to_files
    runs = [normviz.open(p) for p in sys.argv[2:]]
    render_to_files(runs, Path(sys.argv[1]), renderers=["channels"], formats=("png", "pdf", "svg"))
    """
)


def test_the_same_runs_give_byte_identical_files(kind_runs, tmp_path):
    runs = [kind_runs["batch"], kind_runs["group"]]
    first = render_to_files(runs, tmp_path / "a", renderers=["channels", "gradient-flow"],
                            formats=("png", "pdf", "svg"))
    render_to_files(runs, tmp_path / "b", renderers=["channels", "gradient-flow"], formats=("png", "pdf", "svg"))
    # and in a fresh process, as two invocations of `normviz plot` would
    subprocess.run([sys.executable, "-c", DRAW, str(tmp_path / "c"), *(str(r.path) for r in runs)], check=True,
                   env={"MPLBACKEND": "Agg", "PATH": ""})
    assert len(first.written) == 6
    for path in first.written:
        data = path.read_bytes()
        assert data == (tmp_path / "b" / path.name).read_bytes(), path.name
        if "channels" in path.name:
            assert data == (tmp_path / "c" / path.name).read_bytes(), path.name


def test_runs_sharing_a_label_are_named_by_their_files(contract_runs, tmp_path):
    """Item 8: five recordings of one script give figures named after their files, not label-2 … label-5."""
    import shutil

    small = contract_runs.small[0]
    paths = []
    for folder, name in (("a", "lr0.1"), ("a", "lr0.01"), ("b", "lr0.1")):
        (tmp_path / folder).mkdir(exist_ok=True)
        paths.append(shutil.copy(small.path, tmp_path / folder / f"{name}.h5"))
    runs = [normviz.open(p) for p in paths]
    try:
        assert {r.label for r in runs} == {"small"}
        assert sorted(group_runs(runs)) == ["a-lr0.1", "b-lr0.1", "lr0.01"]
        assert list(group_runs(runs[1:2])) == ["small"]  # a label of its own names its group
    finally:
        for run in runs:
            run.close()


def test_an_empty_figure_is_not_written(kind_runs, tmp_path):
    """Item 3: a renderer that draws only empty axes is skipped with a reason, not written."""
    from normviz.plot.api import drew_data

    def draw(runs, fig, **options):
        ax = fig.subplots()
        ax.axhline(1.0)  # a reference line is no data
        ax.plot([0, 1], [float("nan")] * 2, gid="x")
        return fig

    class Empty:
        @hookimpl
        def normviz_register_renderers(self, register):
            register(Renderer("empty", draw))

    host = get_plugin_host(entrypoints=False, extra=[Empty()])
    report = render_to_files([kind_runs["batch"]], tmp_path, renderers=["empty", "loss"], formats="png", host=host)
    assert [p.name for p in report.written] == ["contract-loss.png"]
    assert "drew no data" in report.skipped["empty"]
    fig = Figure()
    fig.subplots().plot([0, 1], [0, 1], gid="y")
    assert drew_data(fig)


def test_a_selection_that_matches_nothing_is_refused_before_drawing(kind_runs, tmp_path):
    with pytest.raises(UsageError, match="--layers 'nosuch\\*' matches no layer"):
        render_to_files([kind_runs["batch"]], tmp_path / "a", layers="nosuch*")
    with pytest.raises(UsageError, match="--steps 100:200 selects no step.*training steps 0..3"):
        render_to_files([kind_runs["batch"]], tmp_path / "b", steps="100:200")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
