"""The datasets of a run file: dtypes, chunking and appending rows (h5py's low-level API)."""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

DTYPES = {
    "float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32, "uint16": np.uint16,
}
CHUNK_BYTES = 256 * 1024
#: Columns per chunk of a wide dataset (see :func:`chunks`).
COLUMN_BLOCK = 256
#: Integer statistics store -1 (unsigned ones their largest value) where a site did not
#: run in a step; floats store NaN.
MISSING_INT = -1
FILTERS: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True, "fletcher32": True}


def chunks(width: int | None, itemsize: int, rows: int) -> tuple[int, ...]:
    """Chunk shape of a per-step dataset: *rows* (one flush) by the full width, or by blocks
    of :data:`COLUMN_BLOCK` columns for wide datasets.

    One flush fills whole chunks, so a compressed chunk is written once and never
    rewritten: HDF5 does not reuse the space of a rewritten compressed chunk that grew,
    and chunks rewritten at every flush made files many times larger than their data.
    Wide datasets (every site's per-channel means side by side) are cut into column
    blocks, so that reading one site's columns over a long run decompresses its block only.
    """
    if width is None:
        return (4096,)
    # At most 1 MiB a chunk: a flush of more rows fills several (flush_every=10**9 once asked
    # HDF5 for a chunk of 10**9 rows, and the write failed).
    columns = COLUMN_BLOCK if width > 2 * COLUMN_BLOCK else max(width, 1)
    rows = max(1, min(rows, (CHUNK_BYTES * 4) // max(columns * itemsize, 1)))
    return (rows, columns)


def create_rows(
        f: h5py.File, name: str, width: int | None, dtype: Any, fill: float | None = None, *, rows: int = 1,
        compress: bool = True,
    ) -> h5py.Dataset:
        shape = (0,) if width is None else (0, width)
        maxshape = (None,) if width is None else (None, width)
        kwargs = dict(FILTERS) if width and compress else {}
        return f.create_dataset(
            name,
            shape=shape,
            maxshape=maxshape,
            dtype=dtype,
            chunks=chunks(width, np.dtype(dtype).itemsize, rows),
            fillvalue=fill,
            track_times=False,
            **kwargs,
        )


class Rows:
    """A dataset growing by rows, appended to through h5py's low-level API.

    The high-level ``resize`` + slice assignment costs ~10x more Python per call, and a
    flush appends to every dataset of the run: on small models that Python time, spent
    on the writer's thread, held the GIL the training thread needs.
    """

    __slots__ = ("id", "n", "dtype", "tail")

    def __init__(self, ds: h5py.Dataset) -> None:
        self.id = ds.id
        self.n = int(ds.shape[0])
        self.dtype = ds.dtype
        self.tail = tuple(ds.shape[1:])

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        k = block.shape[0]
        if k == 0:
            return
        start = self.n
        self.id.set_extent((start + k, *self.tail))
        file_space = self.id.get_space()
        file_space.select_hyperslab((start,) + (0,) * len(self.tail), block.shape)
        self.id.write(h5py.h5s.create_simple(block.shape), file_space, block)
        self.n = start + k
