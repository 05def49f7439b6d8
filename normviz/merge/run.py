"""The rank files of one multi-rank run read as one run (:class:`MergedRun`); which files belong
together is :func:`normviz.merge.merge_ranks`'s job."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from normviz.analysis.ranks import (
    nan0,
    nansum_ranks,
    pool_moments,
    reduce_ranks,
)
from normviz.analysis.shards import global_entry, pool_channel_slices, sharded_gradient, sliced_index
from normviz.distributed import split_rank
from normviz.errors import MissingDataError, RunFileError
from normviz.store.layout import kept_channels
from normviz.store.meta import RunMetadata
from normviz.store.schema import ACT, GRAD_PARTIAL_VALUES

_EXACT_SUM = ("numel", "nonfinite")
#: The rank part of a label: ``ddp.rank1`` → ``ddp``.
RANK_LABEL = re.compile(r"\.rank\d+$")


class MergedRun(RunMetadata):
    """The rank files of one multi-rank run, read as one run of the global batch.

    Answers the :class:`~normviz.store.reader.Run` API (see :mod:`normviz.merge` for
    how each statistic is merged). Extra attributes: ``ranks`` (the rank runs,
    by rank), ``missing_ranks`` (ranks of ``world_size`` not among them),
    ``notes`` (what could not be merged exactly). ``rank`` is None.
    ``to_frame()`` is the ranks' tidy frames stacked, with a ``rank`` column.
    """

    def __init__(self, ranks: Sequence[Any]) -> None:
        if not ranks:
            raise ValueError("MergedRun needs at least one rank run")
        self.ranks = sorted(ranks, key=lambda r: r.rank)
        first = self.ranks[0]
        keys = [[s.key for s in r.sites] for r in self.ranks]
        for r, k in zip(self.ranks[1:], keys[1:]):
            if k != keys[0]:
                raise RunFileError(
                    f"{r.path}: its recorded layers differ from {first.path}'s; cannot merge these ranks")
        base, rank = split_rank(first.path)
        self.path = Path(base) if rank is not None else Path(first.path)
        self.meta = dict(first.meta)
        self.meta["rank"] = None
        self.meta["label"] = RANK_LABEL.sub("", str(first.label))
        self.layout = first.layout
        self.schema_version = first.schema_version
        self.world_size = max(r.world_size for r in self.ranks)
        self.missing_ranks = sorted(set(range(self.world_size)) - {r.rank for r in self.ranks})
        self.notes: list[str] = []
        # Each site's entry on every rank: a tensor-parallel rank may hold a slice of its
        # channels, or a replicated copy another rank counts (schema 1.2).
        self._entries = {site.key: [r.sites[i] for r in self.ranks] for i, site in enumerate(first.sites)}
        self._max_channels = int(self.meta.get("max_channels") or 0)
        self._sites = [global_entry(entries, self._kept(entries)) for entries in self._entries.values()]
        self.refresh()

    # -- alignment ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read every rank's row counts and realign them on the steps all recorded."""
        for r in self.ranks:
            r.refresh()
        common = self.ranks[0].steps
        for r in self.ranks[1:]:
            common = np.intersect1d(common, r.steps)
        self.steps: np.ndarray = np.asarray(common, dtype=np.int64)
        self._stat_all_cache: dict[tuple[Any, ...], tuple[list[Any], np.ndarray]] = {}
        self._rows = [np.searchsorted(r.steps, self.steps) for r in self.ranks]
        sc = self.ranks[0].scalar_steps
        for r in self.ranks[1:]:
            sc = np.intersect1d(sc, r.scalar_steps)
        self._scalar_steps = np.asarray(sc, dtype=np.int64)

    def _read(self, r: int, fn: Any, steps: slice | None, rows: Any = None) -> np.ndarray:
        """``fn(run, steps=slice)`` of rank ``r`` on the aligned rows selected by ``steps``
        (a slice of aligned rows) or ``rows`` (their indices)."""
        if rows is not None and steps is not None:
            raise TypeError("give steps= or rows=, not both")
        pick = np.asarray(rows, dtype=np.int64).reshape(-1) if rows is not None else (
            steps if steps is not None else slice(None))
        rows = self._rows[r][pick]
        if len(rows) == 0:
            data = np.asarray(fn(self.ranks[r], steps=slice(0, 0)))
            return data[:0]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        data = np.asarray(fn(self.ranks[r], steps=slice(lo, hi)))
        return data[rows - lo]

    def per_rank(self, name: str, layer: str, role: str = "output", *, call: int = 0,
                 steps: slice | None = None, rows: Any = None) -> np.ndarray:
        """One statistic of one site on every rank, aligned: ``[ranks, steps, ...]``."""
        return np.stack([
            self._read(i, lambda run, steps: run.stat(name, layer, role, call=call, steps=steps), steps, rows)
            for i in range(len(self.ranks))
        ]).astype(np.float64)

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def rank(self) -> None:
        return None

    @property
    def status(self) -> dict[str, int]:
        """``clean`` only when every rank closed cleanly; the smallest ``last_step`` and ``steps_seen``."""
        states = [r.status for r in self.ranks]
        return {
            "clean": int(all(s["clean"] for s in states)),
            "last_step": min(s["last_step"] for s in states),
            "steps_seen": min(s["steps_seen"] for s in states),
        }

    @property
    def layers(self) -> list[Any]:
        return self.ranks[0].layers

    @property
    def norm_layers(self) -> list[Any]:
        return self.ranks[0].norm_layers

    @property
    def sites(self) -> list[Any]:
        """The sites of the global tensors (a tensor-parallel slice's channels are the whole axis's)."""
        return self._sites

    @property
    def statistics(self) -> dict[str, list[str]]:
        return self.ranks[0].statistics

    def _kept(self, entries: Sequence[Any]) -> list[int]:
        total = entries[0].global_channels
        return kept_channels(total, self._max_channels) if total is not None else []

    def channel_index(self, layer: str, role: str = "output", *, call: int = 0) -> np.ndarray:
        entries = self._entries.get(f"{layer}|{role}|{call}")
        if entries is None or entries[0].global_channels is None:
            return self.ranks[0].channel_index(layer, role, call=call)
        return np.asarray(sliced_index(entries, self._kept(entries))[0])

    # -- statistics --------------------------------------------------------------------------------
    def _counted(self, key: str, data: np.ndarray) -> np.ndarray:
        """``data`` ([ranks, ...]) with NaN for a replicated copy another rank counts."""
        entries = self._entries.get(key)
        if entries is None or all(e.counted for e in entries):
            return data
        counted = np.array([e.counted for e in entries]).reshape((-1,) + (1,) * (data.ndim - 1))
        return np.where(counted, data, np.nan)

    def _sliced_channels(self, name: str, layer: str, role: str, call: int, sel: dict[str, Any]) -> np.ndarray:
        """Per-channel moments of a site whose ranks hold slices of its channels (tensor parallel):
        the ranks holding one channel are pooled, and the slices put side by side on the global axis."""
        entries = self._entries[f"{layer}|{role}|{call}"]
        _, owners = sliced_index(entries, self._kept(entries))
        n = self._counted(f"{layer}|{role}|{call}", self.per_rank("numel", layer, role, call=call, **sel))
        per_rank = [(self._read(i, lambda run, steps: run.stat("channel_mean", layer, role, call=call, steps=steps),
                                **sel),
                     self._read(i, lambda run, steps: run.stat("channel_var", layer, role, call=call, steps=steps),
                                **sel)) for i in range(len(self.ranks))]
        return pool_channel_slices(entries, owners, n, [m for m, _ in per_rank], [v for _, v in per_rank],
                                   name)

    def stat(self, name: str, layer: str, role: str = "output", *, call: int = 0,
             steps: slice | None = None, rows: Any = None) -> np.ndarray:
        """A statistic of one site for the global batch (see :mod:`normviz.merge`)."""
        sel = {"steps": steps, "rows": rows}
        entries = self._entries.get(f"{layer}|{role}|{call}")
        if name in ("channel_mean", "channel_var") and entries is not None and entries[0].global_channels is not None:
            return self._sliced_channels(name, layer, role, call, sel)
        return self._combine(name, layer, role, call,
                             lambda stat: self.per_rank(stat, layer, role, call=call, **sel))

    def _combine(self, name: str, layer: str, role: str, call: int, get: Any) -> np.ndarray:
        """Merge statistic ``name`` of one site from its ranks' values, ``get(stat)`` giving
        ``[ranks, steps, ...]`` of any statistic the merge needs."""
        key = f"{layer}|{role}|{call}"
        if name in ("channel_mean", "channel_var", "mean", "std"):
            n = self._counted(key, get("numel"))
            if name.startswith("channel"):
                mean, var = get("channel_mean"), get("channel_var")
            else:
                mean, var = get("mean"), get("std") ** 2
            _, m, v = pool_moments(n, mean, var)
            return m if name.endswith("mean") else (v if name == "channel_var" else np.sqrt(v))
        data = get(name)
        if name == "min":
            return reduce_ranks(data, np.fmin)
        if name == "max":
            return reduce_ranks(data, np.fmax)
        data = self._counted(key, data)
        if name in _EXACT_SUM:
            return nansum_ranks(data)
        if name == "output_grad_norm":
            return np.sqrt(nansum_ranks(data**2)) / self.data_parallel_size
        if name == "hist":
            self._check_edges(layer, role, call)
            return nansum_ranks(data)
        return self._declared(name, key, data, get)

    def _declared(self, name: str, key: str, data: np.ndarray, get: Any) -> np.ndarray:
        """A statistic merged by the rule it declared (``Statistic.merge``, kept in the file)."""
        entry = self.layout.stat(ACT, name)
        rule = entry.attrs.get("merge", "mean") if entry is not None else "mean"
        if rule == "sum":
            return nansum_ranks(data)
        if rule in ("max", "min"):
            return reduce_ranks(data, np.fmax if rule == "max" else np.fmin)
        if rule == "none":
            raise MissingDataError(
                f"{self.path}: statistic {name!r} is not mergeable across ranks; read each rank's values "
                "(MergedRun.per_rank)", statistic=name)
        note = f"{name}: approximate across ranks (the ranks' values weighted by their value counts)"
        if note not in self.notes:
            self.notes.append(note)
        return _weighted_mean(self._counted(key, get("numel")), data)

    def _check_edges(self, layer: str, role: str, call: int) -> None:
        edges = [np.asarray(r.hist_edges(layer, role, call=call)) for r in self.ranks]
        if not all(np.array_equal(edges[0], e, equal_nan=True) for e in edges[1:]):
            note = f"histogram of {role} of {layer!r}: the ranks' edges differ, not summed"
            if note not in self.notes:
                self.notes.append(note)
            raise MissingDataError(
                f"{self.path}: the histogram edges of {role} of {layer!r} differ between ranks "
                "(each rank fixed them at its first recorded step); histograms are summed only over shared edges",
                statistic="hist", layer=layer, role=role,
            )

    def hist_edges(self, layer: str, role: str = "output", *, call: int = 0) -> np.ndarray:
        self._check_edges(layer, role, call)
        return self.ranks[0].hist_edges(layer, role, call=call)

    def stat_all(self, name: str, *, steps: slice | None = None, rows: Any = None) -> tuple[list[Any], np.ndarray]:
        """A one-value-per-site statistic of every site, merged: ``(sites, [steps, n_sites])``.

        Each rank's datasets are read once for all sites (not once per site and rank), and
        the result is kept until :meth:`refresh`: several renderers ask for the same."""
        pick = None if rows is None else tuple(np.asarray(rows, dtype=np.int64).reshape(-1).tolist())
        cache_key = (name, None if steps is None else (steps.start, steps.stop, steps.step), pick)
        if cache_key in self._stat_all_cache:
            return self._stat_all_cache[cache_key]
        sites, _ = self.ranks[0].stat_all(name, steps=slice(0, 0))
        read: dict[str, tuple[dict[str, int], np.ndarray]] = {}

        def get_all(stat: str) -> tuple[dict[str, int], np.ndarray]:
            if stat not in read:
                stat_sites, _ = self.ranks[0].stat_all(stat, steps=slice(0, 0))
                data = np.stack([self._read(i, lambda run, steps: run.stat_all(stat, steps=steps)[1], steps, rows)
                                 for i in range(len(self.ranks))]).astype(np.float64)
                read[stat] = ({s.key: j for j, s in enumerate(stat_sites)}, data)
            return read[stat]

        def column(site: Any, stat: str) -> np.ndarray:
            where, data = get_all(stat)
            return data[:, :, where[site.key]]

        cols = [self._combine(name, s.layer, s.role, s.call, lambda stat, s=s: column(s, stat)) for s in sites]
        n = len(self.steps[np.asarray(pick, dtype=np.int64) if pick is not None
                           else (steps if steps is not None else slice(None))])
        result = sites, (np.stack(cols, axis=1) if cols else np.zeros((n, 0)))
        self._stat_all_cache[cache_key] = result
        return result

    @property
    def data_parallel_size(self) -> int:
        """How many ranks train on different data: the world size, less the mesh dimensions a
        sharded model splits by tensor parallelism (whose ranks see the same batch)."""
        mesh = self.meta.get("sharding", {}).get("mesh") or {}
        split = 1
        for dim in mesh.get("model_parallel_dims", []):
            split *= int(mesh["shape"][dim])
        return max(1, self.world_size // split)

    @property
    def sharded(self) -> bool:
        """Whether the ranks trained a sharded model (DTensor parameters: FSDP2, TP, HSDP)."""
        return "sharding" in self.ranks[0].meta

    def grad_per_rank(self, name: str, *, steps: slice | None = None, rows: Any = None) -> np.ndarray:
        """A gradient statistic on every rank, aligned: ``[ranks, steps, layers]``."""
        return np.stack([self._read(i, lambda run, steps: run.grad(name, steps=steps)[1], steps, rows)
                         for i in range(len(self.ranks))]).astype(np.float64)

    def grad(self, name: str, *, steps: slice | None = None, rows: Any = None) -> tuple[list[str], np.ndarray]:
        """A gradient statistic of every layer with parameters (see :mod:`normviz.merge`)."""
        names, _ = self.ranks[0].grad(name, steps=slice(0, 0))
        if not self.sharded:
            return names, self._read(0, lambda run, steps: run.grad(name, steps=steps)[1], steps, rows)

        partial = None
        if GRAD_PARTIAL_VALUES in self.statistics.get("grad", []):
            layers, offsets, _ = self.ranks[0].grad_values(GRAD_PARTIAL_VALUES, steps=slice(0, 0))
            values = nansum_ranks(np.stack([
                self._read(i, lambda run, steps: run.grad_values(GRAD_PARTIAL_VALUES, steps=steps)[2], steps, rows)
                for i in range(len(self.ranks))]).astype(np.float64))
            partial = (layers, offsets, values)
        return names, sharded_gradient(name, names, lambda k: self.grad_per_rank(k, steps=steps, rows=rows), partial)

    def module_stat(self, name: str, layer: str, *, steps: slice | None = None, rows: Any = None) -> np.ndarray:
        if not self.sharded:
            return self._read(0, lambda run, steps: run.module_stat(name, layer, steps=steps), steps, rows)
        # Each rank holds its shard of a sharded tensor, NaN elsewhere; plain tensors: rank 0's.
        per_rank = self.module_stat_per_rank(name, layer, steps=steps, rows=rows)
        out = per_rank[0]
        for values in per_rank[1:]:
            out = np.where(np.isnan(out), values, out)
        return out

    def module_stat_per_rank(self, name: str, layer: str, *, steps: slice | None = None,
                             rows: Any = None) -> np.ndarray:
        """A module tensor on every rank, aligned: ``[ranks, steps, width]``."""
        return np.stack([self._read(i, lambda run, steps: run.module_stat(name, layer, steps=steps), steps, rows)
                         for i in range(len(self.ranks))]).astype(np.float64)

    def wall_time(self) -> np.ndarray:
        return np.max(np.stack([self._read(i, lambda run, steps: run.wall_time()[steps], None)
                                for i in range(len(self.ranks))]), axis=0)

    @property
    def scalar_names(self) -> list[str]:
        return self.ranks[0].scalar_names

    @property
    def scalar_steps(self) -> np.ndarray:
        return self._scalar_steps

    def scalar(self, name: str) -> np.ndarray:
        """Mean over ranks, on the steps every rank has."""
        values = []
        for r in self.ranks:
            rows = np.searchsorted(r.scalar_steps, self._scalar_steps)
            values.append(np.asarray(r.scalar(name), dtype=np.float64)[rows])
        return np.mean(np.stack(values), axis=0)

    @property
    def scalars(self) -> dict[str, np.ndarray]:
        return {name: self.scalar(name) for name in self.scalar_names}

    def to_frame(self) -> Any:
        """The ranks' tidy frames stacked, with a ``rank`` column (per-rank values, not merged)."""
        import pandas as pd

        frames = []
        for r in self.ranks:
            f = r.to_frame()
            f.insert(1, "rank", r.rank)
            frames.append(f)
        return pd.concat(frames, ignore_index=True)

    def close(self) -> None:
        for r in self.ranks:
            r.close()

    def __enter__(self) -> MergedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MergedRun({str(self.path)!r}, ranks={[r.rank for r in self.ranks]}, "
                f"world_size={self.world_size}, steps={len(self.steps)})")


def _weighted_mean(n: np.ndarray, data: np.ndarray) -> np.ndarray:
    w = np.where(np.isfinite(n), n, 0.0).reshape(n.shape + (1,) * (data.ndim - n.ndim))
    w = np.where(np.isnan(data), 0.0, w)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w * nan0(data)).sum(axis=0) / total
    return np.where(total > 0, out, np.nan)
