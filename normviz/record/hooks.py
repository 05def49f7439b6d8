"""The recorder's module hooks, and arming them for the steps that are recorded.

Forward hooks are installed only while a recorded step runs: a module with any hook
takes PyTorch's slower call path (about 10 µs a call on CPU), a cost the steps that
are not recorded should not pay. A ``torch.compile``d model keeps its hooks throughout
(its graph is traced with them), and its hooks take the traceable path of
:mod:`normviz.record.compiled`. Every hook computes under ``no_grad``, returns None (a
forward hook's return value would replace the output) and never stops training: a
layer whose observation raises is disabled with one warning (unless the recorder was
made with ``on_error="raise"``). A forward that runs inside backward — activation
checkpointing recomputing a block — is not counted or observed again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from normviz.datatypes import NormSpec
from normviz.record import attention, compiled, core, shards
from normviz.record.observe import PLAIN_BATCHNORMS, Observer, output_channel_dim
from normviz.record.reductions import sq_norm

_BORROWING = (*PLAIN_BATCHNORMS, nn.GroupNorm, nn.LayerNorm)  # see core.borrow


class _Unobserved:
    """How many :func:`unobserved` blocks are open (in any thread): while any is, no hook observes."""

    depth = 0


@contextmanager
def unobserved() -> Iterator[None]:
    """Forward passes in the block are not observed by any recorder (a PreciseBN probe's, say)."""
    _Unobserved.depth += 1
    try:
        yield
    finally:
        _Unobserved.depth -= 1


class Arming:
    """Whether the step now running is recorded; shared by every hook and the gradient tracker.
    ``compiled``: a compiled graph was traced with the hooks (they then stay installed)."""

    __slots__ = ("armed", "compiled")

    def __init__(self, armed: bool = True) -> None:
        self.armed = armed
        self.compiled = False


class LayerHook:
    """The forward hook of one module: observes its input (norm layers) and output."""

    __slots__ = ("arming", "observer", "training", "name", "spec", "is_norm", "derives", "can_borrow", "module",
                 "channel_dim", "graph_instances",
                 "compiled_id", "attention", "__weakref__")

    def __init__(self, arming: Arming, observer: Observer, model: nn.Module, name: str, spec: NormSpec | None,
                 module: nn.Module, *, train_only: bool = True) -> None:
        self.arming = arming
        self.observer = observer
        # An eval series' hooks record the pass they are armed for, in whichever mode it runs.
        self.training = (lambda: model.training) if train_only else (lambda: True)
        self.name = name
        self.spec = spec
        self.is_norm = spec is not None
        self.module = module
        # A training-mode BatchNorm's output statistics follow from its input's. Only for
        # PyTorch's own classes: SyncBatchNorm normalizes with statistics of every rank, and
        # a subclass may change forward.
        # So do a GroupNorm's, from its input's per-(sample, channel) moments.
        self.derives = spec is not None and (
            (type(module) in PLAIN_BATCHNORMS and spec.kind == "batch")
            or (type(module) is nn.GroupNorm and spec.kind == "group")
        )
        self.can_borrow = type(module) in _BORROWING and spec is not None
        # In a compiled graph: the channel dim its tensors are reduced along (that of its sites),
        # or, for a GroupNorm, its input per (sample, channel), from which the rest follows.
        self.channel_dim = spec.channel_dim if spec is not None else output_channel_dim(module)
        self.graph_instances = type(module) is nn.GroupNorm and self.derives
        self.compiled_id = compiled.register(self)
        # An attention module: its statistics recompute the logits from the call's inputs.
        self.attention = attention.heads_of(module) > 0

    def __call__(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not self.arming.armed or _Unobserved.depth or not self.training():
            return None
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if torch.compiler.is_compiling():  # traced by dynamo: see normviz.record.compiled
            compiled.traced_layer(self.compiled_id, x if self.is_norm else None, first_tensor(output),
                                  self.channel_dim, self.graph_instances)
            return None
        if in_backward():
            # A forward recomputed for backward (activation checkpointing): the step's
            # forward was recorded already; only the output-gradient tap may be missing.
            self._tap_recomputed(output)
            return None
        obs = self.observer
        call = obs.next_call(self.name)
        try:
            out_t = first_tensor(output)
            self._observe(module, call, x, out_t, reuse=True, call_inputs=(args, kwargs) if self.attention else None)
            if out_t is not None and out_t.requires_grad and torch.is_grad_enabled():
                obs.tap(self.name, call, out_t, GradNormHook(self.arming, obs, f"{self.name}|output|{call}"))
        except Exception as exc:  # noqa: BLE001 - recording must never break training (unless asked)
            self._failed(exc)
        return None

    def _observe(self, module: nn.Module, call: int, x: torch.Tensor | None, out_t: torch.Tensor | None, *,
                 reuse: bool, call_inputs: tuple[Any, dict[str, Any]] | None = None,
                 x_channels: list[torch.Tensor] | None = None, out_channels: list[torch.Tensor] | None = None) -> None:
        """Observe call ``call``: the input (norm layers) and the output. ``reuse``: the tensors
        stay valid for the rest of the step (eager), so they may be left pending or matched
        with another site's. ``x_channels`` / ``out_channels``: their per-channel (mean,
        variance, min, max), computed already (in a compiled graph; a GroupNorm's input's
        per (sample, channel))."""
        obs = self.observer
        with torch.no_grad():
            # DTensor activations (tensor/sequence parallel) are read through their
            # local shards, without a collective.
            source = x
            if x is not None and type(x) is not torch.Tensor:
                x = shards.local(x)
            out = out_t if out_t is None or type(out_t) is torch.Tensor else shards.local(out_t)
            if obs.pending:  # left for a norm layer that is not this one: reduce it now
                obs.complete_pending(keep=x if self.is_norm else None)
            obs_in = None
            if self.is_norm and x is not None:
                borrowed = None
                if self.can_borrow and out is not None and module.training and out is out_t:
                    borrowed = core.borrow(module, x, out, obs.gen(x.device))
                channels, instances = (None, x_channels) if self.graph_instances else (x_channels, None)
                obs_in = obs.observe(self.name, module, "input", call, x, self.spec, borrowed=borrowed,
                                     source=source, reuse=reuse, channels=channels, instances=instances)
            if out is not None:
                derive = obs_in if self.derives and module.training and out_channels is None else None
                obs.observe(self.name, module, "output", call, out, self.spec, derive_from=derive, source=out_t,
                            reuse=reuse, call_inputs=call_inputs, channels=out_channels)

    def _failed(self, exc: Exception) -> None:
        if self.observer.strict:
            raise exc
        self.observer.disable_layer(self.name, exc)

    # -- called by the custom operators of a compiled model (normviz.record.compiled) ------------
    def observe_now(self, x: torch.Tensor | None, out: torch.Tensor | None,
                    x_channels: list[torch.Tensor] | None = None,
                    out_channels: list[torch.Tensor] | None = None) -> int:
        """Observe one call of the layer in a compiled graph (with the per-channel reductions
        the graph computed, if any); returns the call's index."""
        self.arming.compiled = True  # its graph is traced with the hooks: keep them from now on
        call = self.observer.next_call(self.name)
        # The graph's buffers may be reused once this returns: the reductions are kept as one copy.
        x_channels = list(torch.stack(x_channels).unbind()) if x_channels else None
        out_channels = list(torch.stack(out_channels).unbind()) if out_channels else None
        try:
            self._observe(self.module, call, x, out, reuse=False, x_channels=x_channels, out_channels=out_channels)
        except Exception as exc:  # noqa: BLE001 - recording must never break training (unless asked)
            self._failed(exc)
        return call

    def keep_grad_sq_norm(self, sq_norm: torch.Tensor, call: int) -> None:
        """The output-gradient tap of call ``call`` in a compiled graph: ‖g‖², computed there."""
        if self.arming.armed:
            # A copy: the graph may reuse its buffer once this returns.
            self.observer.set_result(f"{self.name}|output|{call}", "output_grad_norm", sq_norm.clone())

    def _tap_recomputed(self, output: Any) -> None:
        """Reentrant checkpointing runs the first forward without grad: the output-gradient
        tap goes on the recomputed output instead (non-reentrant: tapped in the first forward)."""
        obs = self.observer
        call = obs.next_recompute(self.name)
        out = first_tensor(output)
        if out is None or not out.requires_grad or obs.tapped(self.name, call):
            return
        obs.tap(self.name, call, out, GradNormHook(self.arming, obs, f"{self.name}|output|{call}"))


def in_backward() -> bool:
    """Whether autograd's engine is running a backward pass on this thread: a forward now is
    a recomputation (activation checkpointing), not a forward pass of the training step."""
    if torch.compiler.is_compiling():
        return False
    return bool(torch._C._current_graph_task_id() != -1)


class GradNormHook:
    """Tensor hook on a layer's output: the norm of the gradient flowing out of the layer
    (kept squared; the row's packing takes the square roots of all taps at once)."""

    __slots__ = ("arming", "observer", "key")

    def __init__(self, arming: Arming, observer: Observer, key: str) -> None:
        self.arming = arming
        self.observer = observer
        self.key = key

    def __call__(self, grad: torch.Tensor) -> None:
        if self.arming.armed:
            try:
                with torch.no_grad():
                    if type(grad) is not torch.Tensor:
                        grad = shards.local(grad)
                    # squared: the row takes one square root for all taps (rows.SQUARED_OUTPUT_GRAD)
                    self.observer.set_result(self.key, "output_grad_norm", sq_norm(grad))
            except Exception as exc:  # noqa: BLE001 - a tensor hook that raises would stop backward
                if self.observer.strict:
                    raise
                self.observer.disable_layer(self.key.split("|", 1)[0], exc)
        return None


class ResetCalls:
    """Root forward pre-hook: a new forward pass starts counting module calls from 0; the first
    forward after the hooks were installed also makes sure they run last (see :class:`HookSet`)."""

    __slots__ = ("observer", "first", "reorder", "compiled_id", "__weakref__")

    def __init__(self, observer: Observer, reorder: Any) -> None:
        self.observer = observer
        self.first = True
        self.reorder = reorder
        self.compiled_id = compiled.register(self)

    def new_forward(self) -> None:
        self.observer.new_forward()

    def __call__(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():  # traced by dynamo: see normviz.record.compiled
            compiled.traced_forward(self.compiled_id, first_tensor(args))
            return None
        if _Unobserved.depth:
            return None
        if self.first:
            self.first = False
            self.reorder()
        self.observer.new_forward()
        return None


def first_tensor(value: Any) -> torch.Tensor | None:
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


class HookSet:
    """The forward hooks of a model's recorded layers, installed while a recorded step runs.

    ``layers`` maps each recorded layer's qualified name to (module, norm spec or None).
    ``train_only``: the hooks observe forward passes in training mode only (an eval
    series' observe any pass they are armed for). The first forward pass after they are
    installed checks that they run after any hook added to their modules since, and installs
    them again at the end if not.
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, tuple[nn.Module, NormSpec | None]],
                 observer: Observer, *, keep: bool, train_only: bool = True) -> None:
        self.arming = Arming()
        self.keep = keep
        self._reset = ResetCalls(observer, self._run_last)
        self._hooks: list[tuple[nn.Module, bool, Any]] = [(model, True, self._reset)]
        for name, (module, spec) in layers.items():
            self._hooks.append((module, False, LayerHook(self.arming, observer, model, name, spec, module,
                                                         train_only=train_only)))
        self._handles: list[Any] = []
        self._closed = False
        self.install()

    @property
    def armed(self) -> bool:
        return self.arming.armed

    def arm(self, armed: bool) -> None:
        """Turn recording on or off for the next step; off removes the hooks (unless ``keep``)."""
        self.arming.armed = armed
        if armed:
            self.install()
        elif not (self.keep or self.arming.compiled):
            self.uninstall()

    def install(self) -> None:
        if self._handles or self._closed:
            return
        for module, is_root, hook in self._hooks:
            if is_root:
                self._handles.append(module.register_forward_pre_hook(hook))
            else:  # with the call's keyword arguments: attention modules' statistics read them
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        self._reset.first = True

    def _run_last(self) -> None:
        """Put the hooks back at the end of their modules' hooks if others were added since.

        Tensor parallelism (``parallelize_module``) turns a module's output into what the
        next layer takes — a local tensor, a reduced one — in forward hooks of its own; a
        recorder attached before it must read the output after them, as it would have if
        attached after."""
        for (module, is_root, _), handle in zip(self._hooks, self._handles):
            hooks = module._forward_pre_hooks if is_root else module._forward_hooks
            if next(reversed(hooks), None) != handle.id:
                self.uninstall()
                self.install()
                self._reset.first = False
                return

    def uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def close(self) -> None:
        """Remove every hook for good."""
        self._closed = True
        self.uninstall()
        for _, _, hook in self._hooks:
            compiled.release(hook.compiled_id)
