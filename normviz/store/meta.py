"""A run file's root: its attributes as written, and the metadata every reader of runs shares.

Pure Python (no h5py): :class:`RunMetadata` is what a :class:`~normviz.store.reader.Run`
and a merged multi-rank run (:mod:`normviz.merge`) have in common.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from normviz.store import schema


def root_attrs(meta: Mapping[str, Any], *, normviz_version: str) -> dict[str, Any]:
    """The root attributes of a new run file: the schema's name and version, the writing
    release, the creation time and ``meta`` (label, experiment, norm kind, rank, options,
    versions, the user's own; stored as JSON)."""
    return {
        "schema": schema.SCHEMA_NAME,
        "schema_version": schema.SCHEMA_VERSION,
        "normviz_version": normviz_version,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "meta": dict(meta),
    }


class RunMetadata:
    """Label, experiment and norm kind from a run's ``meta`` (shared by merged runs)."""

    path: Path
    meta: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.meta.get("label") or self.path.stem)

    @property
    def experiment(self) -> str | None:
        return self.meta.get("experiment")

    @property
    def norm_kind(self) -> str:
        return str(self.meta.get("norm_kind") or "none")
