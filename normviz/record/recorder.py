"""The Recorder: attach to a model, compute statistics on the device, hand rows to the writer.

Step semantics: ``rec.step()`` is called once per optimizer step, after
``optimizer.step()``. Step ``k`` (counted by ``step()`` calls from 0) is recorded when
``k % every == 0``: the forward passes of that step (in training mode), the
gradients just before the optimizer applies them, and the module state after.
"""

from __future__ import annotations

import fnmatch
import math
import os
import platform
import sys
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from normviz.datatypes import NormSpec, Site, Statistic
from normviz.distributed import shared_extrema
from normviz.errors import NormvizError, UsageError
from normviz.plugins import PluginHost, get_plugin_host
from normviz.record import core, finish
from normviz.record import stats as S
from normviz.record.gradients import GradientTracker
from normviz.store import schema
from normviz.store.layout import LayerEntry, Layout, SiteEntry, StatEntry
from normviz.store.writer import RunWriter, ScalarBatch

#: Default cap on stored per-channel series (evenly spaced channels beyond it).
MAX_CHANNELS = 32
#: Between recorded steps, scalars are queued to the writer in batches of this many steps.
SCALAR_BATCH = 256
MODULE_STATS: tuple[str, ...] = ("weight", "bias", "running_mean", "running_var")
_CORE = "__core__"  # key of a site's fused core observation in a step's results
_PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_BORROWING = (*_PLAIN_BATCHNORMS, nn.GroupNorm, nn.LayerNorm)  # see core.borrow


class _SiteState:
    """A site's descriptor, its statistics (all, and the per-site extras) and their state."""

    __slots__ = ("site", "spec", "stats", "extras", "ctx_state", "index", "lazy")

    def __init__(self, site: Site, spec: NormSpec | None, stats: list[Statistic], ctx_state: dict[str, Any]) -> None:
        self.site = site
        self.spec = spec
        self.stats = stats
        self.extras = [s for s in stats if not s.fused]
        self.ctx_state = ctx_state
        self.index = -1
        # Set once this site's tensor was seen to be the input of a norm layer whose own
        # batch statistics could be borrowed: its channel moments are then left to that layer.
        self.lazy = False


class _LayerHook:
    """The forward hook of one module. Returns None: a hook's return value replaces the output."""

    __slots__ = ("recorder", "name", "spec", "is_norm", "derives", "can_borrow")

    def __init__(self, recorder: Recorder, name: str, spec: NormSpec | None, module: nn.Module) -> None:
        self.recorder = recorder
        self.name = name
        self.spec = spec
        self.is_norm = spec is not None
        # A training-mode BatchNorm's output statistics follow from its input's. Only for
        # PyTorch's own classes: SyncBatchNorm normalizes with statistics of every rank, and
        # a subclass may change forward.
        # So do a GroupNorm's, from its input's per-(sample, channel) moments.
        self.derives = spec is not None and (
            (type(module) in _PLAIN_BATCHNORMS and spec.kind == "batch")
            or (type(module) is nn.GroupNorm and spec.kind == "group")
        )
        self.can_borrow = type(module) in _BORROWING and spec is not None

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        rec = self.recorder
        if not rec._armed or not rec._model_ref_training():
            return None
        call = rec._calls.get(self.name, 0)
        rec._calls[self.name] = call + 1
        try:
            with torch.no_grad():
                x = args[0] if args and isinstance(args[0], torch.Tensor) else None
                out = _first_tensor(output)
                if rec._pending:  # left for a norm layer that is not this one: reduce it now
                    rec._complete_pending(keep=x if self.is_norm else None)
                obs_in = None
                if self.is_norm and x is not None:
                    borrowed = None
                    if self.can_borrow and out is not None and module.training:
                        borrowed = core.borrow(module, x, out, rec._gen(x.device))
                    obs_in = rec._observe(self.name, module, "input", call, x, self.spec, borrowed=borrowed)
                if out is not None:
                    derive = obs_in if self.derives and module.training else None
                    rec._observe(self.name, module, "output", call, out, self.spec, derive_from=derive)
            if out is not None and out.requires_grad and torch.is_grad_enabled():
                out.register_hook(_GradNormHook(rec, f"{self.name}|output|{call}"))
        except Exception as exc:  # noqa: BLE001 - recording must never break training
            rec._disable_layer(self.name, exc)
        return None


class _GradNormHook:
    """Tensor hook on a layer's output: the norm of the gradient flowing out of the layer."""

    __slots__ = ("recorder", "key")

    def __init__(self, recorder: Recorder, key: str) -> None:
        self.recorder = recorder
        self.key = key

    def __call__(self, grad: torch.Tensor) -> None:
        rec = self.recorder
        if rec._armed:
            with torch.no_grad():
                rec._results.setdefault(self.key, {})["output_grad_norm"] = _l2_norm(grad)
        return None


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t‖ as a [1] float32 tensor; BLAS dot for contiguous float32 (2x faster than vector_norm on CPU)."""
    if t.dtype == torch.float32 and t.is_contiguous() and t.numel() > 0:
        flat = t.view(-1)
        return torch.dot(flat, flat).sqrt().reshape(1)
    return torch.linalg.vector_norm(t, dtype=torch.float32).reshape(1)


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a module returned, or the first tensor of a tuple/list/dict output."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    if isinstance(value, Mapping):
        for v in value.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


def output_channel_dim(module: nn.Module) -> int:
    """Channel dim of an ordinary layer's output: 1 for convolutions, last otherwise."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1
    return -1


class Recorder:
    """Record per-layer statistics of a model's training into an HDF5 run file.

    Parameters
    ----------
    model:
        The model being trained. Every norm layer (input and output) and every layer
        with parameters (output) is recorded.
    path:
        The run file to create. An existing file is never overwritten unless
        ``overwrite=True``.
    every:
        Record every ``every``-th step (step 0 always). Scalars are kept for every step.
    label, meta:
        A label for plots, and extra JSON-serialisable metadata.
    experiment, norm_kind:
        Stored in the metadata; ``norm_kind`` defaults to the kinds found in the model.
    max_channels:
        Per-channel series keep at most this many (evenly spaced) channels.
    statistics:
        Opt-in statistics to enable, as names (all layers) or a mapping from name to
        layer-name patterns (``fnmatch``), e.g. ``{"channel_percentiles": ["fc*"]}``.
    flush_every, flush_secs:
        How often rows are published to the file; a crash loses at most this much.
    on_error:
        ``"warn"`` (default) or ``"raise"``: what a write failure does (see :class:`RunWriter`).
    plugins:
        A :class:`~normviz.plugins.PluginHost`; default: built-ins and installed plugins.
    seed:
        Seed of the recorder's own sampling generator (the global RNGs are never used).
    """

    def __init__(
        self,
        model: nn.Module,
        path: str | os.PathLike[str],
        *,
        every: int = 1,
        label: str | None = None,
        meta: Mapping[str, Any] | None = None,
        experiment: str | None = None,
        norm_kind: str | None = None,
        max_channels: int = MAX_CHANNELS,
        statistics: Iterable[str] | Mapping[str, Sequence[str]] = (),
        flush_every: int = 10,
        flush_secs: float = 5.0,
        on_error: str = "warn",
        overwrite: bool = False,
        plugins: PluginHost | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise UsageError(f"every must be a positive integer, got {every!r}")
        if on_error not in ("warn", "raise"):
            raise UsageError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise NormvizError(f"{self.path}: file exists; normviz never overwrites a run (use overwrite=True)")
            self.path.unlink()
        try:  # as SummaryWriter does: runs/<name>/run.h5 needs no mkdir first
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NormvizError(f"{self.path.parent}: cannot create the output folder ({exc.strerror or exc})") from exc
        self.every = every
        self.label = label if label is not None else self.path.stem
        self.experiment = experiment
        self.max_channels = max(1, int(max_channels))
        self._user_meta = dict(meta or {})
        self._norm_kind = norm_kind
        self._flush = (flush_every, flush_secs, on_error)
        self._seed = seed
        self._rank, self._world_size = _rank_world(rank, world_size)
        # A torch.compile'd module: hooks go on the original module, which the compiled
        # one calls (Dynamo traces them; see docs/integrations.md).
        # Its hooks stay on at every step: a compiled graph is traced with them.
        self._keep_hooks = hasattr(model, "_orig_mod")
        model = getattr(model, "_orig_mod", model)
        self.host = plugins if plugins is not None else get_plugin_host()
        all_stats = self.host.statistics()
        self._opt_in = _parse_opt_in(statistics, all_stats)
        self._statistics = all_stats
        self._model = model
        self._model_ref_training = lambda: model.training
        self._step = 0
        self._armed = True
        self._calls: dict[str, int] = {}
        self._results: dict[str, dict[str, Any]] = {}
        self._seen: dict[tuple[Any, ...], tuple[Any, core.CoreObs, _SiteState]] = {}
        # Tensors of this step left to the norm layer they feed, by id: (site key, tensor,
        # version, site). Held until the next recorded layer runs, so they can still be reduced.
        self._pending: dict[int, tuple[str, torch.Tensor, int, _SiteState]] = {}
        self._pending_warned = False
        self._sites: dict[str, _SiteState] = {}
        self._layout: Layout | None = None
        self._writer: RunWriter | None = None
        self._pending_scalars: list[tuple[int, float, dict[str, Any]]] = []
        self._gens: dict[torch.device, torch.Generator] = {}
        self._placeholders: dict[tuple[int, str, torch.device | None], torch.Tensor] = {}
        self._module_plans: dict[str, _ModulePlan] = {}
        self._disabled_layers: set[str] = set()
        self._disabled_stats: set[str] = set()
        self._width_warned: set[str] = set()
        self._late_sites_warned = False
        self._handles: list[Any] = []
        # Module forward hooks: (module, is the root pre-hook, hook), installed only while
        # a recorded step runs (see _arm).
        self._module_hooks: list[tuple[nn.Module, bool, Any]] = []
        self._module_handles: list[Any] = []
        self._closed = False
        self._t0 = time.time()
        self._layers: dict[str, tuple[nn.Module, NormSpec | None]] = {}
        self._attach(model)
        self._grads = GradientTracker(self, [(n, m) for n, (m, _) in self._layers.items()])
        self._handles.extend(self._grads.attach())

    # -- public API ---------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def steps_seen(self) -> int:
        """How many times :meth:`step` has been called."""
        return self._step

    def step(self, **scalars: Any) -> None:
        """Close the current training step; call once per optimizer step, after ``optimizer.step()``.

        Keyword arguments are scalars for this step (floats or 0-d tensors; tensors
        are copied to the host in batches, never one by one).
        """
        if self._closed:
            raise NormvizError("Recorder.step() called after close()")
        if self._writer is not None:
            self._writer.check()
        step = self._step
        lr = self._grads.last_lr
        if lr is not None and "lr" not in scalars:
            scalars["lr"] = lr
        for name, value in scalars.items():
            if isinstance(value, torch.Tensor) and value.requires_grad:
                scalars[name] = value.detach()  # a kept loss must not keep its autograd graph alive
        self._pending_scalars.append((step, time.time() - self._t0, scalars))
        self._grads.finish_update()  # if step() runs inside the optimizer's post-hooks, before ours
        if not self._armed and len(self._pending_scalars) >= SCALAR_BATCH:
            self._send_scalars()  # bounded memory between recorded steps far apart
        if self._armed:
            with torch.no_grad():  # parameters are read as they are, without detached aliases
                self._record_row(step)
        self._step += 1
        self._arm(self._step % self.every == 0)
        self._results.clear()
        self._seen.clear()
        self._pending.clear()
        self._calls.clear()
        self._grads.reset()

    def begin_forward(self) -> None:
        """Mark the start of a forward pass that does not go through ``model(...)``
        (e.g. a Lightning ``training_step`` calling submodules): module call counts
        restart from 0, as they do at every call of the model itself."""
        self._new_forward()

    def _new_forward(self) -> None:
        if self._pending:
            self._complete_pending()
        self._calls.clear()
        self._seen.clear()

    def flush(self) -> None:
        """Publish every step recorded so far to the file and wait for it (the file is
        flushed in the background anyway, every ``flush_every`` steps or ``flush_secs``)."""
        if self._writer is not None:
            self._send_scalars()
            self._writer.flush()
            self._writer.check()

    def close(self) -> None:
        """Write what is pending, remove every hook, close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._remove_module_hooks()
            if self._layout is None:
                self._freeze()
            if self._writer is None:
                self._open_writer()
            self._send_scalars()
        finally:
            if self._writer is not None:
                self._writer.close()

    # -- hooks side -----------------------------------------------------------------------------
    def _attach(self, model: nn.Module) -> None:
        self._module_hooks.append((model, True, _ResetCalls(self)))
        for name, module in model.named_modules():
            spec = self.host.classify(name, module)
            has_params = any(True for _ in module.parameters(recurse=False))
            if spec is None and not has_params:
                continue
            self._layers[name] = (module, spec)
            self._module_hooks.append((module, False, _LayerHook(self, name, spec, module)))
        self._install_module_hooks()

    def _arm(self, armed: bool) -> None:
        """Turn recording on or off for the next step. Forward hooks are removed from
        every module between recorded steps: a module with any hook takes PyTorch's slow
        call path (~10 µs a call on CPU), a cost steps that are not recorded should not pay."""
        self._armed = armed
        if armed:
            self._install_module_hooks()
        elif not self._keep_hooks:
            self._remove_module_hooks()

    def _install_module_hooks(self) -> None:
        if self._module_handles or self._closed:
            return
        for module, is_root, hook in self._module_hooks:
            register = module.register_forward_pre_hook if is_root else module.register_forward_hook
            self._module_handles.append(register(hook))

    def _remove_module_hooks(self) -> None:
        for handle in self._module_handles:
            handle.remove()
        self._module_handles.clear()

    def _gen(self, device: torch.device) -> torch.Generator:
        gen = self._gens.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed)
            self._gens[device] = gen
        return gen

    def _observe(
        self,
        name: str,
        module: nn.Module,
        role: str,
        call: int,
        x: torch.Tensor,
        spec: NormSpec | None,
        derive_from: core.CoreObs | None = None,
        borrowed: core.Borrowed | None = None,
    ) -> core.CoreObs | None:
        if name in self._disabled_layers or not x.is_floating_point() or x.numel() == 0:
            return None
        key = f"{name}|{role}|{call}"
        st = self._sites.get(key)
        if st is None:
            st = self._new_site(name, module, role, call, x, spec)
            if st is None:
                return None
        # The same tensor seen twice in a step (a convolution's output is the next norm's
        # input) is reduced once. A weak reference to the very object makes sure it is
        # the same live tensor, not a new one the allocator placed at a freed address.
        ident = (id(x), x._version, x.shape, x.dtype, st.site.channel_dim)
        hit = self._seen.get(ident)
        base = hit[1] if hit is not None and hit[0]() is x else None
        gen = self._gen(x.device)
        if spec is not None and role == "input":
            if base is None and self._pending:
                base = self._claim(x, ident, st, module, borrowed, gen)
            elif base is not None and _can_claim(module, x, borrowed):
                hit[2].lazy = True  # type: ignore[index]  # from the next recorded step on, leave it to this layer
            if base is None and type(module) is nn.GroupNorm:
                base = core.observe_instances(x, gen)
                if base is not None:
                    self._seen[ident] = (weakref.ref(x), base, st)
        elif st.lazy and base is None and not st.extras:
            # Left to the norm layer this tensor feeds (see _claim); reduced anyway if none claims it.
            self._pending[id(x)] = (key, x, x._version, st)
            return None
        out: dict[str, Any] = self._results.setdefault(key, {})
        if derive_from is not None and base is None and type(module) in _PLAIN_BATCHNORMS:
            obs = core.derive_batchnorm_output(
                x, derive_from, getattr(module, "weight", None), getattr(module, "bias", None), module.eps, gen
            )
        elif derive_from is not None and base is None and derive_from.inst is not None:
            obs = core.derive_groupnorm_output(x, derive_from, module, gen)  # type: ignore[arg-type]
        else:
            obs = core.observe(x, st.site.channel_dim, st.spec, gen, base, borrowed=borrowed)
        out[_CORE] = obs
        if base is None:
            self._seen[ident] = (weakref.ref(x), obs, st)
        if not st.extras:
            return obs
        ctx = S.SiteTensor(x.detach(), st.site, st.spec, gen, st.ctx_state)
        # Extras share the core's sample and moments: one sample per site and step.
        ctx._cache["sample"] = obs.sample
        ctx._cache["moments"] = (obs.mean_c, obs.var_c)
        for statistic in st.extras:
            if statistic.name in self._disabled_stats:
                continue
            try:
                out[statistic.name] = statistic.compute(ctx)
            except Exception as exc:  # noqa: BLE001 - a failing statistic is disabled, training goes on
                self._disabled_stats.add(statistic.name)
                warnings.warn(
                    f"normviz: statistic {statistic.name!r} ({self.host.owner('statistic', statistic.name)}) "
                    f"raised {type(exc).__name__}: {exc}; it is disabled for this run",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return obs

    def _claim(
        self, x: torch.Tensor, ident: tuple[Any, ...], st: _SiteState, module: nn.Module,
        borrowed: core.Borrowed | None, gen: torch.Generator,
    ) -> core.CoreObs | None:
        """Observe a norm layer's input that the previous layer left pending, for both sites:
        with the norm's own batch statistics (BatchNorm), or through per-(sample, channel)
        moments its output can be derived from (GroupNorm)."""
        entry = self._pending.pop(id(x), None)
        if entry is None:
            return None
        key, pending_x, version, pending_st = entry
        if pending_x is not x or version != x._version or pending_st.site.channel_dim != st.site.channel_dim:
            self._pending[id(x)] = entry  # not this tensor after all: reduced by _complete_pending
            return None
        base = None
        if type(module) is nn.GroupNorm:
            base = core.observe_instances(x, gen)
        if base is None:
            base = core.observe(x, st.site.channel_dim, None, gen, borrowed=borrowed)
        self._results.setdefault(key, {})[_CORE] = base
        self._seen[ident] = (weakref.ref(x), base, pending_st)
        return base

    def _complete_pending(self, keep: torch.Tensor | None = None) -> None:
        """Reduce the pending tensors no norm layer claimed (except *keep*, the input of the
        layer running now); their sites stop being left to a norm layer until one claims
        their tensor again. A tensor changed in place since gets NaN for this step (with one
        warning)."""
        kept = {}
        for ident, (key, x, version, st) in self._pending.items():
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
                obs = core.observe(x, st.site.channel_dim, None, self._gen(x.device))
            self._results.setdefault(key, {})[_CORE] = obs
        self._pending = kept

    def _new_site(
        self, name: str, module: nn.Module, role: str, call: int, x: torch.Tensor, spec: NormSpec | None
    ) -> _SiteState | None:
        if self._layout is not None:
            if not self._late_sites_warned:
                warnings.warn(
                    f"normviz: layer {name!r} first ran after the run's layout was fixed at step 0; "
                    "layers first called later are not recorded",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._late_sites_warned = True
            self._disabled_layers.add(name)
            return None
        cd = spec.channel_dim if spec is not None else output_channel_dim(module)
        if x.dim() == 0:
            cd, channels = -1, 1
        else:
            cd = cd % x.dim()
            channels = int(x.shape[cd])
        kind = spec.kind if spec is not None else None
        stored = min(channels, self.max_channels)
        site = Site(name, role, call, kind, type(module).__name__, channels, cd, stored)
        ctx_state: dict[str, Any] = {}
        if stored < channels:
            ctx_state["channel_index"] = _channel_index(channels, stored, x.device)
        stats = [
            s
            for s in self._statistics.values()
            if (s.default or _opted_in(self._opt_in, s.name, name)) and s.applies(site)
        ]
        st = _SiteState(site, spec, stats, ctx_state)
        self._sites[site.key] = st
        return st

    def _disable_layer(self, name: str, exc: BaseException) -> None:
        if name not in self._disabled_layers:
            self._disabled_layers.add(name)
            warnings.warn(
                f"normviz: recording layer {name!r} failed ({type(exc).__name__}: {exc}); the layer is skipped",
                RuntimeWarning,
                stacklevel=3,
            )

    # -- step side --------------------------------------------------------------------------------
    def _freeze(self) -> None:
        """Fix the layout from what the first recorded step saw, and open the file."""
        sites = list(self._sites.values())
        for i, st in enumerate(sites):
            st.index = i
        layers: list[LayerEntry] = []
        calls: dict[str, int] = {}
        for st in sites:
            calls[st.site.layer] = max(calls.get(st.site.layer, 0), st.site.call + 1)
        channels: dict[str, int] = {}
        for st in sites:
            if st.site.role == "input" or st.site.layer not in channels:
                channels[st.site.layer] = st.site.channels
        for name, (module, spec) in self._layers.items():
            n_params = sum(p.numel() for p in module.parameters(recurse=False))
            layers.append(
                LayerEntry(
                    name=name,
                    kind=spec.kind if spec is not None else None,
                    module_type=type(module).__name__,
                    channels=channels.get(name),
                    calls=calls.get(name, 0),
                    channel_dim=spec.channel_dim if spec is not None else output_channel_dim(module),
                    spec=None if spec is None else dict(spec.__dict__),
                    grad_index=self._grads.index_of(name),
                    n_params=n_params,
                )
            )
        site_entries = [
            SiteEntry(
                st.site.layer,
                st.site.role,
                st.site.call,
                st.site.kind,
                st.site.module_type,
                st.site.channels,
                st.site.channel_dim,
                None
                if "channel_index" not in st.ctx_state
                else [int(i) for i in st.ctx_state["channel_index"].tolist()],
            )
            for st in sites
        ]
        entries: list[StatEntry] = []
        starts = {"f4": 0, "f8": 0}

        def add(group: str, name: str, dtype: str, rows: list[int], widths: list[int], attrs: dict[str, Any]) -> None:
            if not rows:
                return
            # float32 values travel in the float32 vector; counts and float64 in the float64 one
            vec = "f4" if dtype == "float32" else "f8"
            offsets = [0]
            for w in widths:
                offsets.append(offsets[-1] + w)
            entries.append(StatEntry(group, name, dtype, rows, offsets, vec, starts[vec], attrs))
            starts[vec] += offsets[-1]

        stat_names: list[Statistic] = []
        seen: set[str] = set()
        for st in sites:
            for s in st.stats:
                if s.name not in seen:
                    seen.add(s.name)
                    stat_names.append(s)
        for s in stat_names:
            rows = [st.index for st in sites if any(x.name == s.name for x in st.stats)]
            attrs: dict[str, Any] = {"description": s.description}
            if s.name == "percentiles":
                attrs["levels"] = list(S.PERCENTILE_LEVELS)
            if s.name in ("group_mean", "group_scale"):
                attrs["levels"] = list(S.GROUP_LEVELS)
            add(schema.ACT, s.name, s.dtype, rows, [s.width(sites[r].site) for r in rows], attrs)
        out_rows = [st.index for st in sites if st.site.role == "output"]
        add(schema.ACT, "output_grad_norm", "float32", out_rows, [1] * len(out_rows), {"description": "‖∂L/∂output‖"})
        layer_index = {e.name: i for i, e in enumerate(layers)}
        self._module_rows: list[tuple[str, int, str]] = []
        for mstat in MODULE_STATS:
            rows, widths = [], []
            for name, (module, spec) in self._layers.items():
                if spec is None or name in self._disabled_layers:
                    continue
                t = _module_tensor(module, mstat)
                if t is not None:
                    rows.append(layer_index[name])
                    widths.append(min(t.numel(), self.max_channels))
                    self._module_rows.append((mstat, layer_index[name], name))
            add(schema.MODULE, mstat, "float32", rows, widths, {})
        n_grad = self._grads.n_layers
        for gstat in schema.GRAD_STATS:
            add(schema.GRAD, gstat, "float32", list(range(n_grad)), [1] * n_grad, {})
        self._layout = Layout(
            layers=layers,
            sites=site_entries,
            stats=entries,
            hist_bins=S.HIST_BINS,
            sample_size=S.SAMPLE_SIZE,
            percentile_levels=list(S.PERCENTILE_LEVELS),
            group_levels=list(S.GROUP_LEVELS),
            max_channels=self.max_channels,
        )
        device = next((o[_CORE].mean_c.device for o in self._results.values() if _CORE in o), torch.device("cpu"))
        group_entry = self._layout.stat(schema.ACT, "group_mean")
        self._assembler = core.CoreAssembler(
            [st.site.channels for st in sites],
            [st.ctx_state.get("channel_index") for st in sites],
            group_entry.rows if group_entry is not None else [],
            device,
        )
        self._root = self._root_attrs(layers)

    def _open_writer(self, extrema: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Create the file; histogram edges come from the first recorded row's (min, max)."""
        assert self._layout is not None
        n_sites = len(self._layout.sites)
        if extrema is None:
            edges = np.full((n_sites, S.HIST_BINS + 1), np.nan, dtype=np.float32)
        else:
            # The only host sync of a run: once, at the first recorded step. Under torchrun
            # the ranks agree on the extrema, so their histograms can be summed when merged.
            lo, hi = shared_extrema(self.path, *extrema)
            edges = finish.first_edges(lo.float().cpu().numpy(), hi.float().cpu().numpy())
        flush_every, flush_secs, on_error = self._flush
        self._writer = RunWriter(
            self.path, self._root, flush_every=flush_every, flush_secs=flush_secs, on_error=on_error,
            finish=finish.RowFinisher(self._layout, edges),
        )
        self._writer.open(self._layout, edges)

    def _root_attrs(self, layers: list[LayerEntry]) -> dict[str, Any]:
        from normviz import __version__

        kinds = sorted({e.kind for e in layers if e.kind is not None})
        if self._norm_kind is not None:
            norm_kind = self._norm_kind
        elif not kinds:
            norm_kind = "none"
        else:
            norm_kind = kinds[0] if len(kinds) == 1 else "mixed"
        meta = {
            "label": self.label,
            "experiment": self.experiment,
            "norm_kind": norm_kind,
            "rank": self._rank,
            "world_size": self._world_size,
            "every": self.every,
            "max_channels": self.max_channels,
            "model": {
                "class": type(self._model).__name__,
                "parameters": sum(p.numel() for p in self._model.parameters()),
                "summary": repr(self._model)[:20000],
            },
            "versions": {
                "normviz": __version__,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "platform": platform.platform(),
            },
            "user": self._user_meta,
        }
        return {
            "schema": schema.SCHEMA_NAME,
            "schema_version": schema.SCHEMA_VERSION,
            "normviz_version": __version__,
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "meta": meta,
        }

    def _record_row(self, step: int) -> None:
        if self._layout is None:
            if not self._sites:
                return  # nothing ran in training mode yet: wait for a step that did
            self._freeze()
        layout = self._layout
        assert layout is not None
        if self._pending:
            self._complete_pending()
        site_keys = [e.key for e in layout.sites]
        blocks = self._assembler.blocks([self._results.get(k, {}).get(_CORE) for k in site_keys]) if site_keys else None
        if self._writer is None:
            self._open_writer((blocks.stats["min"], blocks.stats["max"]) if blocks is not None else None)
        assert self._writer is not None
        parts: dict[str, list[torch.Tensor]] = {"f4": [], "f8": []}
        device = self._assembler.device if site_keys else None
        for st in layout.stats:
            if st.group == schema.ACT and blocks is not None and st.name in blocks.stats:
                parts[st.vec].append(blocks.stats[st.name])
            elif st.group == schema.ACT and st.name in core.HOST_FINISHED:
                parts[st.vec].append(self._placeholder(st.width, st.vec, device))  # filled on the host
            elif st.group == schema.ACT:
                for i, r in enumerate(st.rows):
                    t = self._results.get(site_keys[r], {}).get(st.name)
                    w = st.offsets[i + 1] - st.offsets[i]
                    if t is not None and t.numel() != w:
                        self._warn_width(st.name, site_keys[r], t.numel(), w)
                        t = None
                    if t is None:
                        t = self._nan_fill(w, st.vec, device)
                    else:
                        device = t.device if device is None else device
                    parts[st.vec].append(t if t.dim() == 1 else t.reshape(-1))
            elif st.group == schema.MODULE:
                parts["f4"].append(self._module_block(st, device))
            elif st.group == schema.GRAD:
                parts["f4"].append(self._grads.result(st.name, device))
        if blocks is not None:
            parts["f4"].append(blocks.host)  # what the host finishes the row from
        scalars, scalar_values = self._take_scalars()
        if scalar_values is not None:
            parts["f8"].append(scalar_values)  # they ride to the host with the row, after its columns
        vectors = {}
        target = device if device is not None else torch.device("cpu")
        for vec, items in parts.items():
            dtype = torch.float32 if vec == "f4" else torch.float64
            if not items:
                vectors[vec] = torch.zeros(0, dtype=dtype)
                continue
            vectors[vec] = torch.cat(
                [t if t.dtype == dtype and t.device == target else t.to(device=target, dtype=dtype) for t in items]
            )
        event = None
        if target.type == "cuda":
            host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in vectors.items()}
            for k, v in vectors.items():
                host[k].copy_(v, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            vectors = host
        else:
            vectors = {k: v.cpu() for k, v in vectors.items()}
        if scalar_values is not None:
            n = scalar_values.numel()
            scalars.values = vectors["f8"][-n:]  # read by the writer once the event fired
            vectors["f8"] = vectors["f8"][:-n]
        finish_args = (blocks.group_sizes, blocks.numel) if blocks is not None else ([], [])
        self._writer.write_row(step, time.time() - self._t0, vectors["f4"], vectors["f8"], event, finish_args, scalars)

    def _warn_width(self, name: str, site: str, got: int, want: int) -> None:
        """Once per statistic: a plugin's compute() returned another width than its width(site)."""
        if name in self._width_warned:
            return
        self._width_warned.add(name)
        warnings.warn(
            f"normviz: statistic {name!r} ({self.host.owner('statistic', name)}) returned {got} values at "
            f"{site.replace('|', ' ')}, but its width is {want}; stored as NaN there",
            RuntimeWarning,
            stacklevel=3,
        )

    def _module_block(self, st: StatEntry, device: torch.device | None) -> torch.Tensor:
        """One module statistic (e.g. every norm's running_var) of all its layers, float32, thinned.

        The usual case — the same tensors as at the first step, one dtype — is one cat and
        one index_select for all layers; anything else goes layer by layer.
        """
        assert self._layout is not None
        modules = [self._layers[self._layout.layers[r].name][0] for r in st.rows]
        tensors = [_module_tensor(m, st.name) for m in modules]
        plan = self._module_plans.get(st.name)
        if plan is None:
            plan = self._module_plans[st.name] = _ModulePlan.build(tensors, st.offsets)
        if plan.fits(tensors):
            flat = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
            flat = flat.float() if flat.dtype != torch.float32 else flat
            return flat.index_select(0, plan.gather) if plan.gather is not None else flat.clone()
        parts = []
        for i, t in enumerate(tensors):
            w = st.offsets[i + 1] - st.offsets[i]
            if t is None or t.numel() < w:
                parts.append(self._nan_fill(w, "f4", device))
                continue
            t = t.reshape(-1).float()
            parts.append(t.index_select(0, _channel_index(t.numel(), w, t.device)) if t.numel() > w else t.clone())
        return torch.cat(parts)

    def _placeholder(self, width: int, vec: str, device: torch.device | None) -> torch.Tensor:
        key = (width, vec, device)
        t = self._placeholders.get(key)
        if t is None:
            t = self._placeholders[key] = self._nan_fill(width, vec, device)
        return t

    def _nan_fill(self, width: int, vec: str, device: torch.device | None) -> torch.Tensor:
        dtype = torch.float32 if vec == "f4" else torch.float64
        return torch.full((width,), math.nan, dtype=dtype, device=device)

    def _send_scalars(self) -> None:
        """Queue the pending steps' scalars on their own (between recorded steps, and at the end)."""
        if self._writer is None or not self._pending_scalars:
            return
        batch, stacked = self._take_scalars()
        event = None
        if stacked is not None:
            if stacked.device.type == "cuda":
                # Copied without waiting: the writer's thread waits for the event instead.
                batch.values = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
                batch.values.copy_(stacked, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                batch.values = stacked.cpu()
        self._writer.write_scalars(batch, event)

    def _take_scalars(self) -> tuple[ScalarBatch, torch.Tensor | None]:
        """The pending steps' scalars: Python values in the rows, tensor values stacked into
        one float64 tensor (on the first one's device) that fills them in later, in order.
        Nothing here reads a tensor: a recorded row carries them to the host with its own copy."""
        tensors: list[torch.Tensor] = []
        where: list[tuple[int, str]] = []
        rows: list[tuple[int, dict[str, float]]] = []
        for i, (step, wall, values) in enumerate(self._pending_scalars):
            row: dict[str, float] = {"wall_time": wall}
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    if value.numel() != 1:
                        continue
                    tensors.append(value.reshape(()))
                    where.append((i, name))
                else:
                    try:
                        row[name] = float(value)
                    except (TypeError, ValueError):
                        continue
            rows.append((step, row))
        self._pending_scalars.clear()
        stacked = None
        if tensors:
            device = tensors[0].device
            stacked = torch.stack([t.to(device=device, dtype=torch.float64) for t in tensors])
        return ScalarBatch(rows, where), stacked


class _ResetCalls:
    """Root forward pre-hook: a new forward pass starts counting module calls from 0."""

    __slots__ = ("recorder",)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = weakref.proxy(recorder)

    def __call__(self, module: nn.Module, args: Any) -> None:
        # Inlined (no method call through the proxy): torch.compile traces this hook.
        rec = self.recorder
        if rec._pending:
            rec._complete_pending()
        rec._calls.clear()
        rec._seen.clear()
        return None


class _ModulePlan:
    """How one module statistic's tensors are flattened: their sizes, dtype and device at the
    first recorded step, and the indices of the stored values in their concatenation."""

    __slots__ = ("numels", "dtype", "device", "gather")

    def __init__(self, numels: list[int], dtype: torch.dtype, device: torch.device, gather: torch.Tensor | None):
        self.numels, self.dtype, self.device, self.gather = numels, dtype, device, gather

    @classmethod
    def build(cls, tensors: list[torch.Tensor | None], offsets: list[int]) -> _ModulePlan:
        if not tensors or any(t is None for t in tensors):
            return cls([], torch.float32, torch.device("cpu"), None)
        numels = [t.numel() for t in tensors]  # type: ignore[union-attr]
        first = tensors[0]
        assert first is not None
        index, base, thinned = [], 0, False
        for i, n in enumerate(numels):
            w = offsets[i + 1] - offsets[i]
            if n < w:
                return cls([], torch.float32, torch.device("cpu"), None)  # never fits: the slow path pads
            thinned |= n > w
            index.append(_channel_index(n, w, first.device) + base)
            base += n
        gather = torch.cat(index) if thinned else None
        return cls(numels, first.dtype, first.device, gather)

    def fits(self, tensors: list[torch.Tensor | None]) -> bool:
        if len(tensors) != len(self.numels):
            return False
        for t, n in zip(tensors, self.numels):
            if t is None or t.numel() != n or t.dtype != self.dtype or t.device != self.device:
                return False
        return True


def _can_claim(module: nn.Module, x: torch.Tensor, borrowed: core.Borrowed | None) -> bool:
    """Whether this norm layer can observe its input for the layer that produced it too."""
    if type(module) is nn.GroupNorm:
        return x.dim() >= 3 and x.dtype == torch.float32 and x.is_contiguous()
    return borrowed is not None and borrowed.mean_c is not None


def _module_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    t = getattr(module, name, None)
    if isinstance(t, torch.Tensor) and t.dim() == 1 and t.is_floating_point():
        return t
    return None


def _channel_index(channels: int, stored: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(0, channels - 1, stored, device=device).round().long()


def _parse_opt_in(
    statistics: Iterable[str] | Mapping[str, Sequence[str]], known: Mapping[str, Statistic]
) -> dict[str, list[str]]:
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


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank() if rank is None else rank
                world_size = dist.get_world_size() if world_size is None else world_size
        except Exception:  # noqa: BLE001
            pass
    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    return rank, world_size
