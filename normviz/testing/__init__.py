"""Test helpers for renderer plugins: the contract every renderer must keep.

A renderer plugin's tests can check its renderer the way normviz checks its
own::

    from normviz.testing import RendererContract, record_contract_runs

    def test_my_renderer(tmp_path):
        runs = record_contract_runs(tmp_path)      # or runs of your own models
        RendererContract(MY_RENDERER, runs.full, small=runs.small,
                         nonfinite=runs.nonfinite).check_all()

The contract (:meth:`RendererContract.check_all`):

- ``draw(runs, fig)`` returns the Figure it was given, and that figure can be
  saved;
- drawing leaves pyplot's figure list and ``matplotlib.rcParams`` as they were
  (no pyplot state machine, no ``plt.gca()``, no rcParams changes);
- it works on a run with one layer and one recorded step;
- it does not crash on a run whose values became non-finite;
- when a statistic it ``requires`` is absent, it raises
  :class:`~normviz.errors.MissingDataError` whose message names that
  statistic; with nothing recorded at all it raises MissingDataError too.

Absent statistics are simulated by :func:`hide`, a view of a run in which the
named statistics and scalars were never recorded (the reader's own errors), so
no special file is needed.
"""

from __future__ import annotations

from normviz.testing.contract import HiddenRun, RendererContract, hide
from normviz.testing.layout import TextBox, drawn_texts, text_collisions
from normviz.testing.runs import ContractRuns, record_contract_runs, record_run

__all__ = [
    "ContractRuns",
    "HiddenRun",
    "RendererContract",
    "TextBox",
    "drawn_texts",
    "hide",
    "record_contract_runs",
    "record_run",
    "text_collisions",
]
