"""Gradient statistics of every layer with parameters, read at the optimizer step.

Gradients are read by a global optimizer step pre-hook: at that moment they are
complete (every micro-batch accumulated), unscaled (``GradScaler.step`` unscales
before calling ``optimizer.step``) and clipped, whatever the loop does with
``zero_grad`` before or after. The matching post-hook measures the update
‖Δw‖/‖w‖. If no optimizer of the model steps (a hand-written update), the
gradients are read when ``Recorder.step()`` is called instead.

Sharded parameters (DTensor: FSDP2, tensor parallel, HSDP) are read through their
local shards; their layers also get additive partial sums for the merge of the ranks'
files (:mod:`normviz.record.shards`). A parameter the statistics cannot read (a tensor
subclass, a gradient holding unreduced partial sums) takes its layer out of the
gradient statistics with one warning; anything else that fails disables them for the
run, with one warning, unless the recorder was asked to raise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from normviz.record import shards
from normviz.record.optimizer import describe_optimizer, group_lrs
from normviz.record.reductions import Scratch, abs_norms, angle_between, copy_sq_norms, sq_norms, update_sq_norms
from normviz.store.schema import GRAD_PARTIAL_VALUES


def _has_closure(args: Any, kwargs: Any) -> bool:
    """Whether ``optimizer.step`` was given a closure (positionally or by keyword).

    The hooks' ``args`` start with the optimizer itself."""
    positional = [a for a in args if not isinstance(a, torch.optim.Optimizer)]
    return callable(kwargs.get("closure")) or bool(positional and callable(positional[0]))


class GradientTracker:
    """Per-layer gradient norm, mean and max |grad|, weight norm, update ratio and angle.

    ``layers``: (name, module) of the recorded layers; ``is_armed()``: whether the step
    now running is recorded (its gradients are read at its optimizer step); ``strict``:
    raise instead of disabling what fails (``Recorder(on_error="raise")``).
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], is_armed: Callable[[], bool], *,
                 strict: bool = False) -> None:
        self._is_armed = is_armed
        self._strict = strict
        self._names: list[str] = []
        self._modules: list[nn.Module] = []
        for name, module in layers:
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self._names.append(name)
                self._modules.append(module)
        self._index = {n: i for i, n in enumerate(self._names)}
        self._excluded: set[int] = set()  # layers whose parameters the statistics cannot read
        self._disabled = False
        self._warned_partial = False
        self._ours: dict[int, bool] = {}
        self._result: dict[str, torch.Tensor] = {}
        self._snapshot: list[torch.Tensor] | None = None
        # The weights before the optimizer step, for the update ratio: buffers kept across
        # steps, because allocating a copy of every parameter each recorded step costs
        # 10x the copy itself on CPU (fresh pages); see docs/recording.md.
        self._buffers: list[torch.Tensor] | None = None
        self._scratch = Scratch()  # |grad| of one parameter at a time, for the same reason
        self._closure = False
        self._weight_norm: torch.Tensor | None = None
        self._weight_sumsq: torch.Tensor | None = None
        self.last_lr: Any = None
        self.last_lrs: list[Any] = []  # every parameter group's, at the last step
        self.optimizer: dict[str, Any] | None = None  # what describe_optimizer says of it
        self._collect()

    def _collect(self) -> None:
        """(Re)read the recorded layers' trainable parameters and how each is sharded."""
        self._params: list[torch.Tensor] = []
        owner: list[int] = []
        counted: list[float] = []
        self.placements: dict[str, list[str]] = {}
        self.mesh: dict[str, Any] | None = None
        model_dims: set[int] = set()
        for i, (name, module) in enumerate(zip(self._names, self._modules)):
            if i in self._excluded:
                continue
            params = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            bad = [n for n, p in params if not (shards.is_plain(p) or shards.is_plain(shards.local(p)))]
            if bad:
                self._exclude(i, f"its parameter {bad[0]!r} is a {type(module.get_parameter(bad[0])).__name__}")
                continue
            for pname, p in params:
                self._params.append(p)
                owner.append(i)
                counted.append(1.0 if shards.counts_here(p) else 0.0)
                if shards.is_dtensor(p):
                    self.placements[f"{name}.{pname}" if name else pname] = shards.placement_names(p)
                    model_dims |= shards.model_parallel_dims(p)
                    if self.mesh is None:
                        self.mesh = shards.mesh_description(p)
        if self.mesh is not None:
            self.mesh["model_parallel_dims"] = sorted(model_dims)
        self._owner = owner
        self._param_ids = {id(p) for p in self._params}
        self._identity = [(id(p), p.shape, p.dtype) for p in self._params]
        self.sharded = bool(self.placements)
        # Which parameters this rank adds to the merged sums (all, unless replicated over a mesh dim).
        self._counted = counted
        self._partial: list[int] = []  # parameters whose gradients were unreduced partial sums
        self._mask_cache: dict[torch.device, torch.Tensor] = {}
        self._owner_cache: dict[torch.device, torch.Tensor] = {}
        self._present_cache: dict[tuple[tuple[int, ...], torch.device],
                                  tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _exclude(self, layer: int, why: str) -> None:
        """Take one layer out of the gradient statistics (NaN from now on), with one warning."""
        if self._strict:
            raise RuntimeError(f"normviz: gradient statistics of layer {self._names[layer]!r}: {why}")
        self._excluded.add(layer)
        warnings.warn(f"normviz: layer {self._names[layer]!r} has no gradient statistics from now on: {why}",
                      RuntimeWarning, stacklevel=4)

    def _check_params(self) -> None:
        """Follow a module that replaced, reshaped or retyped its parameters since the last step."""
        current = [(id(p), p.shape, p.dtype) for i, m in enumerate(self._modules) if i not in self._excluded
                   for p in m._parameters.values() if p is not None and p.requires_grad]
        if current != self._identity:
            self._collect()
            self._ours.clear()

    @property
    def n_layers(self) -> int:
        return len(self._names)

    def index_of(self, name: str) -> int | None:
        return self._index.get(name)

    @property
    def columns(self) -> dict[str, int]:
        """Each layer with parameters by name, and its gradient column."""
        return dict(self._index)

    def sharding(self) -> dict[str, Any] | None:
        """What the file says of a sharded model: its device mesh and each parameter's placements."""
        if not self.sharded:
            return None
        return {"mesh": self.mesh, "placements": dict(self.placements)}

    def attach(self) -> list[Any]:
        """Install the global optimizer hooks; returns their removable handles."""
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        return [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]

    def reset(self) -> None:
        self._result = {}
        self._snapshot = None
        self._weight_norm = None
        self._weight_sumsq = None

    def result(self, stat: str, device: torch.device | None, width: int | None = None) -> torch.Tensor:
        """The tensor of *stat* for the step being closed: [n_layers] values, or ``width`` for
        the partial gradient values (NaN where unknown)."""
        if not self._result and self._params:
            self._guarded(self._compute)  # no optimizer of ours stepped: read the gradients now
        t = self._result.get(stat)
        n = self.n_layers if width is None else width
        if t is None or t.numel() != n:
            t = torch.full((n,), math.nan, device=device)
        return t

    def partial_widths(self) -> dict[int, int]:
        """Gradient column → how many unreduced partial-sum gradient values its layer has (as
        the last computed step found them)."""
        widths: dict[int, int] = {}
        for i in self._partial:
            layer = self._owner[i]
            widths[layer] = widths.get(layer, 0) + shards.local(self._params[i]).numel()
        return widths

    def _guarded(self, fn: Callable[[], None]) -> None:
        """Run one part of the gradient statistics; what fails disables them, with one warning."""
        if self._disabled:
            return
        try:
            fn()
        except Exception as exc:
            if self._strict:
                raise
            self._disabled = True
            self._result = {}
            self._snapshot = None
            warnings.warn(f"normviz: gradient statistics failed ({type(exc).__name__}: {exc}); they are "
                          "disabled for this run, everything else is still recorded", RuntimeWarning, stacklevel=3)

    # -- optimizer hooks ------------------------------------------------------------------------
    def _is_ours(self, optimizer: torch.optim.Optimizer) -> bool:
        key = id(optimizer)
        if key not in self._ours:
            self._ours[key] = any(id(p) in self._param_ids for g in optimizer.param_groups for p in g["params"])
        return self._ours[key]

    def _seen(self, optimizer: torch.optim.Optimizer) -> None:
        """Note the learning rates of the step (and, once, what the optimizer is)."""
        self.last_lrs = group_lrs(optimizer)
        self.last_lr = self.last_lrs[0] if self.last_lrs else None
        if self.optimizer is None:
            layer_of = {id(p): self._names[i] for p, i in zip(self._params, self._owner)}
            self.optimizer = describe_optimizer(optimizer, layer_of)

    def _pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._disabled or not self._is_armed():
            if self._is_ours(optimizer):
                self._seen(optimizer)
            return None
        self._guarded(self._check_params)
        if not self._is_ours(optimizer):
            return None
        self._seen(optimizer)
        if self._params:
            self._guarded(lambda: self._before_step(args, kwargs))
        return None

    def _before_step(self, args: Any, kwargs: Any) -> None:
        self._closure = _has_closure(args, kwargs)
        with torch.no_grad():
            snapshot, before_sq = self._copy_weights()  # one read of each weight: copied and measured
            if self._closure:  # the gradients do not exist yet: the closure computes them
                self._weights(before_sq)
            else:
                self._compute(before_sq)
            self._snapshot = snapshot

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
        self._guarded(self._update)
        self._snapshot = None

    def _update(self) -> None:
        assert self._snapshot is not None and self._weight_norm is not None
        if self._closure:
            # A closure step (LBFGS, Lightning's automatic optimization) ran forward and
            # backward inside optimizer.step(): its gradients are complete only now.
            weight_norm, weight_sumsq = self._weight_norm, self._weight_sumsq
            self._compute()
            self._weight_norm, self._weight_sumsq = weight_norm, weight_sumsq
            self._result["weight_norm"] = weight_norm
            if weight_sumsq is not None:
                self._result["weight_sumsq"] = weight_sumsq
        with torch.no_grad():
            delta_sq, weight_sq = update_sq_norms(self._snapshot, self._locals())  # old - new, in place
            layer_sq = self._per_layer(delta_sq)
            after_sq = self._per_layer(weight_sq)
            self._result["update_ratio"] = layer_sq.sqrt() / self._weight_norm
            # The rotation of each layer's weights by the step (Kosson et al. 2024's angular update).
            self._result["update_angle"] = angle_between(self._weight_norm, after_sq.sqrt(), layer_sq.sqrt())
            if self.sharded:
                self._result["update_sumsq"] = layer_sq
                self._result["weight_after_sumsq"] = after_sq

    def _locals(self) -> list[torch.Tensor]:
        """The parameters as the statistics read them: DTensors by their local shards."""
        if not self.sharded:
            return self._params
        return [shards.local(p) for p in self._params]

    def _copy_weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The parameters' current values, copied into the kept buffers, and their squared norms."""
        weights = self._locals()  # read under no_grad: no detached aliases needed (each costs ~5 us)
        buffers = self._buffers
        if buffers is None or len(buffers) != len(weights) or any(
            b.shape != w.shape or b.dtype != w.dtype or b.device != w.device for b, w in zip(buffers, weights)
        ):
            buffers = self._buffers = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
        return buffers, copy_sq_norms(buffers, weights)

    def _owner_t(self, device: torch.device) -> torch.Tensor:
        cache = self._owner_cache.get(device)
        if cache is None:
            cache = self._owner_cache[device] = torch.tensor(self._owner, device=device, dtype=torch.long)
        return cache

    def _per_layer(self, per_param: torch.Tensor) -> torch.Tensor:
        """Sum per-parameter values into their layers; a sharded model's replicated copies count once."""
        if self.sharded:
            mask = self._mask_cache.get(per_param.device)
            if mask is None:
                mask = self._mask_cache[per_param.device] = torch.tensor(self._counted, device=per_param.device)
            per_param = per_param * mask
        return torch.zeros(self.n_layers, device=per_param.device).index_add_(
            0, self._owner_t(per_param.device), per_param)

    def _weights(self, per_param_sq: torch.Tensor | None = None) -> None:
        """The weight norm of every layer (and its partial sum of squares when sharded), from the
        parameters' squared norms if given."""
        w_sq = self._per_layer(per_param_sq if per_param_sq is not None else sq_norms(self._locals()))
        self._weight_norm = w_sq.sqrt()
        self._result["weight_norm"] = self._weight_norm
        if self.sharded:
            self._weight_sumsq = w_sq
            self._result["weight_sumsq"] = w_sq

    def _present_index(self, present: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
        """For the parameters that have a gradient (cached per set): their owner layer, and per
        layer whether any has a gradient and how many gradient values it counts."""
        key = (present, device)
        cached = self._present_cache.get(key)
        if cached is None:
            owner = torch.tensor([self._owner[i] for i in present], device=device, dtype=torch.long)
            numel = torch.tensor([float(shards.local(self._params[i]).numel()) * self._counted[i]
                                  for i in present], device=device)
            zeros = torch.zeros(self.n_layers, device=device)
            have = zeros.index_add(0, owner, torch.ones_like(numel)) > 0
            count = zeros.index_add(0, owner, numel)
            cached = self._present_cache[key] = (owner, have, count, count.clamp_min(1.0))
        return cached

    def _gradients(self) -> tuple[list[int], list[torch.Tensor]]:
        """The parameters that have a gradient, and their gradients as the statistics read them.

        Gradients that hold unreduced partial sums on each rank (``Partial``) are kept aside:
        their norm is not a sum of the ranks' parts, so their values themselves are recorded
        (``grad_partial_values``) for the merge to add up before taking norms."""
        present, grads = [], []
        partial, values = [], []
        for i, p in enumerate(self._params):
            g = p.grad
            if g is None:
                continue
            if type(g) is not torch.Tensor:  # a DTensor's or another subclass's gradient
                if shards.is_partial(g):
                    partial.append(i)
                    local_g = shards.local(g).reshape(-1).float()
                    values.append(local_g if shards.counts_here(g) else torch.zeros_like(local_g))
                    continue
                g = shards.local(g)
                if not shards.is_plain(g):
                    raise TypeError(f"the gradient of a parameter of layer {self._names[self._owner[i]]!r} "
                                    f"is a {type(g).__name__}")
            present.append(i)
            grads.append(g)
        if partial != self._partial and self._partial:
            if not self._warned_partial:
                self._warned_partial = True
                warnings.warn("normviz: the gradients holding partial sums changed since the first recorded step; "
                              "their values are not recorded", RuntimeWarning, stacklevel=5)
        elif partial:
            self._partial = partial
            self._result[GRAD_PARTIAL_VALUES] = torch.cat(values)
        return present, grads

    def _compute(self, weights_sq: torch.Tensor | None = None) -> None:
        """Gradient and weight statistics of every layer, on the device, no host sync (the
        weights' per-parameter squared norms measured already, if given)."""
        with torch.no_grad():
            device = self._params[0].device
            self._result = {}
            present, grads = self._gradients()
            self._weights(weights_sq)
            if not present:
                return
            sub_owner, have, count, divisor = self._present_index(tuple(present), device)
            zeros = torch.zeros(self.n_layers, device=device)
            l2, l1, linf = abs_norms(grads, scratch=self._scratch)
            if self.sharded:
                mask = torch.tensor([self._counted[i] for i in present], device=device)
                l2, l1 = l2 * mask, l1 * mask
            l2_sum = zeros.index_add(0, sub_owner, l2)
            l1_sum = zeros.index_add(0, sub_owner, l1)
            nan = torch.full_like(zeros, math.nan)
            self._result["grad_norm"] = torch.where(have, l2_sum.sqrt(), nan)
            self._result["grad_abs_mean"] = torch.where(have, l1_sum / divisor, nan)
            amax = zeros.scatter_reduce(0, sub_owner, linf, reduce="amax", include_self=False)
            self._result["grad_abs_max"] = torch.where(have, amax, nan)
            if self.sharded:
                nonfinite = torch.stack([(~torch.isfinite(g)).sum().float() for g in grads]) * mask
                self._result["grad_sumsq"] = torch.where(have, l2_sum, nan)
                self._result["grad_abs_sum"] = torch.where(have, l1_sum, nan)
                self._result["grad_count"] = torch.where(have, count, nan)
                self._result["grad_nonfinite"] = torch.where(have, zeros.index_add(0, sub_owner, nonfinite), nan)
