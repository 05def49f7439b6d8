"""The fused core statistics, device side: a few full-tensor passes per site, the rest batched.

In the forward hook each site does only what needs the whole tensor: per-channel
sums (shifted, for float32 accuracy), per-channel min/max, a random sample, and the
normalization groups' moments for norm layers. At the end of a recorded step
:class:`CoreAssembler` turns every site's observation into flat blocks with a
handful of batched ops (pooled mean/std, global extrema, the stored channels).
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
from dataclasses import dataclass
from typing import Any

import torch

from normviz.datatypes import NormSpec
from normviz.record import stats as S
from normviz.record.fused import FusedReductions

#: Statistics the fused path produces (their Statistic entries are marked ``fused=True``).
FUSED = (
    "channel_mean", "channel_var", "mean", "std", "min", "max", "percentiles", "hist", "nonfinite", "numel",
    "group_mean", "group_scale", "rms_kurtosis",
)
#: The fused statistics finished on the host (:mod:`normviz.record.finish`); the device
#: row holds placeholders where they go.
HOST_FINISHED = ("percentiles", "hist", "nonfinite", "numel", "group_mean", "group_scale")


@dataclass
class CoreObs:
    """What a hook keeps of one site for one step (tensors on the site's device)."""

    mean_c: torch.Tensor  # per-channel mean, float32
    var_c: torch.Tensor  # per-channel population variance, float32
    min_c: torch.Tensor  # per-channel min and max, float32 (a following BatchNorm's output
    max_c: torch.Tensor  # statistics are derived from them)
    sample: torch.Tensor  # [SAMPLE_SIZE] float32
    numel: int
    group: tuple[torch.Tensor, torch.Tensor] | None = None  # per normalization group: mean, scale
    inst: InstanceMoments | None = None  # per (sample, channel), when a GroupNorm follows


@dataclass
class InstanceMoments:
    """Moments and extrema of every (sample, channel) of an (N, C, ...) tensor, [N, C] each."""

    mean: torch.Tensor
    var: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


@dataclass
class Borrowed:
    """Statistics a norm layer computed itself in its forward pass (exact, and free)."""

    mean_c: torch.Tensor | None = None  # per-channel batch mean and variance (BatchNorm)
    var_c: torch.Tensor | None = None
    group: tuple[torch.Tensor, torch.Tensor] | None = None  # per-group mean and std (GroupNorm, LayerNorm)


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
    var = (rstd.reciprocal().square() - float(module.eps)).clamp_min(0.0)  # type: ignore[arg-type]
    if node == "NativeBatchNormBackward0":
        return Borrowed(mean_c=mean, var_c=var)
    return Borrowed(group=_bounded(mean.reshape(-1), var.sqrt().reshape(-1), gen))


def observe(
    x: torch.Tensor,
    channel_dim: int,
    spec: NormSpec | None,
    gen: torch.Generator,
    base: CoreObs | None = None,
    borrowed: Borrowed | None = None,
    fused: FusedReductions | None = None,
) -> CoreObs:
    """The in-hook part: a few passes over *x* (shifted sums, min/max), a sample, no host sync.

    *base* is an observation of the very same tensor made earlier in the step (a
    convolution's output is the next BatchNorm's input): its passes are reused and
    only the normalization groups are added. *borrowed* statistics replace the passes
    they make unnecessary. *fused* (``Recorder(compile=True)``) computes moments and
    extrema in one compiled pass where it can.
    """
    if x.dim() == 0:
        x = x.reshape(1)
    if base is None:
        if borrowed is not None and borrowed.mean_c is not None and borrowed.var_c is not None:
            mean_c, var_c = borrowed.mean_c, borrowed.var_c
            min_c, max_c = S.channel_extrema(x, channel_dim)
        else:
            one_pass = fused.channels(x, channel_dim) if fused is not None else None
            if one_pass is not None:
                mean_c, var_c, min_c, max_c = one_pass
            else:
                mean_c, var_c = S.channel_moments(x, channel_dim)
                min_c, max_c = S.channel_extrema(x, channel_dim)
        sample = S.draw_sample(x, S.SAMPLE_SIZE, gen)
        base = CoreObs(mean_c, var_c, min_c, max_c, sample, x.numel())
    group = None
    if spec is not None and spec.group_dims is not None and spec.kind != "none":
        if borrowed is not None and borrowed.group is not None:
            group = borrowed.group
        elif base.inst is not None and spec.kind == "group" and spec.num_groups:
            group = groupnorm_input_groups(base, spec.num_groups, gen)
        else:
            group = S.group_moments(x, spec, base.mean_c, base.var_c, gen)
    return CoreObs(base.mean_c, base.var_c, base.min_c, base.max_c, base.sample, base.numel, group, base.inst)


def observe_instances(x: torch.Tensor, gen: torch.Generator, fused: FusedReductions | None = None) -> CoreObs | None:
    """Observe an (N, C, ...) tensor through its per-(sample, channel) moments and extrema.

    Moments (:func:`~normviz.record.stats.instance_moments`) and amin/amax along each (n, c)
    row give the channel statistics by exact pooling, and let a following
    GroupNorm's input groups and whole output be derived with no pass of their own
    (:func:`derive_groupnorm_output`). None if *x* is not a contiguous (N, C, ...) float32.
    """
    if x.dim() < 3 or x.dtype != torch.float32 or not x.is_contiguous() or x[0, 0].numel() < 2:
        return None
    n, c = x.shape[0], x.shape[1]
    one_pass = fused.rows(x) if fused is not None else None
    if one_pass is not None:
        mean, var, lo, hi = one_pass
    else:
        rows = x.view(n * c, -1)
        (mean, var), lo, hi = S.instance_moments(x), rows.amin(1), rows.amax(1)
    inst = InstanceMoments(mean.view(n, c), var.view(n, c), lo.view(n, c), hi.view(n, c))
    mean_c, var_c = S.pool(inst.mean, inst.var)
    sample = S.draw_sample(x, S.SAMPLE_SIZE, gen)
    return CoreObs(mean_c, var_c, inst.lo.amin(0), inst.hi.amax(0), sample, x.numel(), inst=inst)


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


def derive_groupnorm_output(y: torch.Tensor, inp: CoreObs, module: torch.nn.GroupNorm, gen: torch.Generator) -> CoreObs:
    """A GroupNorm's output statistics from its input's instance moments, with no pass over *y*.

    Per (n, c), y = a·x + b with a = γ_c / sqrt(σ²_ng + ε) and b = β_c − a·μ_ng, so its
    mean is a·m + b, its variance a²·v and its extrema the affine images of x's; channel
    and group statistics follow by pooling. Only the value sample is drawn from *y*.
    """
    inst = inp.inst
    assert inst is not None
    n, c = inst.mean.shape
    g = module.num_groups
    mu, var = _grouped(inst.mean, inst.var, g)
    rstd = torch.rsqrt(var + module.eps).repeat_interleave(c // g, dim=1)  # [N, C]
    a = rstd * module.weight.float() if module.weight is not None else rstd
    b = -a * mu.repeat_interleave(c // g, dim=1)
    if module.bias is not None:
        b = b + module.bias.float()
    mean = torch.addcmul(b, a, inst.mean)
    var_y = a.square() * inst.var
    lo_y, hi_y = torch.addcmul(b, a, inst.lo), torch.addcmul(b, a, inst.hi)
    lo_y, hi_y = torch.minimum(lo_y, hi_y), torch.maximum(lo_y, hi_y)
    out = InstanceMoments(mean, var_y, lo_y, hi_y)
    mean_c, var_c = S.pool(mean, var_y)
    g_mean, g_var = _grouped(mean, var_y, g)
    group = _bounded(g_mean.reshape(-1), g_var.sqrt().reshape(-1), gen)
    sample = S.draw_sample(y, S.SAMPLE_SIZE, gen)
    return CoreObs(mean_c, var_c, lo_y.amin(0), hi_y.amax(0), sample, inp.numel, group, out)


def derive_batchnorm_output(
    y: torch.Tensor, inp: CoreObs, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
    gen: torch.Generator,
) -> CoreObs:
    """A training-mode BatchNorm's output statistics from its input's, with no pass over *y*.

    y = γ (x − μ_B) / sqrt(σ²_B + ε) + β per channel, so the output's channel mean is β,
    its variance γ² σ²_B / (σ²_B + ε), and its channel extrema the affine images of
    the input's. Only the value sample is drawn from *y* itself.
    """
    scale = torch.rsqrt(inp.var_c + eps)
    if weight is not None:
        scale = scale * weight.float()  # under no_grad
    shift = bias.float() if bias is not None else torch.zeros_like(inp.mean_c)
    mean_c = shift + 0.0 * inp.mean_c  # NaN/inf in the input stay visible
    var_c = scale.square() * inp.var_c
    lo = torch.addcmul(shift, inp.min_c - inp.mean_c, scale)
    hi = torch.addcmul(shift, inp.max_c - inp.mean_c, scale)
    min_c, max_c = torch.minimum(lo, hi), torch.maximum(lo, hi)
    sample = S.draw_sample(y, S.SAMPLE_SIZE, gen)
    return CoreObs(mean_c, var_c, min_c, max_c, sample, inp.numel, (mean_c, var_c.sqrt()))


@dataclass
class DeviceBlocks:
    """One recorded step of every site, assembled on the device.

    ``stats`` are finished fused statistics (flat, sites side by side). ``host`` is one
    float32 vector for :class:`~normviz.record.finish.RowFinisher`: the samples
    ([n_sites, SAMPLE_SIZE]), a per-site flag "some value is non-finite", then each
    norm row's group means and group scales; ``group_sizes`` and ``numel`` (None: the
    site did not run) say how to cut it.
    """

    stats: dict[str, torch.Tensor]
    host: torch.Tensor
    group_sizes: list[int]
    numel: list[int | None]


class CoreAssembler:
    """Turns one step's :class:`CoreObs` of every site into :class:`DeviceBlocks`.

    Built once the layout is fixed: ``channels[i]`` is site i's channel count,
    ``stored[i]`` the indices of its stored channels (None: all), ``norm_rows`` the
    sites with a group summary.
    """

    def __init__(
        self, channels: list[int], stored: list[torch.Tensor | None], norm_rows: list[int], device: torch.device
    ) -> None:
        self.n = len(channels)
        self.channels = channels
        self.device = device
        offsets = [0]
        for c in channels:
            offsets.append(offsets[-1] + c)
        gather = []
        for i, idx in enumerate(stored):
            base = offsets[i]
            gather.append((idx.to(device) if idx is not None else torch.arange(channels[i], device=device)) + base)
        self.gather = torch.cat(gather) if gather else torch.zeros(0, dtype=torch.long, device=device)
        self.segment = torch.repeat_interleave(
            torch.arange(self.n, device=device), torch.tensor(channels, device=device)
        ) if self.n else torch.zeros(0, dtype=torch.long, device=device)
        self.counts = torch.tensor(channels, dtype=torch.float32, device=device)
        self.norm_rows = norm_rows
        self._zeros = torch.zeros(self.n, device=device)
        self._nan_obs: dict[int, CoreObs] = {}

    def _missing(self, i: int) -> CoreObs:
        obs = self._nan_obs.get(i)
        if obs is None:
            nan = torch.full((self.channels[i],), math.nan, device=self.device)
            obs = CoreObs(nan, nan, nan, nan, torch.full((S.SAMPLE_SIZE,), math.nan, device=self.device), 0)
            self._nan_obs[i] = obs
        return obs

    def _rms_kurtosis(self, mean_all: torch.Tensor, var_all: torch.Tensor) -> torch.Tensor:
        """Per site, the kurtosis over its channels of their mean squares s² = var + mean²
        (He et al. 2024): C·Σs⁴ / (Σs²)², from the channel moments at hand (a few ops on
        channel vectors for all sites together, no pass over the activations)."""
        s2 = torch.addcmul(var_all, mean_all, mean_all)
        sums = torch.zeros(2, self.n, device=self.device).index_add_(1, self.segment, torch.stack((s2, s2 * s2)))
        return self.counts * sums[1] / sums[0].square()

    def blocks(self, observed: list[CoreObs | None]) -> DeviceBlocks:
        """Every fused statistic of one step: finished ones, and the host's share."""
        obs = [o if o is not None else self._missing(i) for i, o in enumerate(observed)]
        mean_all = torch.cat([o.mean_c for o in obs])
        var_all = torch.cat([o.var_c for o in obs])
        mean = self._zeros.index_add(0, self.segment, mean_all) / self.counts
        spread = var_all + (mean_all - mean[self.segment]).square()
        std = (self._zeros.index_add(0, self.segment, spread) / self.counts).clamp_min(0).sqrt()
        lo = self._zeros.scatter_reduce(0, self.segment, torch.cat([o.min_c for o in obs]), "amin", include_self=False)
        hi = self._zeros.scatter_reduce(0, self.segment, torch.cat([o.max_c for o in obs]), "amax", include_self=False)
        # A shifted channel sum is finite exactly when every value of the channel is.
        nonfinite = self._zeros.index_add(0, self.segment, (~torch.isfinite(mean_all)).float())
        kurtosis = self._rms_kurtosis(mean_all, var_all)
        host = [torch.cat([o.sample for o in obs]), nonfinite]
        group_sizes: list[int] = []
        for r in self.norm_rows:
            g = obs[r].group
            if g is None:
                group_sizes.append(0)
            else:
                group_sizes.append(int(g[0].numel()))
                host.extend(g)
        return DeviceBlocks(
            stats={
                "channel_mean": mean_all.index_select(0, self.gather),
                "channel_var": var_all.index_select(0, self.gather),
                "mean": mean,
                "std": std,
                "min": lo,
                "max": hi,
                "rms_kurtosis": kurtosis,
            },
            host=torch.cat(host),
            group_sizes=group_sizes,
            numel=[o.numel if o is not None else None for o in observed],
        )
