"""Pure on-device reductions used while recording.

Every function takes tensors on any device and returns tensors on the same device,
computed in float32 under no_grad. None of them synchronises with the host: no
``.item()``, no Python conversion of a tensor, no data-dependent shapes, no
``torch.quantile`` (it checks its ``q`` on the host). This module does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from normviz.datatypes import NormSpec
from normviz.record.deferred import var_from_invstd
from normviz.record.reductions import device_kernels, memory_order
from normviz.record.sizes import GROUP_LEVELS, HIST_BINS, MAX_GROUPS, PERCENTILE_LEVELS, SAMPLE_SIZE  # noqa: F401


def reduce_dims(ndim: int, channel_dim: int) -> tuple[int, ...]:
    """All dims except the channel dim."""
    cd = channel_dim % ndim
    return tuple(d for d in range(ndim) if d != cd)


def _channels_last_2d(x: torch.Tensor, channel_dim: int) -> torch.Tensor | None:
    """*x* as a (values, channels) matrix when its channels are innermost in memory (a free
    view), else None: a channel dim that is the last, or a channels-last image
    (``torch.channels_last``, as inductor and mixed-precision CNNs lay out convolutions).

    Reducing dim 0 of that matrix is 5-10x faster on CPU than reducing all leading dims
    of the original shape.
    """
    if x.dim() <= 2:
        return None
    cd = channel_dim % x.dim()
    if cd == x.dim() - 1:
        try:
            return x.view(-1, x.shape[-1])
        except RuntimeError:  # not viewable (non-contiguous): reduce in the original shape
            return None
    if x.stride(cd) == 1 and x.shape[cd] > 1:
        inner = x.movedim(cd, -1)
        if inner.is_contiguous():
            return inner.view(-1, inner.shape[-1])
    return None


def _channel_layout(x: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, int]:
    """*x* ready for a per-channel reduction, and its channel dim (non-negative): a 0-d
    tensor as one value, a channels-last one as a (values, channels) matrix."""
    if x.dim() == 0:
        x = x.reshape(1)
    flat = _channels_last_2d(x, channel_dim)
    if flat is not None:
        x, channel_dim = flat, 1
    return x, channel_dim % x.dim()


def channel_moments(x: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population variance of *x*, float32, exact to ~1e-6 relative.

    Sums in float32 lose precision when |mean| >> std, so values are shifted by one
    element of their own channel first (stateless, and as good as any shift of
    order one std); the upcast of bf16/fp16 happens inside that subtraction.
    """
    folded = _narrow_fold(*_channel_layout(x, channel_dim))
    if folded is not None:
        # A narrow (values, channels) matrix: the batch-norm kernel over k rows folded into
        # one (2x faster at 16 channels), then the k equal parts of each channel pooled.
        k, wide = folded
        _, mean_k, invstd_k = torch.native_batch_norm(wide, None, None, None, None, True, 0.0, 0.0)
        var_k = var_from_invstd(invstd_k, 0.0, zero_is_constant=True)
        return pool(mean_k.view(k, -1), var_k.view(k, -1))
    kernel = channel_mean_invstd(x, channel_dim)
    if kernel is not None:
        # (values, channels): PyTorch's batch-norm statistics kernel is 1.1-3x faster on CPU
        # than the shifted sums below and more precise (two passes, wide accumulators).
        return kernel[0], var_from_invstd(kernel[1], 0.0, zero_is_constant=True)
    x, cd = _channel_layout(x, channel_dim)
    dims = reduce_dims(x.dim(), cd)
    index: list[int | slice] = [0] * x.dim()
    index[cd] = slice(None)
    shift = x[tuple(index)].float()
    view = [1] * x.dim()
    view[cd] = -1
    shift_b = shift.reshape(view)
    # bf16/fp16 minus a float32 tensor promotes to float32: the upcast costs no extra pass.
    d = x - shift_b
    n = x.numel() // max(x.shape[cd], 1)
    if dims:
        s1 = d.sum(dims)
        s2 = d.square_().sum(dims)  # d is our own temporary; cheaper than linalg.vector_norm on CPU
    else:
        s1, s2 = d, d.square()
    m = s1 / n
    var = (s2 / n - m.square()).clamp_min(0.0)
    return shift + m, var


def reads_instances(x: torch.Tensor) -> bool:
    """Whether *x* is a float32 (N, C, ...) tensor whose per-(sample, channel) moments and
    extrema the kernels below read: contiguous, or channels-last (through a copy)."""
    if x.dim() < 3 or x.dtype != torch.float32 or math.prod(x.shape[2:]) < 2:
        return False
    return memory_order(x) is not None


def instance_mean_invstd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std of every (sample, channel) row of a contiguous float32 (N, C, ...) tensor,
    [N, C] each: PyTorch's group-norm statistics kernel with one channel per group (a constant
    row has 1/std = inf). One fused pass with wide accumulators, 1-2x faster on CPU than the
    shifted sums of :func:`channel_moments` along the rows, and more precise. Contiguous only:
    the kernel reads a channels-last tensor as it is, but its statistics then lose the
    variance where |mean| >> std (1e-2 relative at |mean|/std = 100, against 1e-6), and with
    one channel per group it is 5-10x slower on CPU than a copy and this kernel together from
    32 channels on."""
    n, c = x.shape[0], x.shape[1]
    _, mean, rstd = torch.native_group_norm(x, None, None, n, c, x[0, 0].numel(), c, 0.0)
    return mean.view(n, c), rstd.view(n, c)


#: Columns from which the CPU reduces a (values, channels) matrix along its values at full speed.
_WIDE = 256


def _narrow_fold(x: torch.Tensor, cd: int) -> tuple[int, torch.Tensor] | None:
    """For a float32 (values, channels) matrix (as laid out by :func:`_channel_layout`) with
    fewer than 32 channels on a CPU (a channels-last CNN stem): k and the [values / k,
    k · channels] view that folds k rows into one, where the CPU's column reductions run
    at full speed. Else None."""
    if x.dim() != 2 or cd != 1 or not 1 < x.shape[1] < 32 or x.dtype != torch.float32 or device_kernels(x):
        return None
    k = _WIDE // x.shape[1]
    if x.shape[0] % k or x.shape[0] == k or not x.is_contiguous():
        return None
    return k, x.view(-1, k * x.shape[1])


def channel_extrema(x: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel minimum and maximum of *x*, float32 (NaN if the channel holds a NaN)."""
    x, cd = _channel_layout(x, channel_dim)
    if x.dim() == 1:
        v = x.float()
        return v, v
    if device_kernels(x) and (x.dim() == 2 or (cd == 1 and x.is_contiguous())):
        # On a GPU one aminmax kernel reads the tensor once where amin + amax read it twice.
        if x.dim() == 2:
            lo, hi = torch.aminmax(x, dim=1 - cd)
            return lo.float(), hi.float()
        n, c = x.shape[0], x.shape[1]
        lo, hi = row_extrema(x.view(n * c, -1))
        return lo.view(n, c).amin(0).float(), hi.view(n, c).amax(0).float()
    folded = _narrow_fold(x, cd)
    if folded is not None:
        # The CPU's column reduction is ~40x slower at 16 columns than at 256: the k rows
        # folded into one are reduced first, then the k copies of each channel.
        k, wide = folded
        return wide.amin(0).view(k, -1).amin(0).float(), wide.amax(0).view(k, -1).amax(0).float()
    if cd == 1 and x.dim() > 2 and 1 < x[0, 0].numel() < 64 and x.is_contiguous():
        # Small feature maps (late CNN stages, 2x2 to 7x7): reducing contiguous (n, c) rows
        # first, then the batch, is 2-3x faster on CPU than reducing dims (0, 2, ...) at once.
        n, c = x.shape[0], x.shape[1]
        rows = x.view(n * c, -1)
        return rows.amin(1).view(n, c).amin(0).float(), rows.amax(1).view(n, c).amax(0).float()
    # amin + amax: two passes, yet 10x faster on CPU than one torch.aminmax(dim=...)
    dims = reduce_dims(x.dim(), cd)
    return x.amin(dims).float(), x.amax(dims).float()


def row_extrema(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of every row of a matrix: one aminmax kernel on a GPU, amin and amax
    on a CPU (faster there)."""
    if device_kernels(rows):
        return torch.aminmax(rows, dim=1)
    return rows.amin(1), rows.amax(1)


def pool(mean: torch.Tensor, var: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the union of equal-size parts from the parts' means and
    variances along *dim* (the spread of the means is added, never cancelled)."""
    pooled = mean.mean(dim)
    spread = (mean - pooled.unsqueeze(dim)).square()
    return pooled, (var + spread).mean(dim).clamp_min(0.0)


def pooled_moments(mean_c: torch.Tensor, var_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global mean and std from per-channel moments of equal-size channels."""
    mean, var = pool(mean_c.reshape(-1), var_c.reshape(-1))
    return mean, var.sqrt()


def draw_sample(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """*size* values of *x* drawn uniformly with replacement, as float32.

    ``torch.take`` indexes in logical order without copying a non-contiguous input.
    """
    idx = torch.randint(0, x.numel(), (size,), generator=gen, device=x.device)
    return torch.take(x, idx).float()


def quantiles(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Percentiles (``levels`` in [0, 100]) of *values* ignoring NaN; NumPy's "linear" method.

    Written with sort + gather because ``torch.quantile`` synchronises on CUDA.
    All-NaN input gives NaN.
    """
    values = values.reshape(-1)
    srt = torch.sort(values).values  # NaN sort last
    n_valid = (~torch.isnan(values)).sum()
    pos = levels / 100.0 * (n_valid - 1).clamp_min(0).to(levels.dtype)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max((n_valid - 1).clamp_min(0))
    frac = pos - lo.to(pos.dtype)
    q = torch.lerp(srt[lo], srt[hi], frac)
    return torch.where(n_valid > 0, q, torch.full_like(q, math.nan))


def first_edges(vmin: torch.Tensor, vmax: torch.Tensor, bins: int = HIST_BINS) -> torch.Tensor:
    """Histogram edges fixed at a layer's first recorded step: its range widened by 10%."""
    finite = torch.isfinite(vmin) & torch.isfinite(vmax)
    lo = torch.where(finite, vmin, torch.full_like(vmin, -1.0))
    hi = torch.where(finite, vmax, torch.full_like(vmax, 1.0))
    pad = torch.maximum((hi - lo) * 0.1, (lo.abs() + hi.abs()) * 1e-3 + 1e-6)
    steps = torch.linspace(0.0, 1.0, bins + 1, device=vmin.device)
    return (lo - pad) + steps * ((hi + pad) - (lo - pad))


def histogram(sample: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts of *sample* in ``[e_i, e_{i+1})`` bins, with an underflow bin first and an
    overflow bin last (a value equal to the last edge overflows); NaNs are not counted,
    ±inf land in under/overflow. Returns float32 counts of length ``len(edges) + 1``.
    """
    idx = torch.bucketize(sample, edges, right=True)
    weights = (~torch.isnan(sample)).float()
    counts = torch.zeros(edges.numel() + 1, device=sample.device, dtype=torch.float32)
    return counts.scatter_add_(0, idx.clamp_max(edges.numel()), weights)


def group_rows(x: torch.Tensor, spec: NormSpec) -> torch.Tensor | None:
    """*x* as a (groups, values per group) matrix for the spec's normalization groups."""
    g = spec.group_dims
    if x.dim() < 2 or g in (None, "batch"):
        return None
    if g == "trailing":
        k = min(spec.normalized_ndim, x.dim())
        return x.reshape(-1, math.prod(x.shape[x.dim() - k :]))
    if g == "sample-channel":
        return x.reshape(x.shape[0] * x.shape[1], -1)
    if g == "group":
        return x.reshape(x.shape[0] * spec.num_groups, -1)
    if g == "channel":
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    return None


def group_moments(
    x: torch.Tensor, spec: NormSpec, mean_c: torch.Tensor, var_c: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean and scale (std, or RMS for uncentered norms) of every normalization group."""
    if spec.group_dims == "batch":
        if spec.centered:
            return mean_c, var_c.sqrt()
        return mean_c, (var_c + mean_c.square()).sqrt()
    rows = bounded_group_rows(x, spec, gen)
    return None if rows is None else row_moments(rows, spec.centered)


def bounded_group_rows(x: torch.Tensor, spec: NormSpec, gen: torch.Generator) -> torch.Tensor | None:
    """:func:`group_rows`, at most :data:`MAX_GROUPS` of them (a random subset beyond); None if none."""
    rows = group_rows(x, spec)
    if rows is None or rows.numel() == 0:
        return None
    if rows.shape[0] > MAX_GROUPS:
        pick = torch.randint(0, rows.shape[0], (MAX_GROUPS,), generator=gen, device=rows.device)
        rows = rows.index_select(0, pick)
    return rows


def row_moments(rows: torch.Tensor, centered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale (std, or RMS if not ``centered``) of every row of a (groups, values) matrix."""
    mean, var = channel_moments(rows, 0)
    if centered:
        return mean, var.sqrt()
    return mean, (var + mean.square()).sqrt()


def row_mean_invstd(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std of every row of a float32 (groups, values) matrix, [groups] each, from
    PyTorch's layer-norm kernel: three ops where the shifted sums of :func:`channel_moments`
    take about ten (see :func:`~normviz.record.deferred.var_from_invstd` for the variance; a
    constant row has 1/std = inf). The kernel's float32 sums lose the variance when
    |mean| >> std (on CPU, 1e-4 relative at |mean|/std = 1e4), so the rows are shifted by
    their first value first, as the shifted sums are."""
    shift = rows[:, :1]
    _, mean, invstd = torch.native_layer_norm(rows - shift, [rows.shape[1]], None, None, 0.0)
    return mean.reshape(-1) + shift.reshape(-1), invstd.reshape(-1)


def channel_mean_invstd(x: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel mean and 1/std of *x* from PyTorch's batch-norm statistics kernel, or None
    where :func:`channel_moments` would not use it (see there; a constant channel has 1/std 0)."""
    x, cd = _channel_layout(x, channel_dim)
    if x.dim() == 2 and cd == 1 and x.dtype == torch.float32 and x.shape[0] > 1:
        if _narrow_fold(x, cd) is not None:
            return None  # channel_moments folds it first
        _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, 0.0)
        return mean, invstd
    return None


@dataclass
class SiteTensor:
    """What a :class:`~normviz.datatypes.Statistic` sees: one site's activation.

    ``x`` is the detached tensor in its own dtype and layout; the float32 derived
    quantities are computed once and shared between statistics. ``module`` and
    ``call_inputs`` (the call's positional and keyword arguments; forward hooks on
    attention modules receive the keyword ones) are for statistics that need more than
    the tensor, such as the attention logits.
    """

    x: torch.Tensor
    site: object
    spec: NormSpec | None
    gen: torch.Generator
    state: dict[str, object] = field(default_factory=dict)  # kept across steps (e.g. histogram edges)
    _cache: dict[str, object] = field(default_factory=dict)  # this step only
    module: torch.nn.Module | None = None  # the module the site belongs to
    call_inputs: tuple[tuple[object, ...], dict[str, object]] | None = None  # its call's (args, kwargs)

    @property
    def channel_dim(self) -> int:
        return self.site.channel_dim  # type: ignore[attr-defined]  # Site is duck-typed here

    def share(self, **values: object) -> None:
        """Hand over this step's quantities computed already (``sample``; ``moments``, or a
        function returning them)."""
        self._cache.update(values)

    def cached(self, key: str, make: Callable[[], object]) -> object:
        """``make()``, computed once per site and step and shared between statistics under ``key``."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, variance), float32."""
        moments = self._cache.get("moments")
        if moments is None:
            moments = channel_moments(self.x, self.channel_dim)
        elif callable(moments):  # shared lazily: the core's, computed only if a statistic asks
            moments = moments()
        self._cache["moments"] = moments
        return moments  # type: ignore[return-value]

    def sample(self) -> torch.Tensor:
        """The site's bounded random value sample (:data:`SAMPLE_SIZE` values)."""
        if "sample" not in self._cache:
            self._cache["sample"] = draw_sample(self.x, SAMPLE_SIZE, self.gen)
        return self._cache["sample"]  # type: ignore[return-value]

    def as_channels(self) -> torch.Tensor:
        """*x* as a float32 (channels, values) matrix (a copy for channels-first layouts)."""
        if "channels" not in self._cache:
            x = self.x if self.x.dim() > 0 else self.x.reshape(1)
            rows = x.movedim(self.channel_dim % x.dim(), 0).reshape(x.shape[self.channel_dim], -1)
            self._cache["channels"] = rows.float()
        return self._cache["channels"]  # type: ignore[return-value]
