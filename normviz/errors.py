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
    """A renderer or analysis needs a statistic the run does not hold."""


class PluginError(NormvizError):
    """A plugin failed to load, registered a duplicate name, or raised."""


class UsageError(NormvizError):
    """A bad option value (unknown renderer, experiment, format, ...)."""
