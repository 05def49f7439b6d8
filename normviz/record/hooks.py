"""The recorder's module hooks, and arming them for the steps that are recorded.

Forward hooks are installed only while a recorded step runs: a module with any hook
takes PyTorch's slower call path (about 10 µs a call on CPU), a cost the steps that
are not recorded should not pay. A ``torch.compile``d model keeps its hooks throughout
(its graph is traced with them). Every hook computes under ``no_grad``, returns None (a
forward hook's return value would replace the output) and never stops training: a
layer whose observation raises is disabled with one warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from normviz.datatypes import NormSpec
from normviz.record import core
from normviz.record.observe import PLAIN_BATCHNORMS, Observer

_BORROWING = (*PLAIN_BATCHNORMS, nn.GroupNorm, nn.LayerNorm)  # see core.borrow


class Arming:
    """Whether the step now running is recorded; shared by every hook and the gradient tracker."""

    __slots__ = ("armed",)

    def __init__(self, armed: bool = True) -> None:
        self.armed = armed


class LayerHook:
    """The forward hook of one module: observes its input (norm layers) and output."""

    __slots__ = ("arming", "observer", "training", "name", "spec", "is_norm", "derives", "can_borrow")

    def __init__(self, arming: Arming, observer: Observer, model: nn.Module, name: str, spec: NormSpec | None,
                 module: nn.Module) -> None:
        self.arming = arming
        self.observer = observer
        self.training = lambda: model.training
        self.name = name
        self.spec = spec
        self.is_norm = spec is not None
        # A training-mode BatchNorm's output statistics follow from its input's. Only for
        # PyTorch's own classes: SyncBatchNorm normalizes with statistics of every rank, and
        # a subclass may change forward.
        # So do a GroupNorm's, from its input's per-(sample, channel) moments.
        self.derives = spec is not None and (
            (type(module) in PLAIN_BATCHNORMS and spec.kind == "batch")
            or (type(module) is nn.GroupNorm and spec.kind == "group")
        )
        self.can_borrow = type(module) in _BORROWING and spec is not None

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.arming.armed or not self.training():
            return None
        obs = self.observer
        call = obs.next_call(self.name)
        try:
            with torch.no_grad():
                x = args[0] if args and isinstance(args[0], torch.Tensor) else None
                out = first_tensor(output)
                if obs.pending:  # left for a norm layer that is not this one: reduce it now
                    obs.complete_pending(keep=x if self.is_norm else None)
                obs_in = None
                if self.is_norm and x is not None:
                    borrowed = None
                    if self.can_borrow and out is not None and module.training:
                        borrowed = core.borrow(module, x, out, obs.gen(x.device))
                    obs_in = obs.observe(self.name, module, "input", call, x, self.spec, borrowed=borrowed)
                if out is not None:
                    derive = obs_in if self.derives and module.training else None
                    obs.observe(self.name, module, "output", call, out, self.spec, derive_from=derive)
            if out is not None and out.requires_grad and torch.is_grad_enabled():
                out.register_hook(GradNormHook(self.arming, obs, f"{self.name}|output|{call}"))
        except Exception as exc:  # noqa: BLE001 - recording must never break training
            obs.disable_layer(self.name, exc)
        return None


class GradNormHook:
    """Tensor hook on a layer's output: the norm of the gradient flowing out of the layer."""

    __slots__ = ("arming", "observer", "key")

    def __init__(self, arming: Arming, observer: Observer, key: str) -> None:
        self.arming = arming
        self.observer = observer
        self.key = key

    def __call__(self, grad: torch.Tensor) -> None:
        if self.arming.armed:
            with torch.no_grad():
                self.observer.set_result(self.key, "output_grad_norm", l2_norm(grad))
        return None


class ResetCalls:
    """Root forward pre-hook: a new forward pass starts counting module calls from 0."""

    __slots__ = ("observer",)

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.observer.new_forward()
        return None


def l2_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t‖ as a [1] float32 tensor; BLAS dot for contiguous float32 (2x faster than vector_norm on CPU)."""
    if t.dtype == torch.float32 and t.is_contiguous() and t.numel() > 0:
        flat = t.view(-1)
        return torch.dot(flat, flat).sqrt().reshape(1)
    return torch.linalg.vector_norm(t, dtype=torch.float32).reshape(1)


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
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, tuple[nn.Module, NormSpec | None]],
                 observer: Observer, *, keep: bool) -> None:
        self.arming = Arming()
        self.keep = keep
        self._hooks: list[tuple[nn.Module, bool, Any]] = [(model, True, ResetCalls(observer))]
        for name, (module, spec) in layers.items():
            self._hooks.append((module, False, LayerHook(self.arming, observer, model, name, spec, module)))
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
        elif not self.keep:
            self.uninstall()

    def install(self) -> None:
        if self._handles or self._closed:
            return
        for module, is_root, hook in self._hooks:
            register = module.register_forward_pre_hook if is_root else module.register_forward_hook
            self._handles.append(register(hook))

    def uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def close(self) -> None:
        """Remove every hook for good."""
        self._closed = True
        self.uninstall()
