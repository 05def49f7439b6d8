"""The table of built-in experiments: what ``normviz record`` can run and what it runs by default."""

from __future__ import annotations

from collections.abc import Iterator

from normviz.experiments.base import Experiment
from normviz.experiments.deeper import DEEPER_EXPERIMENTS
from normviz.experiments.papers import PAPER_EXPERIMENTS
from normviz.experiments.seeds import SEED_EXPERIMENTS

__all__ = ["DEFAULT_EXPERIMENTS", "EXPERIMENTS", "iter_runs"]

#: Every built-in experiment by name: the seed's simulations, the deeper models, then the
#: paper reproductions (named, not default).
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (*SEED_EXPERIMENTS, *DEEPER_EXPERIMENTS)}
EXPERIMENTS.update(PAPER_EXPERIMENTS)

#: What ``normviz record`` runs with no option: the seed notebook's two models.
DEFAULT_EXPERIMENTS: tuple[str, ...] = ("seed-mlp", "seed-cnn")


def iter_runs(names: list[str], kinds: list[str] | None) -> Iterator[tuple[Experiment, str]]:
    """The (experiment, kind) pairs to run: every kind that applies, filtered by *kinds*."""
    for name in names:
        exp = EXPERIMENTS[name]
        for kind in exp.kinds:
            if kinds is None or kind in kinds:
                yield exp, kind
