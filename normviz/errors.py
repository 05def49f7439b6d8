"""The exceptions normviz raises on purpose.

Every user-facing error is a :class:`NormvizError`; the CLI turns one into a single
line on stderr and exit code 2. Messages name the file, option or plugin involved.
"""

from __future__ import annotations


class NormvizError(Exception):
    """Base class: a problem the user can fix (bad file, bad option, bad plugin)."""


class RunFileError(NormvizError):
    """A file is missing, not HDF5, not a normviz run, or damaged."""


class SchemaError(RunFileError):
    """A normviz run file whose schema this version cannot read."""


class MissingDataError(NormvizError):
    """A renderer or analysis needs data the run does not hold.

    What is missing, for code to branch on (the message says it for people):
    ``statistic`` (a statistic or scalar name), ``layer`` and ``role`` (the site or
    layer it was asked for). A statistic missing from the whole run has ``layer`` None.
    """

    def __init__(self, message: str, *, statistic: str | None = None, layer: str | None = None,
                 role: str | None = None) -> None:
        super().__init__(message)
        self.statistic = statistic
        self.layer = layer
        self.role = role

    def run_lacks(self, statistic: str) -> bool:
        """Whether the run recorded ``statistic`` nowhere (not merely not at the site asked for)."""
        return self.statistic == statistic and self.layer is None


class PluginError(NormvizError):
    """A plugin failed to load, registered a duplicate name, or raised."""


class UsageError(NormvizError):
    """A bad option value (unknown renderer, experiment, format, ...)."""


class RecordingError(NormvizError, RuntimeError):
    """Writing the run file failed and the recorder was asked to stop training (``on_error="raise"``)."""
