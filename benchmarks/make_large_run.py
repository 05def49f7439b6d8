"""Write a large synthetic run for the plotting-at-scale benchmark (not part of CI).

100 layers (50 × [Linear(64, 64) + BatchNorm1d(64)], ReLU between blocks) × 20,000
recorded steps with the default statistics. The layout is the one the Recorder
makes: one real training step of the model is recorded to a scratch file, and
its layout, histogram edges and root attributes are reused. The rows are then
synthetic (drifting means, positive variances, monotone percentiles, integer
histogram counts summing to the sample size, gradient norms decaying with
depth) and go through normviz's own :class:`~normviz.store.writer.RunWriter`,
so the file has the writer's chunking, compression and checksums.

    python benchmarks/make_large_run.py large.h5            # 100 layers × 20,000 steps
    python benchmarks/make_large_run.py small.h5 --steps 2000 --blocks 10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def recorded_template(blocks: int, width: int, scratch: Path) -> tuple[object, np.ndarray, dict]:
    """Record one step of the model; return its Layout, histogram edges and root attributes."""
    import torch
    from torch import nn

    import normviz

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU()]
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = scratch / "template.h5"
    with normviz.Recorder(model, path, every=1) as rec:
        loss = model(torch.randn(128, width)).pow(2).mean()
        loss.backward()
        opt.step()
        rec.step(loss=loss.item())
    with normviz.open(path) as run:
        layout = run.layout
    with h5py.File(path, "r") as f:
        edges = f["act/hist_edges"][()]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    attrs["meta"] = json.loads(attrs["meta"])
    return layout, edges, attrs


def _cdf(z: np.ndarray) -> np.ndarray:
    """Normal CDF (erf via a vectorised approximation, |error| < 1.5e-7)."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


def _qnorm(p: np.ndarray) -> np.ndarray:
    """Normal quantiles by bisection on :func:`_cdf` (a handful of fixed levels)."""
    lo, hi = np.full(p.shape, -10.0), np.full(p.shape, 10.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = _cdf(mid) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


class Synth:
    """Per-site and per-layer synthetic series, generated block by block."""

    def __init__(self, layout: object, edges: np.ndarray, steps: int, seed: int = 0) -> None:
        self.layout = layout
        self.steps = steps
        self.rng = np.random.default_rng(seed)
        n_sites = len(layout.sites)
        finite = np.where(np.isfinite(edges), edges, 0.0)
        centre = 0.5 * (finite[:, 0] + finite[:, -1])
        spread = np.maximum(finite[:, -1] - finite[:, 0], 1e-3)
        self.mu0 = centre
        self.s0 = spread / 7.0
        self.edges = edges.astype(np.float64)
        self.period = self.rng.uniform(0.3, 1.5, n_sites) * steps
        self.phase = self.rng.uniform(0, 2 * np.pi, n_sites)
        self.trend = self.rng.normal(0, 0.4, n_sites)
        self.walk_mu = np.zeros(n_sites)
        self.walk_s = np.zeros(n_sites)
        C = layout.max_channels
        self.ch_off = self.rng.normal(0, 0.3, (n_sites, C))
        self.ch_scale = np.exp(self.rng.normal(0, 0.2, (n_sites, C)))
        self.ch_walk = np.zeros((n_sites, C))
        self.pct_z = _qnorm(np.asarray(layout.percentile_levels) / 100.0)
        g = np.clip(np.asarray(layout.group_levels) / 100.0, 0.001, 0.999)
        self.grp_z = _qnorm(g)
        n_grad = max((e.grad_index for e in layout.layers if e.grad_index is not None), default=-1) + 1
        self.n_grad = n_grad
        depth = np.linspace(0, 1, max(n_grad, 1))
        self.g0 = 10 ** (-1.0 - 2.0 * (1 - depth))  # vanishing towards the input
        self.w0 = self.rng.uniform(3, 8, n_grad)
        self.grad_walk = np.zeros(n_grad)
        self.module_walk: dict[str, np.ndarray] = {}
        from normviz.record.rows import Packing

        self.packing = Packing(layout)  # the recorder's own packing of a row

    def block(self, t0: int, n: int, f4: np.ndarray, f8: np.ndarray) -> None:
        rng, layout = self.rng, self.layout
        t = np.arange(t0, t0 + n, dtype=np.float64)[:, None]
        n_sites = len(layout.sites)
        walk_mu = self.walk_mu + np.cumsum(rng.normal(0, 0.003, (n, n_sites)), axis=0)
        self.walk_mu = walk_mu[-1]
        walk_s = self.walk_s + np.cumsum(rng.normal(0, 0.002, (n, n_sites)), axis=0)
        self.walk_s = walk_s[-1]
        frac = t / self.steps
        s = self.s0 * np.exp(self.trend * frac + walk_s + 0.02 * rng.normal(size=(n, n_sites)))
        mu = self.mu0 + self.s0 * (0.5 * np.sin(2 * np.pi * t / self.period + self.phase) + walk_mu)
        # rare spikes, so that envelopes have extremes to keep
        spike = rng.random((n, n_sites)) < 2e-4
        s = np.where(spike, s * 6.0, s)
        C = layout.max_channels
        ch_walk = self.ch_walk + np.cumsum(rng.normal(0, 0.002, (n, n_sites, C)), axis=0)
        self.ch_walk = ch_walk[-1]
        ch_mean = mu[:, :, None] + s[:, :, None] * (self.ch_off + ch_walk + 0.05 * rng.normal(size=(n, n_sites, C)))
        ch_var = (s[:, :, None] * self.ch_scale) ** 2 * np.exp(0.1 * rng.normal(size=(n, n_sites, C)))
        for st in layout.stats:
            vec_name, start, width = self.packing.slot(st)
            out = (f4 if vec_name == "f4" else f8)[:, start : start + width]
            for j, r in enumerate(st.rows):
                lo, hi = st.offsets[j], st.offsets[j + 1]
                w = hi - lo
                out[:, lo:hi] = self._values(st.group, st.name, r, w, j, n, t, mu, s, ch_mean, ch_var)

    def _values(self, group, name, r, w, j, n, t, mu, s, ch_mean, ch_var):  # noqa: ANN001, PLR0911
        rng = self.rng
        if group == "grad":
            g = self.g0[r] * np.exp(-0.8 * t[:, 0] / self.steps) * np.exp(0.3 * rng.normal(size=n))
            w0 = self.w0[r] * (1 + 0.2 * t[:, 0] / self.steps)
            if name == "grad_norm":
                return g[:, None]
            if name == "grad_abs_mean":
                return (g / 60.0)[:, None]
            if name == "grad_abs_max":
                return (g / 60.0 * np.exp(rng.uniform(1.5, 3.0, n)))[:, None]
            if name == "weight_norm":
                return w0[:, None]
            return (0.01 * g / w0)[:, None]  # update_ratio
        if group == "module":
            key = f"{name}:{r}"
            walk = self.module_walk.get(key, np.zeros(w))
            steps = np.cumsum(rng.normal(0, 0.001, (n, w)), axis=0) + walk
            self.module_walk[key] = steps[-1]
            if name == "weight":
                return 1.0 + steps
            if name == "bias":
                return steps
            if name == "running_mean":
                return steps * 5
            return np.exp(steps)  # running_var
        m, sd = mu[:, r], s[:, r]
        if name == "channel_mean":
            return ch_mean[:, r, :w]
        if name == "channel_var":
            return ch_var[:, r, :w]
        if name == "mean":
            return m[:, None]
        if name == "std":
            return sd[:, None]
        if name == "min":
            return (m - sd * (3.5 + rng.exponential(0.3, n)))[:, None]
        if name == "max":
            return (m + sd * (3.5 + rng.exponential(0.3, n)))[:, None]
        if name == "percentiles":
            return m[:, None] + sd[:, None] * (self.pct_z[None, :w] + 0.01 * np.sort(rng.normal(size=(n, w)), axis=1))
        if name == "hist":
            sample = self.layout.sample_size
            z = (self.edges[r][None, :] - m[:, None]) / sd[:, None]
            cdf = _cdf(z)
            p = np.concatenate([cdf[:, :1], np.diff(cdf, axis=1), 1 - cdf[:, -1:]], axis=1)[:, :w]
            counts = np.floor(p * sample)
            counts[np.arange(n), np.argmax(p, axis=1)] += sample - counts.sum(axis=1)
            return counts
        if name == "nonfinite":
            return np.zeros((n, 1))
        if name == "numel":
            return np.full((n, 1), 128 * 64.0)
        if name == "group_mean":
            return m[:, None] + 0.3 * sd[:, None] * self.grp_z[None, :w]
        if name == "group_scale":
            return sd[:, None] * np.exp(0.2 * self.grp_z[None, :w])
        if name == "output_grad_norm":
            return (0.05 * np.exp(-t[:, 0] / self.steps) * np.exp(0.2 * rng.normal(size=n)))[:, None]
        return rng.normal(size=(n, w))  # a statistic this script does not know


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the run file to write (must not exist)")
    ap.add_argument("--steps", type=int, default=20_000, help="recorded steps (default 20000)")
    ap.add_argument("--blocks", type=int, default=50, help="Linear+BatchNorm blocks: 2 layers each (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.out.exists():
        ap.error(f"{args.out} exists")
    from normviz.store.writer import RunWriter

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        layout, edges, attrs = recorded_template(args.blocks, 64, Path(scratch))
    attrs["meta"]["label"] = "large-synthetic"
    attrs["meta"]["user"] = {"synthetic": True, "steps": args.steps}
    synth = Synth(layout, edges, args.steps, args.seed)
    sizes = synth.packing.sizes
    print(f"layout: {len(layout.layers)} layers, {len(layout.sites)} sites, "
          f"{sizes['f4']} float32 + {sizes['f8']} float64 values per step", file=sys.stderr)
    block = 500

    def unpack(rows: list) -> dict:  # the rows as this script packed them, by dataset
        return synth.packing.unpack(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))

    writer = RunWriter(args.out, attrs, flush_every=block, flush_secs=3600.0, on_error="raise", finish=unpack)
    writer.open(layout, edges)
    rng = np.random.default_rng(args.seed + 1)
    loss = 2.0
    for t0 in range(0, args.steps, block):
        n = min(block, args.steps - t0)
        f4 = np.empty((n, sizes["f4"]), dtype=np.float32)
        f8 = np.empty((n, sizes["f8"]), dtype=np.float64)
        synth.block(t0, n, f4, f8)
        scalars = []
        for i in range(n):
            step = t0 + i
            loss = max(0.01, loss * (1 - 1e-4) + 0.01 * rng.normal())
            lr = 0.1 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            writer.write_row(step, 0.05 * step, f4[i], f8[i])
            scalars.append((step, {"loss": loss, "lr": lr}))
        writer.write_scalars(scalars)
        writer.check()
        if (t0 // block) % 8 == 0:
            print(f"  {t0 + n}/{args.steps} steps, {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    writer.close()
    writer.check()
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {len(layout.layers)} layers, {len(layout.sites)} sites, {args.steps} recorded steps, "
          f"{size / 2**20:.0f} MiB ({size / args.steps / 1024:.1f} KiB per step) in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
