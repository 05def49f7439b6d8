"""Built-in opt-in statistics ``attention_max_logit`` and ``attention_entropy``, and the renderer
``attention``: attention-logit growth and entropy collapse (Dehghani et al. 2023, Wortsman et
al. 2023, Zhai et al. 2023).

Per attention module (``nn.MultiheadAttention``, Hugging Face GPT-2 and Llama attention,
normviz's own transformers, any module following the protocol of
:mod:`normviz.record.attention`) and head, on recorded steps: the largest attention logit
q·k·scale, and the attention entropy −Σ p log p averaged over batch and queries. The logits
are recomputed from the module's queries and keys (one extra q/k projection, then blocks
of 128 queries), so they are opt-in: ``Recorder(statistics=["attention_max_logit",
"attention_entropy"])``. Across ranks the maximum merges exactly (``max``), the mean
entropy as a value-count-weighted mean (``mean``: exact for ranks with equal batches).
Importing this module imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from normviz.datatypes import Register, Renderer, Site, Statistic
from normviz.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from normviz.record import stats as S


def _heads(site: Site) -> int:
    return site.heads


def _is_attention(site: Site) -> bool:
    return site.heads > 0 and site.role == "output"


def _logit_stats(ctx: S.SiteTensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    from normviz.record import attention

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        heads = ctx.site.heads  # type: ignore[attr-defined]  # Site is duck-typed there
        if ctx.call_inputs is None or ctx.module is None:  # a compiled graph's call: inputs not seen
            nan = torch.full((heads,), float("nan"), device=ctx.x.device)
            return nan, nan
        args, kwargs = ctx.call_inputs
        q, k, scale, causal, mask = attention.queries_keys(ctx.module, tuple(args), dict(kwargs))
        return attention.logit_stats(q, k, scale, causal, mask)

    return ctx.cached("attention", make)  # type: ignore[return-value]


MAX_LOGIT = Statistic(
    "attention_max_logit", lambda ctx: _logit_stats(ctx)[0], _heads,
    "opt-in: per head, the largest attention logit q·k·scale over batch, queries and visible keys "
    "(recomputed from the module's queries and keys)",
    applies=_is_attention, default=False, merge="max",
)
ENTROPY = Statistic(
    "attention_entropy", lambda ctx: _logit_stats(ctx)[1], _heads,
    "opt-in: per head, the entropy -sum p log p of each query's attention row, averaged over batch and queries",
    applies=_is_attention, default=False, merge="mean",
)


def draw(runs: Any, fig: Figure, **options: Any) -> Figure:
    """Draw ``runs`` into ``fig``; the options are those of the drawing module's ``draw``."""
    from normviz.plot.renderers.attention import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="attention",
    draw=draw,
    description="attention-logit growth and entropy collapse: the largest logit and the lowest head entropy per "
                "attention layer over training (needs the opt-in attention statistics)",
    requires=frozenset({"attention_max_logit", "attention_entropy"}),
    options=("layers", "steps", "max_layers"),
)


@hookimpl
def normviz_register_statistics(register: Register[Statistic]) -> None:
    """Register the attention statistics."""
    register(MAX_LOGIT)
    register(ENTROPY)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``attention`` renderer."""
    register(RENDERER)
