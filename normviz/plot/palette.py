"""Colours, line styles and markers for norm kinds and run labels.

Every figure normviz draws takes its colours from here, so a norm kind has one
colour throughout a paper. The palette is Okabe & Ito's (2008) eight colours,
chosen to stay distinguishable under the common colour-vision deficiencies.
The hex values are written out rather than taken from matplotlib's
``okabe_ito`` colormap, which only exists from matplotlib 3.11 on.

Colour alone does not survive a grayscale printout, so each kind also has its
own line style and marker. Kinds added by plugins (e.g. ``"dyt"``) get a
colour, line style and marker picked by a stable hash of their name: the same
kind looks the same in every figure, every run and every process.

This module imports nothing from matplotlib, so it is cheap to import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeAlias

from normviz.default_plugins.norm_kinds import BUILTIN_KINDS

if TYPE_CHECKING:
    from normviz.datatypes import NormKind

__all__ = [
    "CYCLE",
    "FALLBACK_COLORS",
    "KIND_COLORS",
    "KIND_LINESTYLES",
    "KIND_MARKERS",
    "KIND_ORDER",
    "LABEL_COLORS",
    "OKABE_ITO",
    "LineStyle",
    "kind_color",
    "kind_linestyle",
    "kind_marker",
    "kind_sort_key",
    "label_colors",
    "registered",
    "sort_kinds",
]

#: A matplotlib line style: a named style or an ``(offset, (on, off, ...))``
#: dash pattern.
LineStyle: TypeAlias = str | tuple[float, tuple[float, ...]]

#: Okabe & Ito's colour-blind-safe palette, by name.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: The built-in norm kinds, in the order figures list them; ``none`` (the
#: baseline without normalization) comes last. Their descriptors
#: (:data:`normviz.default_plugins.norm_kinds.BUILTIN_KINDS`) are the one place
#: their colours, line styles and markers are written down; the tables here are
#: views of them.
KIND_ORDER: tuple[str, ...] = tuple(k.name for k in BUILTIN_KINDS)

#: One colour per built-in kind.
KIND_COLORS: dict[str, str] = {k.name: str(k.color) for k in BUILTIN_KINDS}

#: matplotlib's default colour cycle in normviz styles: the kind colours in
#: kind order, then the rest of the palette. The ``.mplstyle`` files repeat
#: these values (a style file cannot import Python); a test keeps them equal.
CYCLE: tuple[str, ...] = (
    OKABE_ITO["blue"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["bluish_green"],
    OKABE_ITO["reddish_purple"],
    OKABE_ITO["orange"],
    OKABE_ITO["sky_blue"],
    OKABE_ITO["yellow"],
    OKABE_ITO["black"],
)

#: Colours for kinds that are not built in. These are the palette colours no
#: built-in kind uses, except yellow, which is unreadable as a thin line on
#: white; a neutral grey takes its place. Unknown kinds also get their own
#: line style and marker, so two of them sharing a colour stay apart.
FALLBACK_COLORS: tuple[str, ...] = (OKABE_ITO["sky_blue"], "#999999")

#: Colours for runs told apart by label (runs sharing one kind): the palette
#: in cycle order without yellow, for the same reason as above.
LABEL_COLORS: tuple[str, ...] = tuple(c for c in CYCLE if c != OKABE_ITO["yellow"])

#: One line style per built-in kind, so curves stay apart in grayscale.
KIND_LINESTYLES: dict[str, LineStyle] = {k.name: k.linestyle for k in BUILTIN_KINDS}

_FALLBACK_LINESTYLES: tuple[LineStyle, ...] = (
    (0, (1, 1)),  # dense dots
    (0, (5, 1)),  # dense dashes
    (0, (3, 5, 1, 5)),  # loose dash-dot
    (0, (3, 1, 1, 1)),  # dense dash-dot
    (0, (5, 5)),  # loose dashes
    (0, (1, 4)),  # loose dots
)

#: One marker per built-in kind.
KIND_MARKERS: dict[str, str] = {k.name: str(k.marker) for k in BUILTIN_KINDS}

_FALLBACK_MARKERS: tuple[str, ...] = ("P", "X", "*", "h", "<", ">")

_BUILTIN: dict[str, NormKind] = {k.name: k for k in BUILTIN_KINDS}


def _normalize(kind: str | None) -> str:
    # A layer that is not a norm has kind None in the reader; draw it like the
    # no-norm baseline. Kind names are matched case-insensitively.
    if kind is None:
        return "none"
    return str(kind).strip().lower()


def _stable_hash(name: str) -> int:
    # Python's hash() is salted per process; a digest is the same everywhere.
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def registered(kind: str | None) -> NormKind | None:
    """The descriptor a plugin (or normviz) registered for ``kind``, if any.

    The built-in kinds are answered without building a plugin host; another name is
    looked up among the kinds the installed plugins register
    (:func:`normviz.plugins.registered_norm_kinds`).
    """
    name = _normalize(kind)
    if name in _BUILTIN:
        return _BUILTIN[name]
    from normviz.plugins import registered_norm_kinds

    return registered_norm_kinds().get(name)


def kind_color(kind: str | None) -> str:
    """Colour of a norm kind, as ``"#RRGGBB"``.

    The colour its descriptor gives (:data:`KIND_COLORS` for the built-in kinds); any
    other name is hashed into :data:`FALLBACK_COLORS`, so it always gets the same
    colour. ``None`` is treated as ``"none"``.
    """
    name = _normalize(kind)
    found = registered(name)
    if found is not None and found.color:
        return found.color
    return FALLBACK_COLORS[_stable_hash(name) % len(FALLBACK_COLORS)]


def kind_linestyle(kind: str | None) -> LineStyle:
    """Line style of a norm kind, usable as ``Line2D(linestyle=...)``.

    The one its descriptor gives (:data:`KIND_LINESTYLES` for the built-in
    kinds); others get a stable hashed
    choice among dash patterns no built-in kind uses.
    """
    name = _normalize(kind)
    found = registered(name)
    if found is not None and found.linestyle is not None:
        return found.linestyle
    # Different bits of the hash than kind_color, so two unknown kinds that
    # share a colour are unlikely to share a line style too.
    return _FALLBACK_LINESTYLES[(_stable_hash(name) >> 16) % len(_FALLBACK_LINESTYLES)]


def kind_marker(kind: str | None) -> str:
    """Marker of a norm kind, usable as ``Line2D(marker=...)``.

    The one its descriptor gives (:data:`KIND_MARKERS` for the built-in kinds);
    others get a stable hashed choice
    among markers no built-in kind uses.
    """
    name = _normalize(kind)
    found = registered(name)
    if found is not None and found.marker:
        return found.marker
    return _FALLBACK_MARKERS[(_stable_hash(name) >> 32) % len(_FALLBACK_MARKERS)]


def kind_sort_key(kind: str | None) -> tuple[int, str]:
    """Sort key putting kinds in :data:`KIND_ORDER`.

    Built-in kinds come first in their fixed order, then unknown kinds
    alphabetically, and the ``none`` baseline last.
    """
    name = _normalize(kind)
    if name == "none":
        return (len(KIND_ORDER), "")
    if name in KIND_ORDER:
        return (KIND_ORDER.index(name), "")
    return (len(KIND_ORDER) - 1, name)


def sort_kinds(kinds: Iterable[str]) -> list[str]:
    """Return the distinct kinds in display order (see :func:`kind_sort_key`).

    Parameters
    ----------
    kinds
        Kind names, possibly repeated (e.g. one per run).

    Returns
    -------
    list of str
        Each kind once, as first given, ordered batch, layer, instance, group,
        rms, then unknown kinds alphabetically, then ``none``.
    """
    seen: dict[str, str] = {}
    for kind in kinds:
        seen.setdefault(_normalize(kind), kind)
    return [seen[name] for name in sorted(seen, key=kind_sort_key)]


def label_colors(labels: Iterable[str], *, sort: bool = True) -> dict[str, str]:
    """Assign a colour to each run label, for runs that share one norm kind.

    Parameters
    ----------
    labels
        Run labels, possibly repeated.
    sort
        If true (default), colours follow the sorted labels, so the same set
        of runs gets the same colours whatever order they were given in. If
        false, they follow the order of first appearance.

    Returns
    -------
    dict
        Label to ``"#RRGGBB"``. Past :data:`LABEL_COLORS` the colours repeat;
        tell such runs apart by line style as well.
    """
    distinct = list(dict.fromkeys(labels))
    if sort:
        distinct.sort()
    return {
        label: LABEL_COLORS[i % len(LABEL_COLORS)] for i, label in enumerate(distinct)
    }
