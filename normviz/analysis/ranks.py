"""The ranks of a multi-rank run, measured: pooling their moments exactly, and how far each
rank's BatchNorm batch statistics are from the pooled ones (:func:`rank_spread`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normviz.errors import MissingDataError


def nan0(a: np.ndarray) -> np.ndarray:
    """``a`` with every non-finite value 0."""
    return np.where(np.isfinite(a), a, 0.0)


def reduce_ranks(data: np.ndarray, fn: Any) -> np.ndarray:
    """``fn`` (e.g. ``np.fmax``) folded over axis 0, the ranks."""
    out = data[0]
    for d in data[1:]:
        out = fn(out, d)
    return out


def nansum_ranks(data: np.ndarray) -> np.ndarray:
    """The sum over axis 0 (the ranks) ignoring NaN; NaN where every rank is NaN."""
    allnan = np.all(np.isnan(data), axis=0)
    return np.where(allnan, np.nan, np.nansum(data, axis=0))


def pool_moments(
    n: np.ndarray, mean: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact pooled mean and (population) variance over ranks, axis 0 indexing ranks.

    ``n``: ``[R, S]`` counts (NaN where a rank has no value); ``mean``, ``var``:
    ``[R, S, ...]``. Returns ``(N, m, v)`` with NaN where no rank has a value.
    """
    n = np.asarray(n, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    w = np.where(np.isfinite(n), n, 0.0)
    w = w.reshape(w.shape + (1,) * (mean.ndim - w.ndim))
    w = np.where(np.isnan(mean), 0.0, w)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (w * nan0(mean)).sum(axis=0) / total
        v = (w * (nan0(var) + (nan0(mean) - m) ** 2)).sum(axis=0) / total
    m = np.where(total > 0, m, np.nan)
    v = np.where(total > 0, v, np.nan)
    return total, m, v


def global_statistics(layer: Any) -> bool:
    """True for a BatchNorm layer that normalizes with the statistics of all ranks
    (its class name contains ``SyncBatchNorm``)."""
    return "SyncBatchNorm" in str(getattr(layer, "module_type", ""))


@dataclass(frozen=True)
class RankSpread:
    """How far each rank's BatchNorm batch statistics are from the pooled ones, over training.

    Arrays are ``[steps, ranks]``:

    ``input_mean``
        mean over the stored channels of |m_r − m| / sqrt(v): rank r's batch mean
        of the layer's input against the pooled mean, in pooled standard deviations.
    ``input_var``
        mean over channels of |log(v_r / v)|: the same for the variance.
    ``used_mean``, ``used_var``
        the same for the statistics the layer *normalizes with*: the rank's own
        (``input_*``) for BatchNorm, the pooled ones (0) for SyncBatchNorm.
    ``running_mean``
        mean over channels of |rm_r − rm| / sqrt(rv) of the running means after
        each step, rm the ranks' average (NaN without running statistics):
        measured from the module state, ~0 when every rank updated with the same
        (global) batch statistics.
    ``values_per_channel``
        numel_r / channels: the values one channel statistic averages over on
        rank r (the per-rank batch size times the spatial size).
    """

    layer: str
    module_type: str
    synced: bool
    steps: np.ndarray
    input_mean: np.ndarray
    input_var: np.ndarray
    used_mean: np.ndarray
    used_var: np.ndarray
    running_mean: np.ndarray
    values_per_channel: np.ndarray


def rank_spread(run: Any, layer: str, *, call: int = 0, steps: slice | None = None) -> RankSpread:
    """The per-rank spread of a BatchNorm layer's batch statistics (:class:`RankSpread`)."""
    info = next((lay for lay in run.layers if lay.name == layer), None)
    if info is None:
        raise MissingDataError(f"{run.path}: no layer {layer!r}", layer=layer)
    n = run.per_rank("numel", layer, "input", call=call, steps=steps)
    mean = run.per_rank("channel_mean", layer, "input", call=call, steps=steps)
    var = run.per_rank("channel_var", layer, "input", call=call, steps=steps)
    _, m, v = pool_moments(n, mean, var)
    with np.errstate(invalid="ignore", divide="ignore"):
        d_mean = np.nanmean(np.abs(mean - m[None]) / np.sqrt(v[None]), axis=-1).T
        d_var = np.nanmean(np.abs(np.log(var / v[None])), axis=-1).T
    synced = global_statistics(info)
    used_mean = np.zeros_like(d_mean) if synced else d_mean
    used_var = np.zeros_like(d_var) if synced else d_var
    running = np.full_like(d_mean, np.nan)
    if "running_mean" in run.statistics.get("module", []) and "running_var" in run.statistics.get("module", []):
        try:
            rm = run.module_stat_per_rank("running_mean", layer, steps=steps)
            rv = run.module_stat_per_rank("running_var", layer, steps=steps).mean(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                running = np.nanmean(np.abs(rm - rm.mean(axis=0)[None]) / np.sqrt(rv[None]), axis=-1).T
        except MissingDataError:
            pass
    channels = info.channels or mean.shape[-1]
    sel = steps if steps is not None else slice(None)
    return RankSpread(layer, info.module_type, synced, run.steps[sel], d_mean, d_var, used_mean, used_var,
                      running, (n / channels).T)
