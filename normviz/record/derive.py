"""Site statistics that follow from other statistics, computed for all sites of a step at once.

Three kinds of site need no pass of their own over the activation beyond the sample:

- a **GroupNorm's input**, read through its per-(sample, channel) moments and extrema
  (one group-norm kernel and one min/max pass): its channel statistics pool them over
  the batch (:class:`PooledInstances`);
- a **GroupNorm's output**, y = a·x + b per (sample, channel) with a = γ_c / sqrt(σ²_ng + ε)
  and b = β_c − a·μ_ng: its moments, extrema and group summaries are those of its input
  mapped through a and b (:class:`GroupNormOutput`);
- a training **BatchNorm's output**: its channel mean is β, its variance γ² σ²_B / (σ²_B + ε),
  its extrema the affine images of its input's (:class:`BatchNormOutput`).

In the hook each records a :class:`~normviz.record.core.Recipe` (and draws its sample); at
the end of the step :meth:`RecipeRunner.run` computes every recipe of a kind with one set of ops
on the sites' vectors concatenated, where each used to take a dozen ops or more of its own.
GroupNorm layers are concatenated along their channels, [channels, batch], and their groups
are summed with one ``index_add`` over a channel-to-group index built once per layout.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch

from normviz.record import shards
from normviz.record import stats as S
from normviz.record.core import CoreObs, InstanceMoments, Recipe, _bounded
from normviz.record.deferred import EpsVectors, FromInvStd, LayoutCache, settle, to_device
from normviz.record.fused import FusedReductions
from normviz.record.sampling import Sampler


def _cat(parts: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat``, without the copy for a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim)


def _split_into(recipes: Sequence[Recipe], sizes: Sequence[int], **fields: torch.Tensor) -> None:
    """Give each recipe its slice (along dim 0) of each named result."""
    parts = {name: t.split(list(sizes)) for name, t in fields.items()}
    for i, r in enumerate(recipes):
        for name, split in parts.items():
            setattr(r, name, split[i])


def _done(recipes: Sequence[Recipe]) -> None:
    for r in recipes:
        r.done = True


def _affine(weight: torch.nn.Parameter | torch.Tensor | None, bias: torch.Tensor | None,
            like: torch.Tensor) -> torch.Tensor | None:
    """A norm layer's (weight, bias) as they are now, [2, C] float32, or None if it has neither."""
    if weight is None and bias is None:
        return None
    for t in (weight, bias):
        if t is not None and not shards.is_plain(t):  # a DTensor (tensor parallel): no channel-aligned copy
            raise TypeError(f"the norm layer's affine parameters are a {type(t).__name__}")
    w = weight.detach().float() if weight is not None else torch.ones_like(like)
    b = bias.detach().float() if bias is not None else torch.zeros_like(w)
    return torch.stack((w, b))


def _affines(recipes: Sequence[BatchNormOutput | GroupNormOutput], sizes: Sequence[int],
             like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The recipes' weights and biases concatenated, [ΣC] each (identity where a layer has none)."""
    if all(r.affine is None for r in recipes):
        return None
    parts = [r.affine if r.affine is not None else torch.stack((like.new_ones(c), like.new_zeros(c)))
             for r, c in zip(recipes, sizes)]
    both = _cat(parts, 1)
    return both[0], both[1]


# -- BatchNorm outputs --------------------------------------------------------------------------
class BatchNormOutput(Recipe):
    """A training BatchNorm's output statistics, from its input's observation, the layer's
    (weight, bias) as they were in the forward pass ([2, C], or None) and its eps."""

    __slots__ = ("inp", "affine", "eps")

    def __init__(self, inp: CoreObs, affine: torch.Tensor | None, eps: float) -> None:
        super().__init__(inp.mean_c.numel(), inp.mean_c.device)
        self.inp, self.affine, self.eps = inp, affine, eps

    def inputs_pending(self) -> list[FromInvStd]:
        return self.inp.pending()

    def run_alone(self) -> None:
        run_batchnorm_outputs([self], EpsVectors())


def derive_batchnorm_output(y: torch.Tensor, inp: CoreObs, weight: torch.Tensor | None, bias: torch.Tensor | None,
                            eps: float, sampler: Sampler) -> CoreObs:
    """A training BatchNorm's output observation: its sample now, the rest at the end of the step."""
    recipe = BatchNormOutput(inp.settled(), _affine(weight, bias, inp.mean_c), eps)
    return CoreObs(None, None, None, None, sampler.draw(y), inp.numel, derive=recipe)


def run_batchnorm_outputs(recipes: Sequence[BatchNormOutput], eps_vectors: EpsVectors) -> None:
    """Every BatchNorm output of one device together (see the module's docstring)."""
    sizes = [r.inp.mean_c.numel() for r in recipes]
    mean_x = _cat([r.inp.mean_c for r in recipes])
    var_x = _cat([r.inp.var_c for r in recipes])
    scale = torch.rsqrt(var_x + eps_vectors.get(sizes, [r.eps for r in recipes], mean_x.device))
    affine = _affines(recipes, sizes, mean_x)
    if affine is None:
        shift = torch.zeros_like(mean_x)
    else:
        scale, shift = scale * affine[0], affine[1]
    mean = shift + 0.0 * mean_x  # NaN/inf in the input stay visible
    var = scale.square() * var_x
    lo = torch.addcmul(shift, _cat([r.inp.min_c for r in recipes]) - mean_x, scale)
    hi = torch.addcmul(shift, _cat([r.inp.max_c for r in recipes]) - mean_x, scale)
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    _split_into(recipes, sizes, mean_c=mean, var_c=var, min_c=lo, max_c=hi)
    for r, std in zip(recipes, var.sqrt().split(sizes)):
        r.group = (r.mean_c, std)  # type: ignore[assignment]  # a BatchNorm's groups are its channels
    _done(recipes)


# -- GroupNorm inputs and outputs -------------------------------------------------------------------
def observe_instances(x: torch.Tensor, sampler: Sampler, fused: FusedReductions | None = None,
                      given: Sequence[torch.Tensor] | None = None) -> CoreObs | None:
    """Observe an (N, C, ...) tensor through its per-(sample, channel) moments and extrema:
    its channel statistics pool them (at the end of the step), and a following GroupNorm's
    input groups and whole output follow from them with no pass of their own. None unless
    :func:`~normviz.record.stats.reads_instances` (a float32 (N, C, ...) tensor, contiguous
    or channels-last). *given*: the per-(sample, channel) mean, variance, min and max, computed
    already (by a compiled model's graph)."""
    if not S.reads_instances(x):
        return None
    n, c = x.shape[0], x.shape[1]
    one_pass = tuple(given) if given else fused.rows(x) if fused is not None else None
    var: torch.Tensor | FromInvStd
    if one_pass is not None:
        mean, var, lo, hi = one_pass
        var = var.view(n, c)
    else:
        rows = x.contiguous()  # a channels-last input is copied (see instance_mean_invstd)
        mean, invstd = S.instance_mean_invstd(rows)
        lo, hi = S.row_extrema(rows.view(n * c, -1))
        var = FromInvStd(invstd.view(n, c))
    inst = InstanceMoments(mean.view(n, c), var, lo.view(n, c), hi.view(n, c))
    return CoreObs(None, None, None, None, sampler.draw(x), x.numel(), inst=inst, derive=PooledInstances(inst))


class PooledInstances(Recipe):
    """Channel statistics pooled over the batch from per-(sample, channel) ones."""

    __slots__ = ("source",)

    def __init__(self, source: InstanceMoments) -> None:
        super().__init__(source.mean.shape[1], source.mean.device)
        self.source = source

    def inputs_pending(self) -> list[FromInvStd]:
        return [self.source.var_] if isinstance(self.source.var_, FromInvStd) else []

    def run_alone(self) -> None:
        run_pooled([self])


def _channels_major(insts: Sequence[InstanceMoments]) -> tuple[torch.Tensor, ...]:
    """Means, variances, minima and maxima of several layers' instances, [ΣC, N] each."""
    return tuple(_cat([getattr(i, f).t() for i in insts]) for f in ("mean", "var", "lo", "hi"))


def run_pooled(recipes: Sequence[PooledInstances]) -> None:
    """Every pooled GroupNorm input of one device and batch size together."""
    mean, var, lo, hi = _channels_major([r.source for r in recipes])
    mean_c, var_c = S.pool(mean, var, dim=1)
    _split_into(recipes, [r.source.mean.shape[1] for r in recipes], mean_c=mean_c, var_c=var_c,
                min_c=lo.amin(1), max_c=hi.amax(1))
    _done(recipes)


class GroupNormOutput(Recipe):
    """A GroupNorm's output statistics from its input's instance moments, the layer's (weight,
    bias) as they were in the forward pass and its eps; the group summary is bounded with
    ``gen`` as a direct one would be."""

    __slots__ = ("source", "affine", "eps", "groups", "gen")

    def __init__(self, source: InstanceMoments, affine: torch.Tensor | None, eps: float, groups: int,
                 gen: torch.Generator) -> None:
        super().__init__(source.mean.shape[1], source.mean.device)
        self.source, self.affine, self.eps, self.groups, self.gen = source, affine, eps, groups, gen

    def inputs_pending(self) -> list[FromInvStd]:
        return [self.source.var_] if isinstance(self.source.var_, FromInvStd) else []

    def run_alone(self) -> None:
        run_groupnorm_outputs([self], LayoutCache(), EpsVectors())


def derive_groupnorm_output(y: torch.Tensor, inp: CoreObs, module: torch.nn.GroupNorm, sampler: Sampler) -> CoreObs:
    """A training GroupNorm's output observation: its sample now, the rest at the end of the step."""
    inst = inp.inst
    assert inst is not None
    recipe = GroupNormOutput(inst, _affine(module.weight, module.bias, inst.mean[0]), float(module.eps),
                             module.num_groups, sampler.gen(y.device))
    return CoreObs(None, None, None, None, sampler.draw(y), inp.numel, derive=recipe)


def group_index(shapes: Sequence[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For GroupNorm layers of (channels, groups) ``shapes`` concatenated along their channels:
    each channel's group over all layers [ΣC], and each group's channel count [ΣG, 1]."""
    gid = torch.cat([torch.arange(g).repeat_interleave(c // g) for c, g in shapes])
    offsets = torch.tensor([0] + [g for _, g in shapes[:-1]]).cumsum(0)
    owner = torch.cat([torch.full((c,), i) for i, (c, _) in enumerate(shapes)])
    counts = torch.cat([torch.full((g,), float(c // g)) for c, g in shapes]).unsqueeze(1)
    return to_device(gid + offsets[owner], device), to_device(counts, device)


def _group_sums(values: torch.Tensor, gid: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[ΣC, N] values summed into their groups: [ΣG, N]."""
    return values.new_zeros(n_groups, values.shape[1]).index_add_(0, gid, values)


def run_groupnorm_outputs(recipes: Sequence[GroupNormOutput], layouts: LayoutCache, eps_vectors: EpsVectors) -> None:
    """Every GroupNorm output of one device and batch size together (see the module's docstring);
    ``layouts`` keeps their channel-to-group index."""
    channels = [r.source.mean.shape[1] for r in recipes]
    groups = [r.groups for r in recipes]
    m, v, lo, hi = _channels_major([r.source for r in recipes])  # [ΣC, N]
    shapes = tuple(zip(channels, groups))
    gid, count = layouts.get((m.device, shapes), lambda: group_index(shapes, m.device))
    n_groups = sum(groups)
    # The input's (sample, group) moments, as the layer normalized with.
    mu_g = _group_sums(m, gid, n_groups) / count
    mu = mu_g.index_select(0, gid)
    dev = m - mu
    var_g = _group_sums(torch.addcmul(v, dev, dev), gid, n_groups) / count
    eps = eps_vectors.get(groups, [r.eps for r in recipes], m.device)
    rstd = torch.rsqrt(var_g + (eps.unsqueeze(1) if isinstance(eps, torch.Tensor) else eps))
    a = rstd.index_select(0, gid)
    affine = _affines(recipes, channels, m[:, 0])
    if affine is not None:
        a = a * affine[0].unsqueeze(1)
        shift = affine[1].unsqueeze(1)
        mean_y = torch.addcmul(shift, a, dev)
        lo_y, hi_y = torch.addcmul(shift, a, lo - mu), torch.addcmul(shift, a, hi - mu)
    else:
        mean_y, lo_y, hi_y = a * dev, a * (lo - mu), a * (hi - mu)
    var_y = a.square() * v
    lo_y, hi_y = torch.minimum(lo_y, hi_y), torch.maximum(lo_y, hi_y)
    mean_c, var_c = S.pool(mean_y, var_y, dim=1)
    # The output's (sample, group) moments.
    g_mean = _group_sums(mean_y, gid, n_groups) / count
    g_dev = mean_y - g_mean.index_select(0, gid)
    g_std = (_group_sums(torch.addcmul(var_y, g_dev, g_dev), gid, n_groups) / count).sqrt()
    _split_into(recipes, channels, mean_c=mean_c, var_c=var_c, min_c=lo_y.amin(1), max_c=hi_y.amax(1))
    for r, my, vy, ly, hy, gm, gs in zip(recipes, mean_y.split(channels), var_y.split(channels), lo_y.split(channels),
                                         hi_y.split(channels), g_mean.split(groups), g_std.split(groups)):
        r.inst = InstanceMoments(my.t(), vy.t(), ly.t(), hy.t())
        r.group = _bounded(gm.reshape(-1), gs.reshape(-1), r.gen)
    _done(recipes)


# -- all of a step ----------------------------------------------------------------------------------
class RecipeRunner:
    """Runs a step's recipes, grouped by kind, device and batch size, keeping what it builds
    once per layout (eps vectors, group indices).

    A batch that fails (a layer the derivations do not expect) must not stop training: the
    step's sites are then computed one by one, and a site whose statistics still cannot be
    computed gets NaN for the step; one warning says so. ``strict``: raise instead
    (``Recorder(on_error="raise")``)."""

    def __init__(self, strict: bool = False) -> None:
        self.eps = EpsVectors()
        self.strict = strict
        self._layouts = LayoutCache()  # the GroupNorm layers' channel-to-group indices
        self._warned = False

    def run(self, obs: Iterable[CoreObs]) -> None:
        """Compute every pending recipe and variance of ``obs`` and fill them in."""
        obs = list(obs)
        try:
            self._run(obs)
        except Exception as exc:  # noqa: BLE001 - recording must never break training (unless asked)
            if self.strict:
                raise
            if not self._warned:
                self._warned = True
                warnings.warn(f"normviz: the end-of-step statistics failed together ({type(exc).__name__}: {exc}); "
                              "computed site by site, NaN where a site's still fail", RuntimeWarning, stacklevel=5)
            for o in obs:
                try:
                    for p in o.settled().pending():
                        p.value()
                except Exception:  # noqa: BLE001 - as above: this site is NaN for the step
                    o.fail()

    def _run(self, obs: list[CoreObs]) -> None:
        recipes = list({id(o.derive): o.derive for o in obs if o.derive is not None and not o.derive.done}.values())
        settle([p for o in obs for p in o.pending()] + [p for r in recipes for p in r.inputs_pending()], self.eps)
        batches: dict[tuple[type, torch.device, int], list[Recipe]] = {}
        for r in recipes:
            key: tuple[type, torch.device, int]
            if isinstance(r, (PooledInstances, GroupNormOutput)):
                key = (type(r), r.source.mean.device, r.source.mean.shape[0])
            else:
                assert isinstance(r, BatchNormOutput)
                key = (type(r), r.inp.mean_c.device, 0)
            batches.setdefault(key, []).append(r)
        for (kind, _, _), batch in batches.items():
            if kind is PooledInstances:
                run_pooled(batch)  # type: ignore[arg-type]
            elif kind is GroupNormOutput:
                run_groupnorm_outputs(batch, self._layouts, self.eps)  # type: ignore[arg-type]
        for (kind, _, _), batch in batches.items():
            if kind is BatchNormOutput:  # after the others: a BatchNorm's input may be a GroupNorm's output
                run_batchnorm_outputs(batch, self.eps)  # type: ignore[arg-type]
        settle([p for o in obs for p in o.settled().pending()], self.eps)
