"""Where a run's eval series live: one run file each, beside the training run's.

An eval series (:meth:`normviz.Recorder.evaluating`) is an ordinary run file of the same
schema whose rows are eval passes, named after the training run: ``run.h5`` → ``run.eval.h5``
for the default series ``eval``, ``run.eval-<name>.h5`` for a named one. Being ordinary run
files, they are read, plotted and merged like any other; a folder of runs lists only the
training runs (:func:`is_series_file`), and :meth:`normviz.Run.eval` opens a run's series.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from normviz.errors import MissingDataError, UsageError

DEFAULT = "eval"
_NAME = re.compile(r"[A-Za-z0-9_]+")
_INFIX = re.compile(r"\.eval(-[A-Za-z0-9_]+)?$")


def check_name(series: str) -> str:
    """``series`` if it is a valid series name (letters, digits, underscores), else a UsageError."""
    if not isinstance(series, str) or not _NAME.fullmatch(series):
        raise UsageError(f"eval series name must be letters, digits or underscores, got {series!r}")
    return series


def series_path(run: Path, series: str = DEFAULT) -> Path:
    """The file of eval series ``series`` of the run file ``run``."""
    check_name(series)
    infix = ".eval" if series == DEFAULT else f".eval-{series}"
    return run.with_name(f"{run.stem}{infix}{run.suffix}")


def is_series_file(path: Path) -> bool:
    """Whether ``path`` is named as an eval series of another run file."""
    return _INFIX.search(Path(path).stem) is not None


def series_files(run: Path) -> dict[str, Path]:
    """The eval series files beside the run file ``run``: {series name: path}, sorted by name."""
    found: dict[str, Path] = {}
    if not run.parent.is_dir():
        return found
    prefix = f"{run.stem}.eval"
    for p in run.parent.glob(f"{run.stem}.eval*{run.suffix}"):
        rest = p.stem[len(prefix):]
        if rest == "":
            found[DEFAULT] = p
        elif rest.startswith("-") and _NAME.fullmatch(rest[1:]):
            found[rest[1:]] = p
    return dict(sorted(found.items()))


class EvalSeriesAccess:
    """What a run reader (:class:`normviz.Run`) gains to open its eval series: each is opened
    once, as a reader of the same class, and closed with the run."""

    path: Path

    def eval_series(self) -> list[str]:
        """Names of this run's eval series (:meth:`normviz.Recorder.evaluating`) found beside its file."""
        return list(series_files(self.path))

    def eval(self, name: str = DEFAULT) -> Any:
        """Eval series ``name`` of this run: a run whose rows are the recorded eval passes, each
        at the training step it ran in (opened once, closed with this run).

        Raises
        ------
        MissingDataError
            The run has no such series.
        """
        opened: dict[str, Any] = self.__dict__.setdefault("_opened_series", {})
        if name not in opened:
            path = series_path(self.path, name)
            if not path.exists():
                known = ", ".join(self.eval_series()) or "none"
                raise MissingDataError(f"{self.path}: no eval series {name!r} (recorded: {known})")
            opened[name] = type(self)(path)  # type: ignore[call-arg]
        return opened[name]

    def _close_series(self) -> None:
        for run in self.__dict__.pop("_opened_series", {}).values():
            run.close()
