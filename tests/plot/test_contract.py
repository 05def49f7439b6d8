"""The renderer contract, over every registered renderer (installed plugins included)."""

from __future__ import annotations

import pytest
from renderer_runs import shared_runs

from normviz.errors import MissingDataError
from normviz.plugins import BUILTIN, get_plugin_host
from normviz.testing import RendererContract

HOST = get_plugin_host()
RENDERERS = HOST.renderers()
BUILTIN_RENDERERS = ("covariate-shift", "channels", "gradient-flow", "histograms", "loss", "ranks")
#: Built-ins that draw multi-rank runs only; tests/test_distributed.py runs their contract.
MULTI_RANK = ("ranks",)
#: Built-ins that draw opt-in statistics the standard runs lack; the tests of the experiments
#: that record them run their contract (tests/experiments/test_he.py, test_wortsman.py,
#: test_wu_johnson.py).
OPT_IN = ("massive", "attention", "bn-gap")


@pytest.fixture(scope="module")
def contract_runs(tmp_path_factory):
    return shared_runs(tmp_path_factory)


def test_builtin_renderers_are_registered_as_plugins():
    for name in BUILTIN_RENDERERS:
        assert name in RENDERERS
        assert HOST.owner("renderer", name) == BUILTIN
        assert RENDERERS[name].description


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_renderer_contract(name, contract_runs):
    renderer = RENDERERS[name]
    contract = RendererContract(
        renderer, contract_runs.full, small=contract_runs.small, nonfinite=contract_runs.nonfinite
    )
    if HOST.owner("renderer", name) != BUILTIN or name in MULTI_RANK + OPT_IN:
        # A third-party renderer may need data only its own models produce: the
        # plugin's own tests run the contract on its runs. Here it must at least
        # say clearly what it misses, and leave global state alone.
        try:
            contract.check_returns_figure()
        except MissingDataError as exc:
            assert str(exc).strip()
            pytest.skip(f"{name} needs data the standard runs lack: {exc}")
    contract.check_all()
