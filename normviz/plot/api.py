"""Draw runs with renderer plugins: :func:`plot` for one figure, :func:`render_to_files` for many.

A renderer (:class:`normviz.datatypes.Renderer`) is looked up by name among the
registered plugins; its ``draw(runs, fig, **options)`` fills a Figure made here,
sized by the style. Nothing here uses pyplot: figures are never shown by
``plt.show()`` and are freed when dropped; in a notebook, the Figure returned
by :func:`plot` displays itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from normviz.errors import MissingDataError, UsageError
from normviz.plot.looks import sort_runs
from normviz.plot.save import parse_formats, save_all
from normviz.plot.selection import as_runs, parse_steps
from normviz.plot.style import STYLES, new_figure, style_context
from normviz.plot.ticks import declutter

__all__ = ["RenderReport", "check_selection", "drew_data", "figure_name", "group_runs", "parse_steps", "plot",
           "render_to_files"]

#: Options :func:`render_to_files` passes to a renderer that declares them in ``Renderer.options``.
COMMON_OPTIONS: tuple[str, ...] = ("layers", "steps")


def _host(host: Any) -> Any:
    if host is None:
        from normviz.plugins import get_plugin_host

        host = get_plugin_host()
    return host


def _lookup(renderers: dict[str, Any], name: str) -> Any:
    try:
        return renderers[name]
    except KeyError:
        known = ", ".join(sorted(renderers)) or "none"
        raise UsageError(f"unknown renderer {name!r} (--renderer); registered renderers: {known}") from None


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise UsageError(f"--style: unknown style {style!r}; valid styles are: {', '.join(STYLES)}")
    return style


def _draw(renderer: Any, runs: list[Any], style: str, options: dict[str, Any]) -> Figure:
    fig = new_figure(style)
    result = renderer.draw(runs, fig, **options)
    if not isinstance(result, Figure):
        raise TypeError(f"renderer {renderer.name!r} returned {type(result).__name__}, not a Figure")
    declutter(result)
    return result


def plot(
    runs: Any,
    renderer: str,
    *,
    style: str = "paper",
    host: Any = None,
    **options: Any,
) -> Figure:
    """Draw ``runs`` with the renderer named ``renderer`` into a new Figure.

    Parameters
    ----------
    runs
        A :class:`~normviz.store.reader.Run`, a path to a run file, or a list of
        them (compared in one figure; paths are opened).
    renderer
        A registered renderer name, e.g. ``"gradient-flow"``
        (``normviz plugins`` lists them).
    style
        One of :data:`normviz.plot.style.STYLES`; sets the figure size and fonts.
    host
        A :class:`~normviz.plugins.PluginHost`; default: built-ins and installed plugins.
    **options
        Passed to the renderer's ``draw`` (e.g. ``layers="conv*"``, ``steps="0:500"``).

    Returns
    -------
    matplotlib.figure.Figure
        Not registered with pyplot. Save it inside the same style, e.g. with
        :func:`normviz.plot.save.save_all` under
        :func:`normviz.plot.style.style_context`.

    Raises
    ------
    UsageError
        Unknown renderer or style.
    MissingDataError
        The runs lack what the renderer needs (the message names it).
    """
    _check_style(style)
    host = _host(host)
    found = _lookup(host.renderers(), renderer)
    run_list = as_runs(runs)
    with style_context(style):
        return _draw(found, run_list, style, dict(options))


@dataclass
class RenderReport:
    """What :func:`render_to_files` did.

    Attributes
    ----------
    written
        Files written, in order.
    failures
        Renderer name → one-line error, for renderers that raised (the message
        names the renderer, its provider and the experiment).
    skipped
        Renderer name → one-line reason, for renderers that had no data to draw
        for some experiment (they raised :class:`~normviz.errors.MissingDataError`).
    """

    written: list[Path] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def figure_name(text: str) -> str:
    """``text`` made safe as a file-name part: no path separators, no traversal.

    Runs of characters other than letters, digits and ``._+=-`` become ``_``,
    as does ``..``; leading and trailing dots and underscores are removed; an
    empty result becomes ``"run"``.
    """
    name = re.sub(r"\.{2,}", "_", str(text))  # no "..", wherever it is
    name = _UNSAFE.sub("_", name)
    name = re.sub(r"_{2,}", "_", name).strip("_.")
    return name[:120] or "run"


def group_runs(runs: Sequence[Any]) -> dict[str, list[Any]]:
    """Runs grouped by experiment, in display order, keyed by a safe file-name part.

    Runs without an experiment are each their own group, named by label; runs that
    share a label (the same script recorded several times) are named by their file
    instead (its name, then its folder and name), so each figure's name says which
    file it shows. Names that still clash after sanitising get ``-2``, ``-3``, …
    """
    raw: dict[tuple[str, str], list[Any]] = {}
    for run in runs:
        key = ("e", run.experiment) if run.experiment else ("l", f"{run.label}\0{run.path}")
        raw.setdefault(key, []).append(run)
    labels = [members[0].label for (what, _), members in raw.items() if what == "l"]
    named: list[tuple[str, list[Any]]] = []
    for (what, value), members in raw.items():
        if what == "e":
            base = value
        elif labels.count(members[0].label) == 1:
            base = members[0].label
        else:
            base = _file_key(members[0], [m[0] for (w, _), m in raw.items() if w == "l"])
        named.append((figure_name(base), sort_runs(members)))
    named.sort(key=lambda item: item[0])
    out: dict[str, list[Any]] = {}
    for name, members in named:
        unique, i = name, 2
        while unique in out:
            unique, i = f"{name}-{i}", i + 1
        out[unique] = members
    return out


def _file_key(run: Any, others: Sequence[Any]) -> str:
    """A run's file name without ``.h5``, with its folder's name when another run's file has the same name."""
    path = Path(str(run.path))
    stems = [Path(str(o.path)).stem for o in others]
    return path.stem if stems.count(path.stem) == 1 else f"{path.parent.name}-{path.stem}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else '(no message)'}"


def render_to_files(
    runs: Sequence[Any],
    out_dir: str | Path,
    *,
    renderers: Sequence[str] | None = None,
    formats: str | Sequence[str] = ("png", "pdf"),
    style: str = "paper",
    layers: str | None = None,
    steps: str | slice | None = None,
    host: Any = None,
    progress: Callable[[int], Any] | None = None,
    on_total: Callable[[int], Any] | None = None,
) -> RenderReport:
    """Draw every renderer for every experiment group and write the figures.

    Parameters
    ----------
    runs
        Runs (or paths). The rank files of a multi-rank run are merged into one
        run first (:func:`normviz.merge.merge_ranks`). They are grouped by
        experiment (:func:`group_runs`); each group gives one figure per
        renderer, its runs compared in it.
    out_dir
        Folder for the files (created). Each is ``<experiment>-<renderer>.<fmt>``,
        written atomically.
    renderers
        Names to draw; None: every registered renderer, sorted by name.
    formats
        E.g. ``("png", "pdf")`` or ``"png,pdf"``.
    style
        A style name (:data:`normviz.plot.style.STYLES`).
    layers, steps
        A layer-name glob and a training-step range (``"START:STOP"`` or a slice),
        passed to renderers whose ``Renderer.options`` list them.
    host
        A :class:`~normviz.plugins.PluginHost`; default: built-ins and installed plugins.
    progress
        Called as ``progress(1)`` after each figure, drawn or not (e.g. a tqdm
        bar's ``update``).
    on_total
        Called once, after the checks and before the first figure, with the number
        of figures to come: experiment groups (:func:`group_runs` of the merged runs)
        times renderers (e.g. a tqdm bar's ``reset``, to set its total).

    Returns
    -------
    RenderReport

    A figure that shows no data (:func:`drew_data`) is not written: its renderer is
    reported as skipped, like one that raised :class:`~normviz.errors.MissingDataError`.

    Raises
    ------
    UsageError
        Before anything is drawn: unknown renderer, style or format, bad ``steps``,
        a ``layers`` glob or ``steps`` range that selects nothing in any run
        (:func:`check_selection`).
    """
    _check_style(style)
    try:
        fmts = parse_formats(formats)
    except ValueError as exc:
        raise UsageError(f"--format: {exc}") from None
    step_slice = parse_steps(steps)
    host = _host(host)
    registry = host.renderers()
    names = sorted(registry) if renderers is None else list(dict.fromkeys(renderers))
    chosen = [_lookup(registry, n) for n in names]
    from normviz.merge import merge_ranks

    # The rank files of a torchrun run are drawn as one run (normviz.merge).
    merged = merge_ranks(as_runs(list(runs)))
    check_selection(merged, layers, step_slice)
    groups = group_runs(merged)
    if on_total is not None:
        on_total(len(groups) * len(chosen))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = RenderReport()
    skips: dict[str, dict[str, list[str]]] = {}  # renderer -> reason -> groups
    for group, members in groups.items():
        for renderer in chosen:
            stem = f"{group}-{figure_name(renderer.name)}"
            options: dict[str, Any] = {}
            declared = set(getattr(renderer, "options", ()) or ())
            if "layers" in declared and layers is not None:
                options["layers"] = layers
            if "steps" in declared and step_slice is not None:
                options["steps"] = step_slice
            try:
                with style_context(style):
                    fig = _draw(renderer, members, style, options)
                    if not drew_data(fig):
                        raise MissingDataError(f"{renderer.name}: drew no data (every panel is empty)")
                    report.written.extend(save_all(fig, out / stem, fmts))
                del fig
            except MissingDataError as exc:
                skips.setdefault(renderer.name, {}).setdefault(_reason(exc, renderer.name), []).append(group)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; the rest go on
                owner = host.owner("renderer", renderer.name) if hasattr(host, "owner") else "?"
                _note(
                    report.failures,
                    renderer.name,
                    f"renderer {renderer.name!r} ({owner}) failed on {group!r}: {_one_line(exc)}",
                )
            if progress is not None:
                progress(1)
    for name, reasons in skips.items():
        # One reason for several experiments is said once.
        report.skipped[name] = "; ".join(f"{', '.join(groups)}: {reason}" for reason, groups in reasons.items())
    return report


def _reason(exc: MissingDataError, renderer: str) -> str:
    """A skip's reason: the message's first line, without a leading "<renderer>: " (said already)."""
    text = (str(exc).strip().splitlines() or ["(no reason given)"])[0]
    return text[len(renderer) + 2:] if text.startswith(f"{renderer}: ") else text


def check_selection(runs: Sequence[Any], layers: str | None, steps: slice | None) -> None:
    """Refuse a ``layers`` glob or a ``steps`` range that selects nothing in any of ``runs``.

    Raises
    ------
    UsageError
        Naming the option, what it matched, and what the runs hold.
    """
    from normviz import analysis

    if layers is not None:
        names = list(dict.fromkeys(layer.name for run in runs for layer in run.layers))
        if not analysis.select_names(names, layers):
            shown = ", ".join(n or "(root)" for n in names[:6]) + (", ..." if len(names) > 6 else "")
            raise UsageError(f"--layers {layers!r} matches no layer of the runs drawn; their layers: {shown}")
    if steps is not None:
        start, stop = steps.start or 0, steps.stop
        held = [np.concatenate([np.asarray(run.steps), np.asarray(run.scalar_steps)]) for run in runs]
        if not any(((h >= start) & (True if stop is None else h < stop)).any() for h in held):
            spans = sorted({f"{int(h.min())}..{int(h.max())}" for h in held if h.size})
            where = f"they hold training steps {', '.join(spans)}" if spans else "they hold no step"
            raise UsageError(f"--steps {start}:{'' if stop is None else stop} selects no step of the runs drawn; "
                             + where)


def drew_data(fig: Figure) -> bool:
    """Whether any panel of ``fig`` shows data: a line with a finite point, a mesh, a filled
    area, markers, bars or an image. Reference lines (``axhline``) and texts do not count:
    a figure of empty axes is not worth a file."""
    from matplotlib.collections import Collection, QuadMesh
    from matplotlib.patches import Rectangle

    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid() == "nonfinite" or line.get_transform() != ax.transData:
                continue
            y = np.asarray(line.get_ydata(), dtype=np.float64)
            if y.size and np.isfinite(y).any():
                return True
        for coll in ax.collections:
            if isinstance(coll, QuadMesh):
                values = np.ma.masked_invalid(np.ma.asarray(coll.get_array(), dtype=np.float64))
                if values.count():
                    return True
            elif isinstance(coll, Collection) and (len(coll.get_paths()) or np.asarray(coll.get_offsets()).size):
                return True
        if ax.images or any(isinstance(p, Rectangle) and p.get_height() for p in ax.patches):
            return True
    return False


def _note(where: dict[str, str], key: str, message: str) -> None:
    where[key] = f"{where[key]}; {message}" if key in where else message
