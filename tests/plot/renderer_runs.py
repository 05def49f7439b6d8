"""Runs shared by the renderer tests, recorded once per test session (a few seconds).

Not a conftest.py: the top-level tests import ``conftest`` by name, and a second
conftest module would shadow it. Each test module wraps :func:`shared_runs` in
a fixture; the recording happens once.
"""

from __future__ import annotations

from typing import Any

from normviz.experiments.models import NORM_KINDS
from normviz.testing import ContractRuns, record_contract_runs

_RUNS: dict[str, ContractRuns] = {}


def shared_runs(tmp_path_factory: Any) -> ContractRuns:
    """A tiny CNN with every norm kind (experiment "contract"), a one-layer
    one-step run, and a run that turns non-finite at step 2."""
    if "runs" not in _RUNS:
        _RUNS["runs"] = record_contract_runs(tmp_path_factory.mktemp("runs"), kinds=NORM_KINDS, steps=4)
    return _RUNS["runs"]


def by_kind(runs: ContractRuns) -> dict[str, Any]:
    """The ``full`` runs by norm kind."""
    return {run.norm_kind: run for run in runs.full}
