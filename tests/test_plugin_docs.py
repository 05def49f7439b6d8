"""docs/plugins.md works as written: its example package builds, installs, records and draws.

The example package is written from the doc's own code blocks (each one preceded by a line
``<!-- file: PATH -->``), installed with pip into a temporary target folder, and used only in
subprocesses that have that folder on PYTHONPATH: its entry point never reaches the plugin
hosts of this test session.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
PACKAGE = "normviz-example"
DIST = "normviz-example 0.1.0"
RENDERER = "channel-spread"
STATISTIC = "abs_mean"

FILE_BLOCK = re.compile(r"^<!-- file: (?P<path>\S+) -->\n```[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
CODE_BLOCK = re.compile(r"^```(?P<lang>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_files() -> dict[str, str]:
    """The files of the example package: path -> contents, from the doc's marked code blocks."""
    files: dict[str, str] = {}
    for match in FILE_BLOCK.finditer(doc_text()):
        path = match["path"]
        assert path not in files, f"docs/plugins.md gives {path} twice"
        files[path] = match["body"]
    return files


def python_blocks() -> list[str]:
    return [m["body"] for m in CODE_BLOCK.finditer(doc_text()) if m["lang"].strip() == "python"]


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def check(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | dict[str, str]]:
    """The doc's example package written out and pip-installed into ``root/site``."""
    pytest.importorskip("setuptools", reason="building the example needs setuptools (a dependency of torch)")
    root = tmp_path_factory.mktemp("plugin-docs")
    for rel, body in doc_files().items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
    site = root / "site"
    # Offline and into a folder of its own: no index, no dependencies (normviz, torch, ...
    # are already installed), the environment's own setuptools as the build backend.
    proc = run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--no-cache-dir", "--disable-pip-version-check", "--target", str(site), str(root / PACKAGE)],
        dict(os.environ), root, timeout=300,
    )
    check(proc, "pip install of the example package")
    env = {k: v for k, v in os.environ.items() if k != "NORMVIZ_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["MPLBACKEND"] = "Agg"
    return {"root": root, "site": site, "env": env}


RECORD = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    import normviz

    out = {}
    for kind, norm in (("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), norm(16), nn.ReLU(), nn.Linear(16, 16), norm(16), nn.Linear(16, 3))
        # The reference: mean |x| in float64, from forward hooks of our own on the same tensors.
        reference = {}

        def hook(name):
            def fn(module, args, output):
                reference.setdefault(f"{name}|input", []).append(args[0].detach().double().abs().mean().item())
                reference.setdefault(f"{name}|output", []).append(output.detach().double().abs().mean().item())
            return fn

        for name in ("0", "1", "4"):
            model[int(name)].register_forward_hook(hook(name))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(1)
        path = f"{sys.argv[1]}/{kind}.h5"
        with normviz.Recorder(model, path, experiment="docs", statistics=["abs_mean"]) as rec:
            for _ in range(5):
                x = torch.randn(24, 6, generator=gen) * 2 + 1
                loss = (model(x) - 1).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step(loss=loss)
        run = normviz.open(path)
        recorded = {}
        for key in reference:
            layer, role = key.split("|")
            if any(s.layer == layer and s.role == role for s in run.sites):
                values = run.stat("abs_mean", layer, role)
                recorded[key] = {"shape": list(values.shape), "values": values.tolist()}
        out[kind] = {"steps": run.steps.tolist(), "statistics": run.statistics["act"],
                     "reference": reference, "recorded": recorded}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def recorded(example: dict) -> dict:
    """Two runs (BatchNorm, LayerNorm) recorded with the example statistic, and references."""
    runs = example["root"] / "runs"
    runs.mkdir()
    proc = run([sys.executable, "-c", RECORD, str(runs)], example["env"], example["root"])
    return {"dir": runs, "data": json.loads(check(proc, "recording with the example statistic"))}


# --------------------------------------------------------------------------- the doc itself


def test_doc_holds_the_whole_example_package() -> None:
    files = doc_files()
    for rel in ("pyproject.toml", "normviz_example/__init__.py", "normviz_example/statistic.py",
                "normviz_example/render.py", "tests/test_example.py"):
        assert f"{PACKAGE}/{rel}" in files, f"docs/plugins.md has no block for {PACKAGE}/{rel}"
    pyproject = files[f"{PACKAGE}/pyproject.toml"]
    assert "[project.entry-points.normviz]" in pyproject and 'example = "normviz_example"' in pyproject


def test_every_python_block_of_the_doc_is_valid_python() -> None:
    blocks = python_blocks()
    assert len(blocks) > 5
    for i, body in enumerate(blocks):
        try:
            compile(body, f"docs/plugins.md python block {i}", "exec")
        except SyntaxError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"docs/plugins.md python block {i} does not parse: {exc}\n{body}")


def test_public_import_paths_exist(example: dict) -> None:
    """Every import in the doc's code, and every name of its "Public import paths" table, resolves."""
    statements = []
    for body in python_blocks():
        for node in ast.walk(ast.parse(body)):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "level", 0) == 0:
                statements.append(ast.unparse(node))
    section = doc_text().split("## Public import paths", 1)[1].split("\n## ", 1)[0]
    table: list[tuple[str, list[str]]] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`normviz(\.\w+)*`", cells[0]):
            table.append((cells[0].strip("`"), re.findall(r"`([A-Za-z_]\w*)`", cells[1])))
    assert len(table) >= 10 and all(names for _, names in table), table
    script = textwrap.dedent(
        f"""
        import importlib, json
        missing = []
        for statement in {sorted(set(statements))!r}:
            try:
                exec(statement, {{}})
            except Exception as exc:
                missing.append(f"{{statement}}: {{exc}}")
        for module, names in {table!r}:
            mod = importlib.import_module(module)
            missing += [f"{{module}}.{{n}}" for n in names if not hasattr(mod, n)]
        print(json.dumps(missing))
        """
    )
    proc = run([sys.executable, "-c", script], example["env"], example["root"])
    assert json.loads(check(proc, "the doc's imports")) == []


def test_plugin_api_imports_from_normviz_without_torch_or_matplotlib() -> None:
    import normviz
    from normviz import NormSpec, Renderer, Site, Statistic, hookimpl  # noqa: F401

    assert {"Renderer", "Statistic", "NormSpec", "Site", "hookimpl"} <= set(normviz.__all__)
    script = textwrap.dedent(
        """
        import json, sys
        import normviz
        after_import = sorted(m for m in ("torch", "matplotlib", "h5py") if m in sys.modules)
        from normviz import NormSpec, Renderer, Site, Statistic, hookimpl
        import normviz.datatypes, normviz.hookspecs
        same = (Renderer is normviz.datatypes.Renderer and Statistic is normviz.datatypes.Statistic
                and NormSpec is normviz.datatypes.NormSpec and Site is normviz.datatypes.Site
                and hookimpl is normviz.hookspecs.hookimpl)
        after_api = sorted(m for m in ("torch", "matplotlib", "h5py") if m in sys.modules)
        print(json.dumps({"after_import": after_import, "after_api": after_api, "same": same}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    data = json.loads(check(proc, "import normviz"))
    assert data == {"after_import": [], "after_api": [], "same": True}


# --------------------------------------------------------------------------- the example, installed


def test_normviz_plugins_lists_the_example(example: dict) -> None:
    proc = run([sys.executable, "-m", "normviz", "plugins", "--json"], example["env"], example["root"])
    data = json.loads(check(proc, "normviz plugins --json"))
    renderers = {r["name"]: r for r in data["renderers"]}
    statistics = {s["name"]: s for s in data["statistics"]}
    assert renderers[RENDERER]["provider"] == DIST
    assert statistics[STATISTIC]["provider"] == DIST and statistics[STATISTIC]["default"] is False
    assert {"name": "example", "provider": DIST} in data["plugins"]
    assert "example" not in data["failures"]


def test_example_statistic_equals_a_float64_reference(recorded: dict) -> None:
    for kind, data in recorded["data"].items():
        assert STATISTIC in data["statistics"]
        n = len(data["steps"])
        assert n == 5
        # Norm layers are recorded on both sides, the Linear layer on its output.
        assert {"0|output", "1|input", "1|output", "4|input", "4|output"} <= set(data["recorded"]), kind
        for key, got in data["recorded"].items():
            assert got["shape"] == [n], f"{kind} {key}: a one-value statistic reads back as [steps]"
            expected = data["reference"][key]
            assert len(expected) == n
            for step, (value, ref) in enumerate(zip(got["values"], expected)):
                assert abs(value - ref) <= 1e-5 * abs(ref), f"{kind} {key} step {step}: {value} != {ref}"


def test_normviz_plot_draws_with_the_example_renderer(example: dict, recorded: dict) -> None:
    out = example["root"] / "figures"
    proc = run(
        [sys.executable, "-m", "normviz", "plot", str(recorded["dir"]), "--renderer", RENDERER,
         "--out", str(out), "--format", "png"],
        example["env"], example["root"],
    )
    check(proc, "normviz plot --renderer channel-spread")
    png = out / f"docs-{RENDERER}.png"  # <experiment>-<renderer>.png
    assert png.is_file(), sorted(p.name for p in out.iterdir())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert str(png) in proc.stdout


def test_the_example_packages_own_tests_pass(example: dict) -> None:
    # Run from the temporary root, so normviz_example is imported from the installed copy.
    tests = example["root"] / PACKAGE / "tests"
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
               example["env"], example["root"], timeout=300)
    check(proc, "the example package's tests")


def test_the_example_did_not_leak_into_this_session(example: dict) -> None:
    from normviz.plugins import get_plugin_host

    host = get_plugin_host()
    assert RENDERER not in host.renderers() and STATISTIC not in host.statistics()
