"""How the rank files of a sharded run add up (pure NumPy): the channel slices of a
tensor-parallel activation, and the unreduced partial gradients of sequence-parallel
parameters. Used by :class:`normviz.merge.MergedRun`; see ``docs/distributed.md``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from normviz.analysis.ranks import nan0, nansum_ranks, pool_moments, reduce_ranks


def global_entry(entries: Sequence[Any], kept: Sequence[int]) -> Any:
    """A site as the merged run shows it: a channel-sliced one with its global channels."""
    first = entries[0]
    if first.global_channels is None:
        return first
    from dataclasses import replace

    index, _ = sliced_index(entries, kept)
    whole = len(index) == first.global_channels
    return replace(first, channels=first.global_channels, channel_index=None if whole else index,
                   channel_offset=0, global_channels=None, counted=True)


def sliced_index(entries: Sequence[Any], kept: Sequence[int]) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """The global channels the ranks' slices store — those of ``kept``, the channels of the
    global axis the recorder keeps (:func:`normviz.store.layout.kept_channels`) — and for
    each the (rank, stored column) pairs that hold it."""
    chosen = set(kept)
    holders: dict[int, list[tuple[int, int]]] = {}
    for r, e in enumerate(entries):
        local = e.channel_index if e.channel_index is not None else list(range(e.channels))
        for col, c in enumerate(local):
            g = e.channel_offset + int(c)
            if g in chosen:
                holders.setdefault(g, []).append((r, col))
    index = sorted(holders)
    return index, [holders[g] for g in index]


def pool_channel_slices(entries: Sequence[Any], owners: list[list[tuple[int, int]]], n: np.ndarray,
                        means: Sequence[np.ndarray], variances: Sequence[np.ndarray], name: str) -> np.ndarray:
    """``channel_mean`` or ``channel_var`` (``name``) on the global channel axis of a site whose
    ranks hold slices of its channels: for each kept channel (``owners``, from
    :func:`sliced_index`) the ranks holding it pooled by their element counts ``n``
    ([ranks, steps]); ``means``, ``variances``: each rank's stored per-channel series."""
    out = np.full((n.shape[1], len(owners)), np.nan)
    for col, holders in enumerate(owners):
        if not holders:
            continue
        # a rank's count per channel: its element count over its channels
        cn = np.stack([n[r] / max(entries[r].channels, 1) for r, _ in holders])
        cm = np.stack([means[r][:, c] for r, c in holders]).astype(np.float64)
        cv = np.stack([variances[r][:, c] for r, c in holders]).astype(np.float64)
        _, m, v = pool_moments(cn, cm, cv)
        out[:, col] = m if name == "channel_mean" else v
    return out


def add_partial_gradients(sums: dict[str, np.ndarray], names: list[str], layers: list[str], offsets: list[int],
                          values: np.ndarray) -> None:
    """Add the unreduced partial gradients, already summed over the ranks (``values``,
    [steps, columns]: layer ``layers[k]``'s in ``offsets[k]:offsets[k + 1]``), to the
    per-layer sums (``grad_sumsq``, ``grad_abs_sum``, ``grad_count``, ``grad_nonfinite``,
    ``grad_abs_max``; columns in ``names`` order), in place."""
    column = {n: j for j, n in enumerate(names)}
    for k, layer in enumerate(layers):
        v, j = values[:, offsets[k]:offsets[k + 1]], column[layer]
        for key, part in (("grad_sumsq", (v**2).sum(axis=1)), ("grad_abs_sum", np.abs(v).sum(axis=1)),
                          ("grad_count", np.full(len(v), float(v.shape[1]))),
                          ("grad_nonfinite", (~np.isfinite(v)).sum(axis=1).astype(np.float64))):
            sums[key][:, j] = nan0(sums[key][:, j]) + part
        sums["grad_abs_max"][:, j] = np.fmax(sums["grad_abs_max"][:, j], np.abs(v).max(axis=1))


def angle_between(before: np.ndarray, after: np.ndarray, change: np.ndarray) -> np.ndarray:
    """The angle between two vectors from their norms ‖w‖, ‖w′‖ and ‖w′ − w‖, by the half-angle
    form that stays accurate for tiny angles (as the recorder computes it on one process)."""
    d = before - after
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.clip((change - d) * (change + d) / (4.0 * before * after), 0.0, 1.0)
        return 2.0 * np.arcsin(np.sqrt(s))


def sharded_gradient(name: str, names: list[str], per_rank: Callable[[str], np.ndarray],
                     partial: tuple[list[str], list[int], np.ndarray] | None) -> np.ndarray:
    """A gradient statistic of a sharded model from its ranks' partial sums: ``per_rank(stat)``
    gives ``[ranks, steps, layers]`` of one recorded statistic; ``partial``: the unreduced
    partial gradients summed over the ranks, as (layers, offsets, values), or None."""
    if name in ("grad_norm", "grad_abs_mean", "grad_abs_max", "grad_sumsq", "grad_abs_sum", "grad_count",
                "grad_nonfinite"):
        sums = {k: nansum_ranks(per_rank(k)) for k in ("grad_sumsq", "grad_abs_sum", "grad_count", "grad_nonfinite")}
        sums["grad_abs_max"] = reduce_ranks(per_rank("grad_abs_max"), np.fmax)
        if partial is not None:
            add_partial_gradients(sums, names, *partial)
        with np.errstate(invalid="ignore", divide="ignore"):
            if name == "grad_norm":
                return np.sqrt(sums["grad_sumsq"])
            if name == "grad_abs_mean":
                return sums["grad_abs_sum"] / sums["grad_count"]
        return sums[name]
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "weight_norm":
            return np.sqrt(nansum_ranks(per_rank("weight_sumsq")))
        if name == "update_ratio":
            return np.sqrt(nansum_ranks(per_rank("update_sumsq")) / nansum_ranks(per_rank("weight_sumsq")))
        if name == "update_angle":
            return angle_between(np.sqrt(nansum_ranks(per_rank("weight_sumsq"))),
                                 np.sqrt(nansum_ranks(per_rank("weight_after_sumsq"))),
                                 np.sqrt(nansum_ranks(per_rank("update_sumsq"))))
    return nansum_ranks(per_rank(name))  # the partial sums themselves, plugins' statistics: summed
