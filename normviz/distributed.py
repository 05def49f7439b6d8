"""Per-rank run files for torchrun / DDP training.

Every rank records its own statistics (its own part of the batch) into its own
file, beside the others::

    runs/ddp.rank0.h5   runs/ddp.rank1.h5   ...

Under torchrun, pass :func:`rank_path` to the recorder::

    rec = normviz.Recorder(model, normviz.distributed.rank_path("runs/ddp.h5"))

With one process (``world_size == 1``) the path is returned unchanged, so the
same script writes ``runs/ddp.h5`` when run with plain ``python``. ``normviz
plot`` (and :func:`normviz.merge.merge_ranks`) finds the files of one run by
this naming and merges them (see ``docs/distributed.md``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["RANK_SUFFIX", "current_rank", "rank_path", "shared_extrema", "split_rank"]

#: The rank part of a per-rank file name: ``<run>.rank<R>.h5``.
RANK_SUFFIX = re.compile(r"\.rank(\d+)$")


def current_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process: the arguments when given, else
    ``torch.distributed`` when it is initialized, else the ``RANK`` and
    ``WORLD_SIZE`` variables torchrun sets, else ``(0, 1)``."""
    if rank is None or world_size is None:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank() if rank is None else rank
                world_size = dist.get_world_size() if world_size is None else world_size
        except Exception:  # noqa: BLE001 - no torch.distributed: fall back to the environment
            pass
    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    return int(rank), int(world_size)


def rank_path(path: str | os.PathLike[str], rank: int | None = None, world_size: int | None = None) -> Path:
    """The run file of this rank: ``run.h5`` → ``run.rank<R>.h5`` when ``world_size > 1``.

    ``rank`` and ``world_size`` default to :func:`current_rank`. With one
    process the path is returned unchanged.
    """
    p = Path(path)
    rank, world_size = current_rank(rank, world_size)
    if world_size <= 1:
        return p
    if rank < 0 or rank >= world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if p.suffix:
        return p.with_name(f"{p.stem}.rank{rank}{p.suffix}")
    return p.with_name(f"{p.name}.rank{rank}.h5")


def split_rank(path: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """``runs/ddp.rank1.h5`` → ``(runs/ddp.h5, 1)``; a path without a rank part → ``(path, None)``."""
    p = Path(path)
    stem = p.name[: len(p.name) - len(p.suffix)] if p.suffix else p.name
    m = RANK_SUFFIX.search(stem)
    if m is None:
        return p, None
    return p.with_name(stem[: m.start()] + p.suffix), int(m.group(1))


def shared_extrema(
    path: str | os.PathLike[str], lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (min, max) per site, reduced over the ranks, so that all the rank files of
    a run fix the same histogram edges and their histograms can be summed when merged.

    Called once per run, at the first recorded step. It is a collective, so it runs only
    when every rank is known to record: ``torch.distributed`` is initialized with more
    than one process and *path* is this rank's :func:`rank_path` file. A rank that
    records alone (``if rank == 0: Recorder(...)`` into a plain path) never waits for the
    others. Ranks whose layouts differ (another number of sites) keep their own extrema.
    """
    try:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return lo, hi
        if split_rank(path)[1] != dist.get_rank():
            return lo, hi
    except Exception:  # noqa: BLE001 - no usable torch.distributed: nothing to share
        return lo, hi
    import warnings

    import torch

    try:
        # First agree that every rank has the same number of sites (a mismatched collective
        # would fail or hang); the answer is the same on every rank.
        n = torch.tensor([lo.numel(), -lo.numel()], dtype=torch.float32, device=lo.device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        if int(n[0].item()) != -int(n[1].item()):
            return lo, hi
        # NaN (a site that did not run, or non-finite data) must not win the reduction.
        lo_r = torch.nan_to_num(lo.float(), nan=math.inf)
        hi_r = torch.nan_to_num(hi.float(), nan=-math.inf)
        both = torch.cat([lo_r, -hi_r])
        dist.all_reduce(both, op=dist.ReduceOp.MIN)
    except RuntimeError as exc:  # e.g. NCCL with statistics on the CPU: the same on every rank
        warnings.warn(
            f"normviz: could not share histogram edges between ranks ({exc}); each rank keeps its own",
            RuntimeWarning,
            stacklevel=2,
        )
        return lo, hi
    lo_s, hi_s = both[: lo.numel()], -both[lo.numel() :]
    # A site with no finite extremum on any rank stays NaN (default edges).
    lo_s = torch.where(torch.isinf(lo_s) & (lo_s > 0), torch.full_like(lo_s, math.nan), lo_s)
    hi_s = torch.where(torch.isinf(hi_s) & (hi_s < 0), torch.full_like(hi_s, math.nan), hi_s)
    return lo_s, hi_s
