"""A recorded step's row: packed on the device, copied to the host once, with the scalars.

Every statistic of a step travels in two flat vectors, float32 (``f4``) and float64
(``f8``), concatenated on the device and copied to the host in one transfer (pinned and
non-blocking on CUDA, guarded by an event the writer's thread waits for). :class:`Packing`
says where each dataset's columns lie in them; :class:`RowPacker` builds them;
:class:`ScalarQueue` keeps the scalars of every step until a row (or a batch of their
own) carries them to the host. Nothing here reads a tensor on the training thread.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from normviz.record import assemble, core, shards
from normviz.record.observe import CORE, channel_index
from normviz.store import schema
from normviz.store.layout import Layout, StatEntry
from normviz.store.writer import RunWriter, ScalarBatch

#: Between recorded steps, scalars are queued to the writer in batches of this many steps.
SCALAR_BATCH = 256


def vector_of(dtype: str) -> str:
    """The row vector a dataset of ``dtype`` travels in: float32 in ``f4``, the rest (counts, float64) in ``f8``."""
    return "f4" if dtype == "float32" else "f8"


class Packing:
    """Where each dataset of a layout lies in a row's two vectors: its statistics in layout
    order, each in the vector of its dtype."""

    def __init__(self, layout: Layout) -> None:
        self.slots: dict[str, tuple[str, int, int]] = {}  # "<group>/<name>" -> (vector, start, width)
        self.sizes = {"f4": 0, "f8": 0}
        for st in layout.stats:
            vec = vector_of(st.dtype)
            self.slots[f"{st.group}/{st.name}"] = (vec, self.sizes[vec], st.width)
            self.sizes[vec] += st.width

    def slot(self, st: StatEntry) -> tuple[str, int, int]:
        """``(vector, start, width)`` of one dataset."""
        return self.slots[f"{st.group}/{st.name}"]

    def unpack(self, f4: np.ndarray, f8: np.ndarray) -> dict[str, np.ndarray]:
        """Every dataset's block of stacked rows ``f4`` [k, f4 size], ``f8`` [k, f8 size]."""
        vectors = {"f4": f4, "f8": f8}
        return {path: vectors[vec][:, start:start + width] for path, (vec, start, width) in self.slots.items()}


_PLAIN = (torch.Tensor, nn.Parameter)
#: The statistic the output-gradient taps store squared (see :class:`normviz.record.hooks.GradNormHook`).
SQUARED_OUTPUT_GRAD = "output_grad_norm"


def module_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """A norm layer's 1-D floating-point tensor ``name`` (weight, bias, running statistics), or
    None; a sharded one (DTensor) as its global view (:func:`~normviz.record.shards.global_view`)."""
    t = getattr(module, name, None)
    if isinstance(t, torch.Tensor) and t.dim() == 1 and t.is_floating_point():
        return t if type(t) in _PLAIN else shards.global_view(t)
    return None


def nan_fill(width: int, vec: str, device: torch.device | None) -> torch.Tensor:
    dtype = torch.float32 if vec == "f4" else torch.float64
    return torch.full((width,), math.nan, dtype=dtype, device=device)


class ModulePlan:
    """How one module statistic's tensors are flattened: their sizes, dtype and device at the
    first recorded step, and the indices of the stored values in their concatenation."""

    __slots__ = ("numels", "dtype", "device", "gather")

    def __init__(self, numels: list[int], dtype: torch.dtype, device: torch.device, gather: torch.Tensor | None):
        self.numels, self.dtype, self.device, self.gather = numels, dtype, device, gather

    @classmethod
    def build(cls, tensors: list[torch.Tensor | None], offsets: list[int]) -> ModulePlan:
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
            index.append(channel_index(n, w, first.device) + base)
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


class ScalarQueue:
    """The scalars of the steps not yet sent: Python values as they are, tensors kept
    detached and never read on the training thread."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, float, dict[str, Any]]] = []

    def add(self, step: int, wall: float, scalars: Mapping[str, Any]) -> None:
        values = dict(scalars)
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.requires_grad:
                values[name] = value.detach()  # a kept loss must not keep its autograd graph alive
        self.pending.append((step, wall, values))

    def take(self) -> tuple[ScalarBatch, torch.Tensor | None]:
        """The pending steps' scalars: Python values in the rows, tensor values stacked into
        one float64 tensor (on the first one's device) that fills them in later, in order.
        Nothing here reads a tensor: a recorded row carries them to the host with its own copy."""
        tensors: list[torch.Tensor] = []
        where: list[tuple[int, str]] = []
        rows: list[tuple[int, dict[str, float]]] = []
        for i, (step, wall, values) in enumerate(self.pending):
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
        self.pending.clear()
        stacked = None
        if tensors:
            device = tensors[0].device
            stacked = torch.stack([t.to(device=device, dtype=torch.float64) for t in tensors])
        return ScalarBatch(rows, where), stacked

    def send(self, writer: RunWriter) -> None:
        """Queue the pending steps' scalars on their own (between recorded steps, and at the end)."""
        if not self.pending:
            return
        batch, stacked = self.take()
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
        writer.write_scalars(batch, event)


class RowPacker:
    """Packs one recorded step's statistics into the row vectors of a fixed layout.

    ``modules[i]`` is the module of ``layout.layers[i]``; ``grad_result(stat, device, width)``
    gives a gradient statistic of every layer with parameters; ``owner(statistic)`` names
    a statistic's provider for warnings.
    """

    def __init__(self, layout: Layout, packing: Packing, assembler: assemble.CoreAssembler, modules: list[nn.Module],
                 grad_result: Callable[[str, torch.device | None, int], torch.Tensor],
                 owner: Callable[[str], str]) -> None:
        self.layout = layout
        self.packing = packing
        self.assembler = assembler
        self.modules = modules
        self.grad_result = grad_result
        self.owner = owner
        self.site_keys = [e.key for e in layout.sites]
        # Each dataset with the vector it travels in, worked out once (pack runs every recorded step).
        self._stats = [(st, vector_of(st.dtype)) for st in layout.stats]
        self._placeholders: dict[tuple[int, str, torch.device | None], torch.Tensor] = {}
        self._module_plans: dict[str, ModulePlan] = {}
        self._width_warned: set[str] = set()

    def device_blocks(self, results: Mapping[str, Mapping[str, Any]]) -> assemble.DeviceBlocks | None:
        """The step's fused site statistics (None for a layout without sites)."""
        if not self.site_keys:
            return None
        return self.assembler.blocks([results.get(k, {}).get(CORE) for k in self.site_keys])

    def pack(self, results: Mapping[str, Mapping[str, Any]], blocks: assemble.DeviceBlocks | None,
             scalar_values: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, Any]:
        """The row's two vectors on the host (the one copy of the step), the scalars' values
        split off the end of ``f8`` again, and the event guarding a CUDA copy (else None)."""
        parts: dict[str, list[torch.Tensor]] = {"f4": [], "f8": []}
        device = self.assembler.device if self.site_keys else None
        for st, vec in self._stats:
            if st.group == schema.ACT and blocks is not None and st.name in blocks.stats:
                parts[vec].append(blocks.stats[st.name])
            elif st.group == schema.ACT and st.name in core.HOST_FINISHED:
                parts[vec].append(self._placeholder(st.width, vec, device))  # filled on the host
            elif st.group == schema.ACT:
                columns = []
                for i, r in enumerate(st.rows):
                    t = results.get(self.site_keys[r], {}).get(st.name)
                    w = st.offsets[i + 1] - st.offsets[i]
                    if t is not None and t.numel() != w:
                        self._warn_width(st.name, self.site_keys[r], t.numel(), w)
                        t = None
                    if t is None:
                        t = nan_fill(w, vec, device)
                    else:
                        device = t.device if device is None else device
                    columns.append(t if t.dim() == 1 else t.reshape(-1))
                if st.name == SQUARED_OUTPUT_GRAD:
                    # The taps keep ‖g‖²: one square root for every site instead of one per tap.
                    parts[vec].append(torch.cat(columns).sqrt_())
                else:
                    parts[vec].extend(columns)
            elif st.group == schema.MODULE:
                parts["f4"].append(self._module_block(st, device))
            elif st.group == schema.GRAD:
                parts["f4"].append(self.grad_result(st.name, device, st.offsets[-1]))
        if blocks is not None:
            parts["f4"].append(blocks.host)  # what the host finishes the row from
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
        values = None
        if scalar_values is not None:
            n = scalar_values.numel()
            values = vectors["f8"][-n:]  # read by the writer once the event fired
            vectors["f8"] = vectors["f8"][:-n]
        return vectors, values, event

    def _warn_width(self, name: str, site: str, got: int, want: int) -> None:
        """Once per statistic: a plugin's compute() returned another width than its width(site)."""
        if name in self._width_warned:
            return
        self._width_warned.add(name)
        warnings.warn(
            f"normviz: statistic {name!r} ({self.owner(name)}) returned {got} values at "
            f"{site.replace('|', ' ')}, but its width is {want}; stored as NaN there",
            RuntimeWarning,
            stacklevel=4,
        )

    def _module_block(self, st: StatEntry, device: torch.device | None) -> torch.Tensor:
        """One module statistic (e.g. every norm's running_var) of all its layers, float32, thinned.

        The usual case — the same tensors as at the first step, one dtype — is one cat and
        one index_select for all layers; anything else goes layer by layer.
        """
        tensors = [module_tensor(self.modules[r], st.name) for r in st.rows]
        plan = self._module_plans.get(st.name)
        if plan is None:
            plan = self._module_plans[st.name] = ModulePlan.build(tensors, st.offsets)
        if plan.fits(tensors):  # every tensor is there (not None) and as at the first step
            present = [t for t in tensors if t is not None]
            flat = torch.cat(present) if len(present) > 1 else present[0]
            flat = flat.float() if flat.dtype != torch.float32 else flat
            return flat.index_select(0, plan.gather) if plan.gather is not None else flat.clone()
        parts = []
        for i, t in enumerate(tensors):
            w = st.offsets[i + 1] - st.offsets[i]
            if t is None or t.numel() < w:
                parts.append(nan_fill(w, "f4", device))
                continue
            t = t.reshape(-1).float()
            parts.append(t.index_select(0, channel_index(t.numel(), w, t.device)) if t.numel() > w else t.clone())
        return torch.cat(parts)

    def _placeholder(self, width: int, vec: str, device: torch.device | None) -> torch.Tensor:
        key = (width, vec, device)
        t = self._placeholders.get(key)
        if t is None:
            t = self._placeholders[key] = nan_fill(width, vec, device)
        return t
