"""Norms and absolute sums of tensors, on their device, as fast as the CPU and GPU allow.

The gradient statistics reduce every parameter of a model at each recorded step and the
output-gradient taps every layer's output gradient: these are the per-tensor reductions
they share, each as a float32 tensor (no host sync).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

_DOT_MIN = 1 << 14  # from this size on, a BLAS dot beats _foreach_norm on CPU (~1.5x)


#: Take the ops chosen for GPUs on any device: for counting a GPU's kernels on a CPU
#: (``benchmarks/op_counts.py --device-path``) and for tests of those paths.
FORCE_DEVICE_PATH = False


def device_kernels(t: torch.Tensor) -> bool:
    """Whether reductions of ``t`` take the ops chosen for GPUs (fewer, larger kernels) rather
    than those fastest on a CPU, where a kernel costs no launch and some fused reductions
    are slower than two simple ones."""
    return FORCE_DEVICE_PATH or t.device.type != "cpu"


def use_foreach(tensors: Sequence[torch.Tensor], batch: bool | None) -> bool:
    """Whether to reduce ``tensors`` with one ``_foreach_norm`` each way rather than per tensor:
    off the CPU (one multi-tensor kernel instead of a few kernels per tensor), or when asked.
    On CPU the per-tensor ops are faster (``_foreach_norm`` of orders 1 and ∞ is 8x slower
    there than ``abs`` + ``sum`` + ``amax``)."""
    if batch is not None:
        return batch
    return bool(tensors) and device_kernels(tensors[0])


def memory_order(t: torch.Tensor) -> tuple[int, ...] | None:
    """The order of *t*'s dims in which its values fill one contiguous block, or None: a
    contiguous tensor, or a channels-last one (inductor's and mixed-precision CNNs' layout)."""
    if t.is_contiguous():
        return tuple(range(t.dim()))
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return (0, 2, 3, 1)
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return (0, 2, 3, 4, 1)
    return None


def dense_flat(t: torch.Tensor) -> torch.Tensor | None:
    """All of *t*'s values as a 1-D view in memory order (see :func:`memory_order`), or None:
    order-free reductions of it need not copy it."""
    if t.is_contiguous():
        return t.view(-1)
    order = memory_order(t)
    return t.permute(order).reshape(-1) if order is not None else None


def sq_norms(tensors: Sequence[torch.Tensor], *, batch: bool | None = None) -> torch.Tensor:
    """Per-tensor squared L2 norms, float32: on CPU a dot product for large contiguous
    float32 tensors and one ``_foreach_norm`` for the others; elsewhere (or ``batch=True``)
    one ``_foreach_norm`` for all."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    small = []
    all_batched = use_foreach(tensors, batch)
    for i, t in enumerate(tensors):
        flat = _dot_flat(t) if not all_batched else None
        if flat is not None:
            out[i] = _sq_dot(flat)
        else:
            small.append(i)
    _fill_small(out, tensors, small)
    return torch.stack(out)  # type: ignore[arg-type]


#: Values per piece in which the CPU paths read a large dense tensor: each BLAS dot
#: accumulates at most this many float32 products (one dot over 10**6 values was 2.5e-5 off
#: float64), a piece of float32 stays in a core's L2 cache, and :func:`abs_norms`'s scratch
#: buffer stays at 1 MiB, not the size of the largest parameter.
_PIECE = 1 << 18


def _sq_dot(flat: torch.Tensor) -> torch.Tensor:
    """‖flat‖² of a 1-D float32 tensor by BLAS dots over pieces of :data:`_PIECE` values."""
    return _total([torch.dot(p, p) for p in flat.split(_PIECE)])


def _partition(large: Iterable[bool]) -> tuple[list[int], list[int]]:
    """The indices where *large* is true, and the others."""
    big: list[int] = []
    rest: list[int] = []
    for i, is_big in enumerate(large):
        (big if is_big else rest).append(i)
    return big, rest


def _total(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of a tensor's per-piece partial results (the one part itself if it had one piece)."""
    return parts[0] if len(parts) == 1 else torch.stack(list(parts)).sum()


def _dot_flat(t: torch.Tensor) -> torch.Tensor | None:
    """*t* as a flat view where a BLAS dot is the fastest way to its squared norm on CPU (large
    dense float32 tensors), else None."""
    return dense_flat(t) if t.dtype == torch.float32 and t.numel() >= _DOT_MIN else None


def _fill_small(out: list[torch.Tensor | None], tensors: Sequence[torch.Tensor], small: Sequence[int]) -> None:
    """``out[i] = ‖tensors[i]‖²`` for every i of *small*, with one ``_foreach_norm``."""
    if not small:
        return
    squares: Sequence[torch.Tensor]
    try:
        norms = torch._foreach_norm([tensors[i] for i in small], 2.0, dtype=torch.float32)
        squares = torch._foreach_mul(norms, norms)
    except (AttributeError, RuntimeError, TypeError):
        squares = [torch.linalg.vector_norm(tensors[i], dtype=torch.float32).square() for i in small]
    for i, sq in zip(small, squares):
        out[i] = sq


def abs_norms(tensors: Sequence[torch.Tensor], *, batch: bool | None = None,
              scratch: Scratch | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tensor ‖t‖², Σ|t| and max|t|, float32 (a gradient's three norms). Off the CPU (or
    ``batch=True``) one ``_foreach_norm`` per order (2, 1, ∞) for all. On CPU each tensor is read
    once: its absolute values go into *scratch*'s buffer (or a fresh tensor) and the three
    reductions read them there while they are in cache (|t|·|t| = t·t, product by product)."""
    if use_foreach(tensors, batch):
        try:
            l1 = torch._foreach_norm(list(tensors), 1.0, dtype=torch.float32)
            linf = torch._foreach_norm(list(tensors), math.inf, dtype=torch.float32)
            return sq_norms(tensors, batch=True), torch.stack(l1), torch.stack(linf)
        except (AttributeError, RuntimeError, TypeError):  # another PyTorch: per tensor below
            pass
    squares: list[torch.Tensor | None] = [None] * len(tensors)
    small, sums, maxes = [], [], []
    for i, t in enumerate(tensors):
        if t.numel() == 0:  # an empty shard (FSDP2 on more ranks than rows): adds nothing
            zero = torch.zeros((), device=t.device)
            squares[i] = zero
            sums.append(zero)
            maxes.append(zero)
            continue
        sq, total, peak = _abs_norms_one(t, scratch)
        sums.append(total)
        maxes.append(peak)
        if sq is not None:
            squares[i] = sq
        else:
            small.append(i)
    _fill_small(squares, tensors, small)
    return torch.stack(squares), torch.stack(sums), torch.stack(maxes)  # type: ignore[arg-type]


def _abs_norms_one(t: torch.Tensor, scratch: Scratch | None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """‖t‖² (None where a dot is not the way: see :func:`sq_norms`), Σ|t| and max|t| of one
    non-empty tensor; a dense one piece by piece through *scratch*, each piece reduced before
    the next overwrites it."""
    flat = dense_flat(t)
    dot = flat is not None and t.dtype == torch.float32 and t.numel() >= _DOT_MIN  # as _dot_flat decides
    # A tensor with gaps: a fresh |t| of its own, in one piece.
    pieces = flat.split(_PIECE) if flat is not None else (t,)
    sums, peaks, dots = [], [], []
    for piece in pieces:
        a = torch.abs(piece, out=scratch.like(piece)) if scratch is not None and flat is not None else piece.abs()
        sums.append(a.sum(dtype=torch.float32))
        peaks.append(a.amax().float())
        if dot:
            flat_a = a.view(-1)
            dots.append(torch.dot(flat_a, flat_a))
    peak = peaks[0] if len(peaks) == 1 else torch.stack(peaks).amax()
    return (_total(dots) if dot else None), _total(sums), peak


def copy_sq_norms(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor], *,
                  batch: bool | None = None) -> torch.Tensor:
    """Copy each tensor of *src* into the contiguous tensor of *dst* at its index, and return
    ‖src‖² per tensor (float32). On CPU a large tensor's norm is taken from its copy right
    after copying it, while in cache: one read of the original instead of two."""
    if use_foreach(src, batch):
        torch._foreach_copy_(list(dst), list(src))
        return sq_norms(dst, batch=True)
    big, rest = _partition(_dot_flat(d) is not None for d in dst)
    if rest:
        torch._foreach_copy_([dst[i] for i in rest], [src[i] for i in rest])
    out: list[torch.Tensor | None] = [None] * len(src)
    for i in big:
        if src[i].is_contiguous():  # piece by piece: each piece's dot reads it right after its copy
            pairs = zip(dst[i].view(-1).split(_PIECE), src[i].view(-1).split(_PIECE))
            out[i] = _total([torch.dot(d.copy_(s), d) for d, s in pairs])
        else:
            out[i] = _sq_dot(dst[i].copy_(src[i]).view(-1))
    _fill_small(out, dst, rest)
    return torch.stack(out)  # type: ignore[arg-type]


def update_sq_norms(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], *,
                    batch: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``before[i] -= after[i]`` in place (contiguous *before*), then per tensor ‖before − after‖²
    and ‖after‖² (float32). On CPU a large tensor's two norms are taken right after its
    subtraction read both, while they are in cache."""
    if use_foreach(after, batch):
        torch._foreach_sub_(list(before), list(after))
        return sq_norms(before, batch=True), sq_norms(after, batch=True)
    flats = [_dot_flat(a) if _dot_flat(b) is not None else None for b, a in zip(before, after)]
    big, rest = _partition(f is not None for f in flats)
    if rest:
        torch._foreach_sub_([before[i] for i in rest], [after[i] for i in rest])
    delta: list[torch.Tensor | None] = [None] * len(before)
    kept: list[torch.Tensor | None] = [None] * len(before)
    for i in big:
        if after[i].is_contiguous():  # piece by piece: both dots read the piece the subtraction just read
            pairs = zip(before[i].view(-1).split(_PIECE), after[i].view(-1).split(_PIECE))
            dots = [(torch.dot(b.sub_(a), b), torch.dot(a, a)) for b, a in pairs]
            delta[i], kept[i] = _total([d for d, _ in dots]), _total([w for _, w in dots])
        else:
            w = flats[i]
            assert w is not None
            delta[i], kept[i] = _sq_dot(before[i].sub_(after[i]).view(-1)), _sq_dot(w)
    _fill_small(delta, before, rest)
    _fill_small(kept, after, rest)
    return torch.stack(delta), torch.stack(kept)  # type: ignore[arg-type]


class Scratch:
    """Kept buffers for per-tensor temporaries, one per (device, dtype), grown to the largest
    tensor asked for (:func:`abs_norms` asks for at most 2**18 values). On CPU a fresh
    temporary the size of a large parameter at every recorded step costs more than the pass
    that fills it: glibc's allocator returns large freed blocks to the OS and maps fresh pages
    for the next one (measured: a deep MLP's recorded step ~2 ms slower, of ~10 ms recording
    adds; see docs/recording.md)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor of *t*'s shape, dtype and device, overwritten by the next call."""
        key = (t.device, t.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < t.numel():
            buf = self._buffers[key] = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
        return buf[: t.numel()].view(t.shape)


def sq_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t‖² as a [1] float32 tensor; BLAS dot for contiguous float32 (2x faster than vector_norm on CPU)."""
    flat = dense_flat(t) if t.dtype == torch.float32 and t.numel() > 0 else None
    if flat is not None:
        return torch.dot(flat, flat).reshape(1)
    return torch.linalg.vector_norm(t, dtype=torch.float32).square().reshape(1)


def angle_between(before: torch.Tensor, after: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """The angle (radians) between two vectors from their norms ``before`` = ‖w‖, ``after`` =
    ‖w′‖ and ``change`` = ‖w′ − w‖, elementwise: θ = 2·asin(sqrt((c − (a−b))(c + (a−b)) / 4ab)).

    The half-angle form stays accurate for the tiny angles of one optimizer step (1e-4 rad
    and below), where the arccos of a float32 cosine is all rounding: (a − b) and c are both
    known to float32's relative precision, and their difference is not formed from nearly
    equal squares. NaN where a norm is 0."""
    d = before - after
    s = ((change - d) * (change + d)).clamp_min(0.0) / (4.0 * before * after)
    return 2.0 * torch.asin(s.clamp(max=1.0).sqrt())
