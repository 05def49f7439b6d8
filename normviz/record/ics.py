"""Gradient-based internal covariate shift (Santurkar et al. 2018, Definition 2.1).

For layer *i* at step *t*, with parameters ``W_1 .. W_k`` and the batch ``(x, y)``:

* ``G  = ∇_{W_i} L(W_1(t), …, W_k(t); x, y)`` — the gradient of the usual update;
* ``G' = ∇_{W_i} L(W_1(t+1), …, W_{i-1}(t+1), W_i(t), …, W_k(t); x, y)`` — the same
  gradient once every *previous* layer has taken its step.

ICS is ``‖G − G'‖₂`` (0 ideally); this module also gives it relative to ``‖G‖`` (comparable
across networks with different gradient scales) and ``cos(G, G')`` (1 ideally).

:func:`gradient_ics` measures it: call it after ``loss.backward()`` and before
``optimizer.step()``, with a function that recomputes the loss of the same batch and the
optimizer's update rule (:func:`sgd` for plain SGD). It costs one forward/backward for
``G`` plus one per measured layer, so it is off by default: measure every N steps and
keep the layers few. Store the result with ``rec.step(loss=loss, **ics_scalars(result))``.

While it measures, the model's module hooks are set aside (a recorder attached to the
model sees none of these extra passes), buffers such as BatchNorm's running statistics
and the global RNG state are restored after each pass (every pass draws the same
dropout masks), and the parameters are restored exactly at the end: training is not
changed. The model's train/eval mode is left as it is, so BatchNorm uses batch
statistics in every pass, as in the training step. Gradients are taken with
``torch.autograd.grad``: ``.grad`` fields are not touched.

"Previous layers" are all parameters that come before layer *i*'s first parameter in
``model.named_parameters()`` order (for a feed-forward model: every earlier layer,
including the affine parameters of earlier norm layers). ``G`` is the gradient of the
layer's ``weight`` (of all its direct parameters if it has no ``weight``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ICS", "UpdateRule", "gradient_ics", "ics_scalars", "sgd"]

#: ``update(name, param, grad) -> new value`` of one parameter after the optimizer's step.
UpdateRule = Callable[[str, Tensor, Tensor], Tensor]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass(frozen=True)
class ICS:
    """Gradient-based ICS of one layer at one step (0-d tensors on the model's device)."""

    l2: Tensor
    """``‖G − G'‖₂``."""
    rel: Tensor
    """``‖G − G'‖₂ / ‖G‖₂`` (NaN when ``G`` is 0)."""
    cos: Tensor
    """``⟨G, G'⟩ / (‖G‖ ‖G'‖)`` (NaN when either is 0)."""


def sgd(lr: float, weight_decay: float = 0.0) -> UpdateRule:
    """The update rule of plain SGD (no momentum): ``w − lr · (g + weight_decay · w)``."""

    def update(name: str, param: Tensor, grad: Tensor) -> Tensor:
        step = grad + weight_decay * param if weight_decay else grad
        return param - lr * step

    return update


def ics_scalars(result: Mapping[str, ICS], *, prefix: str = "ics") -> dict[str, Tensor]:
    """Scalars for ``Recorder.step``: ``{prefix}_l2/<layer>``, ``{prefix}_rel/<layer>``, ``{prefix}_cos/<layer>``.

    A run holds at most 64 scalar columns: three per layer, so keep the layers few.
    """
    out: dict[str, Tensor] = {}
    for layer, ics in result.items():
        out[f"{prefix}_l2/{layer}"] = ics.l2
        out[f"{prefix}_rel/{layer}"] = ics.rel
        out[f"{prefix}_cos/{layer}"] = ics.cos
    return out


@contextmanager
def _hooks_aside(model: nn.Module) -> Iterator[None]:
    """Run the model without its module hooks (e.g. a recorder's), then put them back."""
    saved: list[tuple[nn.Module, str, object]] = []
    try:
        for module in model.modules():
            for attr in _HOOK_DICTS:
                hooks = module.__dict__.get(attr)
                if hooks:
                    saved.append((module, attr, hooks))
                    module.__dict__[attr] = OrderedDict()
        yield
    finally:
        for module, attr, hooks in saved:
            module.__dict__[attr] = hooks


def _measured_params(module: nn.Module) -> list[nn.Parameter]:
    weight = module._parameters.get("weight")
    if isinstance(weight, nn.Parameter) and weight.requires_grad:
        return [weight]
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def gradient_ics(
    model: nn.Module,
    layers: Sequence[str],
    loss_fn: Callable[[nn.Module], Tensor],
    update: UpdateRule,
) -> dict[str, ICS]:
    """Measure the gradient-based ICS of ``layers`` at the current parameters.

    Parameters
    ----------
    model
        The model, with the parameters of step *t* (call before ``optimizer.step()``).
    layers
        Names of the measured modules (from ``model.named_modules()``), each with
        parameters. Their order does not matter; "previous" follows the parameter order.
    loss_fn
        ``loss_fn(model) -> loss``: recomputes the loss of the step's batch through the
        model it is given (a closure over the batch). It must not call ``backward``.
    update
        The optimizer's rule, ``update(name, param, grad) -> new param`` (e.g. :func:`sgd`).
        It gets detached tensors and must not modify them.

    Returns
    -------
    dict
        Layer name -> :class:`ICS`, in the order of ``layers``.

    Raises
    ------
    ValueError
        A name that is not a module of ``model`` or a module without trainable parameters.
    """
    modules = dict(model.named_modules())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    position = {id(p): i for i, (_, p) in enumerate(named)}
    targets: dict[str, list[nn.Parameter]] = {}
    for layer in layers:
        if layer not in modules:
            raise ValueError(f"gradient_ics: {layer!r} is not a module of the model")
        params = _measured_params(modules[layer])
        if not params:
            raise ValueError(f"gradient_ics: module {layer!r} has no trainable parameters")
        targets[layer] = params
    if not targets:
        return {}
    first = {layer: min(position[id(p)] for p in modules[layer].parameters(recurse=False) if id(p) in position)
             for layer in targets}
    all_params = [p for _, p in named]
    buffers = [b for b in model.buffers()]
    saved_params = [p.detach().clone() for p in all_params]
    saved_buffers = [b.detach().clone() for b in buffers]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def restore_state() -> None:
        with torch.no_grad():
            for b, s in zip(buffers, saved_buffers):
                b.copy_(s)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

    out: dict[str, ICS] = {}
    with _hooks_aside(model):
        try:
            # G for every parameter at θ(t): the previous layers' steps and the measured G.
            loss = loss_fn(model)
            grads = torch.autograd.grad(loss, all_params, allow_unused=True)
            restore_state()
            stepped = []
            with torch.no_grad():
                for (name, _), g, p0 in zip(named, grads, saved_params):
                    stepped.append(p0 if g is None else update(name, p0, g.detach()))
            base = {id(p): g for p, g in zip(all_params, grads)}
            for layer in sorted(targets, key=lambda name: first[name]):
                cut = first[layer]
                with torch.no_grad():
                    for i, p in enumerate(all_params):
                        p.copy_(stepped[i] if i < cut else saved_params[i])
                params = targets[layer]
                moved = torch.autograd.grad(loss_fn(model), params, allow_unused=True)
                restore_state()
                g = _flat([base[id(p)] for p in params], params)
                g2 = _flat(list(moved), params)
                out[layer] = _compare(g, g2)
        finally:
            with torch.no_grad():
                for p, s in zip(all_params, saved_params):
                    p.copy_(s)
            restore_state()
    return {layer: out[layer] for layer in layers}


def _flat(grads: list[Tensor | None], params: list[nn.Parameter]) -> Tensor:
    parts = [torch.zeros_like(p).reshape(-1) if g is None else g.detach().reshape(-1) for g, p in zip(grads, params)]
    return torch.cat(parts).double()


def _compare(g: Tensor, g2: Tensor) -> ICS:
    with torch.no_grad():
        diff = torch.linalg.vector_norm(g - g2)
        n1 = torch.linalg.vector_norm(g)
        n2 = torch.linalg.vector_norm(g2)
        nan = torch.full_like(diff, math.nan)
        rel = torch.where(n1 > 0, diff / n1, nan)
        cos = torch.where((n1 > 0) & (n2 > 0), (g * g2).sum() / (n1 * n2), nan)
    return ICS(diff.float(), rel.float(), cos.float())
