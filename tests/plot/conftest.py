"""Runs shared by the renderer tests: recorded once per session (a few seconds)."""

from __future__ import annotations

import pytest

from normviz.experiments.models import NORM_KINDS
from normviz.testing import ContractRuns, record_contract_runs


@pytest.fixture(scope="session")
def contract_runs(tmp_path_factory) -> ContractRuns:
    """A tiny CNN with every norm kind (experiment "contract"), a one-layer
    one-step run, and a run that turns non-finite at step 2."""
    return record_contract_runs(tmp_path_factory.mktemp("runs"), kinds=NORM_KINDS, steps=4)


@pytest.fixture(scope="session")
def kind_runs(contract_runs) -> dict:
    """The ``full`` contract runs by norm kind."""
    return {run.norm_kind: run for run in contract_runs.full}
