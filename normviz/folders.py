"""Where runs and figures go on disk: ``./normviz-runs/<YYYYmmdd-HHMMSS>/`` (a new folder per
recording, never reused) and ``./normviz-figures/<same name>/``, and which run files a
command line names (files, folders of them, or by default the newest run folder)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from normviz.errors import NormvizError
from normviz.store.series import is_series_file

RUNS_DIR = Path("normviz-runs")
FIGURES_DIR = Path("normviz-figures")


def new_run_folder(base: Path) -> Path:
    """A new ``<base>/<YYYYmmdd-HHMMSS>[-N]/`` folder; never reuses one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        folder = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise NormvizError(f"{base}: cannot create a new run folder")


def collect_runs(args: Sequence[str]) -> tuple[list[Path], str]:
    """Run files named directly or found in folders; default: the newest run folder."""
    args = run_args(args)
    paths: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            # A run's eval series are not runs of their own here: renderers open them through the run.
            found = sorted(q for q in p.glob("*.h5") if not is_series_file(q))
            if not found:
                raise NormvizError(f"{p}: folder holds no run files (*.h5)")
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        else:
            raise NormvizError(f"{p}: no such file or folder")
    first = Path(args[0])
    name = first.name if first.is_dir() else first.stem
    return paths, name


def run_args(args: Sequence[str]) -> list[str]:
    """The files and folders to plot: *args*, or the newest run folder when none is named."""
    if not args:
        if not RUNS_DIR.is_dir():
            raise NormvizError(f"no runs: {RUNS_DIR}/ does not exist (run `normviz record` first, or name runs)")
        folders = sorted((p for p in RUNS_DIR.iterdir() if p.is_dir() and any(p.glob("*.h5"))), key=lambda p: p.name)
        if not folders:
            raise NormvizError(f"no runs: {RUNS_DIR}/ holds no run folder")
        return [str(folders[-1])]
    return list(args)


def writable(folder: Path) -> bool:
    """Whether this process may write into ``folder``."""
    return os.access(folder, os.W_OK)
