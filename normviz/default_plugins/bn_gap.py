"""Built-in opt-in statistic ``bn_running_gap`` and renderer ``bn-gap``: how far the batch
statistics a BatchNorm trains with are from the running statistics it evaluates with (Wu &
Johnson 2021's train/test inconsistency).

At each BatchNorm's input site, on recorded training steps, two numbers:

- mean over channels of |μ_B − μ_run| / sqrt(σ²_run + ε), and
- mean over channels of |log((σ²_B + ε) / (σ²_run + ε))|, with σ²_B the unbiased batch
  variance (as the running variance is),

against the running statistics as they were *before* this forward updated them
(recovered exactly from the updated ones: (r′ − m·b)/(1 − m) for a momentum m, the
cumulative average's inverse for ``momentum=None``). In an eval pass
(:meth:`normviz.Recorder.evaluating`, the layer in eval mode) the running statistics are
the ones it normalizes the batch with: the gap is the one between that batch and them.
For independent values the first shrinks as 1/√(values per channel): the sampling gap. Only
PyTorch's own BatchNorm classes (SyncBatchNorm updates with every rank's statistics); NaN
elsewhere. Merged across ranks as a
value-count-weighted mean. The renderer is drawn by :mod:`normviz.plot.renderers.bn_gap`.
Importing this module imports no torch and no matplotlib.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from normviz.datatypes import Register, Renderer, Site, Statistic
from normviz.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from normviz.record import stats as S


def _applies(site: Site) -> bool:
    return site.kind == "batch" and site.role == "input"


def compute(ctx: S.SiteTensor) -> torch.Tensor:
    """[mean gap / running std, mean |log variance ratio|] against the running statistics before this step."""
    import torch
    from torch import nn

    module: Any = ctx.module  # a BatchNorm, checked below (its buffers are untyped attributes)
    nan = torch.full((2,), math.nan, device=ctx.x.device)
    if type(module) not in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return nan
    if module.running_mean is None or module.running_var is None:
        return nan
    mean_b, var_b = ctx.moments()
    n = ctx.x.numel() / max(mean_b.numel(), 1)
    var_b = var_b * (n / max(n - 1.0, 1.0))  # unbiased, as the running variance is updated with
    after_m, after_v = module.running_mean.float(), module.running_var.float()
    if not module.training:  # an eval pass leaves the running statistics as they are
        run_m, run_v = after_m, after_v
    elif module.momentum is None:  # cumulative average over the k batches seen, this one included
        k = module.num_batches_tracked.float()
        run_m, run_v = (k * after_m - mean_b) / (k - 1), (k * after_v - var_b) / (k - 1)
    else:
        m = float(module.momentum)
        run_m, run_v = (after_m - m * mean_b) / (1 - m), (after_v - m * var_b) / (1 - m)
    eps = float(module.eps)
    gap_mean = ((mean_b - run_m).abs() / (run_v + eps).sqrt()).mean()
    gap_var = ((var_b + eps) / (run_v + eps)).log().abs().mean()
    return torch.stack([gap_mean, gap_var])


STATISTIC = Statistic(
    "bn_running_gap",
    compute,
    lambda site: 2,
    "opt-in, BatchNorm inputs: mean over channels of |batch mean - running mean| / running std, and of "
    "|log(batch var / running var)|, against the running statistics before this step's update (in an eval "
    "pass, the ones the layer normalizes with)",
    applies=_applies,
    default=False,
    merge="mean",
)


def draw(runs: Any, fig: Figure, **options: Any) -> Figure:
    """Draw ``runs`` into ``fig``; the options are those of the drawing module's ``draw``."""
    from normviz.plot.renderers.bn_gap import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="bn-gap",
    draw=draw,
    description="BatchNorm's train/eval gap (Wu & Johnson 2021): batch vs running (EMA) and population statistics "
                "per BatchNorm, over training, and the eval-mode output against the training-mode one (needs "
                "the opt-in bn_running_gap; eval passes from Recorder.evaluating)",
    requires=frozenset({"bn_running_gap"}),
    options=("layer", "last"),
)


@hookimpl
def normviz_register_statistics(register: Register[Statistic]) -> None:
    """Register ``bn_running_gap``."""
    register(STATISTIC)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``bn-gap`` renderer."""
    register(RENDERER)
