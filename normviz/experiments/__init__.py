"""Built-in experiments: the seed notebook's simulations, deeper models and paper reproductions.

``normviz record`` with no argument runs :data:`DEFAULT_EXPERIMENTS`; the others are
named with ``--experiment``. Each experiment trains a small model on synthetic data
with fixed seeds and records it with :class:`normviz.Recorder`.

==============  ================================================================
module          its job
==============  ================================================================
``base``        :class:`Experiment`, ``Setup``, :func:`run_experiment`: what an
                experiment is made of and the loop that trains and records one
``seeds``       the seed notebook's MLP and CNN (``seed-mlp``, ``seed-cnn``)
``deeper``      ``resnet8``, ``transformer``, ``deep-mlp``
``papers``      the paper reproductions, one module per paper
``catalog``     :data:`EXPERIMENTS`, :data:`DEFAULT_EXPERIMENTS`, :func:`iter_runs`
``models``      the architectures, norm layers and synthetic data they train on
==============  ================================================================

What a paper experiment's run shows is measured by :mod:`normviz.analysis.findings`
(NumPy only).
"""

from __future__ import annotations

from normviz.experiments.base import Experiment, run_experiment
from normviz.experiments.catalog import DEFAULT_EXPERIMENTS, EXPERIMENTS, iter_runs

__all__ = ["DEFAULT_EXPERIMENTS", "EXPERIMENTS", "Experiment", "iter_runs", "run_experiment"]
