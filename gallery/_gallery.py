"""What the gallery scripts share: their settings, recording built-in runs, saving the figure.

Each script still runs on its own (`python gallery/plot_x.py`): its folder is on
``sys.path`` then, and ``make_all.py`` puts it there too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import normviz
from normviz.experiments import EXPERIMENTS, run_experiment
from normviz.plot.save import save_all, save_figure
from normviz.plot.style import style_context


def quick() -> bool:
    """``NORMVIZ_GALLERY_QUICK=1``: a few steps only, for CI."""
    return os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"


def out_dir() -> Path:
    """``NORMVIZ_GALLERY_OUT``, default ``gallery/images/``."""
    return Path(os.environ.get("NORMVIZ_GALLERY_OUT") or Path(__file__).resolve().parent / "images")


def draw_experiment(
    script: str,
    experiment: str,
    kinds: Sequence[str],
    renderer: str,
    *,
    style: str,
    dpi: int,
    steps: int | None,
    every: int = 1,
    options: Callable[[list[Any]], dict[str, Any]] | dict[str, Any] | None = None,
) -> Path:
    """Record *experiment* once per norm kind (seed 0, CPU), draw *renderer*, write ``<script stem>.png``.

    *options* are the renderer's options, or a function of the opened runs giving them.
    """
    return draw_variants(script, experiment, [(kind, {}, None) for kind in kinds], renderer, style=style, dpi=dpi,
                         steps=steps, every=every, options=options)


def draw_variants(
    script: str,
    experiment: str,
    variants: Sequence[tuple[str, dict[str, Any], str | None]],
    renderer: str,
    *,
    style: str,
    dpi: int,
    steps: int | None,
    every: int | Sequence[int] = 1,
    options: Callable[[list[Any]], dict[str, Any]] | dict[str, Any] | None = None,
) -> Path:
    """:func:`draw_experiment` for variants of one experiment: each ``(norm kind, builder options,
    label or None)`` is one run (the label tells apart runs that share a kind), recorded every
    ``every`` steps (or ``every[i]`` for the i-th)."""
    from normviz.experiments.papers import paper_experiment

    # Small models train fastest on one thread, and the numbers do not depend on the core count.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i, (kind, builder, label) in enumerate(variants):
            exp = paper_experiment(experiment, **builder) if builder else EXPERIMENTS[experiment]
            path = Path(tmp) / f"{experiment}-{kind}-{i}.h5"
            run_experiment(exp, kind, path, steps=steps, every=every if isinstance(every, int) else every[i], seed=0,
                           device="cpu",
                           recorder_options={"label": label} if label else None)
            runs.append(normviz.open(path))
        extra = options(runs) if callable(options) else dict(options or {})
        fig = normviz.plot(runs, renderer, style=style, **extra)
        with style_context(style):
            out = save_figure(fig, out_dir() / f"{Path(script).stem}.png", "png", dpi=dpi)
        for run in runs:
            run.close()
    print(out)
    return out


def draw_run_files(script: str, files: Sequence[Path], renderer: str, *, style: str) -> Path:
    """Open run files (the rank files of one run merged into one), draw *renderer* in *style*
    and write ``<script stem>.png``."""
    from normviz.merge import merge_ranks

    runs = merge_ranks([normviz.open(p) for p in files])
    try:
        out_dir().mkdir(parents=True, exist_ok=True)
        with style_context(style):
            fig = normviz.plot(runs, renderer, style=style)
            written = save_all(fig, out_dir() / Path(script).stem, ("png",))
    finally:
        for run in runs:
            run.close()
    print(*written, sep="\n")
    return written[0]
