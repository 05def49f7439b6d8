"""Kosson et al. 2024 (``kosson-rotation``): rotational equilibrium, checked from the run files.

papers2.md §4.4 (T12): after 3000 steps the layer-level angle per step of the weights that
feed a norm is within [0.8, 1.2] of the predicted equilibrium (pilot: 0.88-1.03; this
recorder on seed 0, every fifth step: BN + SGD 0.93 / 0.90, LN + AdamW 1.00 / 1.01), runs
2-3x high at first (the initial norm is below the equilibrium's), and without weight decay
keeps shrinking (pilot: x0.47-0.53 from step 500 to 3000; here 0.55). About 5 s a run.
"""

from __future__ import annotations

import numpy as np
import pytest
from recorded import record_variants

import normviz
from normviz.analysis.rotation import equilibrium_angle, rotation_findings

CONFIGS = {"bn-sgd": ("batch", {"optimizer": "sgd"}), "ln-adamw": ("layer", {"optimizer": "adamw"}),
           "ln-adamw-wd0": ("layer", {"optimizer": "adamw", "weight_decay": 0.0})}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    yield from record_variants(tmp_path_factory.mktemp("kosson"), "kosson-rotation", CONFIGS, every=5)


def test_the_predictions():
    assert equilibrium_angle("SGD", 0.1, 5e-4, momentum=0.9) == pytest.approx(7.255e-3, rel=1e-3)
    assert equilibrium_angle("AdamW", 1e-2, 0.1, beta1=0.9) == pytest.approx(1.026e-2, rel=1e-3)
    assert np.isnan(equilibrium_angle("Adam", 1e-2, 0.1)) and np.isnan(equilibrium_angle("SGD", 0.1, 0.0))


@pytest.mark.parametrize("config", ["bn-sgd", "ln-adamw"])
def test_weights_feeding_a_norm_settle_at_the_predicted_angle(runs, config):
    run = runs[config]
    assert run.meta["feeds_norm"] == {"fc1": "norm1", "fc2": "norm2"}  # the scale-invariant layers, found
    found = rotation_findings(run)
    for layer in ("fc1", "fc2"):
        assert 0.8 <= found[layer]["ratio_last"] <= 1.2, (layer, found[layer])
        assert found[layer]["ratio_first"] > 1.5, (layer, found[layer])  # below the equilibrium norm at init


def test_without_weight_decay_there_is_no_equilibrium(runs):
    found = rotation_findings(runs["ln-adamw-wd0"])
    for layer in ("fc1", "fc2"):
        assert np.isnan(found[layer]["ratio_last"])  # nothing predicted
        assert found[layer]["last"] < 0.7 * found[layer]["early"]  # the angle keeps shrinking
    names, norm = runs["ln-adamw-wd0"].grad("weight_norm")
    assert (norm[-1, [names.index("fc1"), names.index("fc2")]] > norm[0, [names.index("fc1"), names.index("fc2")]]).all()


def test_rotation_figure(runs):
    fig = normviz.plot([runs["bn-sgd"], runs["ln-adamw"]], "rotation")
    gids = {line.get_gid() for ax in fig.axes for line in ax.get_lines()}
    for run in (runs["bn-sgd"], runs["ln-adamw"]):
        for layer in ("fc1", "fc2"):
            assert f"update_angle:{run.label}:{layer}" in gids
            assert f"update_angle_predicted:{run.label}:{layer}" in gids
