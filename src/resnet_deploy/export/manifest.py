"""``manifest.json`` beside the artifacts of one export: what was made, from what, checked how."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .._io import sha256_file, write_json
from ..artifacts import MANIFEST_NAME, read_manifest
from ..errors import UsageError
from ..versions import package_versions


class Manifest:
    """A JSON document listing every artifact with its path, precision, backend, sha256 and size."""

    def __init__(self, directory: str | os.PathLike[str], data: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.data: dict[str, Any] = data if data is not None else {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "artifacts": [], "parity": {}, "timings_s": {}, "versions": package_versions()}

    @property
    def path(self) -> Path:
        return self.directory / MANIFEST_NAME

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "Manifest":
        data = read_manifest(directory)
        if data is None:
            raise UsageError(f"no {MANIFEST_NAME} in '{directory}': is it an export directory?")
        return cls(directory, data)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def add_artifact(self, path: str | os.PathLike[str], *, precision: str, backend: str, role: str = "model",
                     **extra: Any) -> dict[str, Any]:
        """Add (or replace, by path) one artifact entry; paths are stored relative to the manifest."""
        p = Path(path)
        rel = os.path.relpath(p, self.directory)
        entry = {"path": rel, "role": role, "precision": precision, "backend": backend,
                 "sha256": sha256_file(p), "size_bytes": p.stat().st_size, **extra}
        self.data["artifacts"] = [a for a in self.data.get("artifacts", []) if a.get("path") != rel] + [entry]
        return entry

    def forget(self, paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
        """Drop the entries of these files (about to be rewritten); returns the dropped entries. Save
        before rewriting the files, so a run killed in between leaves a manifest that lists only files
        whose sha256 it records."""
        targets = {Path(p).resolve() for p in paths}
        keep, dropped = [], []
        for a in self.data.get("artifacts", []):
            (dropped if (self.directory / a["path"]).resolve() in targets else keep).append(a)
        self.data["artifacts"] = keep
        return dropped

    def artifacts(self, *, role: str | None = None, precision: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.data.get("artifacts", [])
                if (role is None or a.get("role") == role) and (precision is None or a.get("precision") == precision)]

    def artifact_path(self, entry: dict[str, Any]) -> Path:
        return self.directory / entry["path"]

    def save(self) -> Path:
        return write_json(self.path, self.data)
