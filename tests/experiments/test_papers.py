"""The paper reproductions: each finding is checked from the run file normviz recorded.

Every experiment is recorded with ``run_experiment`` (the code path of ``normviz record
--experiment NAME``), at a reduced size where a finding allows it, with fixed seeds, and read
back with ``normviz.open``. The comments give the values ``benchmarks/papers_report.py`` measured
at the default sizes over seeds 0-4 (``docs/papers.md``), or over seeds 0-2 at the test's size;
the thresholds leave a wide margin. The models are tiny, so they run on one thread: on a busy
2-core machine, two threads are several times slower.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.experiments import DEFAULT_EXPERIMENTS, EXPERIMENTS, papers, run_experiment
from normviz.experiments.base import split_step_result
from normviz.experiments.papers.wu_he import build_wu_he
from normviz.record.ics import gradient_ics, ics_scalars, sgd


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """``record(name, kind, seed=0, every=1, steps=None, **options) -> Run`` (cached per module)."""
    folder = tmp_path_factory.mktemp("papers")
    cache: dict[tuple, normviz.Run] = {}

    def _record(name, kind, *, seed=0, every=1, steps=None, **options):
        key = (name, kind, seed, every, steps, tuple(sorted(options.items())))
        if key not in cache:
            exp = papers.paper_experiment(name, steps=steps, **options)
            path = folder / f"{name}-{kind}-{len(cache)}.h5"
            run_experiment(exp, kind, path, every=every, seed=seed, device="cpu")
            cache[key] = normviz.open(path)
        return cache[key]

    yield _record
    for run in cache.values():
        run.close()


def test_registered_as_named_experiments_not_defaults():
    for name in papers.PAPER_EXPERIMENTS:
        assert EXPERIMENTS[name] is papers.PAPER_EXPERIMENTS[name]
        assert name not in DEFAULT_EXPERIMENTS
    assert set(papers.PAPER_EXPERIMENTS) >= {
        "label-smoothing", "seed-bn-ln", "ioffe-fig1", "xiong-ln", "wu-he-batch", "santurkar-ics", "santurkar-ics-vgg"
    }
    with pytest.raises(ValueError, match="unknown paper experiment"):
        papers.paper_experiment("nope")


def test_cli_records_the_paper_experiments_with_their_scalars(tmp_path, monkeypatch, capsys):
    from normviz.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["record", "--experiment", "label-smoothing,ioffe-fig1", "--steps", "3", "--out", "runs", "-q"])
    assert exc.value.code == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == ["ioffe-fig1-batch.h5", "ioffe-fig1-none.h5", "label-smoothing-none.h5"]
    with normviz.open(tmp_path / "runs" / "label-smoothing-none.h5") as run:
        assert run.experiment == "label-smoothing" and run.norm_kind == "none"
        assert {"loss", "loss_ce", "loss_seed", "loss_torch", "test_acc_ce"} <= set(run.scalar_names)
        assert np.isfinite(run.scalar("loss_seed")).all()
    with normviz.open(tmp_path / "runs" / "ioffe-fig1-none.h5") as run:
        assert np.isfinite(run.scalar("test_acc")[0])
        assert run.stat("channel_percentiles", "norm3", "output").shape[0] == 3


def test_spearman():
    assert papers.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert papers.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert papers.spearman([1, 2, 3], [1, 1, 2]) == pytest.approx(math.sqrt(3) / 2)


# -- 1. label smoothing -----------------------------------------------------------------------------
def test_seed_label_smoothing_matches_its_definition():
    pred = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    target = torch.randint(10, (64,), generator=torch.Generator().manual_seed(1))
    eps, k = 0.1, 10
    log_p = torch.log_softmax(pred, 1)
    q = torch.full_like(pred, eps / (k - 1)).scatter_(1, target[:, None], 1 - eps)
    assert papers.SeedLabelSmoothingCE(eps)(pred, target) == pytest.approx(float(-(q * log_p).sum(1).mean()), rel=1e-6)
    q_torch = torch.full_like(pred, eps / k).scatter_(1, target[:, None], 1 - eps + eps / k)
    torch_loss = nn.CrossEntropyLoss(label_smoothing=eps)(pred, target)
    assert torch_loss == pytest.approx(float(-(q_torch * log_p).sum(1).mean()), rel=1e-6)


def test_label_smoothing_shrinks_the_logits(record):
    run = record("label-smoothing", "none", every=10, steps=200)
    f = papers.label_smoothing_findings(run)
    for smooth in ("seed", "torch"):
        # report (300 steps): CE / smoothing = 2.8-2.9 (std), 2.5-2.7 (max), 2.8-3.1 (1-99 range)
        assert f["ce"]["std"] > 1.6 * f[smooth]["std"]
        assert f["ce"]["max"] > 1.6 * f[smooth]["max"]
        assert f["ce"]["range"] > 1.6 * f[smooth]["range"]
        assert f[smooth]["test_acc"] > 0.9 and f["ce"]["test_acc"] > 0.9
    # eps/(K-1) asks for a smaller target-vs-rest gap (log 81) than eps/K (log 91): slightly smaller logits
    assert f["seed"]["std"] < f["torch"]["std"] < 1.15 * f["seed"]["std"]
    # the three copies start from the same weights and see the same batches
    first = {name: run.stat("std", f"copies.{name}.head")[0] for name in papers.SMOOTHING_VARIANTS}
    assert first["ce"] == first["seed"] == first["torch"]
    for name in papers.SMOOTHING_VARIANTS:
        assert np.isfinite(run.scalar(f"loss_{name}")).all()


# -- 2. the seed's MLP ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_seed_mlp_norms_lower_the_final_loss(record, seed):
    loss = {kind: papers.final_loss(record("seed-bn-ln", kind, seed=seed, every=10)) for kind in ("batch", "layer", "none")}
    # the seed's notebook: no-BN 0.94 vs BN 0.53, no-LN 0.76 vs LN 0.65 after 100 epochs (the direction, not the digits)
    assert loss["batch"] < loss["none"]
    assert loss["layer"] < loss["none"]


def test_seed_mlp_records_batchnorm_running_statistics(record):
    run = record("seed-bn-ln", "batch", every=10)
    running_var = run.module_stat("running_var", "1")
    assert running_var.shape == (len(run.steps), 32)
    assert not np.allclose(running_var[-1], 1.0)  # it moved from its initial value


# -- 3. Ioffe & Szegedy 2015, Figure 1 ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ioffe(record):
    return {kind: record("ioffe-fig1", kind, every=20, steps=800) for kind in ("batch", "none")}


def test_ioffe_fig1_bn_keeps_the_sigmoid_input_stable(ioffe):
    bn, plain = papers.ioffe_findings(ioffe["batch"]), papers.ioffe_findings(ioffe["none"])
    # 800 steps, seeds 0-2: no-BN spread ratio 8.9-11.4, shift 1.5-1.8; BN 1.15-1.28, 0.10-0.13
    # (report, 2000 steps: no-BN 19-24 and 0.64-0.70; BN 1.27-1.45 and 0.12-0.17)
    assert plain["spread_ratio"] > 4 and plain["shift"] > 0.5
    assert 0.7 < bn["spread_ratio"] < 2.0 and bn["shift"] < 0.3
    assert bn["acc_early"] - plain["acc_early"] > 0.4  # BN trains much faster (at step 500)
    assert bn["acc_final"] > 0.95


def test_ioffe_fig1_percentiles_are_per_unit_and_match_the_pooled_ones(ioffe):
    run = ioffe["none"]
    per = run.stat("channel_percentiles", "norm3", "output")
    levels = run.layout.percentile_levels
    assert per.shape == (len(run.steps), 32 * len(levels))  # 32 of the 100 units are stored
    assert np.isfinite(per).all()
    q = per.reshape(len(run.steps), 32, len(levels))
    assert (np.diff(q, axis=2) >= 0).all()  # percentiles are ordered per unit
    acc = run.scalar("test_acc")
    assert np.isfinite(acc[::10]).all() and np.isnan(acc[1::10]).all()  # measured every 10 steps


# -- 4. Xiong et al. 2020 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xiong(record):
    return [papers.xiong_findings(record("xiong-ln", "layer", seed=seed, steps=2)) for seed in (0, 1)]


def test_xiong_post_ln_gradients_grow_towards_the_output_pre_ln_do_not(xiong):
    for f in xiong:
        for sub in ("fc", "proj"):
            # report (3 steps), seeds 0-4: Pre-LN -1.0 ... -0.68; Post-LN +0.6 ... +0.9 in 4 of 5 seeds
            # (seed 3: -0.1 / -0.85), the 5-seed mean profile +0.88 / +0.83
            assert f[f"pre.{sub}"]["spearman"] < -0.5
            assert f[f"pre.{sub}"]["last_first"] < 0.85
            assert f[f"post.{sub}"]["spearman"] > f[f"pre.{sub}"]["spearman"] + 0.8
    mean_post = np.mean([f["post.fc"]["norms"] for f in xiong], axis=0)
    assert papers.spearman(np.arange(len(mean_post)), mean_post) > 0.3


def test_xiong_post_ln_last_layer_gradient_is_larger(xiong):
    # Theorem 1: last-layer W2 gradient O(d sqrt(ln d)) for Post-LN, O(d sqrt(ln d / L)) for Pre-LN
    for f in xiong:
        assert f["post.proj"]["norms"][-1] > 2.0 * f["pre.proj"]["norms"][-1]


def test_xiong_weights_do_not_move(record):
    run = record("xiong-ln", "layer", seed=0, steps=2)
    names, weight_norm = run.grad("weight_norm")
    assert np.array_equal(weight_norm[0], weight_norm[-1])
    post = names.index("post.blocks.0.mlp.fc")
    pre = names.index("pre.blocks.0.mlp.fc")
    assert weight_norm[0, post] == weight_norm[0, pre]  # the same weights in both stacks


# -- 5. Wu & He 2018 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wu_he(record):
    return {kind: record("wu-he-batch", kind, every=6, steps=240) for kind in ("none", "batch", "group")}


def test_wu_he_bn_batch_statistics_get_noisier_as_the_batch_shrinks(wu_he):
    f = papers.wu_he_batch_findings(wu_he["batch"])
    assert list(f["m"]) == [32, 16, 8, 4, 2]
    # report (300 steps), seeds 0-4: m=2 / m=32 = 3.5-4.0 at norm1 and 2.1-5.5 elsewhere; log-log slope
    # -0.46 ... -0.48 at norm1, -0.25 ... -0.62 over all layers; R^2 of a/m + b >= 0.94
    slopes = []
    for layer, entry in f["layers"].items():
        dev = entry["mean_dev"]
        assert (np.diff(dev) > 0).all(), layer  # every halving of the batch adds noise
        assert dev[-1] > 1.4 * dev[0], layer
        assert entry["r2"] > 0.9, layer  # deviation^2 = a/m + floor
        slopes.append(entry["slope"])
    # 1/sqrt(m) is a slope of -0.5; the running statistics' lag adds a floor that flattens it
    assert -0.7 < f["layers"]["net.norm1"]["slope"] < -0.35
    assert -0.7 < float(np.mean(slopes)) < -0.15


def test_wu_he_gn_statistics_do_not_depend_on_the_batch(wu_he):
    # GN's statistics are per sample: their distribution is the same at every batch size. The median
    # of 8 groups (m = 2) against 128 (m = 32) is noisy: the report's seeds 0-4 stay within 7.2%.
    f = papers.wu_he_batch_findings(wu_he["group"])
    for layer, entry in f["layers"].items():
        assert np.all(np.abs(entry["scale"] - 1.0) < 0.15), layer
    assert np.mean([abs(e["scale"][-1] - 1.0) for e in f["layers"].values()]) < 0.07
    bn = papers.wu_he_batch_findings(wu_he["batch"])
    assert min(e["scale"][-1] for e in bn["layers"].values()) < 0.97  # BN's scale is biased low at m = 2


def test_wu_he_fig6_no_norm_features_spread_bn_gn_do_not(wu_he):
    growth = {kind: papers.wu_he_fig6_findings(run)["growth"] for kind, run in wu_he.items()}
    # report (300 steps), seeds 0-4: none 4.4-15x, BN 0.99-1.2x, GN 0.55-0.99x
    assert growth["none"] > 3.0
    assert growth["none"] > 2.0 * max(growth["batch"], growth["group"])
    assert max(growth["batch"], growth["group"]) < 2.0


def test_wu_he_probes_leave_training_unchanged(tmp_path):
    def gen():
        return torch.Generator().manual_seed(0)

    torch.manual_seed(0)
    with_probes = build_wu_he("batch", gen(), torch.device("cpu"))
    torch.manual_seed(0)
    without = build_wu_he("batch", gen(), torch.device("cpu"), probes=())
    without.model.load_state_dict(with_probes.model.state_dict())
    for i in range(3):
        # the same batches: the probe rows are drawn but not used without probes
        a, _ = split_step_result(with_probes.step(with_probes.model, with_probes.optimizer, i))
        b, _ = split_step_result(without.step(without.model, without.optimizer, i))
        assert torch.equal(a, b)
    for (name, x), y in zip(with_probes.model.state_dict().items(), without.model.state_dict().values()):
        assert torch.equal(x, y), name


# -- 6. Santurkar et al. 2018 ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def santurkar(record):
    return {kind: record("santurkar-ics", kind, every=50, steps=500, ics_every=50) for kind in ("batch", "none")}


def test_santurkar_bn_does_not_reduce_gradient_ics(santurkar):
    bn, plain = papers.santurkar_findings(santurkar["batch"]), papers.santurkar_findings(santurkar["none"])
    # report (1000 steps), seeds 0-4: relative ICS BN 0.38-0.94 vs standard 0.018-0.15; median cos
    # 0.40-0.95 vs 0.993-1.0 (the standard net of seed 4 oscillates at times: frac cos < 0.9 = 0.33)
    assert bn["rel"] > 5 * plain["rel"]
    assert plain["frac_cos_below_0.9"] < 0.15
    assert bn["frac_cos_below_0.9"] > 0.3
    assert bn["measurements"] == plain["measurements"] == 8 * 10


def test_santurkar_ics_scalars_are_recorded_every_n_steps(santurkar):
    run = santurkar["none"]
    cos = run.scalar("ics_cos/fc3")
    assert np.isfinite(cos[::50]).all() and np.isnan(cos[1::50]).all()
    assert len([n for n in run.scalar_names if n.startswith("ics_")]) == 3 * 8


# -- the ICS measurement itself ----------------------------------------------------------------------
def _mlp(bn: bool) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.BatchNorm1d(8) if bn else nn.Identity(), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def _batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(32, 6, generator=gen), torch.randint(3, (32,), generator=gen)


def test_gradient_ics_first_layer_has_none_and_matches_a_manual_computation():
    model = _mlp(bn=True)
    x, y = _batch()

    def loss_fn(m):
        return nn.functional.cross_entropy(m(x), y)

    result = gradient_ics(model, ["0", "3", "5"], loss_fn, sgd(0.5))
    assert list(result) == ["0", "3", "5"]
    assert float(result["0"].l2) == 0.0 and float(result["0"].cos) == pytest.approx(1.0)
    # manual G' of layer "5": every earlier parameter (BN's gamma/beta included) takes its SGD step
    ref = _mlp(bn=True)
    grads = torch.autograd.grad(loss_fn(ref), list(ref.parameters()))
    g = grads[-2].reshape(-1)
    moved = _mlp(bn=True)
    with torch.no_grad():
        for (name, p), grad in zip(moved.named_parameters(), grads):
            if not name.startswith("5."):
                p -= 0.5 * grad
    g2 = torch.autograd.grad(loss_fn(moved), moved[5].weight)[0].reshape(-1)
    assert float(result["5"].l2) == pytest.approx(float((g - g2).norm()), rel=1e-5)
    assert float(result["5"].rel) == pytest.approx(float((g - g2).norm() / g.norm()), rel=1e-5)
    assert float(result["5"].cos) == pytest.approx(float(g @ g2 / (g.norm() * g2.norm())), rel=1e-5)
    scalars = ics_scalars(result)
    assert set(scalars) == {f"ics_{k}/{layer}" for k in ("l2", "rel", "cos") for layer in ("0", "3", "5")}


def test_gradient_ics_changes_nothing(tmp_path):
    model = _mlp(bn=True)
    x, y = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with normviz.Recorder(model, tmp_path / "run.h5") as rec:
        hooks = [dict(m._forward_hooks) for m in model.modules()]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        rng = torch.get_rng_state()
        after_forward = {k: v.clone() for k, v in model.state_dict().items()}
        gradient_ics(model, ["3", "5"], lambda m: nn.functional.cross_entropy(m(x), y), sgd(0.1))
        assert [dict(m._forward_hooks) for m in model.modules()] == hooks  # the recorder's hooks are back
        rec.step(loss=loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, after_forward[k]), k  # parameters and BN running statistics
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())  # (the forward moved them)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert torch.equal(torch.get_rng_state(), rng)
    run = normviz.open(tmp_path / "run.h5")
    assert run.stat("numel", "0")[0] == 32 * 8  # the recorded forward is the training one (no extra calls)
    assert next(info.calls for info in run.layers if info.name == "0") == 1


def test_gradient_ics_rejects_unknown_layers():
    with pytest.raises(ValueError, match="not a module"):
        gradient_ics(_mlp(False), ["nope"], lambda m: m(torch.zeros(2, 6)).sum(), sgd(0.1))
    with pytest.raises(ValueError, match="no trainable parameters"):
        gradient_ics(_mlp(False), ["2"], lambda m: m(torch.zeros(2, 6)).sum(), sgd(0.1))
