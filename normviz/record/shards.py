"""Sharded tensors (DTensor: FSDP2, tensor parallel, HSDP) read through their local shards.

A rank records what it holds, never with a collective in the training step. For each
sharded parameter it records *additive* partial statistics of its local shard (sums of
squares, of |x|, element and non-finite counts; the max |x| reduces by max), so that the
merge can add the ranks' files. A tensor replicated over some mesh dimensions is held
whole by every rank of those dimensions: only the rank at coordinate 0 of each of them
adds its part, the others add 0 (it is counted once). The merge is then a plain sum over
all ranks (see :mod:`normviz.merge` and ``docs/distributed.md``).
"""

from __future__ import annotations

from typing import Any

import torch


def dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor``, or None where torch.distributed is unavailable."""
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # noqa: BLE001 - a torch without distributed support: nothing is a DTensor
        return None
    return DTensor


_DTENSOR = dtensor_type()


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor."""
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (no communication), ``t`` itself otherwise."""
    if is_dtensor(t):
        return t.to_local()  # type: ignore[attr-defined]
    return t


def is_plain(t: Any) -> bool:
    """A tensor the statistics can read: a plain ``torch.Tensor`` or ``nn.Parameter`` (not a subclass)."""
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def placement_names(t: Any) -> list[str]:
    """A DTensor's placements as short names (``S(0)``, ``R``, ``P``), one per mesh dimension."""
    out = []
    for p in t.placements:
        if p.is_shard():
            out.append(f"S({p.dim})")
        elif p.is_replicate():
            out.append("R")
        else:
            out.append("P")
    return out


def counts_here(t: Any) -> bool:
    """Whether this rank adds its part of ``t`` to the merged sums: it is at coordinate 0
    of every mesh dimension over which ``t`` is replicated. A plain tensor of a sharded
    model is a whole copy on every rank: rank 0 adds it."""
    if not is_dtensor(t):
        return _global_rank() == 0  # a plain tensor of a sharded model: a full copy on every rank
    coord = t.device_mesh.get_coordinate()
    if coord is None:  # this rank is not in the tensor's mesh
        return False
    return all(c == 0 for c, p in zip(coord, t.placements) if p.is_replicate())


def module_type_name(module: torch.nn.Module) -> str:
    """The class name a user wrote: ``fully_shard`` swaps a module's class for a subclass
    named ``FSDP<Name>``, which would name the layer differently from the unsharded run."""
    cls = type(module)
    if cls.__name__.startswith("FSDP") and len(cls.__bases__) > 1:
        plain = [b for b in cls.__bases__ if not b.__name__.startswith("FSDP")]
        if plain:
            return plain[0].__name__
    return cls.__name__


def _global_rank() -> int:
    try:
        import torch.distributed as dist

        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    except Exception:  # noqa: BLE001 - no usable torch.distributed: one process
        return 0


def is_partial(t: Any) -> bool:
    """Whether ``t`` is a DTensor whose ranks hold unreduced partial values (``Partial``)."""
    return is_dtensor(t) and any(p.is_partial() for p in t.placements)


def model_parallel_dims(t: Any) -> set[int]:
    """The mesh dimensions over which the parameter ``t`` is split by model parallelism (tensor
    parallel), whose ranks see the same data: those it is sharded on along a dim other than 0
    (FSDP shards dim 0 only; a row-parallel weight is sharded on dim 1), or named for tensor
    parallelism (``tp``, ``tensor``, ``model``)."""
    names = t.device_mesh.mesh_dim_names or ()
    out = {i for i, p in enumerate(t.placements) if p.is_shard() and p.dim % max(t.dim(), 1) != 0}
    out |= {i for i, name in enumerate(names) if any(key in name.lower() for key in ("tp", "tensor", "model"))}
    return out


def mesh_description(t: Any) -> dict[str, Any]:
    """The device mesh of a DTensor, as the rank's file stores it."""
    mesh = t.device_mesh
    return {
        "shape": [int(s) for s in mesh.shape],
        "dim_names": list(mesh.mesh_dim_names) if mesh.mesh_dim_names else None,
        "ranks": mesh.mesh.tolist(),
        "coordinate": mesh.get_coordinate(),
    }


def global_view(t: torch.Tensor) -> torch.Tensor:
    """A 1-D DTensor as a plain tensor of its global length: this rank's values at their
    global offset, NaN where other ranks hold them (no communication). The merge takes,
    at each position, the value of the rank that holds it."""
    if not is_dtensor(t):
        return t
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    values = t.to_local()  # type: ignore[attr-defined]
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)  # type: ignore[attr-defined]
    out = torch.full(tuple(t.shape), float("nan"), dtype=values.dtype, device=values.device)
    if values.numel():
        out[offset[0]: offset[0] + shape[0]] = values
    return out


class ChannelPart:
    """Where a rank's activation sits in the global tensor: its channels are
    ``offset : offset + channels`` of ``global_channels`` (tensor parallel: a column-parallel
    layer's output), and whether this rank counts it (a copy replicated over a mesh
    dimension is counted by the rank at coordinate 0 of that dimension only)."""

    __slots__ = ("offset", "global_channels", "counted")

    def __init__(self, offset: int, global_channels: int | None, counted: bool) -> None:
        self.offset, self.global_channels, self.counted = offset, global_channels, counted


def channel_part(module: torch.nn.Module, source: torch.Tensor, local_t: torch.Tensor,
                 channel_dim: int) -> ChannelPart | None:
    """How the activation ``source`` (seen by this rank as ``local_t``) of ``module`` is split
    over the ranks along its channel axis ``channel_dim``; None for a whole tensor.

    A DTensor says so itself (``Shard`` of the channel dim; ``Replicate`` dims; shards of
    other dims, e.g. tokens, are pooled like data-parallel parts). A plain tensor is a
    channel slice when the module's weight is a DTensor sharded on its output dim (dim 0)
    and the tensor has this rank's rows of it: the output of ``ColwiseParallel``.
    """
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if local_t.dim() == 0:
        return None
    cd = channel_dim % local_t.dim()
    if is_dtensor(source):
        placements = source.placements  # type: ignore[attr-defined]
        counted = counts_here(source)
        if any(p.is_shard() and p.dim % local_t.dim() == cd for p in placements):
            _, offset = compute_local_shape_and_global_offset(source.shape, source.device_mesh, placements)  # type: ignore[attr-defined]
            return ChannelPart(int(offset[cd]), int(source.shape[cd]), counted)
        return None if counted else ChannelPart(0, None, False)
    weight = getattr(module, "weight", None)
    if not is_dtensor(weight) or not any(p.is_shard() and p.dim == 0 for p in weight.placements):  # type: ignore[union-attr]
        return None
    assert weight is not None
    shape, offset = compute_local_shape_and_global_offset(weight.shape, weight.device_mesh, weight.placements)
    rows, total = int(shape[0]), int(weight.shape[0])
    if rows == total or int(local_t.shape[cd]) != rows:
        return None
    return ChannelPart(int(offset[0]), total, True)
