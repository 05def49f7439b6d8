"""Recording named variants of one experiment for a test module: one thread, seed 0, the runs opened."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

import normviz
from normviz.experiments import papers, run_experiment


def record_variants(folder: Any, experiment: str, variants: Mapping[str, tuple[str, dict[str, Any]]], *,
                    every: int | Mapping[str, int], steps: int | None = None) -> Iterator[dict[str, normviz.Run]]:
    """Yield ``{name: opened run}`` of each variant ``name -> (norm kind, builder options)``, recorded
    into ``folder`` with ``label=name`` every ``every`` steps (or ``every[name]``); the models are
    tiny, so torch runs on one thread meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs: dict[str, normviz.Run] = {}
    try:
        for name, (kind, options) in variants.items():
            exp = papers.paper_experiment(experiment, steps=steps, **options)
            run_experiment(exp, kind, folder / f"{name}.h5", every=every if isinstance(every, int) else every[name],
                           seed=0, device="cpu",
                           recorder_options={"label": name})
            runs[name] = normviz.open(folder / f"{name}.h5")
        yield runs
    finally:
        torch.set_num_threads(threads)
        for run in runs.values():
            run.close()
