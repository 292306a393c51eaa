"""Embedding files: ``.npy`` with a ``FILE.json`` sidecar, or Parquet; appendable and resumable.

``.npy``: float32 ``(N, D)``, one row per image; ``FILE.npy.json`` holds ``paths`` (row order) and
what produced the rows. Parquet: a ``path`` column and an ``embedding`` column
(``fixed_size_list<float32>[D]``), the same facts in the schema metadata under ``resnet_deploy``.

Every flush rewrites the file under a temporary name and renames it (old rows are streamed, not
loaded), so a killed job leaves the last complete flush behind and a rerun continues from it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import atomic_path, write_json
from ..errors import UsageError, require

log = logging.getLogger(__name__)

FORMATS = ("npy", "parquet")
SCHEMA = "resnet-deploy.embeddings/1"
_SUFFIXES = {".npy": "npy", ".parquet": "parquet", ".pq": "parquet"}
#: Facts that must agree between an existing file and the job appending to it (besides the width).
IDENTITY_KEYS = ("model_id", "preprocessing")


def output_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``--format`` if given, else from the suffix (``.npy``, ``.parquet``/``.pq``)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UsageError(f"cannot tell the format of '{path}' from its suffix; name it .npy or .parquet, or pass "
                         "--format npy|parquet")
    return _SUFFIXES[suffix]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``out.npy`` -> ``out.npy.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def read_embeddings(path: str | os.PathLike[str], fmt: str | None = None
                    ) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """``(paths, embeddings (N, D) float32, metadata)`` of an embedding file."""
    fmt = output_format(path, fmt)
    if fmt == "npy":
        meta = _read_sidecar(Path(path))
        rows = np.load(path, mmap_mode="r")
        paths = list(meta.get("paths", []))
        return paths, np.asarray(rows[:len(paths)], dtype=np.float32), meta
    pq = require("pyarrow.parquet", "Parquet embedding files", "parquet")
    table = pq.read_table(path)
    meta = _parquet_meta(table.schema)
    paths = table.column("path").to_pylist()
    emb = table.column("embedding").combine_chunks()
    dim = int(meta.get("dim") or (len(emb[0]) if len(emb) else 0))
    values = np.asarray(emb.flatten() if len(emb) else [], dtype=np.float32)
    return paths, values.reshape(len(paths), dim), meta


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of ``path``, checked: an object whose ``paths`` is a list of strings."""
    from .._io import file_problem

    side = sidecar_path(path)
    problem = file_problem(side)
    if problem == "does not exist":
        raise UsageError(f"'{path}' has no sidecar '{side.name}' listing its rows; delete it or pass --overwrite")
    if problem is not None:
        raise UsageError(f"sidecar '{side}' {problem}; delete it or pass --overwrite")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"sidecar '{side}' is not valid JSON ({exc}); delete it or pass --overwrite") from exc
    if not isinstance(meta, dict):
        raise UsageError(f"sidecar '{side}' is not a JSON object (got {type(meta).__name__}); delete it or pass "
                         "--overwrite")
    paths = meta.get("paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise UsageError(f"sidecar '{side}': 'paths' must be a list of strings (got "
                         f"{type(paths).__name__}); delete it or pass --overwrite")
    return meta


def _load_npy(path: Path) -> np.ndarray:
    """An existing ``.npy`` memory-mapped, refusing anything else (an ``.npz``, a pickle, text...)."""
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # ValueError, OSError, zipfile.BadZipFile, EOFError...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"'{path}' is not a readable .npy file ({text}); delete it or pass --overwrite") from exc
    if not isinstance(rows, np.ndarray):
        close = getattr(rows, "close", None)
        if close is not None:
            close()
        raise UsageError(f"'{path}' is not a readable .npy file (it is a {type(rows).__name__}, not an array); "
                         "delete it or pass --overwrite")
    return rows


def _parquet_meta(schema: Any) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(b"resnet_deploy")
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise UsageError("the file's 'resnet_deploy' metadata is not a JSON object")
    return meta


class EmbeddingWriter:
    """Collect ``(paths, rows)`` and flush them, appended to what the file already holds.

    ``resume=True`` keeps an existing file's rows (``done`` holds their paths, so a job can skip
    them); ``resume=False`` starts a new file on the first flush. ``metadata`` (model, backend,
    preprocessing...) is stored with the rows; resuming with a different model or dimension fails.
    """

    def __init__(self, path: str | os.PathLike[str], *, fmt: str | None = None, resume: bool = True,
                 metadata: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.fmt = output_format(self.path, fmt)
        self.metadata = dict(metadata or {})
        self.paths: list[str] = []  # every row's path: on disk, then buffered
        self._disk_rows = 0
        self._buffer: list[np.ndarray] = []
        self._buffered_paths: list[str] = []
        self.dim: int | None = self.metadata.get("dim")
        self._dirty = not resume  # a fresh start replaces an existing file even with no rows
        if self.fmt == "parquet":
            require("pyarrow.parquet", "Parquet embedding files", "parquet")
        if resume and self.path.exists():
            self._load_existing()
        self.done = set(self.paths)

    # -- existing file ---------------------------------------------------------------------------------
    def _load_existing(self) -> None:
        if self.fmt == "npy":
            meta = _read_sidecar(self.path)
            rows = _load_npy(self.path)
            paths = list(meta.get("paths", []))
            if rows.ndim != 2 or rows.dtype != np.float32:
                raise UsageError(f"'{self.path}' holds {rows.dtype} {rows.shape}, not float32 rows; delete it or "
                                 "pass --overwrite")
            if len(rows) < len(paths):
                raise UsageError(f"'{self.path}' has {len(rows)} rows but its sidecar lists {len(paths)} paths; "
                                 "delete both or pass --overwrite")
            if len(rows) > len(paths):  # a flush stopped between the .npy and its sidecar
                log.warning("%s: %d rows beyond the %d its sidecar lists will be recomputed", self.path,
                            len(rows) - len(paths), len(paths))
            dim = int(rows.shape[1])
        else:
            pq = require("pyarrow.parquet", "Parquet embedding files", "parquet")
            try:
                pf = pq.ParquetFile(self.path)
                meta = _parquet_meta(pf.schema_arrow)
                paths = pq.read_table(self.path, columns=["path"]).column("path").to_pylist()
            except Exception as exc:
                raise UsageError(f"'{self.path}' is not a readable embedding Parquet file ({exc}); delete it or "
                                 "pass --overwrite") from exc
            dim = int(meta.get("dim") or pf.schema_arrow.field("embedding").type.list_size)
        self._check_identity(meta, dim)
        self.paths = paths
        self._disk_rows = len(paths)
        self.dim = dim
        log.info("%s: resuming after %d rows", self.path, len(paths))

    def _check_identity(self, existing: dict[str, Any], dim: int) -> None:
        if self.dim is not None and int(self.dim) != dim:
            raise UsageError(f"'{self.path}' holds {dim}-wide rows but this model gives {self.dim}; use another "
                             "--output or --overwrite")
        for key in IDENTITY_KEYS:
            old, new = existing.get(key), self.metadata.get(key)
            if old and new and old != new:
                raise UsageError(f"'{self.path}' was written with a different {key.replace('_', ' ')} "
                                 f"({str(old)[:80]} vs {str(new)[:80]}); use another --output or --overwrite")

    # -- writing ---------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self.paths)

    @property
    def pending(self) -> int:
        return len(self._buffered_paths)

    def add(self, paths: Sequence[Any], rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or len(rows) != len(paths):
            raise UsageError(f"expected {len(paths)} rows of shape (N, D), got {rows.shape}")
        if self.dim is None:
            self.dim = int(rows.shape[1])
        elif rows.shape[1] != int(self.dim):
            raise UsageError(f"rows are {rows.shape[1]} wide, the file holds {self.dim}")
        names = [str(p) for p in paths]
        self._buffer.append(rows)
        self._buffered_paths.extend(names)
        self.paths.extend(names)
        self.done.update(names)

    def flush(self) -> None:
        """Write existing + buffered rows to a temporary file, then rename it onto ``path``."""
        if not self._dirty and not self._buffered_paths and self.path.exists():
            return
        new = np.concatenate(self._buffer) if self._buffer else np.empty((0, int(self.dim or 0)), np.float32)
        meta = dict(self.metadata, schema=SCHEMA, format=self.fmt, rows=len(self.paths), dim=int(self.dim or 0))
        if self.fmt == "npy":
            self._flush_npy(new, meta)
        else:
            self._flush_parquet(new, meta)
        self._disk_rows = len(self.paths)
        self._dirty = False
        self._buffer.clear()
        self._buffered_paths.clear()

    def _flush_npy(self, new: np.ndarray, meta: dict[str, Any]) -> None:
        old = self._disk_rows
        total = old + len(new)
        with atomic_path(self.path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, int(self.dim or 0)))
            if old:
                src = np.load(self.path, mmap_mode="r")
                step = max(1, (64 << 20) // max(1, src.shape[1] * 4))
                for i in range(0, old, step):
                    out[i:min(old, i + step)] = src[i:min(old, i + step)]
                del src
            out[old:] = new
            out.flush()
            del out
        # rows first, then the sidecar: a crash in between leaves extra rows, which resume drops
        write_json(sidecar_path(self.path), dict(meta, paths=self.paths))

    def _flush_parquet(self, new: np.ndarray, meta: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = int(self.dim or 0)
        schema = pa.schema([("path", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
                           metadata={"resnet_deploy": json.dumps(meta, default=str)})
        with atomic_path(self.path) as tmp:
            writer = pq.ParquetWriter(tmp, schema)
            try:
                if self._disk_rows:
                    for batch in pq.ParquetFile(self.path).iter_batches():
                        writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
                if len(new):
                    emb = pa.FixedSizeListArray.from_arrays(pa.array(new.reshape(-1), pa.float32()), dim)
                    writer.write_table(pa.table([pa.array(self._buffered_paths, pa.string()), emb], schema=schema))
            finally:
                writer.close()

    def add_failure(self, path: Any, reason: str) -> None:
        """Record an unreadable input (kept in the metadata; a rerun tries it again)."""
        failed = self.metadata.setdefault("failed", [])
        failed.append({"path": str(path), "error": reason})


__all__ = ["EmbeddingWriter", "FORMATS", "SCHEMA", "output_format", "read_embeddings", "sidecar_path"]
