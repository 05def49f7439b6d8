"""Read run files: ``normviz.open(path) -> Run``. The only code that knows the file layout.

Files are opened read-only in SWMR mode first: that reads a run still being
written and one whose writer was killed (its consistency flags still set). Only
rows published by the writer are visible; ``len(/steps/step)`` bounds every
``[steps, ...]`` dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from normviz.errors import MissingDataError, RunFileError, SchemaError
from normviz.store import schema, series
from normviz.store.files import open_h5
from normviz.store.layout import Layout, SiteEntry
from normviz.store.meta import RunMetadata


@dataclass(frozen=True)
class LayerInfo:
    """A recorded layer as the reader reports it."""

    name: str
    kind: str | None
    module_type: str
    channels: int | None
    calls: int
    has_grads: bool


def _missing_as_nan(data: np.ndarray) -> np.ndarray:
    """Integer statistics mark a site that did not run with -1: return them as float with NaN."""
    if np.issubdtype(data.dtype, np.integer):
        out = data.astype(np.float64)
        if np.issubdtype(data.dtype, np.unsignedinteger):
            out[data == np.iinfo(data.dtype).max] = np.nan
        else:
            out[data < 0] = np.nan
        return out
    return data


def open_run(path: str | os.PathLike[str]) -> Run:
    """Open a normviz run file for reading (see :class:`Run`)."""
    return Run(path)


class Run(RunMetadata, series.EvalSeriesAccess):
    """A recorded run, read lazily from its file.

    Attributes
    ----------
    path, meta, label, experiment, norm_kind, rank, world_size, schema_version:
        Run metadata.
    layers:
        :class:`LayerInfo` per recorded layer, in model order.
    steps:
        Training step of each recorded row (the first axis of every statistic).

    Every statistic accessor returns a NumPy array whose first axis is the recorded
    step; ``steps=`` takes a slice of *recorded rows* (a stride thins a long run),
    or ``rows=`` an array of row indices, to read only part of a run. Only the
    columns of the site or layer asked for are read, so on a long run a figure
    reads the slices it draws, never a whole dataset for a subset.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f = open_h5(self.path)
        try:
            self._load()
        except RunFileError:
            self._f.close()
            raise
        except (KeyError, ValueError, OSError, TypeError, json.JSONDecodeError) as exc:
            self._f.close()
            raise RunFileError(f"{self.path}: damaged normviz run ({type(exc).__name__}: {exc})") from exc

    # -- loading and validation ------------------------------------------------------------------
    def _load(self) -> None:
        f = self._f
        name = f.attrs.get("schema")
        if isinstance(name, bytes):
            name = name.decode()
        if name != schema.SCHEMA_NAME:
            raise RunFileError(f"{self.path}: HDF5 file but not a normviz run (no 'schema' = {schema.SCHEMA_NAME!r})")
        version = str(f.attrs.get("schema_version", ""))
        try:
            major = int(version.split(".")[0])
        except ValueError as exc:
            raise SchemaError(f"{self.path}: unreadable schema version {version!r}") from exc
        if major > schema.SCHEMA_MAJOR:
            raise SchemaError(
                f"{self.path}: written with schema {version}, newer than this normviz reads "
                f"({schema.SCHEMA_VERSION}); upgrade normviz"
            )
        self.schema_version = version
        self.meta: dict[str, Any] = json.loads(f.attrs.get("meta", "{}"))
        for required in (schema.LAYOUT, schema.STEP, schema.SCALAR_STEP, schema.SCALAR_VALUES, schema.SCALAR_NAMES):
            if required not in f:
                raise RunFileError(f"{self.path}: damaged normviz run: dataset /{required} is missing")
        self.layout = Layout.from_json(bytes(f[schema.LAYOUT][()]).decode("utf-8"))
        self._check_shapes()
        self.refresh()

    def _check_shapes(self) -> None:
        for st in self.layout.stats:
            path = f"{st.group}/{st.name}"
            if path not in self._f:
                raise RunFileError(f"{self.path}: damaged normviz run: dataset /{path} is missing")
            ds = self._f[path]
            if ds.ndim != 2 or ds.shape[1] != st.width:
                raise RunFileError(
                    f"{self.path}: damaged normviz run: /{path} has shape {ds.shape}, expected (steps, {st.width})"
                )
        edges = self._f.get(schema.HIST_EDGES)
        if edges is not None and edges.shape != (len(self.layout.sites), self.layout.hist_bins + 1):
            raise RunFileError(f"{self.path}: damaged normviz run: /{schema.HIST_EDGES} has shape {edges.shape}")

    def refresh(self) -> None:
        """Re-read the row counts: a file still being written shows its new rows."""
        f = self._f
        for path in [schema.STEP, schema.SCALAR_STEP, schema.SCALAR_VALUES, schema.WALL_TIME] + [
            f"{st.group}/{st.name}" for st in self.layout.stats
        ]:
            if path in f:
                f[path].refresh() if self._f.swmr_mode else None
        n = f[schema.STEP].shape[0]
        # A writer killed inside a flush may have extended some datasets and not others:
        # only rows present everywhere count.
        for st in self.layout.stats:
            n = min(n, f[f"{st.group}/{st.name}"].shape[0])
        self._n = n
        self.steps: np.ndarray = f[schema.STEP][:n].astype(np.int64)
        t = min(f[schema.SCALAR_STEP].shape[0], f[schema.SCALAR_VALUES].shape[0])
        self._t = t
        names = [bytes(b).decode("utf-8", "replace") for b in f[schema.SCALAR_NAMES][()]]
        self._scalar_cols = {name: i for i, name in enumerate(names) if name}

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return int(self.meta.get("rank", 0))

    @property
    def world_size(self) -> int:
        return int(self.meta.get("world_size", 1))

    @property
    def status(self) -> dict[str, int]:
        """``clean`` (1 once closed normally), ``last_step`` recorded, ``steps_seen``."""
        ds = self._f.get(schema.STATUS)
        if ds is None:
            return {"clean": 0, "last_step": -1, "steps_seen": 0}
        if self._f.swmr_mode:
            ds.refresh()
        v = ds[()]
        return {"clean": int(v[0]), "last_step": int(v[1]), "steps_seen": int(v[2])}

    @property
    def layers(self) -> list[LayerInfo]:
        return [
            LayerInfo(e.name, e.kind, e.module_type, e.channels, e.calls, e.grad_index is not None)
            for e in self.layout.layers
        ]

    @property
    def norm_layers(self) -> list[LayerInfo]:
        """Layers that are norm layers (or norm slots of kind ``none``)."""
        return [layer for layer in self.layers if layer.kind is not None]

    @property
    def sites(self) -> list[SiteEntry]:
        return list(self.layout.sites)

    @property
    def statistics(self) -> dict[str, list[str]]:
        """Names of the recorded statistics by group (``act``, ``grad``, ``module``)."""
        out: dict[str, list[str]] = {g: [] for g in schema.GROUPS}
        for st in self.layout.stats:
            out[st.group].append(st.name)
        return out

    # -- statistics --------------------------------------------------------------------------------
    def _site_index(self, layer: str, role: str, call: int) -> int:
        for i, s in enumerate(self.layout.sites):
            if s.layer == layer and s.role == role and s.call == call:
                return i
        known = sorted({s.layer for s in self.layout.sites})
        raise MissingDataError(f"{self.path}: no recorded {role} of layer {layer!r} (call {call}); layers: {known}",
                               layer=layer, role=role)

    def _rows(self, steps: slice | None, rows: Any = None) -> slice | np.ndarray:
        """The recorded rows to read: a slice (``steps``, strides allowed) or sorted row indices (``rows``)."""
        if rows is not None:
            if steps is not None:
                raise TypeError("give steps= or rows=, not both")
            idx = np.asarray(rows, dtype=np.int64).reshape(-1)
            idx = np.where(idx < 0, idx + self._n, idx)
            if idx.size and (idx.min() < 0 or idx.max() >= self._n):
                raise IndexError(f"{self.path}: rows out of range 0..{self._n - 1}")
            return idx
        s = steps if steps is not None else slice(None)
        start, stop, stride = s.indices(self._n)
        return slice(start, stop, stride)

    def _read(
        self, path: str, steps: slice | None, rows: Any, lo: int | None = None, hi: int | None = None
    ) -> np.ndarray:
        """Rows of columns ``lo:hi`` of one dataset; only the chunks holding them are decompressed."""
        ds = self._f[path]
        cols = slice(lo, hi)
        sel = self._rows(steps, rows)
        if isinstance(sel, slice):
            return ds[sel, cols]
        if sel.size == 0:
            return ds[0:0, cols]
        unique, inverse = np.unique(sel, return_inverse=True)
        if unique.size == 1:
            data = ds[int(unique[0]) : int(unique[0]) + 1, cols]
        else:
            data = ds[unique, cols]  # one HDF5 selection: each chunk is decompressed once
        return data if unique.size == sel.size and np.array_equal(unique, sel) else data[inverse]

    def stat(
        self, name: str, layer: str, role: str = "output", *, call: int = 0, steps: slice | None = None,
        rows: Any = None,
    ) -> np.ndarray:
        """An activation statistic of one site: ``[steps]`` for one-value statistics, else ``[steps, width]``."""
        st = self.layout.stat(schema.ACT, name)
        if st is None:
            raise MissingDataError(f"{self.path}: statistic {name!r} was not recorded in this run", statistic=name)
        idx = self._site_index(layer, role, call)
        if idx not in st.rows:
            raise MissingDataError(f"{self.path}: statistic {name!r} was not recorded for {role} of {layer!r}",
                                   statistic=name, layer=layer, role=role)
        j = st.rows.index(idx)
        lo, hi = st.offsets[j], st.offsets[j + 1]
        data = _missing_as_nan(self._read(f"{schema.ACT}/{name}", steps, rows, lo, hi))
        return data[:, 0] if st.width == len(st.rows) else data

    def stat_all(
        self, name: str, *, steps: slice | None = None, rows: Any = None
    ) -> tuple[list[SiteEntry], np.ndarray]:
        """A one-value-per-site statistic for all its sites at once: ``(sites, [steps, n_sites])``."""
        st = self.layout.stat(schema.ACT, name)
        if st is None:
            raise MissingDataError(f"{self.path}: statistic {name!r} was not recorded in this run", statistic=name)
        if st.width != len(st.rows):
            raise MissingDataError(f"{self.path}: statistic {name!r} has several values per site; use stat()")
        data = _missing_as_nan(self._read(f"{schema.ACT}/{name}", steps, rows))
        return [self.layout.sites[r] for r in st.rows], data

    def hist_edges(self, layer: str, role: str = "output", *, call: int = 0) -> np.ndarray:
        """The fixed histogram edges of one site (``hist_bins + 1`` values)."""
        return self._f[schema.HIST_EDGES][self._site_index(layer, role, call)]

    def channel_index(self, layer: str, role: str = "output", *, call: int = 0) -> np.ndarray:
        """Which channels the per-channel series of a site hold."""
        site = self.layout.sites[self._site_index(layer, role, call)]
        if site.channel_index is None:
            return np.arange(site.channels)
        return np.asarray(site.channel_index)

    def grad(self, name: str, *, steps: slice | None = None, rows: Any = None) -> tuple[list[str], np.ndarray]:
        """A gradient statistic for every layer with parameters: ``(layer names, [steps, layers])``."""
        st = self.layout.stat(schema.GRAD, name)
        if st is None:
            raise MissingDataError(f"{self.path}: gradient statistic {name!r} was not recorded in this run",
                                   statistic=name)
        names = [e.name for e in sorted(
            (e for e in self.layout.layers if e.grad_index is not None), key=lambda e: e.grad_index or 0
        )]
        return names, self._read(f"{schema.GRAD}/{name}", steps, rows)

    def grad_values(self, name: str, *, steps: slice | None = None,
                    rows: Any = None) -> tuple[list[str], list[int], np.ndarray]:
        """A gradient dataset with several values per layer (``grad_partial_values``):
        ``(layer names, column offsets, [steps, columns])``; layer ``i``'s values are
        columns ``offsets[i]:offsets[i + 1]``."""
        st = self.layout.stat(schema.GRAD, name)
        if st is None:
            raise MissingDataError(f"{self.path}: gradient values {name!r} were not recorded in this run",
                                   statistic=name)
        by_index = {e.grad_index: e.name for e in self.layout.layers if e.grad_index is not None}
        return [by_index[r] for r in st.rows], list(st.offsets), self._read(f"{schema.GRAD}/{name}", steps, rows)

    def module_stat(self, name: str, layer: str, *, steps: slice | None = None, rows: Any = None) -> np.ndarray:
        """A module tensor over training (``weight``, ``bias``, ``running_mean``, ``running_var``)."""
        st = self.layout.stat(schema.MODULE, name)
        index = next((i for i, e in enumerate(self.layout.layers) if e.name == layer), None)
        if st is None:
            raise MissingDataError(f"{self.path}: {name!r} of layer {layer!r} was not recorded", statistic=name)
        if index is None or index not in st.rows:
            raise MissingDataError(f"{self.path}: {name!r} of layer {layer!r} was not recorded", statistic=name,
                                   layer=layer)
        j = st.rows.index(index)
        return self._read(f"{schema.MODULE}/{name}", steps, rows, st.offsets[j], st.offsets[j + 1])

    def wall_time(self) -> np.ndarray:
        """Seconds since the recorder started, per recorded row."""
        return self._f[schema.WALL_TIME][: self._n]

    @property
    def scalar_names(self) -> list[str]:
        return list(self._scalar_cols)

    @property
    def scalar_steps(self) -> np.ndarray:
        """The training step of each scalar row (every step)."""
        return self._f[schema.SCALAR_STEP][: self._t].astype(np.int64)

    def scalar(self, name: str) -> np.ndarray:
        """One scalar for every training step (NaN where it was not given)."""
        col = self._scalar_cols.get(name)
        if col is None:
            raise MissingDataError(f"{self.path}: no scalar {name!r}; scalars: {self.scalar_names}", statistic=name)
        return self._f[schema.SCALAR_VALUES][: self._t, col]

    @property
    def scalars(self) -> dict[str, np.ndarray]:
        """Every scalar by name, one value per training step."""
        values = self._f[schema.SCALAR_VALUES][: self._t]
        return {name: values[:, col] for name, col in self._scalar_cols.items()}

    # -- pandas ------------------------------------------------------------------------------------
    def to_frame(self) -> Any:
        """A tidy pandas DataFrame of the one-value statistics, percentiles and gradients.

        Columns: ``run, experiment, norm_kind, step, layer, kind, role, call, stat, level, value``
        (``level`` is the percentile level, NaN for other statistics).
        """
        import pandas as pd

        frames = []
        steps = self.steps
        for st in self.layout.stats:
            if st.group == schema.MODULE:
                continue
            data = _missing_as_nan(self._f[f"{st.group}/{st.name}"][: self._n])
            if st.group == schema.GRAD:
                entries = sorted((e for e in self.layout.layers if e.grad_index is not None),
                                 key=lambda e: e.grad_index or 0)
                for e in entries:
                    frames.append(
                        self._frame(steps, e.name, e.kind, "params", 0, st.name, np.nan, data[:, e.grad_index]))
                continue
            levels = st.attrs.get("levels")
            for j, r in enumerate(st.rows):
                site = self.layout.sites[r]
                lo, hi = st.offsets[j], st.offsets[j + 1]
                if st.width == len(st.rows):
                    frames.append(
                        self._frame(steps, site.layer, site.kind, site.role, site.call, st.name, np.nan, data[:, lo]))
                elif levels is not None and hi - lo == len(levels):
                    for k, level in enumerate(levels):
                        frames.append(
                            self._frame(steps, site.layer, site.kind, site.role, site.call, st.name, level,
                                        data[:, lo + k])
                        )
        if not frames:
            return pd.DataFrame(columns=["run", "experiment", "norm_kind", "step", "layer", "kind", "role", "call",
                                         "stat", "level", "value"])
        frame = pd.concat(frames, ignore_index=True)
        frame.insert(0, "norm_kind", self.norm_kind)
        frame.insert(0, "experiment", self.experiment)
        frame.insert(0, "run", self.label)
        return frame

    @staticmethod
    def _frame(steps: np.ndarray, layer: str, kind: str | None, role: str, call: int, stat: str, level: float,
               values: np.ndarray) -> Any:
        import pandas as pd

        return pd.DataFrame({"step": steps, "layer": layer, "kind": kind, "role": role, "call": call, "stat": stat,
                             "level": level, "value": values})

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        self._close_series()
        self._f.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, label={self.label!r}, norm_kind={self.norm_kind!r}, steps={len(self.steps)})"
