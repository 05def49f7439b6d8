"""Follow runs being recorded: redraw their figures as new steps arrive (``normviz plot --follow``).

:func:`follow_runs` rereads the runs every ``interval`` seconds and redraws them, until every
run was closed cleanly (then it draws once more) or until Ctrl-C. Run files that appear
meanwhile in the folders drawn join the drawing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from normviz.errors import NormvizError

__all__ = ["follow_runs"]

R = TypeVar("R")


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def follow_runs(
    opened: list[Any],
    draw: Callable[[], R],
    report: R,
    *,
    interval: float,
    rescan: Callable[[], Iterable[Path]],
    say: Callable[[str], Any] = _to_stderr,
) -> R:
    """Redraw every ``interval`` seconds with the rows published since, until Ctrl-C or until
    every run was closed cleanly (then one last drawing); return the last drawing's report.

    Parameters
    ----------
    opened
        The open runs drawn (:class:`~normviz.store.reader.Run`); refreshed before each
        redraw. Runs that join are appended to it (the caller closes them all).
    draw
        Draws ``opened`` and returns its report (e.g. a :func:`normviz.plot.api.render_to_files`
        call); ``report`` is the report of the drawing already made.
    interval
        Seconds between redraws.
    rescan
        Lists the run files now in the folders drawn: those not open yet (a torchrun rank
        that started late, the next run of a sweep) are opened and join the drawing; one
        that cannot be read yet is tried again at the next redraw.
    say
        Where the progress lines go (one line each; default: stderr).
    """
    from normviz.store.reader import open_run

    def join_new_files() -> None:
        known = {Path(run.path).resolve() for run in opened}
        try:
            paths = rescan()
        except NormvizError:
            return
        for path in paths:
            if path.resolve() in known:
                continue
            try:
                opened.append(open_run(path))
            except NormvizError:
                continue  # not a readable run yet (or never): tried again at the next redraw
            say(f"normviz: following {path} too")

    try:
        while True:
            done = all(run.status["clean"] for run in opened)
            steps = [int(run.status["last_step"]) for run in opened]
            say(f"normviz: drew steps up to {max(steps, default=-1)}"
                + ("; every run is closed" if done else f"; redrawing every {interval:g} s (Ctrl-C stops)"))
            if done:
                return report
            time.sleep(interval)
            for run in opened:
                run.refresh()
            join_new_files()
            report = draw()
    except KeyboardInterrupt:
        say("normviz: stopped following")
        return report
