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

import os
import re
from pathlib import Path

__all__ = ["RANK_SUFFIX", "current_rank", "rank_path", "split_rank"]

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
