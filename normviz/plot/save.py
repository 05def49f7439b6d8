"""Save figures reproducibly and atomically.

Saving the same figure twice gives the same bytes: the metadata matplotlib
would fill with the date or its own version is pinned per format, and SVG
element ids use a fixed hash salt instead of a random one. Fonts are
embedded as TrueType (Type 42) in PDF, which publishers accept, rather than
matplotlib's default Type 3.

Each file is written under a temporary name in its destination folder and
renamed into place, so a reader (or a crash) never sees half a figure and an
older figure of the same name stays intact until the new one is complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

__all__ = ["FORMATS", "parse_formats", "save_all", "save_figure"]

#: Output formats normviz writes, in the order ``normviz plot`` lists them.
FORMATS: tuple[str, ...] = ("png", "pdf", "svg", "pgf")

# Metadata per format. None removes a key matplotlib would otherwise fill
# with the current date or its own version string.
_METADATA: dict[str, dict[str, Any] | None] = {
    "png": {"Software": None},
    "pdf": {"Creator": "normviz", "Producer": "normviz", "CreationDate": None},
    "svg": {"Creator": "normviz", "Date": None},
    # The pgf backend writes no date and accepts no metadata argument.
    "pgf": None,
}

# Settings read at save time that decide whether output is publishable and
# reproducible; forced whatever style (or none) is active.
_SAVE_RC: dict[Any, Any] = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.hashsalt": "normviz",
}


def _check_format(fmt: str) -> str:
    name = str(fmt).strip().lower().lstrip(".")
    if name not in FORMATS:
        raise ValueError(
            f"unknown figure format {str(fmt).strip()!r}; "
            f"valid formats are: {', '.join(FORMATS)}"
        )
    return name


def parse_formats(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Parse a format list such as ``"png,pdf"`` (the ``--format`` option).

    Parameters
    ----------
    spec
        Comma-separated names, or an iterable of names. Case, spaces and a
        leading dot are ignored; repeats are dropped, order is kept.

    Returns
    -------
    tuple of str
        Formats from :data:`FORMATS`.

    Raises
    ------
    ValueError
        Naming the first unknown format, or if no format is given.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    formats: dict[str, None] = {}
    for item in items:
        if str(item).strip():
            formats[_check_format(item)] = None
    if not formats:
        raise ValueError(
            f"no figure format given; valid formats are: {', '.join(FORMATS)}"
        )
    return tuple(formats)


def _savefig_kwargs(fmt: str, dpi: float | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"format": fmt}
    metadata = _METADATA[fmt]
    if metadata is not None:
        kwargs["metadata"] = dict(metadata)
    if dpi is not None:
        kwargs["dpi"] = dpi
    return kwargs


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not possible on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tex_missing_error() -> RuntimeError | None:
    tex = matplotlib.rcParams["pgf.texsystem"]
    if shutil.which(tex) is not None:
        return None
    return RuntimeError(
        f"pgf output needs a LaTeX installation: {tex!r} (rcParams['pgf.texsystem']) "
        f"was not found on PATH; install TeX (e.g. TeX Live) or choose another format"
    )


_SVG_CLIP_ID = re.compile(rb'<clipPath id="(p[0-9a-f]{10})">')


def _canonical_svg_ids(data: bytes) -> bytes:
    """Rename SVG clip-path ids so that they do not depend on float noise.

    matplotlib names a clip rectangle by hashing the repr of its float
    coordinates. Those vary in the last bits from one draw of the same figure
    to the next (the layout is recomputed at each save), so a fixed
    ``svg.hashsalt`` alone does not give identical files when a figure is
    saved twice, or after it was saved as PNG. The clip rectangles
    themselves are written rounded and do not vary, so ids derived from the
    rest of the document are stable.
    """
    old_ids = list(dict.fromkeys(_SVG_CLIP_ID.findall(data)))
    if not old_ids:
        return data
    # NUL cannot occur in XML, so the placeholders cannot clash with content.
    for i, old in enumerate(old_ids):
        data = data.replace(b"#" + old + b")", b"#\0%d\0)" % i)
        data = data.replace(b'id="' + old + b'"', b'id="\0%d\0"' % i)
    # A prefix from the document keeps ids of different figures apart when
    # several SVGs are inlined in one HTML page.
    prefix = hashlib.sha256(data).hexdigest()[:6].encode()
    for i in range(len(old_ids)):
        data = data.replace(b"\0%d\0" % i, b"p" + prefix + b"%04x" % i)
    return data


def _save_single(fig: Figure, path: Path, kwargs: dict[str, Any]) -> None:
    # A random suffix and exclusive creation avoid clashing with a concurrent
    # save of the same figure; the leading dot hides the file from listings.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # open() honours the umask, unlike mkstemp's 0600, so the final file
        # gets the same permissions as any other file the user writes.
        with open(tmp, "xb") as fh:
            if kwargs["format"] == "svg":
                buffer = io.BytesIO()
                fig.savefig(buffer, **kwargs)
                fh.write(_canonical_svg_ids(buffer.getvalue()))
            else:
                fig.savefig(fh, **kwargs)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_pgf(fig: Figure, path: Path, kwargs: dict[str, Any]) -> None:
    # The pgf backend writes raster images (e.g. heatmaps) as separate
    # "<stem>-img<N>.png" files beside the .pgf and references them by that
    # name, so the .pgf must be written under its final name: stage it in a
    # private folder next to the destination, then move the images and the
    # .pgf last, so a .pgf in place never points at a missing image.
    stage = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    )
    try:
        staged = stage / path.name
        try:
            fig.savefig(str(staged), **kwargs)
        except Exception as exc:
            error = _tex_missing_error()
            if error is not None:
                raise error from exc
            raise
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        for companion in sorted(stage.iterdir()):
            if companion != staged:
                os.replace(companion, path.parent / companion.name)
        os.replace(staged, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_figure(
    fig: Figure, path: str | os.PathLike[str], fmt: str, *, dpi: float | None = None
) -> Path:
    """Write ``fig`` to ``path`` in format ``fmt``, reproducibly and atomically.

    Parameters
    ----------
    fig
        The figure to save.
    path
        Destination file; its folder is created if missing. The name is used
        as given (no suffix is added).
    fmt
        One of :data:`FORMATS`. ``pgf`` also writes ``<stem>-img<N>.png``
        beside ``path`` for raster content.
    dpi
        Resolution for PNG and for raster parts of vector formats. ``None``
        uses ``rcParams["savefig.dpi"]``, i.e. the style's value when called
        inside :func:`normviz.plot.style.style_context`.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        If ``fmt`` is unknown.
    RuntimeError
        If ``fmt`` is ``pgf`` and no LaTeX installation is found.

    Notes
    -----
    On any error the destination is left as it was (absent, or its old
    content) and no temporary file remains.
    """
    fmt = _check_format(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = _savefig_kwargs(fmt, dpi)
    with matplotlib.rc_context(_SAVE_RC):
        if fmt == "pgf":
            _save_pgf(fig, path, kwargs)
        else:
            _save_single(fig, path, kwargs)
    _fsync_dir(path.parent)
    return path


def save_all(
    fig: Figure,
    stem: str | os.PathLike[str],
    formats: str | Iterable[str],
    *,
    dpi: float | None = None,
) -> list[Path]:
    """Save ``fig`` once per format, as ``<stem>.<format>``.

    Parameters
    ----------
    fig
        The figure to save.
    stem
        Destination without suffix, e.g. ``Path("figs/gradient-flow")``; dots
        in the name are kept (``run.v2`` gives ``run.v2.pdf``).
    formats
        As accepted by :func:`parse_formats`, e.g. ``"png,pdf"``.
    dpi
        See :func:`save_figure`.

    Returns
    -------
    list of Path
        The files written, in the order of ``formats``.

    Raises
    ------
    ValueError, RuntimeError
        As :func:`save_figure`. Formats are saved in order; files written
        before an error are complete.
    """
    stem = Path(stem)
    return [
        save_figure(fig, stem.with_name(f"{stem.name}.{fmt}"), fmt, dpi=dpi)
        for fmt in parse_formats(formats)
    ]
