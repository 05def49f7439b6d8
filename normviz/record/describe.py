"""What the recorder tells the file about the run: its layers, sites and statistics (fixed at
the first recorded step, :func:`describe`), and its metadata (:func:`run_meta`).

The file's layout itself — which datasets, their dtypes and attributes — is built by
:func:`normviz.store.layout.build_layout` from what is gathered here.
"""

from __future__ import annotations

import math
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from normviz.datatypes import NormSpec, Statistic
from normviz.record import shards
from normviz.record import stats as S
from normviz.record.observe import SiteState, output_channel_dim
from normviz.record.rows import module_tensor
from normviz.store import schema
from normviz.store.layout import LayerEntry, Layout, SiteEntry, SiteStatistic, build_layout


def describe(
    sites: Sequence[SiteState],
    layers: Mapping[str, tuple[nn.Module, NormSpec | None]],
    grad_index: Mapping[str, int],
    n_grad_layers: int,
    disabled: set[str],
    *,
    max_channels: int,
    sharded: bool = False,
    grad_partial_widths: dict[int, int] | None = None,
) -> Layout:
    """The run's layout from the sites the first recorded step saw (numbered in order here:
    ``SiteState.index``), the recorded layers (name → module, norm spec) and the layers
    with parameters (name → gradient column); ``sharded``: the model has DTensor
    parameters, whose layers also get the partial sums the merge adds up (and
    ``grad_partial_widths``: the layers whose gradients are unreduced partial sums)."""
    for i, st in enumerate(sites):
        st.index = i
    calls: dict[str, int] = {}
    channels: dict[str, int] = {}
    for st in sites:
        calls[st.site.layer] = max(calls.get(st.site.layer, 0), st.site.call + 1)
        if st.site.role == "input" or st.site.layer not in channels:
            channels[st.site.layer] = st.site.channels
    layer_entries = [
        LayerEntry(
            name=name,
            kind=spec.kind if spec is not None else None,
            module_type=shards.module_type_name(module),
            channels=channels.get(name),
            calls=calls.get(name, 0),
            channel_dim=spec.channel_dim if spec is not None else output_channel_dim(module),
            spec=None if spec is None else dict(spec.__dict__),
            grad_index=grad_index.get(name),
            n_params=sum(math.prod(p.shape) for p in module.parameters(recurse=False)),
        )
        for name, (module, spec) in layers.items()
    ]
    site_entries = [
        SiteEntry(
            st.site.layer, st.site.role, st.site.call, st.site.kind, st.site.module_type, st.site.channels,
            st.site.channel_dim,
            None if "channel_index" not in st.ctx_state else [int(i) for i in st.ctx_state["channel_index"].tolist()],
            channel_offset=0 if st.part is None else st.part.offset,
            global_channels=None if st.part is None else st.part.global_channels,
            counted=True if st.part is None else st.part.counted,
        )
        for st in sites
    ]
    statistics: dict[str, Statistic] = {}
    for st in sites:
        for s in st.stats:
            statistics.setdefault(s.name, s)
    site_stats = []
    for s in statistics.values():
        rows = [st.index for st in sites if any(x.name == s.name for x in st.stats)]
        site_stats.append(SiteStatistic(s.name, s.dtype, s.description, rows, [s.width(sites[r].site) for r in rows],
                                         s.merge))
    layer_index = {e.name: i for i, e in enumerate(layer_entries)}
    module_stats: dict[str, tuple[list[int], list[int]]] = {}
    for mstat in schema.MODULE_STATS:
        rows, widths = [], []
        for name, (module, spec) in layers.items():
            if spec is None or name in disabled:
                continue
            t = module_tensor(module, mstat)
            if t is not None:
                rows.append(layer_index[name])
                widths.append(min(t.numel(), max_channels))
        module_stats[mstat] = (rows, widths)
    return build_layout(
        layer_entries, site_entries, site_stats, module_stats, n_grad_layers,
        hist_bins=S.HIST_BINS, sample_size=S.SAMPLE_SIZE, percentile_levels=list(S.PERCENTILE_LEVELS),
        group_levels=list(S.GROUP_LEVELS), max_channels=max_channels,
        grad_stats=schema.GRAD_STATS + (schema.GRAD_PARTIAL_STATS if sharded else ()),
        grad_partial_widths=grad_partial_widths,
    )


def norm_kind_of(layers: Sequence[LayerEntry], given: str | None) -> str:
    """The run's norm kind: ``given``, else the one kind among its layers, ``mixed`` or ``none``."""
    if given is not None:
        return given
    kinds = sorted({e.kind for e in layers if e.kind is not None})
    if not kinds:
        return "none"
    return kinds[0] if len(kinds) == 1 else "mixed"


def run_meta(model: nn.Module, layout: Layout, *, label: str, experiment: str | None, norm_kind: str | None,
             rank: int, world_size: int, every: int, max_channels: int, user: Mapping[str, Any],
             sharding: Mapping[str, Any] | None = None, optimizer: Mapping[str, Any] | None = None,
             feeds_norm: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The run's ``meta``: label, experiment, norm kind, rank, options, the model and the versions
    (and, for a model with DTensor parameters, ``sharding``: its device mesh and placements;
    ``optimizer``: its class and parameter groups; ``feeds_norm``: each layer whose output a
    norm layer normalizes, and that norm — its weights are scale-invariant)."""
    from normviz import __version__

    meta = {
        "label": label,
        "experiment": experiment,
        "norm_kind": norm_kind_of(layout.layers, norm_kind),
        "rank": rank,
        "world_size": world_size,
        "every": every,
        "max_channels": max_channels,
        "model": {
            "class": type(model).__name__,
            "parameters": sum(math.prod(p.shape) for p in model.parameters()),
            "summary": repr(model)[:20000],
        },
        "versions": {
            "normviz": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "user": dict(user),
    }
    if sharding is not None:
        meta["sharding"] = dict(sharding)
    if optimizer is not None:
        meta["optimizer"] = dict(optimizer)
    if feeds_norm:
        meta["feeds_norm"] = dict(feeds_norm)
    return meta
