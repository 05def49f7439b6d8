"""torchrun / DDP: per-rank files, exact merging, the per-rank BatchNorm spread, ``normviz plot`` on a folder.

One module fixture trains ``gallery/train_ddp.py`` three ways at once: torchrun
with 2 processes (gloo, CPU) with BatchNorm, the same with SyncBatchNorm, and
one process on the whole global batch (the reference the merged ranks must
reproduce).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import normviz
from normviz.cli import main
from normviz.distributed import rank_path, split_rank
from normviz.errors import MissingDataError
from normviz.merge import MergedRun, merge_ranks, pool_moments, rank_spread

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "gallery" / "train_ddp.py"
STEPS = 4
BATCH = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    common = ["--out", str(out), "--steps", str(STEPS), "--global-batch", str(BATCH)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TRAIN)]
    jobs = [
        subprocess.Popen([*torchrun, *common, "--name", "bn"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        subprocess.Popen([*torchrun, *common, "--name", "sync", "--sync-bn"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, str(TRAIN), *common, "--name", "full"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT),
    ]
    for job in jobs:
        text, _ = job.communicate(timeout=240)
        assert job.returncode == 0, text.decode(errors="replace")[-4000:]
    return out


@pytest.fixture
def runs(folder):
    opened = {p.stem: normviz.open(p) for p in sorted(folder.glob("*.h5"))}
    yield opened
    for run in opened.values():
        run.close()


def test_rank_path_naming():
    assert rank_path("runs/ddp.h5", 1, 2) == Path("runs/ddp.rank1.h5")
    assert rank_path("runs/ddp.h5", 0, 1) == Path("runs/ddp.h5")
    assert split_rank("runs/ddp.rank1.h5") == (Path("runs/ddp.h5"), 1)
    assert split_rank("runs/ddp.h5") == (Path("runs/ddp.h5"), None)


def test_pool_moments_is_the_moments_of_the_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.normal(loc, scale, size=(n, 3)) for loc, scale, n in ((0.0, 1.0, 50), (2.0, 3.0, 70), (-1, 0.5, 5))]
    n = np.array([[len(p)] for p in parts], dtype=float)
    mean = np.stack([p.mean(0)[None] for p in parts])
    var = np.stack([p.var(0)[None] for p in parts])
    _, m, v = pool_moments(n, mean, var)
    whole = np.concatenate(parts)
    np.testing.assert_allclose(m[0], whole.mean(0), rtol=1e-12)
    np.testing.assert_allclose(v[0], whole.var(0), rtol=1e-12)


def test_one_file_per_rank_with_rank_and_world_size(runs):
    assert sorted(runs) == ["bn.rank0", "bn.rank1", "full", "sync.rank0", "sync.rank1"]
    for name in ("bn", "sync"):
        assert [(runs[f"{name}.rank{r}"].rank, runs[f"{name}.rank{r}"].world_size) for r in (0, 1)] == [(0, 2), (1, 2)]
    assert (runs["full"].rank, runs["full"].world_size) == (0, 1)
    # The recorder saw the model's own layer names, not DDP's "module." ones.
    assert [lay.name for lay in runs["bn.rank0"].norm_layers] == ["1", "4"]
    assert {lay.module_type for lay in runs["sync.rank0"].norm_layers} == {"GlooSyncBatchNorm"}


def _check_same(merged, full, sites, steps, stats=("channel_mean", "channel_var", "mean", "std")):
    for site in sites:
        for stat in stats:
            a = merged.stat(stat, site.layer, site.role, steps=steps)
            b = full.stat(stat, site.layer, site.role, steps=steps)
            # Channel means that are exactly 0 in one run (a BatchNorm output at β = 0) are
            # float noise of order 1e-8 in the other: compare at the activations' scale.
            scale = max(np.nanmax(np.abs(b)), 1e-2)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{stat} of {site.key}")


def test_merged_ranks_pool_exactly_to_the_full_batch(runs):
    assert sorted(type(r).__name__ for r in merge_ranks(list(runs.values()))) == ["MergedRun", "MergedRun", "Run"]
    sync = next(r for r in merge_ranks(list(runs.values())) if isinstance(r, MergedRun) and "Sync" in r.label)
    full = runs["full"]
    assert list(sync.steps) == list(full.steps) == list(range(STEPS))
    # SyncBatchNorm + DDP's averaged gradients train exactly what one process does on the
    # whole batch: every site at every step pools to the full-batch statistics.
    _check_same(sync, full, full.sites, slice(None))
    for site in full.sites:  # extrema of ordinary layers and of inputs
        if site.role == "input" or site.kind is None:
            _check_same(sync, full, [site], slice(None), ("min", "max", "numel"))
    # Plain BatchNorm: the ranks normalize differently, so only what comes before the first
    # BatchNorm, at step 0, is the full batch's.
    bn = next(r for r in merge_ranks(list(runs.values())) if isinstance(r, MergedRun) and "Sync" not in r.label)
    before = [s for s in full.sites if (s.layer, s.role) in (("0", "output"), ("1", "input"))]
    _check_same(bn, full, before, slice(0, 1))


def test_ranks_share_histogram_edges_so_merged_histograms_are_sums(runs):
    full = runs["full"]
    for name in ("bn", "sync"):
        ranks = [runs[f"{name}.rank{r}"] for r in (0, 1)]
        merged = next(r for r in merge_ranks(ranks) if isinstance(r, MergedRun))
        for site in full.sites:
            edges = [r.hist_edges(site.layer, site.role, call=site.call) for r in ranks]
            np.testing.assert_array_equal(edges[0], edges[1], err_msg=f"{name}: edges of {site.key}")
            hist = merged.stat("hist", site.layer, site.role, call=site.call)
            parts = [r.stat("hist", site.layer, site.role, call=site.call) for r in ranks]
            np.testing.assert_array_equal(hist, parts[0] + parts[1])
            assert hist.sum(axis=1).tolist() == [2 * ranks[0].layout.sample_size] * STEPS
        assert not merged.notes
    # The edges come from the extrema of the whole global batch at the first step: those
    # of the one-process run, where the data up to the first BatchNorm is the same.
    for site in full.sites:
        if (site.layer, site.role) in (("0", "output"), ("1", "input")):
            np.testing.assert_allclose(runs["bn.rank1"].hist_edges(site.layer, site.role),
                                       full.hist_edges(site.layer, site.role), rtol=1e-6)


def test_shared_extrema_leave_a_lone_or_unranked_recorder_alone():
    import torch

    from normviz.distributed import shared_extrema

    lo, hi = torch.tensor([0.0, float("nan")]), torch.tensor([1.0, float("nan")])
    # No process group here: nothing to share, whatever the path says.
    for path in ("runs/a.h5", "runs/a.rank0.h5"):
        a, b = shared_extrema(path, lo, hi)
        assert a is lo and b is hi


class _FakeGroup:
    """Rank 0 of a two-rank group whose other rank holds *other*: all_reduce as torch does it."""

    def __init__(self, monkeypatch, other_lo, other_hi, fail=False):
        import torch.distributed as dist

        self.other_n = len(other_lo)
        self.other = (other_lo, other_hi)
        self.fail = fail
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)

    def all_reduce(self, t, op=None, group=None, async_op=False):
        import torch
        import torch.distributed as dist

        if self.fail:
            raise RuntimeError("No backend type associated with device type cpu")
        if t.numel() == 2:  # the site count check
            mine = t.clone()
            theirs = torch.tensor([self.other_n, -self.other_n], dtype=t.dtype)
            t.copy_(torch.maximum(mine, theirs) if op == dist.ReduceOp.MAX else torch.minimum(mine, theirs))
            return
        lo, hi = (torch.tensor(v) for v in self.other)
        theirs = torch.cat([torch.nan_to_num(lo, nan=float("inf")), -torch.nan_to_num(hi, nan=-float("inf"))])
        t.copy_(torch.minimum(t, theirs))


def test_shared_extrema_reduce_over_ranks_and_keep_nan_out(monkeypatch):
    import torch

    from normviz.distributed import shared_extrema

    _FakeGroup(monkeypatch, [-1.0, float("nan"), float("nan")], [0.5, 3.0, float("nan")])
    lo, hi = shared_extrema("runs/a.rank0.h5", torch.tensor([0.0, 2.0, float("nan")]),
                            torch.tensor([1.0, 2.5, float("nan")]))
    # A NaN never wins; a site with no finite extremum on any rank stays NaN.
    assert lo.tolist()[:2] == [-1.0, 2.0] and hi.tolist()[:2] == [1.0, 3.0]
    assert np.isnan(lo[2].item()) and np.isnan(hi[2].item())
    # Not this rank's rank_path file (a recorder on rank 0 alone): no collective at all.
    a = torch.tensor([0.0])
    assert shared_extrema("runs/a.h5", a, a)[0] is a


def test_shared_extrema_keep_local_edges_when_ranks_disagree_or_the_backend_fails(monkeypatch):
    import torch

    from normviz.distributed import shared_extrema

    lo, hi = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])
    _FakeGroup(monkeypatch, [-5.0, -5.0, -5.0], [9.0, 9.0, 9.0])  # another number of sites
    a, b = shared_extrema("runs/a.rank0.h5", lo, hi)
    assert a is lo and b is hi
    _FakeGroup(monkeypatch, [-5.0, -5.0], [9.0, 9.0], fail=True)
    with pytest.warns(RuntimeWarning, match="could not share histogram edges"):
        a, b = shared_extrema("runs/a.rank0.h5", lo, hi)
    assert a is lo and b is hi


def test_syncbatchnorm_removes_the_per_rank_spread(runs):
    merged = [r for r in merge_ranks(list(runs.values())) if isinstance(r, MergedRun)]
    by = {("sync" if "Sync" in r.label else "bn"): r for r in merged}
    for layer in ("1", "4"):
        bn, sync = rank_spread(by["bn"], layer), rank_spread(by["sync"], layer)
        assert not bn.synced and sync.synced
        assert np.all(bn.used_mean > 1e-3) and np.all(bn.used_mean == bn.input_mean)
        assert np.all(sync.used_mean == 0) and np.all(sync.input_mean > 1e-3)
        # Measured from the module state: SyncBatchNorm ranks update their running
        # means with the same (global) statistics; BatchNorm ranks do not.
        assert np.nanmax(sync.running_mean) < 1e-6
        assert np.nanmin(bn.running_mean) > 1e-4
        assert np.allclose(bn.values_per_channel, bn.values_per_channel[0, 0])


def test_ranks_renderer_needs_several_ranks(runs):
    with pytest.raises(MissingDataError, match="single rank"):
        normviz.plot(runs["full"], "ranks")
    fig = normviz.plot(list(runs.values()), "ranks")
    gids = {ln.get_gid() for ax in fig.axes for ln in ax.get_lines()}
    assert any(g and g.startswith("used:SyncBatchNorm") for g in gids)
    assert any(g and g.startswith("local:SyncBatchNorm") for g in gids)


def test_ranks_renderer_contract(runs):
    from normviz.plot.api import _host
    from normviz.testing import RendererContract

    RendererContract(_host(None).renderers()["ranks"], list(runs.values())).check_all()


def test_plot_folder_merges_ranks(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(folder), "--renderer", "ranks,loss,histograms", "--format", "png", "--out", "figs", "-q"])
    out = capsys.readouterr()
    assert (exc.value.code or 0) == 0, out.err
    assert "skipped" not in out.err  # the ranks' histograms are summed, none left out
    for name in ("ranks", "loss", "histograms"):
        assert (tmp_path / "figs" / f"ddp-cnn-{name}.png").stat().st_size > 0
