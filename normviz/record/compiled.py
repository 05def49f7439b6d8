"""The recorder's hooks inside a ``torch.compile``d model: one graph per arming state, no breaks.

When dynamo traces a model with the recorder's hooks, the hooks take this path instead
of their eager one. Everything with Python state — counting a layer's calls, sites,
de-duplication, the sampling generator, warnings — runs *outside* the graph, in
opaque custom operators that dynamo records as calls with an ordered side effect
(so they are neither dropped nor reordered):

- ``normviz::new_forward`` (root pre-hook): a forward pass starts counting calls from 0;
- ``normviz::observe_layer``: the layer's eager observation, on the very tensors the
  compiled code produced at that point of the program; it returns the call's index
  as a host tensor (no device sync) for the output-gradient tap;
- ``normviz::keep_output_grad``: a tensor hook on the layer's output, traced into the
  backward graph, that stores the squared gradient norm under that call.

The hooks read only ``arming.armed`` and ``model.training`` in the graph, so dynamo
guards on those and compiles one graph per arming state; the custom operators are
called with constant keys, identical from step to step. Inside the operators the
tensors are the compiled code's own buffers, which a later kernel may reuse: the
observation is made at once (nothing is kept pending or reused across sites).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

#: Hook objects by the key the traced graphs call them with. Weak: a recorder that was not
#: closed leaves with its hooks; a graph that still calls a missing key does nothing.
_registry: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def register(target: Any) -> str:
    """A key under which the custom operators will find *target*: a layer hook (``observe_now``,
    ``keep_grad``) or the root pre-hook (``new_forward``).

    The smallest free number, as a string: a graph guards on the keys it calls with, so a
    new recorder on the same compiled model reuses its predecessor's keys (and graphs)
    instead of compiling again; a string, because dynamo may turn an integer that changes
    between compilations into a symbolic one."""
    n = 0
    while str(n) in _registry:
        n += 1
    _registry[str(n)] = target
    return str(n)


def release(key: str) -> None:
    """Free *key* (its hook was removed for good)."""
    _registry.pop(key, None)


@torch.library.custom_op("normviz::new_forward", mutates_args=())
def _new_forward(x: torch.Tensor | None, target: str) -> None:
    hook = _registry.get(target)
    if hook is not None:
        hook.new_forward()


@_new_forward.register_fake
def _(x: torch.Tensor | None, target: str) -> None:
    return None


@torch.library.custom_op("normviz::observe_layer", mutates_args=())
def _observe_layer(x: torch.Tensor | None, out: torch.Tensor | None, target: str) -> torch.Tensor:
    hook = _registry.get(target)
    call = hook.observe_now(x, out) if hook is not None else -1
    return torch.tensor(call, dtype=torch.long)


@_observe_layer.register_fake
def _(x: torch.Tensor | None, out: torch.Tensor | None, target: str) -> torch.Tensor:
    return torch.empty((), dtype=torch.long)


@torch.library.custom_op("normviz::keep_output_grad", mutates_args=())
def _keep_output_grad(grad: torch.Tensor, call: torch.Tensor, target: str) -> None:
    hook = _registry.get(target)
    if hook is not None:
        hook.keep_grad(grad, int(call))  # a host tensor: no device sync


@_keep_output_grad.register_fake
def _(grad: torch.Tensor, call: torch.Tensor, target: str) -> None:
    return None


for _op in (_new_forward, _observe_layer, _keep_output_grad):
    # Ordered effects: the compiler keeps these calls (they return nothing it uses) in program order.
    _op.register_effect(torch.library.EffectType.ORDERED)


def traced_forward(target: str, x: torch.Tensor | None) -> None:
    """The root pre-hook's work, as dynamo traces it. ``x`` (the model's first tensor input,
    unused) anchors the call in the graph: inductor mis-schedules an effectful call with no
    tensor argument (it frees the graph's inputs before the kernels that read them)."""
    torch.ops.normviz.new_forward(x, target)


def traced_layer(target: str, x: torch.Tensor | None, out: torch.Tensor | None) -> None:
    """A layer hook's work, as dynamo traces it: observe now; tap the output's gradient."""
    call = torch.ops.normviz.observe_layer(x, out, target)
    if out is not None and out.requires_grad and torch.is_grad_enabled():
        out.register_hook(lambda grad: torch.ops.normviz.keep_output_grad(grad, call, target))
