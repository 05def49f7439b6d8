"""Gradient statistics of every layer with parameters, read at the optimizer step.

Gradients are read by a global optimizer step pre-hook: at that moment they are
complete (every micro-batch accumulated), unscaled (``GradScaler.step`` unscales
before calling ``optimizer.step``) and clipped, whatever the loop does with
``zero_grad`` before or after. The matching post-hook measures the update
‖Δw‖/‖w‖. If no optimizer of the model steps (a hand-written update), the
gradients are read when ``Recorder.step()`` is called instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

_DOT_MIN = 1 << 14  # from this size on, a BLAS dot beats _foreach_norm on CPU (~1.5x)


def _sq_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-tensor squared L2 norms, float32: a dot product for large contiguous float32
    tensors, one ``_foreach_norm`` for the others."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    small = []
    for i, t in enumerate(tensors):
        if t.dtype == torch.float32 and t.numel() >= _DOT_MIN and t.is_contiguous():
            flat = t.view(-1)
            out[i] = torch.dot(flat, flat)
        else:
            small.append(i)
    if small:
        squares: Sequence[torch.Tensor]
        try:
            norms = torch._foreach_norm([tensors[i] for i in small], 2.0, dtype=torch.float32)
            squares = torch._foreach_mul(norms, norms)
        except (AttributeError, RuntimeError, TypeError):
            squares = [torch.linalg.vector_norm(tensors[i], dtype=torch.float32).square() for i in small]
        for i, sq in zip(small, squares):
            out[i] = sq
    return torch.stack(out)  # type: ignore[arg-type]


def _abs_sum_max(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor sum and max of absolute values, float32 (one abs pass, two reductions each)."""
    sums, maxes = [], []
    for t in tensors:
        a = t.abs()
        sums.append(a.sum(dtype=torch.float32))
        maxes.append(a.amax().float())
    return torch.stack(sums), torch.stack(maxes)


def _has_closure(args: Any, kwargs: Any) -> bool:
    """Whether ``optimizer.step`` was given a closure (positionally or by keyword).

    The hooks' ``args`` start with the optimizer itself."""
    positional = [a for a in args if not isinstance(a, torch.optim.Optimizer)]
    return callable(kwargs.get("closure")) or bool(positional and callable(positional[0]))


class GradientTracker:
    """Per-layer gradient norm, mean and max |grad|, weight norm and update ratio."""

    def __init__(self, layers: list[tuple[str, nn.Module]], is_armed: Callable[[], bool]) -> None:
        """``layers``: (name, module) of the recorded layers; ``is_armed()``: whether the step
        now running is recorded (its gradients are read at its optimizer step)."""
        self._is_armed = is_armed
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []  # the trainable parameters of the recorded layers
        owner: list[int] = []
        for name, module in layers:
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not params:
                continue
            for p in params:
                self._params.append(p)
                owner.append(len(self._names))
            self._names.append(name)
        self._owner = owner
        self._param_ids = {id(p) for p in self._params}
        self._ours: dict[int, bool] = {}
        self._index = {n: i for i, n in enumerate(self._names)}
        self._result: dict[str, torch.Tensor] = {}
        self._snapshot: list[torch.Tensor] | None = None
        # The weights before the optimizer step, for the update ratio: buffers kept across
        # steps, because allocating a copy of every parameter each recorded step costs
        # 10x the copy itself on CPU (fresh pages); see docs/recording.md.
        self._buffers: list[torch.Tensor] | None = None
        self._closure = False
        self._weight_norm: torch.Tensor | None = None
        self.last_lr: Any = None
        self._present_cache: dict[tuple[tuple[int, ...], torch.device],
                                  tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def n_layers(self) -> int:
        return len(self._names)

    def index_of(self, name: str) -> int | None:
        return self._index.get(name)

    @property
    def columns(self) -> dict[str, int]:
        """Each layer with parameters by name, and its gradient column."""
        return dict(self._index)

    def attach(self) -> list[Any]:
        """Install the global optimizer hooks; returns their removable handles."""
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        return [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]

    def reset(self) -> None:
        self._result = {}
        self._snapshot = None
        self._weight_norm = None

    def result(self, stat: str, device: torch.device | None) -> torch.Tensor:
        """The [n_layers] tensor of *stat* for the step being closed (NaN where unknown)."""
        if not self._result and self._params:
            self._compute()  # no optimizer of ours stepped: read the gradients now
        t = self._result.get(stat)
        if t is None:
            t = torch.full((self.n_layers,), math.nan, device=device)
        return t

    # -- optimizer hooks ------------------------------------------------------------------------
    def _is_ours(self, optimizer: torch.optim.Optimizer) -> bool:
        key = id(optimizer)
        if key not in self._ours:
            self._ours[key] = any(id(p) in self._param_ids for g in optimizer.param_groups for p in g["params"])
        return self._ours[key]

    def _pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._is_ours(optimizer):
            return None
        self.last_lr = optimizer.param_groups[0].get("lr")
        if not self._is_armed() or not self._params:
            return None
        self._closure = _has_closure(args, kwargs)
        if not self._closure:
            self._compute()
        with torch.no_grad():
            self._snapshot = self._copy_weights()
            if self._closure:  # the gradients do not exist yet: the closure computes them
                w_sq = _sq_norms(self._params)
                device = self._params[0].device
                self._weight_norm = torch.zeros(self.n_layers, device=device).index_add_(
                    0, self._owner_t(device), w_sq
                ).sqrt()
        return None

    def _post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._snapshot is not None and self._is_ours(optimizer):
            self.finish_update()
        return None

    def finish_update(self) -> None:
        """Measure the update ‖Δw‖/‖w‖ of an optimizer step whose pre-hook ran; a no-op otherwise.

        Called by the optimizer post-hook and by ``Recorder.step()``, whichever runs first:
        another global post-hook registered earlier (script mode's step counter, a user's
        own) may close the step before this tracker's post-hook runs, and the order the
        hooks were registered in must not decide whether the update is measured.
        """
        if self._snapshot is None or self._weight_norm is None:
            return
        if self._closure:
            # A closure step (LBFGS, Lightning's automatic optimization) ran forward and
            # backward inside optimizer.step(): its gradients are complete only now.
            weight_norm = self._weight_norm
            self._compute()
            self._weight_norm = weight_norm
            self._result["weight_norm"] = weight_norm
        with torch.no_grad():
            deltas = self._snapshot
            torch._foreach_sub_(deltas, self._params)  # old - new, in place
            sq = _sq_norms(deltas)
            layer_sq = torch.zeros(self.n_layers, device=sq.device).index_add_(0, self._owner_t(sq.device), sq)
            self._result["update_ratio"] = layer_sq.sqrt() / self._weight_norm
        self._snapshot = None

    def _copy_weights(self) -> list[torch.Tensor]:
        """The parameters' current values, copied into the kept buffers."""
        weights = self._params  # read under no_grad: no detached aliases needed (each costs ~5 us)
        buffers = self._buffers
        if buffers is None or any(
            b.shape != w.shape or b.dtype != w.dtype or b.device != w.device for b, w in zip(buffers, weights)
        ):
            buffers = self._buffers = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
        torch._foreach_copy_(buffers, weights)
        return buffers

    def _owner_t(self, device: torch.device) -> torch.Tensor:
        cache = getattr(self, "_owner_cache", None)
        if cache is None or cache.device != device:
            cache = torch.tensor(self._owner, device=device, dtype=torch.long)
            self._owner_cache = cache
        return cache

    def _present_index(self, present: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
        """For the parameters that have a gradient (cached per set): their owner layer, and per
        layer whether any has a gradient and how many gradient values it has."""
        key = (present, device)
        cached = self._present_cache.get(key)
        if cached is None:
            owner = torch.tensor([self._owner[i] for i in present], device=device, dtype=torch.long)
            numel = torch.tensor([float(self._params[i].numel()) for i in present], device=device)
            zeros = torch.zeros(self.n_layers, device=device)
            have = zeros.index_add(0, owner, torch.ones_like(numel)) > 0
            count = zeros.index_add(0, owner, numel).clamp_min(1.0)
            cached = self._present_cache[key] = (owner, have, count)
        return cached

    def _compute(self) -> None:
        """Gradient and weight statistics of every layer, on the device, no host sync."""
        with torch.no_grad():
            present = [i for i, p in enumerate(self._params) if p.grad is not None]
            device = self._params[0].device
            owner = self._owner_t(device)
            w_sq = _sq_norms(self._params)
            self._weight_norm = torch.zeros(self.n_layers, device=device).index_add_(0, owner, w_sq).sqrt()
            self._result = {"weight_norm": self._weight_norm}
            if not present:
                return
            grads = cast(list[torch.Tensor], [self._params[i].grad for i in present])  # present: not None
            sub_owner, have, count = self._present_index(tuple(present), device)
            l2 = _sq_norms(grads)
            l1, linf = _abs_sum_max(grads)
            zeros = torch.zeros(self.n_layers, device=device)
            nan = torch.full_like(zeros, math.nan)
            self._result["grad_norm"] = torch.where(have, zeros.index_add(0, sub_owner, l2).sqrt(), nan)
            self._result["grad_abs_mean"] = torch.where(have, zeros.index_add(0, sub_owner, l1) / count, nan)
            amax = zeros.scatter_reduce(0, sub_owner, linf, reduce="amax", include_self=False)
            self._result["grad_abs_max"] = torch.where(have, amax, nan)
