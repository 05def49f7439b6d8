"""Built-in opt-in statistic ``massive_activations`` and renderer ``massive``: the largest
activations of a layer, where they sit, and how far above the typical one (Sun et al. 2024).

Per site and recorded step: the 3 largest |x| over the whole tensor, each with its channel
and its position (the index over the dims between the batch and the channel dim — the
token of a (batch, tokens, channels) tensor, the pixel of an (N, C, H, W) one; NaN when
there is none), and the median |x| of the site's value sample. Sun et al.'s criterion for a
massive activation is |x| > 100 and about 1000× the median.

Opt-in (``Recorder(statistics=["massive_activations"])`` or a mapping to layer patterns,
``--stat massive_activations`` in script mode): it costs a full pass (|x|) and a top-k per
site. Not mergeable across ranks as stored (each rank's top values of its own batch); read
the ranks apart. Importing this module imports no torch.
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

#: How many of the largest |x| are kept per site.
TOP = 3
NAME = "massive_activations"


def width(site: Site) -> int:
    """``TOP`` values, their channels, their positions, and the sample's median |x|."""
    return 3 * TOP + 1


def compute(ctx: S.SiteTensor) -> torch.Tensor:
    """[top |x| (descending), their channels, their positions, median |x| of the sample]."""
    import torch

    x = ctx.x if ctx.x.dim() > 0 else ctx.x.reshape(1)
    k = min(TOP, x.numel())
    values, index = torch.topk(x.reshape(-1).abs(), k)
    coords = torch.unravel_index(index, x.shape)
    cd = ctx.channel_dim % x.dim()
    channel = coords[cd].float()
    middle = [d for d in range(1, x.dim()) if d != cd]
    if middle:
        position = torch.zeros_like(channel)
        for d in middle:  # the flat index over the dims between batch and channel
            position = position * x.shape[d] + coords[d].float()
    else:
        position = torch.full_like(channel, math.nan)
    median = ctx.sample().abs().nanmedian().reshape(1)
    parts = [values.float(), channel, position]
    if k < TOP:  # fewer values than TOP: the rest NaN
        pad = torch.full((TOP - k,), math.nan, device=x.device)
        parts = [torch.cat([p, pad]) for p in parts]
    return torch.cat([*parts, median])


STATISTIC = Statistic(
    NAME,
    compute,
    width,
    f"opt-in: the {TOP} largest |x| of the site, their channels and positions (the index over the dims between "
    "batch and channel), and the median |x| of the value sample (Sun et al. 2024's massive activations)",
    default=False,
    merge="none",
)


def draw(runs: Any, fig: Figure, **options: Any) -> Figure:
    """Draw ``runs`` into ``fig``; the options are those of the drawing module's ``draw``."""
    from normviz.plot.renderers.massive import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="massive",
    draw=draw,
    description="massive activations (Sun et al. 2024): the largest |activation| per layer over training, its "
                "ratio to the median, and which channel carries it (needs the opt-in massive_activations)",
    requires=frozenset({NAME}),
    options=("layers", "role", "steps", "max_layers"),
)


@hookimpl
def normviz_register_statistics(register: Register[Statistic]) -> None:
    """Register ``massive_activations``."""
    register(STATISTIC)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``massive`` renderer."""
    register(RENDERER)
