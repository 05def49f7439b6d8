"""What a recorded forward pass sees: its sites, reduced once each, on the device.

A *site* is one tensor a recorded layer sees (a norm layer's input and output, another
layer's output), for one call per forward pass. :class:`Observer` turns each into its
statistics without a host sync:

- the same tensor seen twice in a step (a convolution's output is the next norm's
  input) is reduced once (de-duplication by the live object, not its address);
- a norm layer's own batch statistics are *borrowed* where PyTorch saved them;
- the layer before a BatchNorm/GroupNorm leaves its tensor *pending* for the norm,
  which *claims* it and observes it for both sites; a pending tensor nobody claims
  is reduced anyway before the next recorded layer runs.

The observer holds one step's results; the recorder reads them to pack the step's row
(:mod:`normviz.record.rows`) and then calls :meth:`Observer.end_step`.
"""

from __future__ import annotations

import fnmatch
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from normviz.datatypes import NormSpec, Site, Statistic
from normviz.errors import UsageError
from normviz.record import attention, core, derive, shards
from normviz.record import stats as S
from normviz.record.sampling import Sampler
from normviz.store.layout import kept_channels

#: Key of a site's fused core observation in a step's results.
CORE = "__core__"
PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SiteState:
    """A site's descriptor, its statistics (all, and the per-site extras) and their state."""

    __slots__ = ("site", "spec", "stats", "extras", "ctx_state", "index", "lazy", "part")

    def __init__(self, site: Site, spec: NormSpec | None, stats: list[Statistic], ctx_state: dict[str, Any],
                 part: shards.ChannelPart | None = None) -> None:
        self.site = site
        self.part = part  # where this rank's tensor sits in a sharded one (None: whole)
        self.spec = spec
        self.stats = stats
        self.extras = [s for s in stats if not s.fused]
        self.ctx_state = ctx_state
        self.index = -1
        # Set once this site's tensor was seen to be the input of a norm layer whose own
        # batch statistics could be borrowed: its channel moments are then left to that layer.
        self.lazy = False


def output_channel_dim(module: nn.Module) -> int:
    """Channel dim of an ordinary layer's output: 1 for convolutions, last otherwise."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1
    return -1


def channel_index(channels: int, stored: int, device: torch.device) -> torch.Tensor:
    """``stored`` evenly spaced channels of ``channels``, first and last included."""
    return torch.linspace(0, channels - 1, stored, device=device).round().long()


def parse_opt_in(
    statistics: Iterable[str] | Mapping[str, Sequence[str]], known: Mapping[str, Statistic]
) -> dict[str, list[str]]:
    """``Recorder(statistics=...)`` as {statistic: layer-name patterns}; unknown names are a UsageError."""
    if isinstance(statistics, str):
        statistics = [statistics]
    if isinstance(statistics, Mapping):
        parsed = {k: list(v) if not isinstance(v, str) else [v] for k, v in statistics.items()}
    else:
        parsed = {k: ["*"] for k in statistics}
    for name in parsed:
        if name not in known:
            raise UsageError(f"unknown statistic {name!r}; known: {', '.join(sorted(known))}")
    return parsed


def _opted_in(opt_in: Mapping[str, list[str]], stat: str, layer: str) -> bool:
    return any(fnmatch.fnmatchcase(layer, pat) for pat in opt_in.get(stat, ()))


def _can_claim(module: nn.Module, x: torch.Tensor, borrowed: core.Borrowed | None) -> bool:
    """Whether this norm layer can observe its input for the layer that produced it too."""
    if type(module) is nn.GroupNorm:
        return S.reads_instances(x)
    return borrowed is not None and borrowed.mean_c is not None


class Observer:
    """Sites and their statistics for the step being recorded.

    Parameters
    ----------
    statistics:
        Every registered statistic by name; those that are ``default`` or opted in
        (``opt_in``: statistic → layer patterns) and apply to a site are computed there.
    max_channels:
        Per-channel series keep at most this many (evenly spaced) channels.
    seed:
        Seed of the sampling generators (one per device; the global RNGs are never used).
    owner:
        ``owner(statistic name) -> provider``, for warnings that name a plugin.
    strict:
        Raise what a hook or statistic raises instead of disabling it (``on_error="raise"``).
    """

    def __init__(
        self, statistics: Mapping[str, Statistic], opt_in: Mapping[str, list[str]], *, max_channels: int, seed: int,
        owner: Any, strict: bool = False,
    ) -> None:
        self.statistics = statistics
        self.strict = strict
        self.opt_in = opt_in
        self.max_channels = max_channels
        self.seed = seed
        self.owner = owner
        self.sites: dict[str, SiteState] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, int] = {}
        # Output-gradient taps of this forward pass, and calls of layers recomputed for backward.
        self._tapped: set[tuple[str, int]] = set()
        self._recomputes: dict[str, int] = {}
        self.seen: dict[tuple[Any, ...], tuple[Any, core.CoreObs, SiteState]] = {}
        # Tensors of this step left to the norm layer they feed, by id: (site key, tensor,
        # version, site). Held until the next recorded layer runs, so they can still be reduced.
        self.pending: dict[int, tuple[str, torch.Tensor, int, SiteState]] = {}
        self.disabled_layers: set[str] = set()
        # Layers whose output a norm layer normalizes (seen as that norm's input), and that norm.
        self.feeds_norm: dict[str, str] = {}
        self.disabled_stats: set[str] = set()
        self.frozen = False  # the file's layout is fixed: a new site is not recorded
        self.fused: core.FusedReductions | None = None  # compiled one-pass reductions (Recorder(compile=True))
        self._gens: dict[torch.device, torch.Generator] = {}
        self.sampler = Sampler(self.gen)
        self._pending_warned = False
        self._late_sites_warned = False

    # -- a step's life ----------------------------------------------------------------------
    def next_call(self, name: str) -> int:
        """The index of this call of layer ``name`` in the current forward pass."""
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        return call

    def next_recompute(self, name: str) -> int:
        """The index of this recomputation of layer ``name`` (activation checkpointing) since
        the last forward pass: its call of that pass, for layers called once per pass."""
        call = self._recomputes.get(name, 0)
        self._recomputes[name] = call + 1
        return call

    def tap(self, name: str, call: int, out: torch.Tensor, hook: Any) -> None:
        """Register ``hook`` on the output of call ``call`` of layer ``name`` (once per pass)."""
        out.register_hook(hook)
        self._tapped.add((name, call))

    def tapped(self, name: str, call: int) -> bool:
        """Whether that output's gradient is tapped already in this forward pass."""
        return (name, call) in self._tapped

    def new_forward(self) -> None:
        """A new forward pass: module calls count from 0 again."""
        if self.pending:
            self.complete_pending()
        self.calls.clear()
        self.seen.clear()
        self._tapped.clear()
        self._recomputes.clear()

    def end_step(self) -> None:
        """Forget the step just recorded (its results were packed into its row)."""
        self.sampler.end_step()
        self.results.clear()
        self.seen.clear()
        self.pending.clear()
        self.calls.clear()
        self._tapped.clear()
        self._recomputes.clear()

    def set_result(self, key: str, name: str, value: torch.Tensor) -> None:
        """Store one statistic of the site ``key`` (``layer|role|call``) for this step."""
        self.results.setdefault(key, {})[name] = value

    def gen(self, device: torch.device) -> torch.Generator:
        """The sampling generator of ``device``, seeded with the recorder's seed."""
        gen = self._gens.get(device)
        if gen is None:
            gen = self._gens[device] = torch.Generator(device=device).manual_seed(self.seed)
        return gen

    # -- observing --------------------------------------------------------------------------
    def observe(
        self, name: str, module: nn.Module, role: str, call: int, x: torch.Tensor, spec: NormSpec | None,
        derive_from: core.CoreObs | None = None, borrowed: core.Borrowed | None = None,
        source: torch.Tensor | None = None, reuse: bool = True,
        call_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
        channels: Sequence[torch.Tensor] | None = None, instances: Sequence[torch.Tensor] | None = None,
    ) -> core.CoreObs | None:
        """Reduce the tensor ``x`` of one site; returns its core observation (None if skipped).
        ``source``: the tensor the module saw when ``x`` is its local shard (a DTensor).
        ``reuse=False``: ``x`` may be overwritten once this returns (a compiled graph's
        buffer): it is reduced now, neither left pending nor matched with another site's.
        ``call_inputs``: the module call's (args, kwargs), for statistics that read them.
        ``channels``: ``x``'s per-channel (mean, variance, min, max), computed already;
        ``instances``: a GroupNorm input's per-(sample, channel) ones."""
        if name in self.disabled_layers or not x.is_floating_point() or x.numel() == 0:
            return None
        key = f"{name}|{role}|{call}"
        st = self.sites.get(key)
        if st is None:
            st = self._new_site(name, module, role, call, x, spec, x if source is None else source)
            if st is None:
                return None
        # The same tensor seen twice in a step (a convolution's output is the next norm's
        # input) is reduced once. A weak reference to the very object makes sure it is
        # the same live tensor, not a new one the allocator placed at a freed address.
        ident = (id(x), x._version, x.shape, x.dtype, st.site.channel_dim)
        hit = self.seen.get(ident) if reuse else None
        base = hit[1] if hit is not None and hit[0]() is x else None
        if spec is not None and role == "input":
            if hit is not None and base is not None and hit[2].site.layer != name:
                self.feeds_norm.setdefault(hit[2].site.layer, name)
            if base is None and self.pending and reuse:
                base = self._claim(x, ident, st, module, borrowed)
            elif base is not None and _can_claim(module, x, borrowed):
                hit[2].lazy = True  # type: ignore[index]  # from the next recorded step on, leave it to this layer
            if base is None and type(module) is nn.GroupNorm:
                base = derive.observe_instances(x, self.sampler, self.fused, instances)
                if base is not None and reuse:
                    self.seen[ident] = (weakref.ref(x), base, st)
        elif st.lazy and base is None and not st.extras and reuse:
            # Left to the norm layer this tensor feeds (see _claim); reduced anyway if none claims it.
            self.pending[id(x)] = (key, x, x._version, st)
            return None
        out: dict[str, Any] = self.results.setdefault(key, {})
        if derive_from is not None and base is None and type(module) in PLAIN_BATCHNORMS:
            obs = derive.derive_batchnorm_output(
                x, derive_from, getattr(module, "weight", None), getattr(module, "bias", None),
                cast(float, module.eps), self.sampler
            )
        elif derive_from is not None and base is None and derive_from.inst is not None:
            obs = derive.derive_groupnorm_output(x, derive_from, module, self.sampler)  # type: ignore[arg-type]
        else:
            obs = core.observe(x, st.site.channel_dim, st.spec, self.sampler, base, borrowed=borrowed, fused=self.fused,
                               channels=channels)
        out[CORE] = obs
        if base is None and reuse:
            self.seen[ident] = (weakref.ref(x), obs, st)
        if st.extras:
            self._extras(out, x, st, obs, self.gen(x.device), module, call_inputs)
        return obs

    def _extras(self, out: dict[str, Any], x: torch.Tensor, st: SiteState, obs: core.CoreObs,
                gen: torch.Generator, module: nn.Module,
                call_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None) -> None:
        """The site's plugin and opt-in statistics; one that raises is disabled, training goes on."""
        ctx = S.SiteTensor(x.detach(), st.site, st.spec, gen, st.ctx_state, module=module, call_inputs=call_inputs)
        # Extras share the core's sample and moments: one sample per site and step.
        ctx.share(sample=obs.sample, moments=lambda: (obs.mean_c, obs.var_c))
        for statistic in st.extras:
            if statistic.name in self.disabled_stats:
                continue
            try:
                out[statistic.name] = statistic.compute(ctx)
            except Exception as exc:  # noqa: BLE001 - a failing statistic is disabled, training goes on
                if self.strict:
                    raise
                self.disabled_stats.add(statistic.name)
                warnings.warn(
                    f"normviz: statistic {statistic.name!r} ({self.owner(statistic.name)}) "
                    f"raised {type(exc).__name__}: {exc}; it is disabled for this run",
                    RuntimeWarning,
                    stacklevel=4,
                )

    def _claim(
        self, x: torch.Tensor, ident: tuple[Any, ...], st: SiteState, module: nn.Module,
        borrowed: core.Borrowed | None,
    ) -> core.CoreObs | None:
        """Observe a norm layer's input that the previous layer left pending, for both sites:
        with the norm's own batch statistics (BatchNorm), or through per-(sample, channel)
        moments its output can be derived from (GroupNorm)."""
        entry = self.pending.pop(id(x), None)
        if entry is None:
            return None
        key, pending_x, version, pending_st = entry
        if pending_x is not x or version != x._version or pending_st.site.channel_dim != st.site.channel_dim:
            self.pending[id(x)] = entry  # not this tensor after all: reduced by complete_pending
            return None
        if pending_st.site.layer != st.site.layer:
            self.feeds_norm.setdefault(pending_st.site.layer, st.site.layer)
        base = None
        if type(module) is nn.GroupNorm:
            base = derive.observe_instances(x, self.sampler, self.fused)
        if base is None:
            base = core.observe(x, st.site.channel_dim, None, self.sampler, borrowed=borrowed, fused=self.fused)
        self.results.setdefault(key, {})[CORE] = base
        self.seen[ident] = (weakref.ref(x), base, pending_st)
        return base

    def complete_pending(self, keep: torch.Tensor | None = None) -> None:
        """Reduce the pending tensors no norm layer claimed (except *keep*, the input of the
        layer running now); their sites stop being left to a norm layer until one claims
        their tensor again. A tensor changed in place since gets NaN for this step (with one
        warning)."""
        kept = {}
        for ident, (key, x, version, st) in self.pending.items():
            if keep is not None and x is keep:
                kept[ident] = (key, x, version, st)
                continue
            st.lazy = False
            if x._version != version:
                if not self._pending_warned:
                    self._pending_warned = True
                    warnings.warn(
                        f"normviz: the output of {st.site.layer!r} no longer feeds a norm layer and was changed in "
                        "place before it could be reduced; its statistics are NaN for this step",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                continue
            with torch.no_grad():
                obs = core.observe(x, st.site.channel_dim, None, self.sampler, fused=self.fused)
            self.results.setdefault(key, {})[CORE] = obs
        self.pending = kept

    def _new_site(
        self, name: str, module: nn.Module, role: str, call: int, x: torch.Tensor, spec: NormSpec | None,
        source: torch.Tensor,
    ) -> SiteState | None:
        if self.frozen:
            if not self._late_sites_warned:
                warnings.warn(
                    f"normviz: layer {name!r} first ran after the run's layout was fixed at step 0; "
                    "layers first called later are not recorded",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._late_sites_warned = True
            self.disabled_layers.add(name)
            return None
        cd = spec.channel_dim if spec is not None else output_channel_dim(module)
        if x.dim() == 0:
            cd, channels = -1, 1
        else:
            cd = cd % x.dim()
            channels = int(x.shape[cd])
        kind = spec.kind if spec is not None else None
        part = shards.channel_part(module, source, x, cd) if source is not x or shards.is_dtensor(
            getattr(module, "weight", None)) else None
        ctx_state: dict[str, Any] = {}
        if part is not None and part.global_channels is not None:
            # A slice of the channel axis: the kept channels are chosen on the global axis.
            total = part.global_channels
            chosen = torch.tensor(kept_channels(total, self.max_channels), device=x.device) - part.offset
            local = chosen[(chosen >= 0) & (chosen < channels)]
            stored = int(local.numel())
            if 0 < stored < channels:
                ctx_state["channel_index"] = local
            elif stored == 0:  # none of the kept channels is here: keep one, the merge ignores it
                stored = 1
                ctx_state["channel_index"] = local.new_zeros(1)
        else:
            stored = min(channels, self.max_channels)
            if stored < channels:
                ctx_state["channel_index"] = channel_index(channels, stored, x.device)
        heads = attention.heads_of(module) if role == "output" else 0
        site = Site(name, role, call, kind, shards.module_type_name(module), channels, cd, stored, heads)
        stats = [
            s
            for s in self.statistics.values()
            if (s.default or _opted_in(self.opt_in, s.name, name)) and s.applies(site)
        ]
        st = SiteState(site, spec, stats, ctx_state, part)
        self.sites[site.key] = st
        return st

    def disable_layer(self, name: str, exc: BaseException) -> None:
        """Stop recording layer ``name`` after it failed, with one warning naming it."""
        if name not in self.disabled_layers:
            self.disabled_layers.add(name)
            warnings.warn(
                f"normviz: recording layer {name!r} failed ({type(exc).__name__}: {exc}); the layer is skipped",
                RuntimeWarning,
                stacklevel=4,
            )
