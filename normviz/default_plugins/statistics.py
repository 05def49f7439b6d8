"""Built-in statistics: what normviz records about every site by default, plus opt-in extras.

Each statistic is computed on the device from a :class:`~normviz.record.stats.SiteTensor`
and never synchronises with the host. Widths are fixed per site, so a run's rows
have a fixed size; per-channel series hold at most ``max_channels`` channels
(evenly spaced, the indices are stored).

Importing this module imports no torch (a plotting process registers it too): the
functions that compute import it; the levels and sizes come from
:mod:`normviz.record.sizes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from normviz.datatypes import Register, Site, Statistic
from normviz.hookspecs import hookimpl
from normviz.record.sizes import GROUP_LEVELS, HIST_BINS, PERCENTILE_LEVELS, SAMPLE_SIZE

if TYPE_CHECKING:
    import torch

    from normviz.record import stats as S


def _one(site: Site) -> int:
    return 1


def _stored(site: Site) -> int:
    return site.stored_channels


def _is_norm(site: Site) -> bool:
    return site.kind is not None and site.kind != "none"


def _levels(ctx: S.SiteTensor, levels: tuple[float, ...]) -> torch.Tensor:
    key = f"levels:{levels}"
    if key not in ctx.state:
        import torch

        ctx.state[key] = torch.tensor(levels, dtype=torch.float32, device=ctx.x.device)
    return ctx.state[key]  # type: ignore[return-value]  # the state holds what was put there


def _select(ctx: S.SiteTensor, values: torch.Tensor) -> torch.Tensor:
    index = ctx.state.get("channel_index")
    return values if index is None else values.index_select(0, index)  # type: ignore[arg-type]


def _channel_mean(ctx: S.SiteTensor) -> torch.Tensor:
    return _select(ctx, ctx.moments()[0])


def _channel_var(ctx: S.SiteTensor) -> torch.Tensor:
    return _select(ctx, ctx.moments()[1])


def _pooled(ctx: S.SiteTensor) -> tuple[torch.Tensor, torch.Tensor]:
    from normviz.record import stats as S

    return ctx.cached("pooled", lambda: S.pooled_moments(*ctx.moments()))  # type: ignore[return-value]


def _extrema(ctx: S.SiteTensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    return ctx.cached(  # type: ignore[return-value]
        "extrema", lambda: torch.aminmax(ctx.x.float() if ctx.x.dtype == torch.bool else ctx.x))


def _nonfinite(ctx: S.SiteTensor) -> torch.Tensor:
    """Count of NaN/±inf values: 0 exactly when there are none, at least 1 when there are any
    (both known exactly from the shifted channel sums, finite iff every value is), else
    scaled from the sample. An exact count would cost a full pass every recorded step for
    a number that is almost always 0."""
    import torch

    mean_c, _ = ctx.moments()
    sample = ctx.sample()
    present = ~torch.isfinite(mean_c).all()
    in_sample = (~torch.isfinite(sample)).sum(dtype=torch.float64)
    estimate = torch.round(in_sample * (ctx.x.numel() / sample.numel())).clamp_min(1.0)
    return torch.where(present, estimate, torch.zeros_like(estimate)).reshape(1)


def _group(ctx: S.SiteTensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    from normviz.record import stats as S

    def make() -> tuple[torch.Tensor, torch.Tensor] | None:
        mean_c, var_c = ctx.moments()
        return S.group_moments(ctx.x, ctx.spec, mean_c, var_c, ctx.gen) if ctx.spec else None

    return ctx.cached("group", make)  # type: ignore[return-value]


def _group_summary(ctx: S.SiteTensor, which: int) -> torch.Tensor:
    import torch

    from normviz.record import stats as S

    g = _group(ctx)
    levels = _levels(ctx, GROUP_LEVELS)
    if g is None:
        return torch.full((len(GROUP_LEVELS),), float("nan"), device=ctx.x.device)
    return S.quantiles(g[which], levels)


def _hist(ctx: S.SiteTensor) -> torch.Tensor:
    from normviz.record import stats as S

    edges: Any = ctx.state.get("edges")  # the site's edges, fixed at its first recorded step
    if edges is None:
        lo, hi = _extrema(ctx)
        edges = ctx.state["edges"] = S.first_edges(lo.float(), hi.float(), HIST_BINS)
    return S.histogram(ctx.sample(), edges)


def _channel_percentiles(ctx: S.SiteTensor) -> torch.Tensor:
    import torch

    from normviz.record import stats as S

    rows = ctx.as_channels()
    index: Any = ctx.state.get("channel_index")
    if index is not None:
        rows = rows.index_select(0, index)
    k = min(rows.shape[1], 1024)
    pick = torch.randint(0, rows.shape[1], (k,), generator=ctx.gen, device=rows.device)
    sample = rows.index_select(1, pick)
    levels = _levels(ctx, PERCENTILE_LEVELS)
    return torch.stack([S.quantiles(r, levels) for r in sample.unbind(0)]).reshape(-1)


def _percentiles(ctx: S.SiteTensor) -> torch.Tensor:
    from normviz.record import stats as S

    return S.quantiles(ctx.sample(), _levels(ctx, PERCENTILE_LEVELS))


def _rms_kurtosis(ctx: S.SiteTensor) -> torch.Tensor:
    """Kurtosis over the channels of their mean squares s_j² (the squared channel RMS):
    mean_j(s_j⁴) / mean_j(s_j²)², between 1 (equal RMS) and the channel count (one channel)."""
    mean_c, var_c = ctx.moments()
    s2 = var_c + mean_c.square()
    return (s2.square().mean() / s2.mean().square()).reshape(1)


def _numel(ctx: S.SiteTensor) -> torch.Tensor:
    import torch

    return torch.full((1,), float(ctx.x.numel()), dtype=torch.float64, device=ctx.x.device)


def _builtin_statistics() -> tuple[Statistic, ...]:
    return (
        Statistic("channel_mean", _channel_mean, _stored, "per-channel mean (exact)", fused=True,
                  merge="exact"),
        Statistic("channel_var", _channel_var, _stored, "per-channel population variance (exact)", fused=True,
                  merge="exact"),
        Statistic("mean", lambda c: _pooled(c)[0].reshape(1), _one, "mean of all values (exact)", fused=True,
                  merge="exact"),
        Statistic("std", lambda c: _pooled(c)[1].reshape(1), _one, "population std of all values (exact)", fused=True,
                  merge="exact"),
        Statistic("min", lambda c: _extrema(c)[0].float().reshape(1), _one, "minimum (exact)", fused=True,
                  merge="min"),
        Statistic("max", lambda c: _extrema(c)[1].float().reshape(1), _one, "maximum (exact)", fused=True,
                  merge="max"),
        Statistic(
            "percentiles",
            _percentiles,
            lambda s: len(PERCENTILE_LEVELS),
            f"percentiles {PERCENTILE_LEVELS} of a {SAMPLE_SIZE}-value random sample (exact on the sample)",
            fused=True,
            merge="mean",
        ),
        Statistic(
            "hist",
            _hist,
            lambda s: HIST_BINS + 2,
            f"histogram of the sample: underflow, {HIST_BINS} bins between edges fixed at the first recorded step, "
            "overflow",
            dtype="uint16",  # counts of a 4096-value sample: 16 bits are enough, and halve the largest dataset
            fused=True,
            merge="sum",
        ),
        Statistic(
            "nonfinite",
            lambda c: _nonfinite(c),
            _one,
            "count of NaN and ±inf values: exactly 0 when none, >= 1 when any, else estimated from the sample",
            dtype="int64",
            fused=True,
            merge="sum",
        ),
        Statistic(
            "numel",
            _numel,
            _one,
            "number of values",
            dtype="int64",
            fused=True,
            merge="sum",
        ),
        Statistic(
            "group_mean",
            lambda c: _group_summary(c, 0),
            lambda s: len(GROUP_LEVELS),
            f"percentiles {GROUP_LEVELS} over the normalization groups of their means",
            applies=_is_norm,
            fused=True,
            merge="mean",
        ),
        Statistic(
            "group_scale",
            lambda c: _group_summary(c, 1),
            lambda s: len(GROUP_LEVELS),
            f"percentiles {GROUP_LEVELS} over the normalization groups of their std (RMS for rms norms)",
            applies=_is_norm,
            fused=True,
            merge="mean",
        ),
        Statistic(
            "rms_kurtosis",
            _rms_kurtosis,
            _one,
            "kurtosis over all channels of each channel's RMS, mean(s^4)/mean(s^2)^2 (He et al. 2024's outlier "
            "features; 1 = equal RMS, the channel count = one channel carries all)",
            fused=True,
            merge="mean",
        ),
        Statistic(
            "channel_percentiles",
            _channel_percentiles,
            lambda s: s.stored_channels * len(PERCENTILE_LEVELS),
            "opt-in: per-channel percentiles from up to 1024 values per channel",
            default=False,
            merge="mean",
        ),
        Statistic(
            "sample",
            lambda c: c.sample(),
            lambda s: SAMPLE_SIZE,
            "opt-in: the random value sample itself",
            default=False,
            merge="none",
        ),
    )


#: Every built-in statistic, as registered.
BUILTIN_STATISTICS: tuple[Statistic, ...] = _builtin_statistics()


@hookimpl
def normviz_register_statistics(register: Register[Statistic]) -> None:
    """Register the built-in statistics."""
    for statistic in BUILTIN_STATISTICS:
        register(statistic)
