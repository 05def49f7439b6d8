"""The fused core statistics, device side: a few full-tensor passes per site, the rest batched.

In the forward hook each site does only what needs the whole tensor: per-channel
moments (or a norm layer's own, borrowed), per-channel min/max, a random sample
(:mod:`normviz.record.sampling`), and the normalization groups' moments for norm
layers. The arithmetic on channel vectors that follows is left pending
(:mod:`normviz.record.deferred`) and, at the end of a recorded step,
:class:`~normviz.record.assemble.CoreAssembler` does it for all sites at once and turns
every site's observation into flat blocks with a handful of batched ops (pooled
mean/std, global extrema, the stored channels).
What needs sorting — percentiles and histograms of the samples, percentiles over
the normalization groups — and the non-finite estimate are computed on the host,
in the writer's thread, by :mod:`normviz.record.finish`: sorting thousands of
values is 10-20x cheaper in NumPy than in torch on CPU, and off the training thread
on every device.

The per-site reference implementations in :mod:`normviz.default_plugins.statistics`
compute the same numbers one site at a time; tests hold the two together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from normviz.datatypes import NormSpec
from normviz.record import stats as S
from normviz.record.deferred import FromInvStd, materialize
from normviz.record.fused import FusedReductions
from normviz.record.reductions import device_kernels
from normviz.record.sampling import Sampler

#: Statistics the fused path produces (their Statistic entries are marked ``fused=True``).
FUSED = (
    "channel_mean", "channel_var", "mean", "std", "min", "max", "percentiles", "hist", "nonfinite", "numel",
    "group_mean", "group_scale", "rms_kurtosis",
)
#: The fused statistics finished on the host (:mod:`normviz.record.finish`); the device
#: row holds placeholders where they go.
HOST_FINISHED = ("percentiles", "hist", "nonfinite", "numel", "group_mean", "group_scale")


class Recipe:
    """Statistics of a site computed at the end of the step from other statistics, for every
    site with a recipe of the same kind at once (:mod:`normviz.record.derive`): its results
    are the :class:`CoreObs` fields it fills."""

    __slots__ = ("channels", "device", "done", "mean_c", "var_c", "min_c", "max_c", "group", "inst")

    def __init__(self, channels: int, device: torch.device) -> None:
        self.channels, self.device = channels, device  # of the site it computes
        self.done = False
        self.mean_c: torch.Tensor | None = None
        self.var_c: torch.Tensor | None = None
        self.min_c: torch.Tensor | None = None
        self.max_c: torch.Tensor | None = None
        self.group: tuple[torch.Tensor, torch.Tensor] | None = None
        self.inst: InstanceMoments | None = None

    def inputs_pending(self) -> list[FromInvStd]:
        """What must be computed before it runs."""
        return []

    def run_alone(self) -> None:
        """Compute it now, on its own (read before the end of the step)."""
        raise NotImplementedError


class CoreObs:
    """What a hook keeps of one site for one step (tensors on the site's device).

    ``mean_c``, ``var_c`` (population variance), ``min_c`` and ``max_c`` are per channel,
    float32 (a following BatchNorm's output statistics are derived from them); ``sample``
    is [SAMPLE_SIZE] float32; ``group`` the (mean, scale) of each normalization group;
    ``inst`` per (sample, channel), when a GroupNorm follows. A variance or scale may be a
    :class:`~normviz.record.deferred.FromInvStd`, and the fields left None a
    :class:`Recipe`'s: both are computed at the end of the step for all sites at once
    (:meth:`~normviz.record.assemble.CoreAssembler.blocks`), or alone when read before.
    """

    __slots__ = ("_mean", "_var", "_min", "_max", "sample", "numel", "_group", "_own_group", "_inst", "derive",
                 "failed")

    def __init__(self, mean_c: torch.Tensor | None, var_c: torch.Tensor | FromInvStd | None,
                 min_c: torch.Tensor | None, max_c: torch.Tensor | None, sample: torch.Tensor, numel: int,
                 group: tuple[torch.Tensor, torch.Tensor | FromInvStd] | None = None,
                 inst: InstanceMoments | None = None, derive: Recipe | None = None, own_group: bool = False) -> None:
        self._mean, self._var, self._min, self._max = mean_c, var_c, min_c, max_c
        self.sample = sample
        self.numel = numel
        self._group = group
        # The group summary is this site's own (None included), not its recipe's: another site
        # observing the same tensor shares the recipe, not its normalization groups.
        self._own_group = own_group
        self._inst = inst
        self.derive = derive
        self.failed = False

    def settled(self) -> CoreObs:
        """Itself, with its recipe's results (computed alone if not yet) in the fields left None."""
        d = self.derive
        if d is not None:
            if not d.done:
                d.run_alone()
            self._mean = d.mean_c if self._mean is None else self._mean
            self._var = d.var_c if self._var is None else self._var
            self._min = d.min_c if self._min is None else self._min
            self._max = d.max_c if self._max is None else self._max
            self._group = d.group if self._group is None and not self._own_group else self._group
            self._inst = d.inst if self._inst is None else self._inst
            self.derive = None
        return self

    @property
    def mean_c(self) -> torch.Tensor:
        mean = self.settled()._mean
        assert mean is not None
        return mean

    @property
    def var_c(self) -> torch.Tensor:
        var = self.settled()._var
        assert var is not None
        return materialize(var)

    @property
    def min_c(self) -> torch.Tensor:
        lo = self.settled()._min
        assert lo is not None
        return lo

    @property
    def max_c(self) -> torch.Tensor:
        hi = self.settled()._max
        assert hi is not None
        return hi

    @property
    def group(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        group = self.settled()._group
        return None if group is None else (group[0], materialize(group[1]))

    @property
    def inst(self) -> InstanceMoments | None:
        if self._inst is None and self.derive is not None:
            self.settled()
        return self._inst

    def fail(self) -> None:
        """Its statistics could not be computed: recorded as a site that did not run this step."""
        ref = self._mean if self._mean is not None else self.derive
        assert ref is not None
        c, device = (ref.numel(), ref.device) if isinstance(ref, torch.Tensor) else (ref.channels, ref.device)
        nan = torch.full((c,), math.nan, device=device)
        self._mean = self._var = self._min = self._max = nan
        self.sample = torch.full_like(self.sample, math.nan)
        self._group, self.derive, self.failed = None, None, True

    def pending(self) -> list[FromInvStd]:
        """Its variance and group scale still to compute."""
        return [v for v in (self._var, self._group[1] if self._group is not None else None)
                if isinstance(v, FromInvStd)]


@dataclass
class InstanceMoments:
    """Moments and extrema of every (sample, channel) of an (N, C, ...) tensor, [N, C] each
    (the variance possibly still to compute)."""

    mean: torch.Tensor
    var_: torch.Tensor | FromInvStd
    lo: torch.Tensor
    hi: torch.Tensor

    @property
    def var(self) -> torch.Tensor:
        return materialize(self.var_)


@dataclass
class Borrowed:
    """Statistics a norm layer computed itself in its forward pass (exact, and free)."""

    mean_c: torch.Tensor | None = None  # per-channel batch mean and variance (BatchNorm)
    var_c: torch.Tensor | FromInvStd | None = None
    group: tuple[torch.Tensor, torch.Tensor | FromInvStd] | None = None  # per-group mean and std (GroupNorm, LayerNorm)


_BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def _saved_tensors_packed() -> bool:
    """Whether saved-tensor hooks are active (autograd then packs what a node saves)."""
    try:
        return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
    except (AttributeError, RuntimeError, TypeError):  # another PyTorch: assume they may be
        return True


def borrow(module: torch.nn.Module, x: torch.Tensor, output: torch.Tensor, gen: torch.Generator) -> Borrowed | None:
    """The batch statistics PyTorch's own BatchNorm, GroupNorm and LayerNorm saved for their
    backward pass (mean and 1/sqrt(var + eps)), read from the output's autograd node.

    They are the very statistics the layer normalized with, so they cost no pass over
    *x*. The variance comes back as ``1/rstd² − eps``: exact to ~1e-7·eps absolute.
    Anything unexpected (another class, no autograd graph, an input that is not *x*,
    another PyTorch's node layout) returns None and the statistics are computed directly.
    So does a forward under saved-tensor hooks (activation checkpointing, CPU offloading):
    reading a saved tensor there unpacks it, which recomputes the checkpointed block.
    """
    grad_fn = output.grad_fn
    if grad_fn is None or _saved_tensors_packed():
        return None
    node = type(grad_fn).__name__
    kind = type(module)
    if not (
        (node == "NativeBatchNormBackward0" and kind in _BATCHNORMS)
        or (node == "NativeGroupNormBackward0" and kind is torch.nn.GroupNorm)
        or (node == "NativeLayerNormBackward0" and kind is torch.nn.LayerNorm)
    ):
        return None
    try:
        # What the norm's backward node saved: its input, and its batch mean and 1/std
        # (autograd's generated attributes, which type stubs do not list).
        node_: Any = grad_fn
        saved = node_._saved_input
        if saved.data_ptr() != x.data_ptr() or saved.shape != x.shape:
            return None
        if node == "NativeBatchNormBackward0" and not node_._saved_training:
            return None
        mean, rstd = node_._saved_result1.float(), node_._saved_result2.float()
    except (AttributeError, RuntimeError, TypeError):
        return None
    eps = float(module.eps)  # type: ignore[arg-type]
    if node == "NativeBatchNormBackward0":
        return Borrowed(mean_c=mean, var_c=FromInvStd(rstd, eps))
    mean, rstd = _bounded(mean.reshape(-1), rstd.reshape(-1), gen)
    return Borrowed(group=(mean, FromInvStd(rstd, eps, root=True)))


def observe(
    x: torch.Tensor,
    channel_dim: int,
    spec: NormSpec | None,
    sampler: Sampler,
    base: CoreObs | None = None,
    borrowed: Borrowed | None = None,
    fused: FusedReductions | None = None,
    channels: Sequence[torch.Tensor] | None = None,
) -> CoreObs:
    """The in-hook part: a few passes over *x* (moments, min/max), a sample, no host sync.

    *base* is an observation of the very same tensor made earlier in the step (a
    convolution's output is the next BatchNorm's input): its passes are reused and
    only the normalization groups are added. *borrowed* statistics replace the passes
    they make unnecessary. *fused* (``Recorder(compile=True)``) computes moments and
    extrema in one compiled pass where it can. *channels* are the per-channel (mean,
    variance, min, max) of *x* computed already (by a compiled model's graph).
    """
    if x.dim() == 0:
        x = x.reshape(1)
    if base is None:
        var_c: torch.Tensor | FromInvStd
        if borrowed is not None and borrowed.mean_c is not None and borrowed.var_c is not None:
            mean_c, var_c = borrowed.mean_c, borrowed.var_c
            min_c, max_c = S.channel_extrema(x, channel_dim)
        else:
            one_pass = tuple(channels) if channels else fused.channels(x, channel_dim) if fused is not None else None
            if one_pass is not None:
                mean_c, var_c, min_c, max_c = one_pass
            else:
                kernel = S.channel_mean_invstd(x, channel_dim)
                if kernel is not None:  # the variance is computed at the end of the step, with the others'
                    mean_c, var_c = kernel[0], FromInvStd(kernel[1], zero_is_constant=True)
                else:
                    mean_c, var_c = S.channel_moments(x, channel_dim)
                min_c, max_c = S.channel_extrema(x, channel_dim)
        base = CoreObs(mean_c, var_c, min_c, max_c, sampler.draw(x), x.numel())
    group = None
    if spec is not None and spec.group_dims is not None and spec.kind != "none":
        if borrowed is not None and borrowed.group is not None:
            group = borrowed.group
        elif base.inst is not None and spec.kind == "group" and spec.num_groups:
            group = groupnorm_input_groups(base, spec.num_groups, sampler.gen(x.device))
        else:
            group = _group_moments(x, spec, base, sampler.gen(x.device))
    return CoreObs(base._mean, base._var, base._min, base._max, base.sample, base.numel, group, base._inst,
                   base.derive, own_group=True)


def _group_moments(x: torch.Tensor, spec: NormSpec, base: CoreObs,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | FromInvStd] | None:
    """Mean and scale (std, or RMS for uncentered norms) of every normalization group: from the
    channels' own moments (a BatchNorm's), or one layer-norm kernel over the groups' float32
    rows; the scale is left to the end of the step. Otherwise
    :func:`~normviz.record.stats.group_moments`."""
    if spec.group_dims == "batch":
        if spec.centered and isinstance(base._var, FromInvStd):
            v = base._var
            return base.mean_c, FromInvStd(v.invstd, v.eps, root=True, zero_is_constant=v.zero_is_constant)
        return S.group_moments(x, spec, base.mean_c, base.var_c, gen)
    rows = S.bounded_group_rows(x, spec, gen)
    if rows is None:
        return None
    # The layer-norm kernel is one op where the shifted sums take ten; on a CPU it is also as
    # fast or faster up to about 2**18 values, and up to 2x slower beyond.
    if rows.dtype == torch.float32 and rows.shape[1] > 1 and (device_kernels(rows) or rows.numel() <= 1 << 18):
        mean, invstd = S.row_mean_invstd(rows)
        return mean, FromInvStd(invstd, root=True, mean=None if spec.centered else mean)
    return S.row_moments(rows, spec.centered)


def _grouped(inst_mean: torch.Tensor, inst_var: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (sample, group) mean and variance from per (sample, channel) ones: [N, G] each."""
    n, c = inst_mean.shape
    return S.pool(inst_mean.view(n, groups, c // groups), inst_var.view(n, groups, c // groups), dim=2)


def groupnorm_input_groups(obs: CoreObs, groups: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A GroupNorm's input groups (mean, std) from the instance moments of its input."""
    assert obs.inst is not None
    mean, var = _grouped(obs.inst.mean, obs.inst.var, groups)
    return _bounded(mean.reshape(-1), var.sqrt().reshape(-1), gen)


def _bounded(mean: torch.Tensor, scale: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if mean.numel() > S.MAX_GROUPS:  # the same bounded summary as the direct computation
        pick = torch.randint(0, mean.numel(), (S.MAX_GROUPS,), generator=gen, device=mean.device)
        return mean.index_select(0, pick), scale.index_select(0, pick)
    return mean, scale
