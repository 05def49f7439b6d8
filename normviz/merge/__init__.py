"""Merge the per-rank files of one torchrun run — DDP, FSDP2, HSDP, tensor parallel — (pure
NumPy on :class:`Run` objects).

:func:`merge_ranks` replaces the rank files of each multi-rank run by one
:class:`MergedRun`, which answers the reader's API (``stat``, ``steps``, ``layers``,
``scalar``, …) with the statistics of the global batch. What is exact and what is
approximate, statistic by statistic, is tabled in ``docs/distributed.md``: in short,
moments, extrema, counts, histograms over shared edges, and a sharded model's gradients,
weights and updates (from the ranks' partial sums) are exact; percentiles and group
percentiles are numel-weighted averages of the ranks'; a DDP run's gradients and module
tensors are rank 0's; scalars are the mean over ranks.

Ranks are aligned on the training steps they all recorded. :func:`rank_spread`
summarizes how far each rank's BatchNorm batch statistics are from the pooled
ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from normviz.analysis.ranks import RankSpread, global_statistics, pool_moments, rank_spread
from normviz.distributed import split_rank
from normviz.merge.run import RANK_LABEL, MergedRun

__all__ = ["MergedRun", "RankSpread", "global_statistics", "merge_ranks", "pool_moments", "rank_spread"]


def _group_key(run: Any) -> tuple[str, ...] | None:
    if getattr(run, "world_size", 1) <= 1 or isinstance(run, MergedRun):
        return None
    base, rank = split_rank(run.path)
    if rank is not None:
        return ("file", str(Path(base).resolve()), str(run.world_size))
    label = RANK_LABEL.sub("", run.label)
    return ("meta", str(Path(run.path).resolve().parent), label, str(run.experiment), str(run.world_size))


def merge_ranks(runs: Sequence[Any]) -> list[Any]:
    """``runs`` with the rank files of each multi-rank run replaced by one :class:`MergedRun`.

    Rank files belong together when they are named ``<run>.rank<R>.h5`` in one
    folder (:func:`normviz.distributed.rank_path`) or, otherwise, share folder,
    label (less any ``.rank<R>``), experiment and world size. Runs of one
    process, runs already merged, and a lone rank file are returned as they are;
    a group with a rank twice is left unmerged, with a warning. The merged run
    takes the place of its first member.
    """
    groups: dict[tuple[str, ...], list[Any]] = {}
    for run in runs:
        key = _group_key(run)
        if key is not None:
            groups.setdefault(key, []).append(run)
    out: list[Any] = []
    done: set[tuple[str, ...]] = set()
    for run in runs:
        key = _group_key(run)
        members = groups.get(key) if key is not None else None
        if members is None or len(members) < 2:
            out.append(run)
            continue
        ranks = [m.rank for m in members]
        if len(set(ranks)) != len(ranks):
            warnings.warn(f"{members[0].path}: ranks {sorted(ranks)} of one run appear twice; not merged", stacklevel=2)
            out.append(run)
            continue
        if key is None or key in done:
            continue
        done.add(key)
        out.append(MergedRun(members))
    return out
