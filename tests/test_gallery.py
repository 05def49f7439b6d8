"""The gallery: every ``gallery/plot_*.py`` writes its figure on small settings, and the example
user script runs unmodified.

The scripts run through ``gallery/make_all.py`` in one subprocess (torch and matplotlib are
imported once), with ``NORMVIZ_GALLERY_QUICK=1`` and ``NORMVIZ_GALLERY_OUT`` set as CI sets them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

GALLERY = Path(__file__).resolve().parents[1] / "gallery"
SCRIPTS = sorted(GALLERY.glob("plot_*.py"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMVIZ_GALLERY_")}
    return {**env, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", **extra}


def _imports(script: Path) -> set[str]:
    tree = ast.parse(script.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.fixture(scope="module")
def quick_gallery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("gallery")
    proc = subprocess.run(
        [sys.executable, str(GALLERY / "make_all.py")],
        check=False,
        env=_env(NORMVIZ_GALLERY_QUICK="1", NORMVIZ_GALLERY_OUT=str(out)),
        cwd=out,  # nothing may depend on the working directory
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out, proc


def test_gallery_has_scripts() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"plot_seed_mlp_loss.py", "plot_seed_cnn_channels.py", "plot_user_script.py"} <= names


def test_make_all_succeeds(quick_gallery: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, proc = quick_gallery
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{len(SCRIPTS)} figures in" in proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_writes_png(script: Path, quick_gallery: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_gallery
    figure = out / f"{script.stem}.png"
    assert figure.is_file(), f"{script.name} wrote no {figure.name}\n{proc.stderr[-3000:]}"
    data = figure.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_has_title(script: Path) -> None:
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    assert doc, f"{script.name} has no module docstring"
    assert doc.splitlines()[0].strip(), f"{script.name}: the docstring's first line is the figure's title"


def test_train_mlp_runs_unmodified(tmp_path: Path) -> None:
    script = GALLERY / "train_mlp.py"
    assert "normviz" not in _imports(script), "train_mlp.py must stay a plain PyTorch script"
    proc = subprocess.run(
        [sys.executable, str(script), "--epochs", "1", "--samples", "256"],
        check=False,
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1: train loss" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # a plain script: it writes nothing


def test_train_mlp_records_without_code_change(tmp_path: Path) -> None:
    import normviz

    path = tmp_path / "train_mlp.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "normviz", "record", str(GALLERY / "train_mlp.py"), "--out", str(path),
         "--", "--epochs", "1", "--samples", "256"],
        check=False,
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1: train loss" in proc.stdout
    with normviz.open(path) as run:
        assert run.norm_kind == "batch"
        assert [layer.name for layer in run.norm_layers] == ["1", "4"]
        assert len(run.scalar("loss")) == 4  # 256 samples in batches of 64
