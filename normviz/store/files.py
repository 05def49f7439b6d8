"""Opening a run file for reading: plainly, or as a SWMR reader of one still being written
or whose writer was killed; a file that is not a run, truncated, damaged or held open for
writing by another program gets one line saying which."""

from __future__ import annotations

from pathlib import Path

import h5py

from normviz.errors import RunFileError

_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _superblock_problem(path: Path) -> str | None:
    """Check the superblock by hand before a SWMR open: on a truncated file HDF5's SWMR
    reader retries its metadata reads instead of failing."""
    with path.open("rb") as fh:
        head = fh.read(48)
    if not head.startswith(_SIGNATURE):
        return "not an HDF5 file (not a normviz run)"
    version = head[8]
    if version < 2:
        return None
    size_offsets = head[9]
    if size_offsets != 8 or len(head) < 12 + 4 * 8:
        return "damaged HDF5 superblock"
    stored_eof = int.from_bytes(head[12 + 2 * 8 : 12 + 3 * 8], "little")
    actual = path.stat().st_size
    if actual < stored_eof:
        return f"truncated file ({actual} of {stored_eof} bytes)"
    return None


def open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise RunFileError(f"{path}: no such file")
    if path.is_dir():
        raise RunFileError(f"{path}: is a directory, not a run file")
    if path.stat().st_size == 0:
        raise RunFileError(f"{path}: empty file, not a normviz run")
    # A cleanly closed file opens plainly. One still being written, or whose writer was
    # killed, has its consistency flags set: only a SWMR reader opens it.
    try:
        return h5py.File(path, "r", locking=False)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    problem = _superblock_problem(path)
    if problem is not None:
        raise RunFileError(f"{path}: {problem}")
    try:
        return h5py.File(path, "r", locking=False, swmr=True, libver="latest")
    except (OSError, ValueError) as exc:
        second = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "already open for write" in first:
        # Not damage: another handle holds the file open for writing outside SWMR mode (h5py's
        # "a"/"r+" in a notebook, say), and HDF5 refuses every reader until it is closed.
        raise RunFileError(
            f"{path}: held open for writing by another program or h5py handle (not in SWMR mode), so HDF5 "
            "refuses to read it; close that handle (f.close()) and try again, or, if no program has it open "
            f"any more (it was killed), clear the flag with `h5clear -s {path}` (HDF5's tools)"
        )
    raise RunFileError(f"{path}: damaged HDF5 file that cannot be opened ({first}; {second})")
