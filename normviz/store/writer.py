"""The background writer: one thread owns the HDF5 file; the training thread only queues.

Crash safety: the file is built under a temporary name, switched to SWMR mode once
every dataset exists, flushed, and only then linked to its final name (a link
never replaces an existing file). From then on rows are appended in blocks and
published by ``flush()`` every ``flush_every`` recorded steps or ``flush_secs``
seconds, whichever comes first; a process killed at any moment leaves a file
that opens with every block published before the kill. ``/steps/step`` is
extended last in each flush: it is the commit marker readers trust.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from normviz.errors import RecordingError  # noqa: F401 - importable from here as before
from normviz.store import schema
from normviz.store.datasets import DTYPES, MISSING_INT, Rows, create_rows
from normviz.store.layout import Layout

ScalarRows = list[tuple[int, dict[str, float]]]


@dataclass
class ScalarBatch:
    """Scalars of several training steps whose tensor values are still being copied.

    ``rows`` hold each step's Python values; ``where[j]`` names the (row, scalar) that
    ``values[j]`` fills in, once the copy guarded by the queued item's event is done:
    the training thread never waits for a device to read a loss.
    """

    rows: ScalarRows
    where: list[tuple[int, str]] = field(default_factory=list)
    values: Any = None  # a host float64 tensor or array, len(where) long

    def resolve(self) -> ScalarRows:
        """The rows with every value filled in (call after the copy's event)."""
        if self.where:
            for (i, name), value in zip(self.where, _as_numpy(self.values).reshape(-1).tolist()):
                self.rows[i][1][name] = value
            self.where = []
        return self.rows


def _scalar_rows(scalars: ScalarBatch | ScalarRows | None) -> ScalarRows:
    if isinstance(scalars, ScalarBatch):
        return scalars.resolve()
    return scalars or []


class RunWriter:
    """Owns one run file on a background thread.

    Parameters
    ----------
    path:
        The final file name; it must not exist (checked again, atomically, when the
        file appears).
    attrs:
        Root attributes (``meta`` is JSON-encoded).
    flush_every, flush_secs:
        Publish buffered rows after this many recorded steps or seconds. A crash
        loses at most the rows since the last publication.
    on_error:
        ``"warn"``: a write failure (disk full, I/O error) warns once, stops
        recording and keeps what was published; training goes on. ``"raise"``:
        the next :meth:`check` raises :class:`RecordingError` in the training thread.
    finish:
        Called on the writer's thread at each flush as ``finish(rows)`` with the queued
        rows as ``(f4, f8, finish_args)`` NumPy tuples (the row as its producer packed
        it); returns every dataset's block for those rows, ``{"<group>/<name>": [k,
        width] array}`` for each statistic of the layout. The recorder unpacks its rows
        and computes what needs sorting there (:mod:`normviz.record.finish`), off the
        training thread and for many rows at once; the writer knows nothing of packing.
    """

    def __init__(
        self,
        path: Path,
        attrs: Mapping[str, Any],
        *,
        flush_every: int = 10,
        flush_secs: float = 5.0,
        on_error: str = "warn",
        finish: Callable[[list[tuple[Any, Any, tuple[Any, ...]]]], Mapping[str, np.ndarray]],
    ) -> None:
        self.path = Path(path)
        self.finish = finish
        self.attrs = dict(attrs)
        self.flush_every = max(1, int(flush_every))
        self.flush_secs = float(flush_secs)
        self.on_error = on_error
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._run, name="normviz-writer", daemon=True)
        self._file: h5py.File | None = None
        self._layout: Layout | None = None
        self._rows: list[tuple[int, float, np.ndarray, np.ndarray, tuple[Any, ...]]] = []
        self._scalar_rows: list[tuple[int, dict[str, float]]] = []
        self._scalar_cols: dict[str, int] = {}
        self._scalar_overflow_warned = False
        self._last_flush = time.monotonic()
        self._last_step = -1
        self._steps_seen = 0
        self._written = 0
        self._closed = False
        self._datasets: dict[str, Rows] = {}

    # -- training-thread side -------------------------------------------------------------
    def open(self, layout: Layout, hist_edges: np.ndarray | Any) -> None:
        """Create the file (in the background) for *layout*."""
        self._thread.start()
        self._put(("open", (layout, hist_edges)))

    def write_row(
        self,
        step: int,
        wall_time: float,
        f4: Any,
        f8: Any,
        event: Any = None,
        finish_args: tuple[Any, ...] = (),
        scalars: ScalarBatch | ScalarRows | None = None,
    ) -> None:
        """Queue one recorded step (CPU tensors or arrays; *event* guards a pending copy,
        of the row and of the scalars' values; *finish_args* go to ``finish``), with the
        *scalars* of the steps up to it."""
        self._put(("row", (step, wall_time, f4, f8, event, finish_args, scalars)))

    def write_scalars(self, rows: ScalarBatch | ScalarRows, event: Any = None) -> None:
        """Queue scalars for several training steps (*event* guards the copy of their values)."""
        self._put(("scalars", (rows, event)))

    def flush(self, timeout: float | None = None) -> bool:
        """Publish everything queued so far and wait until it is on disk (True) or failed."""
        if self.error is not None or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._queue.put(("flush", done))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(0.1):
            if self.error is not None or not self._thread.is_alive():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
        return self.error is None

    def check(self) -> None:
        """Raise :class:`RecordingError` if writing failed and ``on_error="raise"``."""
        if self.error is not None and self.on_error == "raise":
            raise RecordingError(f"normviz: writing {self.path} failed: {self.error}") from self.error

    def close(self) -> None:
        """Publish everything queued, mark the file cleanly closed and wait for the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(("close", None))  # delivered even after a failure: the thread waits for it
            self._thread.join()

    def _put(self, item: tuple[str, Any]) -> None:
        if self.error is not None or not self._thread.is_alive():
            return
        self._queue.put(item)

    # -- writer-thread side ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.flush_secs if self.flush_secs > 0 else None)
            except queue.Empty:
                item = ("tick", None)
            kind, payload = item
            if self.error is None:
                try:
                    self._handle(kind, payload)
                except Exception as exc:  # noqa: BLE001 - any I/O failure stops recording, never training
                    self._fail(exc)
            if kind == "flush" and not payload.is_set():
                payload.set()
            if kind == "close":
                return

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        warnings.warn(
            f"normviz: writing {self.path} failed ({type(exc).__name__}: {exc}); recording stopped, "
            f"the steps written before are kept",
            RuntimeWarning,
            stacklevel=1,
        )
        try:
            if self._file is not None:
                self._file.close()
        except Exception:  # noqa: BLE001 - the file is already in trouble; keep what was published
            pass
        self._file = None
        # Drain so that the training thread never blocks on a full queue.
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "flush":
                payload.set()  # nobody waits forever on a flush that will not happen
            if kind == "close":
                self._queue.put(("close", None))
                break

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "open":
            self._create(*payload)
        elif kind == "row":
            step, wall, f4, f8, event, finish_args, scalars = payload
            if event is not None:
                event.synchronize()
            self._rows.append((step, wall, _as_numpy(f4), _as_numpy(f8), finish_args))
            self._add_scalars(_scalar_rows(scalars))
            self._last_step = step
        elif kind == "scalars":
            rows, event = payload
            if event is not None:
                event.synchronize()
            self._add_scalars(_scalar_rows(rows))
        if kind == "flush":
            if self._file is not None and (self._rows or self._scalar_rows):
                self._flush(clean=False)
            payload.set()
            return
        if kind == "close":
            if self._file is not None:
                self._flush(clean=True)
                self._file.close()
                self._file = None
            return
        # Flush when the rows written fill whole chunks (so, after a timed flush of a partial
        # block, the next ones realign on chunk boundaries), or when flush_secs have passed.
        due = (
            bool(self._rows) and (self._written + len(self._rows)) % self.flush_every == 0
        ) or time.monotonic() - self._last_flush >= self.flush_secs
        if self._file is not None and due and (self._rows or self._scalar_rows):
            self._flush(clean=False)

    def _add_scalars(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        self._scalar_rows.extend(rows)
        if rows:
            self._steps_seen = max(self._steps_seen, rows[-1][0] + 1)

    def _create(self, layout: Layout, hist_edges: Any) -> None:
        self._layout = layout
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        f = h5py.File(tmp, "x", libver="latest", track_order=True)
        try:
            for key, value in self.attrs.items():
                f.attrs[key] = json.dumps(value, sort_keys=True) if key == "meta" else value
            f.create_dataset(schema.LAYOUT, data=np.frombuffer(layout.to_json().encode("utf-8"), dtype=np.uint8))
            f.create_dataset(schema.STATUS, data=np.array([0, -1, 0], dtype=np.int64), track_times=False)
            create_rows(f, schema.STEP, None, np.int64)
            create_rows(f, schema.WALL_TIME, None, np.float64)
            create_rows(f, schema.SCALAR_STEP, None, np.int64)
            # Scalars arrive every training step, in blocks of any size: uncompressed chunks
            # are rewritten in place (512 bytes a step).
            create_rows(f, schema.SCALAR_VALUES, schema.SCALAR_CAPACITY, np.float64, fill=np.nan, rows=256,
                        compress=False)
            f.create_dataset(
                schema.SCALAR_NAMES, shape=(schema.SCALAR_CAPACITY,), dtype=f"S{schema.SCALAR_NAME_BYTES}"
            )
            edges = _as_numpy(hist_edges).astype(np.float32).reshape(len(layout.sites), layout.hist_bins + 1)
            f.create_dataset(schema.HIST_EDGES, data=edges, track_times=False)
            for st in layout.stats:
                ds = create_rows(f, f"{st.group}/{st.name}", st.width, DTYPES[st.dtype], rows=self.flush_every)
                for key, value in st.attrs.items():
                    ds.attrs[key] = value
            f.swmr_mode = True
            f.flush()
            self._datasets = {
                name: Rows(f[name])
                for name in (schema.STEP, schema.WALL_TIME, schema.SCALAR_STEP, schema.SCALAR_VALUES)
            } | {f"{st.group}/{st.name}": Rows(f[f"{st.group}/{st.name}"]) for st in layout.stats}
            # Appear under the final name only now, and never over an existing file.
            os.link(tmp, self.path)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        tmp.unlink()
        self._file = f

    def _flush(self, *, clean: bool) -> None:
        f, layout = self._file, self._layout
        assert f is not None and layout is not None
        if self._rows:
            blocks = self.finish([(r[2], r[3], r[4]) for r in self._rows])
            for st in layout.stats:
                block = blocks[f"{st.group}/{st.name}"]
                dtype: Any = DTYPES[st.dtype]
                if np.issubdtype(dtype, np.integer):
                    missing = int(np.iinfo(dtype).max) if np.issubdtype(dtype, np.unsignedinteger) else MISSING_INT
                    block = np.where(np.isnan(block), missing, block)  # a site that did not run this step
                self._datasets[f"{st.group}/{st.name}"].append(block)
            self._datasets[schema.WALL_TIME].append(np.array([r[1] for r in self._rows], dtype=np.float64))
        if self._scalar_rows:
            self._append_scalars(f)
        if self._rows:
            # The commit marker goes last: readers trust len(/steps/step).
            self._datasets[schema.STEP].append(np.array([r[0] for r in self._rows], dtype=np.int64))
            self._written += len(self._rows)
            self._rows.clear()
        status = np.array([1 if clean else 0, self._last_step, self._steps_seen], dtype=np.int64)
        f[schema.STATUS].id.write(h5py.h5s.ALL, h5py.h5s.ALL, status)
        f.flush()
        self._last_flush = time.monotonic()

    def _append_scalars(self, f: h5py.File) -> None:
        names_ds = f[schema.SCALAR_NAMES]
        block = np.full((len(self._scalar_rows), schema.SCALAR_CAPACITY), np.nan)
        for i, (_, values) in enumerate(self._scalar_rows):
            for name, value in values.items():
                col = self._scalar_cols.get(name)
                if col is None:
                    if len(self._scalar_cols) >= schema.SCALAR_CAPACITY:
                        if not self._scalar_overflow_warned:
                            warnings.warn(
                                f"normviz: more than {schema.SCALAR_CAPACITY} scalar names; {name!r} and later "
                                "new names are not recorded",
                                RuntimeWarning,
                                stacklevel=1,
                            )
                            self._scalar_overflow_warned = True
                        continue
                    col = len(self._scalar_cols)
                    self._scalar_cols[name] = col
                    names_ds[col] = name.encode("utf-8")[: schema.SCALAR_NAME_BYTES]
                block[i, col] = value
        self._datasets[schema.SCALAR_VALUES].append(block)
        self._datasets[schema.SCALAR_STEP].append(np.array([s for s, _ in self._scalar_rows], dtype=np.int64))
        self._scalar_rows.clear()


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.numpy()  # a CPU tensor: the recorder made the one copy already
