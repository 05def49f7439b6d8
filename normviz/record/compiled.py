"""The recorder's hooks inside a ``torch.compile``d model: one graph per arming state, no breaks.

When dynamo traces a model with the recorder's hooks, the hooks take this path instead
of their eager one. The per-channel reductions of each observed tensor (mean, variance,
min, max) and the squared norm of each output gradient are traced into the graph, where
the compiler fuses them into the model's own kernels. Everything with Python state —
counting a layer's calls, sites, the sample, group summaries, plugin statistics,
warnings — runs *outside* the graph, in opaque custom operators that dynamo records as
calls with an ordered side effect (so they are not dropped):

- ``normviz::new_forward`` (root pre-hook): a forward pass starts counting calls from 0;
- ``normviz::observe_layer``: the layer's observation, on the very tensors the compiled
  code produced at that point of the program and their reductions; it returns the call's
  index as a host tensor (no device sync) for the output-gradient tap, and takes its
  predecessor's as an input (see ``_chain``), which keeps the calls in program order;
- ``normviz::keep_output_grad``: a tensor hook on the layer's output, traced into the
  backward graph, that stores the squared gradient norm (computed in the graph) under
  that call.

The hooks read only ``arming.armed`` and ``model.training`` in the graph, so dynamo
guards on those and compiles one graph per arming state; the custom operators are
called with constant keys, identical from step to step. Inside the operators the
tensors are the compiled code's own buffers, which a later kernel may reuse: the
observation is made at once, and what it keeps is copied.
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
def _new_forward(x: torch.Tensor | None, target: str) -> torch.Tensor:
    hook = _registry.get(target)
    if hook is not None:
        hook.new_forward()
    return torch.zeros((), dtype=torch.long)


@_new_forward.register_fake
def _(x: torch.Tensor | None, target: str) -> torch.Tensor:
    return torch.empty((), dtype=torch.long)


@torch.library.custom_op("normviz::observe_layer", mutates_args=())
def _observe_layer(x: torch.Tensor | None, out: torch.Tensor | None, x_channels: list[torch.Tensor],
                   out_channels: list[torch.Tensor], after: torch.Tensor | None, target: str) -> torch.Tensor:
    hook = _registry.get(target)
    call = hook.observe_now(x, out, x_channels or None, out_channels or None) if hook is not None else -1
    return torch.tensor(call, dtype=torch.long)


@_observe_layer.register_fake
def _(x: torch.Tensor | None, out: torch.Tensor | None, x_channels: list[torch.Tensor],
      out_channels: list[torch.Tensor], after: torch.Tensor | None, target: str) -> torch.Tensor:
    return torch.empty((), dtype=torch.long)


@torch.library.custom_op("normviz::keep_output_grad", mutates_args=())
def _keep_output_grad(sq_norm: torch.Tensor, call: torch.Tensor, target: str) -> None:
    hook = _registry.get(target)
    if hook is not None:
        hook.keep_grad_sq_norm(sq_norm, int(call))  # call: a host tensor, no device sync


@_keep_output_grad.register_fake
def _(sq_norm: torch.Tensor, call: torch.Tensor, target: str) -> None:
    return None


for _op in (_new_forward, _observe_layer, _keep_output_grad):
    # Ordered effects: the compiler keeps these calls (they return nothing it uses) in program order.
    _op.register_effect(torch.library.EffectType.ORDERED)


#: The last observing operator traced in the current forward pass. Each one takes its
#: predecessor's result as an (unused) input: the compiler keeps effectful calls, but
#: inductor schedules them by their data, and a layer whose reductions are ready first
#: would otherwise be observed first (the run's sites, and a layer's call indices, follow
#: the order of observation). A list: dynamo (2.13) loses later stores to an object's
#: attribute once a tensor hook is registered in the same trace, not a list item's.
_chain: list[torch.Tensor | None] = [None]


def traced_forward(target: str, x: torch.Tensor | None) -> None:
    """The root pre-hook's work, as dynamo traces it. ``x`` (the model's first tensor input,
    unused) anchors the call in the graph: inductor mis-schedules an effectful call with no
    tensor argument (it frees the graph's inputs before the kernels that read them)."""
    _chain[0] = torch.ops.normviz.new_forward(x, target)


def _reductions(t: torch.Tensor, dims: list[int]) -> list[torch.Tensor]:
    """Mean, population variance, minimum and maximum of ``t`` (float32) over ``dims``, as
    traced into the compiled graph: the compiler fuses them into one pass over ``t``, and
    where the model itself reduces ``t`` the same way (a BatchNorm's var_mean) computes
    them once for both."""
    v = t.float()
    var, mean = torch.var_mean(v, dim=dims, correction=0)
    return [mean, var, v.amin(dims), v.amax(dims)]


def _reducible(t: torch.Tensor, min_dim: int) -> bool:
    return t.dim() >= min_dim and t.is_floating_point() and type(t) is torch.Tensor


def traced_layer(target: str, x: torch.Tensor | None, out: torch.Tensor | None, channel_dim: int,
                 instances: bool = False) -> None:
    """A layer hook's work, as dynamo traces it: the reductions in the graph, the rest of the
    observation in the opaque operator; then the output's gradient tap. The reductions are
    per channel (along ``channel_dim``) of the input and output; with ``instances`` (a
    GroupNorm, whose group and output statistics follow from them) only the input's, per
    (sample, channel). Tensors that cannot be reduced so are left to the operator."""
    x_channels: list[torch.Tensor] = []
    out_channels: list[torch.Tensor] = []
    if instances:
        if x is not None and _reducible(x, 3) and x.dtype == torch.float32:
            x_channels = _reductions(x, list(range(2, x.dim())))
    else:
        for t, into in ((x, x_channels), (out, out_channels)):
            if t is not None and _reducible(t, 2):
                cd = channel_dim % t.dim()
                into.extend(_reductions(t, [d for d in range(t.dim()) if d != cd]))
    call = torch.ops.normviz.observe_layer(x, out, x_channels, out_channels, _chain[0], target)
    _chain[0] = call
    if out is not None and out.requires_grad and torch.is_grad_enabled():
        out.register_hook(lambda grad: torch.ops.normviz.keep_output_grad(grad_sq_norm(grad), call, target))


def grad_sq_norm(grad: torch.Tensor) -> torch.Tensor:
    """‖grad‖² as a [1] float32 tensor, traced into the backward graph: fused into the
    kernel that computes the gradient, which then need not be materialized for the tap."""
    return grad.float().square().sum().reshape(1)
