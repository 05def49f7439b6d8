"""normviz.analysis: the numbers figures show, against hand computations."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from normviz import analysis
from normviz.errors import MissingDataError

LEVELS = [1.0, 5.0, 15.0, 20.0, 50.0, 80.0, 85.0, 95.0, 99.0]


def kl(mp, vp, mq, vq):
    """KL(N(mp, vp) || N(mq, vq)) written out."""
    return 0.5 * (math.log(vq / vp) + (vp + (mp - mq) ** 2) / vq - 1.0)


def test_symmetric_kl_matches_two_kl_terms():
    for mp, vp, mq, vq in [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.1, 3.2, 4.0)]:
        expected = kl(mp, vp, mq, vq) + kl(mq, vq, mp, vp)
        assert analysis.gaussian_symmetric_kl(mp, vp, mq, vq) == pytest.approx(expected, rel=1e-12)


def test_symmetric_kl_of_a_one_std_shift_is_one():
    assert analysis.gaussian_symmetric_kl(1.0, 1.0, 0.0, 1.0) == pytest.approx(1.0)
    # Invariant to rescaling both distributions.
    assert analysis.gaussian_symmetric_kl(10.0, 100.0, 0.0, 100.0) == pytest.approx(1.0)


def test_channel_drift_by_hand():
    mean = np.array([[0.0, 1.0], [0.0, 2.0], [1.0, 2.0]])
    var = np.array([[1.0, 1.0], [4.0, 1.0], [4.0, 1.0]])
    d = analysis.channel_drift(mean, var)
    assert np.isnan(d[0])
    # step 1: channel 0 var 1 -> 4 (same mean), channel 1 mean shifts by one std.
    c0 = kl(0, 4, 0, 1) + kl(0, 1, 0, 4)
    c1 = 1.0
    assert d[1] == pytest.approx((c0 + c1) / 2)
    # step 2: channel 0 mean shifts by 1 with var 4 on both sides: (1/2)(1)(1/4+1/4) = 0.25.
    assert d[2] == pytest.approx((0.25 + 0.0) / 2)


def test_channel_drift_floors_dead_channels_and_flags_nonfinite():
    mean = np.array([[0.0, 5.0], [0.0, 5.0], [np.nan, 5.0]])
    var = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    d = analysis.channel_drift(mean, var)
    assert d[1] == 0.0  # a constant channel that did not move adds nothing
    assert np.isnan(d[2])  # a non-finite channel makes the step undefined
    assert analysis.channel_drift(mean[:1], var[:1]).shape == (1,)


def test_channel_drift_floor_is_relative_to_the_layer_spread():
    # Collapsed logits: every channel nearly constant over the batch (std 1e-3),
    # the channel means spread over ~1 and moving by ~0.5 between steps.
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(2, 10))
    mean[1] = mean[0] + 0.5 * rng.normal(size=10)
    var = np.full((2, 10), 1e-6)
    d = analysis.channel_drift(mean, var)
    assert d[1] < 50.0  # unfloored it would be ~2e5 nats
    assert analysis.channel_drift(mean, var, rel_floor=0.0)[1] > 1e4
    # The floor is rel_floor x the pooled variance: with every variance below it,
    # D is exactly the SKL of Gaussians with that variance.
    pooled = 0.5 * sum(np.mean(var[t]) + np.var(mean[t]) for t in (0, 1))
    floor = 0.05 * pooled
    expect = np.mean(analysis.gaussian_symmetric_kl(mean[1], floor, mean[0], floor))
    assert d[1] == pytest.approx(expect)
    # Channels as wide as the layer are not touched: still exactly one std shift -> 1.
    assert analysis.channel_drift(np.array([[0.0], [1.0]]), np.array([[1.0], [1.0]]))[1] == pytest.approx(1.0)


def test_percentile_band_picks_the_recorded_columns():
    values = np.arange(2 * 9, dtype=float).reshape(2, 9)
    band = analysis.percentile_band(values, LEVELS)
    np.testing.assert_array_equal(band.lo, values[:, 2])
    np.testing.assert_array_equal(band.mid, values[:, 4])
    np.testing.assert_array_equal(band.hi, values[:, 6])
    with pytest.raises(MissingDataError, match="level 33"):
        analysis.percentile_band(values, LEVELS, 33, 50, 85)


def test_flow_matrix_transposes_and_masks_unloggable_values():
    grads = np.array([[1.0, 0.0], [np.inf, 2.0], [np.nan, -1.0]])
    m = analysis.flow_matrix(grads)
    assert m.shape == (2, 3)
    assert m[0, 0] == 1.0 and m[1, 1] == 2.0
    assert np.isnan(m[1, 0]) and np.isnan(m[0, 1]) and np.isnan(m[0, 2]) and np.isnan(m[1, 2])
    assert analysis.log_limits(m) == (1.0, 2.0)
    assert analysis.log_limits(np.array([np.nan])) == (1e-8, 1.0)
    lo, hi = analysis.log_limits(np.array([3.0]))
    assert lo < 3.0 < hi


def test_bn_mismatch_by_hand():
    shift, scale = analysis.bn_mismatch([[1.0, 0.0]], [[4.0, 1.0]], [[0.0, 0.0]], [[4.0, 1.0]], eps=0.0)
    assert shift[0] == pytest.approx((1.0 / 2.0 + 0.0) / 2)
    assert scale[0] == pytest.approx(0.0)


def test_rows_for_steps_uses_training_steps():
    steps = np.array([0, 10, 20, 30, 40])
    assert analysis.rows_for_steps(steps, 10, 35) == slice(1, 4)
    assert analysis.rows_for_steps(steps, None, 20) == slice(0, 2)
    assert analysis.rows_for_steps(steps, 15, None) == slice(2, 5)
    assert analysis.rows_for_steps(steps, 50, 60) == slice(5, 5)


def test_pick_rows_first_middle_last():
    assert analysis.pick_rows(11) == [0, 5, 10]
    assert analysis.pick_rows(2) == [0, 1]
    assert analysis.pick_rows(1) == [0]
    assert analysis.pick_rows(0) == []


def test_forward_row_is_the_previous_step_when_recorded():
    assert analysis.forward_row([0, 1, 2], 2) == 1
    assert analysis.forward_row([0, 5, 10], 2) == 2  # step 9 was not recorded
    assert analysis.forward_row([0, 1, 2], 0) == 0


def test_first_nonfinite_and_scalar_divergence():
    assert analysis.first_nonfinite(np.ones((3, 2)), np.array([1.0, 2.0, np.inf])) == 2
    assert analysis.first_nonfinite(np.ones(4)) is None
    assert analysis.scalar_divergence([1.0, 0.5, np.nan, np.nan]) == 2
    assert analysis.scalar_divergence([1.0, np.inf, 0.5]) == 1
    # A scalar given only at some steps is not a divergence.
    assert analysis.scalar_divergence([1.0, np.nan, 0.8, np.nan]) is None
    assert analysis.scalar_divergence([]) is None


def test_envelope_keeps_extremes_of_long_series():
    x = np.arange(10, dtype=float)
    y = np.array([0, 5, 1, 1, 2, 9, 3, 3, 4, 4], dtype=float)
    short = analysis.envelope(x, y, max_points=10)
    assert short.lo is None and np.array_equal(short.y, y)
    env = analysis.envelope(x, y, max_points=5)
    np.testing.assert_allclose(env.x, [0.5, 2.5, 4.5, 6.5, 8.5])
    np.testing.assert_allclose(env.y, [2.5, 1, 5.5, 3, 4])
    np.testing.assert_allclose(env.lo, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(env.hi, [5, 1, 9, 3, 4])
    # Uneven blocks: the last block is shorter, NaNs are ignored.
    env = analysis.envelope(np.arange(5.0), np.array([1.0, np.nan, 3.0, 4.0, 7.0]), max_points=2)
    np.testing.assert_allclose(env.x, [1.0, 3.5])
    np.testing.assert_allclose(env.y, [2.0, 5.5])
    np.testing.assert_allclose(env.hi, [3.0, 7.0])


def test_block_mean_and_cell_edges():
    s, v = analysis.block_mean(np.arange(6.0), np.arange(12.0).reshape(6, 2), max_rows=3)
    np.testing.assert_allclose(s, [0.5, 2.5, 4.5])
    np.testing.assert_allclose(v, [[1, 2], [5, 6], [9, 10]])
    np.testing.assert_allclose(analysis.edges_from_centers([0, 2, 4]), [-1, 1, 3, 5])
    np.testing.assert_allclose(analysis.edges_from_centers([7]), [6.5, 7.5])


def test_select_names_glob_and_even_thinning():
    names = [f"l{i}" for i in range(10)]
    assert analysis.select_names(names, "l1*") == ["l1"]
    assert analysis.select_names(names, "l1,l3") == ["l1", "l3"]
    thin = analysis.select_names(names, None, 4)
    assert thin[0] == "l0" and thin[-1] == "l9" and len(thin) == 4
    assert analysis.select_names(names, "zz") == []
    # A limit of 1 keeps the shallowest layer, like the first of any thinning.
    assert analysis.select_names(names, None, 1) == ["l0"]
    assert analysis.select_names(names, "l[3-7]", 1) == ["l3"]


def test_merged_order_places_missing_layers_in_depth():
    assert analysis.merged_order([["0", "1", "3"], ["0", "3", "7"]]) == ["0", "1", "3", "7"]
    assert analysis.merged_order([["0", "3"], ["0", "1", "3"]]) == ["0", "1", "3"]


def test_analysis_imports_no_plotting_or_torch():
    import subprocess

    code = "import sys, normviz.analysis; print([m for m in ('matplotlib', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
