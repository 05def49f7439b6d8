"""The Recorder: attach to a model, compute statistics on the device, hand rows to the writer.

Step semantics: ``rec.step()`` is called once per optimizer step, after
``optimizer.step()``. Step ``k`` (counted by ``step()`` calls from 0) is recorded when
``k % every == 0``: the forward passes of that step (in training mode), the
gradients just before the optimizer applies them, and the module state after.

The Recorder is the facade over modules of one job each: :mod:`~normviz.record.hooks`
(the module hooks and arming them), :mod:`~normviz.record.observe` (sites and their
statistics), :mod:`~normviz.record.gradients` (gradient statistics at the optimizer
step), :mod:`~normviz.record.describe` (what the file is told about the run) and
:mod:`~normviz.record.rows` (a step's row and the scalars, to the host in one copy).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from normviz.datatypes import NormSpec
from normviz.distributed import current_rank, shared_extrema
from normviz.errors import NormvizError, UsageError
from normviz.plugins import PluginHost, get_plugin_host
from normviz.record import assemble, attention, evaluation, finish
from normviz.record import stats as S
from normviz.record.describe import describe, run_meta
from normviz.record.fused import FusedReductions
from normviz.record.gradients import GradientTracker
from normviz.record.hooks import HookSet
from normviz.record.observe import CORE, Observer, parse_opt_in
from normviz.record.rows import SCALAR_BATCH, Packing, RowPacker, ScalarQueue
from normviz.store import schema, series
from normviz.store.layout import Layout
from normviz.store.meta import root_attrs
from normviz.store.writer import RunWriter

DEFAULT_SERIES = series.DEFAULT
#: Default cap on stored per-channel series (evenly spaced channels beyond it).
MAX_CHANNELS = 32


class Recorder:
    """Record per-layer statistics of a model's training into an HDF5 run file.

    Eval passes marked with :meth:`evaluating` are recorded as series of their own, in
    files beside the run's (:mod:`normviz.store.series`).

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
        ``"warn"`` (default): what fails in recording — a hook, a statistic, the gradient
        statistics, a write — is disabled with one warning naming it, and training goes on
        with the rest recorded. ``"raise"``: the failure is raised into training instead.
    plugins:
        A :class:`~normviz.plugins.PluginHost`; default: built-ins and installed plugins.
    seed:
        Seed of the recorder's own sampling generator (the global RNGs are never used).
    compile:
        Compute each site's moments and extrema in one ``torch.compile``d pass where the
        layout allows (:mod:`normviz.record.fused`): one or two kernels per site instead of
        about six, for seconds of compiling at the first recorded step (docs/recording.md).
        Off by default.
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
        compile: bool = False,  # noqa: A002 - the documented option's name
        _series: str | None = None,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise UsageError(f"every must be a positive integer, got {every!r}")
        if on_error not in ("warn", "raise"):
            raise UsageError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.path = Path(path)
        # The run's eval series (files beside it) belong to it: stale ones are refused or replaced with it.
        stale = [] if _series else list(series.series_files(self.path).values())
        for existing in [p for p in (self.path, *stale) if p.exists()]:
            if not overwrite:
                raise NormvizError(f"{existing}: file exists; normviz never overwrites a run (use overwrite=True)")
            existing.unlink(missing_ok=True)
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
        self._rank, self._world_size = current_rank(rank, world_size)
        # A torch.compile'd module: hooks go on the original module, which the compiled
        # one calls (Dynamo traces them; see docs/integrations.md).
        # Its hooks stay on at every step: a compiled graph is traced with them.
        keep_hooks = hasattr(model, "_orig_mod")
        model = getattr(model, "_orig_mod", model)
        self._model = model
        self.host = plugins if plugins is not None else get_plugin_host()
        all_stats = self.host.statistics()
        opt_in = parse_opt_in(statistics, all_stats)
        self._observer = Observer(
            all_stats, opt_in, max_channels=self.max_channels, seed=seed,
            owner=lambda name: self.host.owner("statistic", name), strict=on_error == "raise",
        )
        self._observer.fused = FusedReductions() if compile else None
        # Attention modules hold no parameters of their own: recorded when their statistics are asked for.
        wants_attention = any(name.startswith("attention_") for name in opt_in)
        self._layers: dict[str, tuple[nn.Module, NormSpec | None]] = {}
        for name, module in model.named_modules():
            spec = self.host.classify(name, module)
            if spec is not None or any(True for _ in module.parameters(recurse=False)) or (
                    wants_attention and attention.heads_of(module) > 0):
                self._layers[name] = (module, spec)
        eval_only = _series is not None  # an eval series: any mode, no gradients, never compiled hooks
        self._hooks = HookSet(model, self._layers, self._observer, keep=keep_hooks and not eval_only,
                              train_only=not eval_only)
        self._grads = GradientTracker([] if eval_only else [(n, m) for n, (m, _) in self._layers.items()],
                                      lambda: self._hooks.armed, strict=on_error == "raise")
        self._grad_handles = [] if eval_only else self._grads.attach()
        # What an eval series of this run is made with (normviz.record.evaluation).
        self._series_options: dict[str, Any] = {
            "label": self.label, "meta": self._user_meta, "experiment": experiment, "norm_kind": norm_kind,
            "max_channels": self.max_channels, "statistics": opt_in, "flush_every": flush_every,
            "flush_secs": flush_secs, "on_error": on_error, "plugins": self.host, "seed": seed,
            "rank": self._rank, "world_size": self._world_size, "compile": compile,
        }
        self._extra_meta: dict[str, Any] = {}  # added to the file's meta (an eval series says whose it is)
        self._eval: dict[str, evaluation.EvalSeries | None] = {}  # made at each series' first pass
        self._evaluating = False
        self._scalars = ScalarQueue()
        self._pending_scalars = self._scalars.pending  # the same list: the steps' scalars not yet sent
        self._step = 0
        self._layout: Layout | None = None
        self._packing: Packing | None = None
        self._packer: RowPacker | None = None
        self._writer: RunWriter | None = None
        self._closed = False
        self._warned_nothing_ran = False
        self._t0 = time.time()

    # -- public API ---------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def steps_seen(self) -> int:
        """How many times :meth:`step` has been called."""
        return self._step

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

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
        for g, group_lr in enumerate(self._grads.last_lrs[1:], start=1):  # lr/<g>: the other groups'
            if group_lr is not None:
                scalars.setdefault(f"lr/{g}", group_lr)
        self._scalars.add(step, time.time() - self._t0, scalars)
        self._grads.finish_update()  # if step() runs inside the optimizer's post-hooks, before ours
        armed = self._hooks.arming.armed
        if not armed and len(self._scalars.pending) >= SCALAR_BATCH and self._writer is not None:
            self._scalars.send(self._writer)  # bounded memory between recorded steps far apart
        if armed:
            with torch.no_grad():  # parameters are read as they are, without detached aliases
                self._record_row(step)
        self._step += 1
        self._hooks.arm(self._step % self.every == 0)
        self._observer.end_step()
        self._grads.reset()

    @contextmanager
    def evaluating(self, series: str = DEFAULT_SERIES) -> Iterator[None]:
        """Mark an eval pass: the first forward pass of the model inside the block is recorded
        as a row of the eval series ``series`` (file ``<run>.eval.h5``, or
        ``<run>.eval-<series>.h5``), at the training step it runs in (after that many
        ``step()`` calls), whatever mode the model is in; the rest of the block runs
        unobserved. One pass per series and step is recorded (the first). Training
        statistics ignore what runs inside the block. ::

            model.eval()
            with rec.evaluating():
                accuracy = evaluate(model, test_loader)
            model.train()
        """
        if self._closed:
            raise NormvizError("Recorder.evaluating() called after close()")
        if self._evaluating:
            raise UsageError("Recorder.evaluating() blocks do not nest")
        if series not in self._eval:  # None if it could not be made (said once): not tried again
            self._eval[series] = evaluation.begin_series(self, series)
        target = self._eval[series]
        # The training hooks stay as they are but observe nothing until the block ends.
        paused, self._hooks.arming.armed = self._hooks.arming.armed, False
        self._evaluating = True
        if target is not None:
            target.begin(self._step)
        try:
            yield
        finally:
            self._evaluating = False
            self._hooks.arming.armed = paused
            if target is not None:
                target.end()

    def begin_forward(self) -> None:
        """Mark the start of a forward pass that does not go through ``model(...)``
        (e.g. a Lightning ``training_step`` calling submodules): module call counts
        restart from 0, as they do at every call of the model itself."""
        self._observer.new_forward()

    def flush(self) -> None:
        """Publish every step recorded so far to the file and wait for it (the file is
        flushed in the background anyway, every ``flush_every`` steps or ``flush_secs``)."""
        if self._writer is not None:
            self._scalars.send(self._writer)
            self._writer.flush()
            self._writer.check()

    def close(self) -> None:
        """Write what is pending, remove every hook, close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for eval_series in self._eval.values():
                if eval_series is not None:
                    eval_series.close()
            for handle in self._grad_handles:
                handle.remove()
            self._grad_handles.clear()
            self._hooks.close()
            if self._layout is None:
                self._freeze()
            if self._writer is None:
                self._open_writer()
            assert self._writer is not None
            self._scalars.send(self._writer)
        finally:
            if self._writer is not None:
                self._writer.close()

    # -- the file -----------------------------------------------------------------------------
    def _freeze(self) -> None:
        """Fix the layout from what the first recorded step saw."""
        obs = self._observer
        sites = list(obs.sites.values())
        layout = describe(sites, self._layers, self._grads.columns, self._grads.n_layers, obs.disabled_layers,
                          max_channels=self.max_channels, sharded=self._grads.sharded,
                          grad_partial_widths=self._grads.partial_widths())
        obs.frozen = True
        device = next((o[CORE].sample.device for o in obs.results.values() if CORE in o), torch.device("cpu"))
        group_entry = layout.stat(schema.ACT, "group_mean")
        assembler = assemble.CoreAssembler(
            [st.site.channels for st in sites],
            [st.ctx_state.get("channel_index") for st in sites],
            group_entry.rows if group_entry is not None else [],
            device,
            strict=obs.strict,
        )
        self._layout = layout
        self._packing = Packing(layout)
        modules = [self._layers[entry.name][0] for entry in layout.layers]
        self._packer = RowPacker(layout, self._packing, assembler, modules, self._grads.result,
                                 lambda name: self.host.owner("statistic", name))

    def _open_writer(self, extrema: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Create the file; histogram edges come from the first recorded row's (min, max)."""
        assert self._layout is not None and self._packing is not None
        n_sites = len(self._layout.sites)
        if extrema is None:
            edges = np.full((n_sites, S.HIST_BINS + 1), np.nan, dtype=np.float32)
        else:
            # The only host sync of a run: once, at the first recorded step. Under torchrun
            # the ranks agree on the extrema, so their histograms can be summed when merged.
            lo, hi = shared_extrema(self.path, *extrema)
            edges = finish.first_edges(lo.float().cpu().numpy(), hi.float().cpu().numpy())
        from normviz import __version__

        meta = run_meta(
            self._model, self._layout, label=self.label, experiment=self.experiment, norm_kind=self._norm_kind,
            rank=self._rank, world_size=self._world_size, every=self.every, max_channels=self.max_channels,
            user=self._user_meta, sharding=self._grads.sharding(), optimizer=self._grads.optimizer,
            feeds_norm=self._observer.feeds_norm,
        )
        meta.update(self._extra_meta)
        if self._observer.fused is not None:  # what compiling cost up to the first recorded row
            meta["compiled_statistics"] = self._observer.fused.summary()
        flush_every, flush_secs, on_error = self._flush
        self._writer = RunWriter(
            self.path, root_attrs(meta, normviz_version=__version__), flush_every=flush_every, flush_secs=flush_secs,
            on_error=on_error, finish=finish.RowFinisher(self._layout, self._packing, edges),
        )
        self._writer.open(self._layout, edges)

    def _warn_nothing_ran(self, step: int) -> None:
        """Once: a step to record saw no recorded layer run a forward pass in training mode."""
        if self._warned_nothing_ran:
            return
        self._warned_nothing_ran = True
        warnings.warn(
            f"normviz: step {step} was to be recorded, but no recorded layer ran a forward pass in training "
            "mode; activations are recorded from the first step that runs one. If the model is torch.compile'd "
            "and was called before the Recorder existed, its compiled graph does not call the recorder's hooks: "
            "create the Recorder before the first call (or call torch._dynamo.reset())",
            RuntimeWarning,
            stacklevel=4,
        )

    def _record_row(self, step: int) -> None:
        obs = self._observer
        if self._layout is None:
            if not obs.sites:
                self._warn_nothing_ran(step)
                return  # nothing ran in training mode yet: wait for a step that did
            self._freeze()
        assert self._packer is not None
        if obs.pending:
            obs.complete_pending()
        blocks = self._packer.device_blocks(obs.results)
        if self._writer is None:
            self._open_writer((blocks.stats["min"], blocks.stats["max"]) if blocks is not None else None)
        assert self._writer is not None
        scalars, scalar_values = self._scalars.take()
        vectors, values, event = self._packer.pack(obs.results, blocks, scalar_values)
        if values is not None:
            scalars.values = values  # read by the writer once the event fired
        finish_args = (blocks.group_sizes, blocks.numel) if blocks is not None else ([], [])
        self._writer.write_row(step, time.time() - self._t0, vectors["f4"], vectors["f8"], event, finish_args, scalars)
