"""The paper reproductions' findings, measured from a recorded run with NumPy alone.

Each ``*_findings`` function reads a run of one experiment of
:mod:`normviz.experiments.papers` through the reader's public methods
(``normviz.open(path)``) and returns the numbers the paper states, so the tests,
``benchmarks/papers_report.py`` and the gallery check a finding without torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from normviz.analysis.correlation import spearman

__all__ = [
    "SMOOTHING_COPIES",
    "final_loss",
    "ioffe_findings",
    "label_smoothing_findings",
    "santurkar_findings",
    "wu_he_batch_findings",
    "wu_he_fig6_findings",
    "xiong_findings",
]

#: The copies of one classifier that ``label-smoothing`` trains, one per loss (layers
#: ``copies.<name>.*``, scalars ``loss_<name>``, ``test_acc_<name>``): the keys of
#: :data:`normviz.experiments.papers.label_smoothing.SMOOTHING_VARIANTS`.
SMOOTHING_COPIES: tuple[str, ...] = ("ce", "seed", "torch")


def last_finite(values: np.ndarray) -> float:
    """The last finite value of a series (NaN if it has none)."""
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


def _at_step(run: Any, name: str, step: int) -> float:
    """A sparse scalar (e.g. test accuracy) at the last step <= ``step`` where it was given."""
    values, steps = run.scalar(name), run.scalar_steps
    keep = np.isfinite(values) & (steps <= step)
    return float(values[keep][-1]) if keep.any() else math.nan


def final_loss(run: Any, name: str = "loss", last: int = 1) -> float:
    """Mean of the last ``last`` values of a scalar."""
    values = run.scalar(name)
    values = values[np.isfinite(values)]
    return float(values[-last:].mean())


def label_smoothing_findings(run: Any, *, last: int = 5) -> dict[str, dict[str, float]]:
    """Per variant (``ce``, ``seed``, ``torch``): logit statistics of its ``head`` at the end of training.

    ``std`` (spread of the logits over batch and classes), ``max``, ``range`` (99th − 1st
    percentile), ``rms`` (√(mean² + std²), the logit norm per entry), each averaged over
    the last ``last`` recorded steps; ``test_acc`` last measured.
    """
    out: dict[str, dict[str, float]] = {}
    levels = list(run.layout.percentile_levels)
    for name in SMOOTHING_COPIES:
        layer = f"copies.{name}.head"
        rows = slice(-last, None)
        std = run.stat("std", layer, steps=rows)
        mean = run.stat("mean", layer, steps=rows)
        pct = run.stat("percentiles", layer, steps=rows)
        out[name] = {
            "std": float(std.mean()),
            "max": float(run.stat("max", layer, steps=rows).mean()),
            "range": float((pct[:, levels.index(99.0)] - pct[:, levels.index(1.0)]).mean()),
            "rms": float(np.sqrt(mean**2 + std**2).mean()),
            "test_acc": last_finite(run.scalar(f"test_acc_{name}")),
        }
    return out


def ioffe_findings(run: Any, *, layer: str = "norm3", t0: int = 100, acc_step: int = 500) -> dict[str, float]:
    """Ioffe & Szegedy Fig. 1 figures from the per-unit 15/50/85th percentiles of ``layer``'s output.

    ``spread_ratio``: median over the stored units of spread(T)/spread(t0), spread = q85 − q15,
    T the last recorded step. ``shift``: median of mean_k |q_k(T) − q_k(t0)| / mean_t spread(t)
    (t ≥ t0). ``pooled_spread_ratio``: the same ratio from the pooled percentiles of all
    units. ``acc_early`` (test accuracy at ``acc_step``) and ``acc_final``.
    """
    levels = list(run.layout.percentile_levels)
    i15, i50, i85 = (levels.index(v) for v in (15.0, 50.0, 85.0))
    per = run.stat("channel_percentiles", layer, "output")
    q = per.reshape(per.shape[0], -1, len(levels))
    steps = np.asarray(run.steps)
    a = int(np.searchsorted(steps, t0))
    spread = q[:, :, i85] - q[:, :, i15]
    ratio = spread[-1] / spread[a]
    shift = np.mean([np.abs(q[-1, :, k] - q[a, :, k]) for k in (i15, i50, i85)], axis=0) / spread[a:].mean(0)
    pooled = run.stat("percentiles", layer, "output")
    pooled_spread = pooled[:, i85] - pooled[:, i15]
    return {
        "spread_ratio": float(np.median(ratio)),
        "shift": float(np.median(shift)),
        "pooled_spread_ratio": float(pooled_spread[-1] / pooled_spread[a]),
        "acc_early": _at_step(run, "test_acc", acc_step),
        "acc_final": last_finite(run.scalar("test_acc")),
        "t0": float(steps[a]),
        "T": float(steps[-1]),
    }


def xiong_findings(run: Any) -> dict[str, dict[str, Any]]:
    """Per stack (``pre``, ``post``) and FFN weight (``fc`` = W¹, ``proj`` = W²): gradient norm vs depth.

    ``norms``: the recorded gradient norm of each block's layer averaged over the recorded
    steps (weight and bias together; the biases start at 0 and add little);
    ``spearman``: Spearman correlation of norm with block index; ``last_first``: ratio of the
    last block's norm to the first's.
    """
    names, grad = run.grad("grad_norm")
    mean = np.nanmean(grad, axis=0)
    col = {n: i for i, n in enumerate(names)}
    out: dict[str, dict[str, Any]] = {}
    for stack in ("pre", "post"):
        for sub in ("fc", "proj"):
            keys = [k for k in names if k.startswith(f"{stack}.blocks.") and k.endswith(f".mlp.{sub}")]
            keys.sort(key=lambda k: int(k.split(".")[2]))
            norms = np.array([mean[col[k]] for k in keys])
            out[f"{stack}.{sub}"] = {
                "norms": norms,
                "spearman": spearman(np.arange(len(norms)), norms),
                "last_first": float(norms[-1] / norms[0]),
            }
    return out


def _probe_sizes(run: Any, layer: str) -> np.ndarray:
    """Batch size of each call of ``layer`` relative to call 0, from the recorded ``numel``."""
    calls = next(info.calls for info in run.layers if info.name == layer)
    numel = np.array([np.nanmean(run.stat("numel", layer, "input" if _is_norm(run, layer) else "output", call=c))
                      for c in range(calls)])
    return numel / numel[0]


def _is_norm(run: Any, layer: str) -> bool:
    return any(info.name == layer and info.kind is not None for info in run.layers)


def wu_he_batch_findings(run: Any, *, batch: int = 32, skip: float = 0.5) -> dict[str, Any]:
    """How the statistics a norm normalizes with depend on the batch size (probe calls of ``wu-he-batch``).

    For each norm layer (``net.norm1..4``) and call (batch ``m``, call 0 = the training batch):

    * ``mean_dev`` (BatchNorm runs only): mean over channels of |batch mean − running mean| /
      √running var, with the running statistics of the previous recorded step (independent
      of this batch); Wu & He: BN's estimate gets noisy as the batch shrinks, ~1/√m.
    * ``scale``: the median over normalization groups of their std (``group_scale``), relative
      to call 0 — per channel over the batch for BN, per (sample, group) for GN.

    Averaged over recorded steps after the first ``skip`` fraction. ``slope``: least-squares slope
    of log ``mean_dev`` against log ``m`` per layer (−0.5 for 1/√m). ``r2``: how well
    ``mean_dev² = a/m + b`` fits (noise variance ∝ 1/m plus a batch-independent floor: the
    running statistics lag behind the moving weights); ``floor_share``: b / mean_dev² at the
    smallest batch.
    """
    norms = [info.name for info in run.layers if info.kind is not None and info.name.startswith("net.norm")]
    sizes = np.round(_probe_sizes(run, norms[0]) * batch).astype(int)
    n_rows = len(run.steps)
    start = max(1, int(skip * n_rows))
    out: dict[str, Any] = {"m": sizes, "layers": {}}
    levels = list(run.layout.group_levels)
    for layer in norms:
        entry: dict[str, Any] = {}
        if run.norm_kind != "none":
            scales = []
            for call in range(len(sizes)):
                group_scale = run.stat("group_scale", layer, "input", call=call)[start:, levels.index(50.0)]
                scales.append(np.nanmean(group_scale))
            entry["scale"] = np.array(scales) / scales[0]
        if run.norm_kind == "batch":
            running_mean = run.module_stat("running_mean", layer)
            running_std = np.sqrt(run.module_stat("running_var", layer))
            devs = []
            for call in range(len(sizes)):
                mean = run.stat("channel_mean", layer, "input", call=call)
                dev = np.abs(mean[start:] - running_mean[start - 1 : -1]) / running_std[start - 1 : -1]
                devs.append(float(np.nanmean(dev)))
            entry["mean_dev"] = np.array(devs)
            entry["slope"] = float(np.polyfit(np.log(sizes), np.log(entry["mean_dev"]), 1)[0])
            # deviation² = a/m + b: batch-mean noise (∝ 1/m) plus a floor that does not depend on the
            # batch (the running statistics lag behind weights that move).
            inv, sq = 1.0 / sizes, entry["mean_dev"] ** 2
            a, b = np.polyfit(inv, sq, 1)
            fit = a * inv + b
            entry["r2"] = float(1.0 - ((sq - fit) ** 2).sum() / ((sq - sq.mean()) ** 2).sum())
            entry["floor_share"] = float(max(b, 0.0) / sq[np.argmin(sizes)])
        out["layers"][layer] = entry
    return out


def wu_he_fig6_findings(run: Any, *, layer: str = "net.conv4", window: float = 0.1) -> dict[str, float]:
    """Wu & He Fig. 6: the 1/20/80/99th percentiles of ``layer``'s output (before its norm) over training.

    ``range_start`` / ``range_end``: 99th − 1st percentile averaged over the first / last
    ``window`` of the recorded steps; ``growth``: their ratio; ``p1`` … ``p99`` at the end.
    """
    levels = list(run.layout.percentile_levels)
    pct = run.stat("percentiles", layer, "output", call=0)
    k = max(1, int(window * len(pct)))
    rng = pct[:, levels.index(99.0)] - pct[:, levels.index(1.0)]
    out = {"range_start": float(rng[:k].mean()), "range_end": float(rng[-k:].mean())}
    out["growth"] = out["range_end"] / out["range_start"]
    for level in (1.0, 20.0, 80.0, 99.0):
        out[f"p{level:g}"] = float(pct[-k:, levels.index(level)].mean())
    return out


def santurkar_findings(run: Any) -> dict[str, float]:
    """Gradient-ICS figures from the ``ics_rel/…`` and ``ics_cos/…`` scalars of a run.

    Medians over every measured (layer, step): ``l2`` (‖G − G′‖), ``rel`` (‖G − G′‖/‖G‖), ``cos``, and
    ``frac_cos_below_0.9``; ``min_cos``.
    """
    def pooled(prefix: str) -> np.ndarray:
        values = np.concatenate([run.scalar(n) for n in run.scalar_names if n.startswith(prefix)])
        return values[np.isfinite(values)]

    l2, rel, cos = pooled("ics_l2/"), pooled("ics_rel/"), pooled("ics_cos/")
    return {
        "l2": float(np.median(l2)),
        "rel": float(np.median(rel)),
        "cos": float(np.median(cos)),
        "frac_cos_below_0.9": float(np.mean(cos < 0.9)),
        "min_cos": float(cos.min()),
        "measurements": float(cos.size),
    }


def he_outlier_findings(run: Any, *, last: int = 1) -> dict[str, Any]:
    """He et al. 2024's outlier features from a recorded ``he-outliers`` run: the kurtosis of
    channel RMS (``rms_kurtosis``) of the residual stream — the inputs of the norm slots
    (``none`` slots included), attention's QK-norms left out — at the first recorded step
    and the mean of the ``last`` recorded steps, as its largest value over the layers, and
    which layer holds it."""
    sites, values = run.stat_all("rms_kurtosis")
    cols = [i for i, s in enumerate(sites) if s.role == "input" and s.kind is not None and ".attn." not in
            f".{s.layer}."]
    if not cols:
        raise ValueError(f"{run.path}: no norm-slot input with rms_kurtosis")
    kurt = np.asarray(values, dtype=np.float64)[:, cols]
    final = np.nanmean(kurt[-last:], axis=0)
    return {
        "kurtosis_init": float(np.nanmax(kurt[0])),
        "kurtosis_final": float(np.nanmax(final)),
        "top_layer": sites[cols[int(np.nanargmax(final))]].layer,
        "per_layer_final": {sites[c].layer: float(v) for c, v in zip(cols, final)},
    }


def massive_findings(run: Any, layer: str, role: str = "input", *, top: int = 3) -> dict[str, Any]:
    """Sun et al. 2024's massive activations at one site from the opt-in ``massive_activations``:
    the largest |x| and its ratio to the sample's median |x| at the first and the last recorded
    step, the channel of the largest at each step, and how often the most frequent of those
    channels holds it over the second half of the run."""
    data = np.asarray(run.stat("massive_activations", layer, role), dtype=np.float64)
    top1, channel, position, median = data[:, 0], data[:, top], data[:, 2 * top], data[:, 3 * top]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = top1 / median
    half = channel[len(channel) // 2:]
    half = half[np.isfinite(half)]
    values, counts = np.unique(half, return_counts=True) if half.size else (np.array([np.nan]), np.array([0]))
    return {
        "top1_init": float(top1[0]), "top1_final": float(top1[-1]),
        "ratio_init": float(ratio[0]), "ratio_final": float(ratio[-1]),
        "channels": channel, "positions": position, "ratio": ratio,
        "modal_channel": float(values[np.argmax(counts)]),
        "modal_share": float(counts.max() / max(half.size, 1)),
        "massive": bool(top1[-1] > 100 and ratio[-1] > 1000),  # Sun et al.'s criterion
    }


def attention_findings(run: Any) -> dict[str, float]:
    """Attention-logit growth and entropy collapse from the opt-in attention statistics of every
    attention layer: the largest logit over heads, layers and recorded steps, and the entropy at the
    last recorded step averaged over heads and layers (and its lowest head)."""
    sites = [run.sites[r] for r in run.layout.stat("act", "attention_max_logit").rows]
    logit = np.stack([np.asarray(run.stat("attention_max_logit", s.layer, call=s.call), dtype=np.float64)
                      for s in sites], axis=1)  # [steps, layers, heads]
    entropy = np.stack([np.asarray(run.stat("attention_entropy", s.layer, call=s.call), dtype=np.float64)
                        for s in sites], axis=1)
    return {
        "max_logit": float(np.nanmax(logit)),
        "max_logit_final": float(np.nanmax(logit[-1])),
        "entropy_final": float(np.nanmean(entropy[-1])),
        "entropy_min_final": float(np.nanmin(entropy[-1])),
        "entropy_init": float(np.nanmean(entropy[0])),
    }
