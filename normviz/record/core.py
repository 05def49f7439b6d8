"""The fused core statistics: a few full-tensor passes per site in the hook, the rest batched per step.

In the forward hook each site does only what needs the whole tensor: per-channel
sums (shifted, for float32 accuracy), min/max, the non-finite count, a random
sample, and the normalization groups' moments for norm layers. Everything derived
from those small tensors — pooled mean/std, percentiles, histograms, group
percentiles, the per-channel thinning — is computed once per recorded step for
all sites together, so the per-site Python cost stays at a dozen tensor ops.
The per-site reference implementations in :mod:`normviz.default_plugins.statistics`
compute the same numbers one site at a time; tests hold the two together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from normviz.datatypes import NormSpec
from normviz.record import stats as S

#: Statistics the fused path produces (their Statistic entries are marked ``fused=True``).
FUSED = (
    "channel_mean", "channel_var", "mean", "std", "min", "max", "percentiles", "hist", "nonfinite", "numel",
    "group_mean", "group_scale",
)


@dataclass
class CoreObs:
    """What a hook keeps of one site for one step (all on the tensor's device)."""

    mean_c: torch.Tensor
    var_c: torch.Tensor
    extrema: torch.Tensor  # [2]: min, max
    nonfinite: torch.Tensor  # [1] float64
    numel: torch.Tensor  # [1] float64
    sample: torch.Tensor  # [SAMPLE_SIZE] float32
    group: tuple[torch.Tensor, torch.Tensor] | None
    min_c: torch.Tensor | None = None  # per-channel min and max (to derive a BatchNorm's output)
    max_c: torch.Tensor | None = None


def observe(
    x: torch.Tensor, channel_dim: int, spec: NormSpec | None, gen: torch.Generator, base: CoreObs | None = None
) -> CoreObs:
    """The in-hook part: three passes over *x* (shifted sums, min/max), a sample, no host sync.

    *base* is an observation of the very same tensor made earlier in the step (a
    convolution's output is the next BatchNorm's input): its passes are reused and
    only the normalization groups are added.
    """
    if x.dim() == 0:
        x = x.reshape(1)
    if base is None:
        mean_c, var_c = S.channel_moments(x, channel_dim)
        dims = S.reduce_dims(x.dim(), channel_dim)
        # Per-channel extrema cost what one global aminmax costs and let a following
        # BatchNorm's output statistics be derived without a pass of their own.
        min_c = x.amin(dims).float() if dims else x.float()
        max_c = x.amax(dims).float() if dims else x.float()
        extrema = torch.stack((min_c.min(), max_c.max()))
        sample = S.draw_sample(x, S.SAMPLE_SIZE, gen)
        numel = torch.full((1,), float(x.numel()), dtype=torch.float64, device=x.device)
        nonfinite = estimate_nonfinite(mean_c, var_c, sample, x.numel())
        base = CoreObs(mean_c, var_c, extrema, nonfinite, numel, sample, None, min_c, max_c)
    group = None
    if spec is not None and spec.group_dims is not None and spec.kind != "none":
        group = S.group_moments(x, spec, base.mean_c, base.var_c, gen)
    return CoreObs(
        base.mean_c, base.var_c, base.extrema, base.nonfinite, base.numel, base.sample, group, base.min_c, base.max_c
    )


def derive_batchnorm_output(
    y: torch.Tensor, inp: CoreObs, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
    gen: torch.Generator,
) -> CoreObs:
    """A training-mode BatchNorm's output statistics from its input's, with no pass over *y*.

    y = γ (x − μ_B) / sqrt(σ²_B + ε) + β per channel, so the output's channel mean is β,
    its variance γ² σ²_B / (σ²_B + ε), and its channel extrema the affine images of
    the input's. Only the value sample is drawn from *y* itself.
    """
    assert inp.min_c is not None and inp.max_c is not None
    scale = torch.rsqrt(inp.var_c + eps)
    if weight is not None:
        scale = scale * weight.detach().float()
    shift = bias.detach().float() if bias is not None else torch.zeros_like(inp.mean_c)
    mean_c = shift + 0.0 * inp.mean_c  # NaN/inf in the input stay visible
    var_c = scale.square() * inp.var_c
    lo = (inp.min_c - inp.mean_c) * scale + shift
    hi = (inp.max_c - inp.mean_c) * scale + shift
    min_c, max_c = torch.minimum(lo, hi), torch.maximum(lo, hi)
    extrema = torch.stack((min_c.min(), max_c.max()))
    sample = S.draw_sample(y, S.SAMPLE_SIZE, gen)
    group = (mean_c, var_c.sqrt())
    return CoreObs(mean_c, var_c, extrema, inp.nonfinite, inp.numel, sample, group, min_c, max_c)


def estimate_nonfinite(mean_c: torch.Tensor, var_c: torch.Tensor, sample: torch.Tensor, numel: int) -> torch.Tensor:
    """Count of NaN/±inf values: 0 exactly when there are none, at least 1 when there are any
    (both known exactly from the full-tensor sums), else scaled from the sample.

    An exact count would cost a full pass over the tensor on every recorded step
    for a number that is almost always 0.
    """
    present = ~torch.isfinite(mean_c).all()  # a shifted sum is finite iff every value is
    in_sample = (~torch.isfinite(sample)).sum(dtype=torch.float64)
    estimate = torch.round(in_sample * (numel / sample.numel())).clamp_min(1.0)
    return torch.where(present, estimate, torch.zeros_like(estimate)).reshape(1)


def batched_quantiles(values: torch.Tensor, levels: torch.Tensor, *, presorted: bool = False) -> torch.Tensor:
    """Row-wise percentiles of a [n, m] matrix ignoring NaN (NumPy "linear"); [n, len(levels)]."""
    srt = values if presorted else torch.sort(values, dim=1).values
    n_valid = (~torch.isnan(values)).sum(1, keepdim=True)
    top = (n_valid - 1).clamp_min(0)
    pos = levels.unsqueeze(0) / 100.0 * top.to(levels.dtype)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, top)
    frac = pos - lo.to(pos.dtype)
    q = torch.lerp(srt.gather(1, lo), srt.gather(1, hi), frac)
    return torch.where(n_valid > 0, q, torch.full_like(q, math.nan))


def batched_histograms(sorted_samples: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Row-wise histograms with under/overflow: [n, m] *sorted* samples (NaN last), [n, B+1]
    edges -> [n, B+2] counts of ``[e_i, e_{i+1})``, values below ``e_0``, values ``>= e_B``.

    Searching the B+1 edges in the sorted sample (rather than every value among the
    edges) costs B+1 binary searches per row; the sort is shared with the percentiles.
    """
    below = torch.searchsorted(sorted_samples.contiguous(), edges.contiguous(), right=False)  # values < e_i
    n_valid = (~torch.isnan(sorted_samples)).sum(1, keepdim=True)
    below = torch.minimum(below, n_valid)  # NaNs sort last and are never counted
    inner = below[:, 1:] - below[:, :-1]
    over = n_valid - below[:, -1:]
    return torch.cat((below[:, :1], inner, over), dim=1).to(torch.float64)


class CoreAssembler:
    """Turns one step's :class:`CoreObs` of every site into the flat blocks of the fused statistics.

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
        self.levels = torch.tensor(S.PERCENTILE_LEVELS, dtype=torch.float32, device=device)
        self.group_levels = torch.tensor(S.GROUP_LEVELS, dtype=torch.float32, device=device)
        self.edges: torch.Tensor | None = None
        self._nan_obs: dict[int, CoreObs] = {}

    def _missing(self, i: int) -> CoreObs:
        obs = self._nan_obs.get(i)
        if obs is None:
            c, dev = self.channels[i], self.device
            nan = math.nan
            obs = CoreObs(
                torch.full((c,), nan, device=dev), torch.full((c,), nan, device=dev), torch.full((2,), nan, device=dev),
                torch.full((1,), nan, dtype=torch.float64, device=dev), torch.full((1,), nan, dtype=torch.float64, device=dev),
                torch.full((S.SAMPLE_SIZE,), nan, device=dev), None,
            )
            self._nan_obs[i] = obs
        return obs

    def blocks(self, observed: list[CoreObs | None]) -> dict[str, torch.Tensor]:
        """Flat blocks (sites side by side, layout order) of every fused statistic."""
        obs = [o if o is not None else self._missing(i) for i, o in enumerate(observed)]
        mean_all = torch.cat([o.mean_c for o in obs])
        var_all = torch.cat([o.var_c for o in obs])
        mean = torch.zeros(self.n, device=self.device).index_add_(0, self.segment, mean_all) / self.counts
        spread = var_all + (mean_all - mean[self.segment]).square()
        std = (torch.zeros(self.n, device=self.device).index_add_(0, self.segment, spread) / self.counts).clamp_min(0).sqrt()
        extrema = torch.stack([o.extrema for o in obs])
        samples = torch.stack([o.sample for o in obs])
        if self.edges is None:
            self.edges = S.first_edges(extrema[:, 0:1], extrema[:, 1:2], S.HIST_BINS)
        srt = torch.sort(samples, dim=1).values
        out = {
            "channel_mean": mean_all.index_select(0, self.gather),
            "channel_var": var_all.index_select(0, self.gather),
            "mean": mean,
            "std": std,
            "min": extrema[:, 0],
            "max": extrema[:, 1],
            "percentiles": batched_quantiles(srt, self.levels, presorted=True).reshape(-1),
            "hist": batched_histograms(srt, self.edges).reshape(-1),
            "nonfinite": torch.cat([o.nonfinite for o in obs]),
            "numel": torch.cat([o.numel for o in obs]),
        }
        if self.norm_rows:
            groups = [obs[r].group for r in self.norm_rows]
            nan = torch.full((1,), math.nan, device=self.device)
            g_mean = torch.nn.utils.rnn.pad_sequence(
                [g[0] if g is not None else nan for g in groups], batch_first=True, padding_value=math.nan
            )
            g_scale = torch.nn.utils.rnn.pad_sequence(
                [g[1] if g is not None else nan for g in groups], batch_first=True, padding_value=math.nan
            )
            out["group_mean"] = batched_quantiles(g_mean, self.group_levels).reshape(-1)
            out["group_scale"] = batched_quantiles(g_scale, self.group_levels).reshape(-1)
        return out
