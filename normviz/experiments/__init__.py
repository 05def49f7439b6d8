"""Built-in experiments: the seed notebook's simulations and deeper models, one run per norm kind.

``normviz record`` with no argument runs :data:`DEFAULT_EXPERIMENTS`; the others are
named with ``--experiment``. Each experiment trains a small model on synthetic data
with fixed seeds and records it with :class:`normviz.Recorder`.
"""

from __future__ import annotations

from normviz.experiments.registry import DEFAULT_EXPERIMENTS, EXPERIMENTS, Experiment, run_experiment

__all__ = ["DEFAULT_EXPERIMENTS", "EXPERIMENTS", "Experiment", "run_experiment"]
