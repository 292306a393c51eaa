"""The local embedding job behind ``resnet-deploy embed``: every image under a folder -> ``.npy``
(+ ``FILE.json`` listing the paths in row order) or Parquet (path + embedding).

Decoding runs in a thread pool ahead of inference; the job is resumable (a rerun skips the paths the
output already holds and appends the rest), checkpoints every ``checkpoint_every`` seconds, and an
unreadable image is reported and skipped, never the end of the job. ``ray_job`` runs the same
Embedder on Ray Data.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import sha256_file
from ..errors import UsageError
from ..runtime import runner_options

log = logging.getLogger(__name__)

@dataclass
class EmbedConfig:
    model: str
    inputs: str
    output: str
    fmt: str | None = None  # None: from the output's suffix
    backend: str = "auto"
    device: str | None = None  # None: cuda for engines, else cpu
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    precision: str | None = None  # what a backend with a choice runs (OpenVINO f32 / bf16)
    resume: bool = True
    checkpoint_every: float = 60.0  # seconds between flushes of a long job

    def validate(self) -> None:
        from ..options import check_float, check_int, check_threads
        from ..shapes import MAX_BATCH

        check_int(self.batch_size, "--batch-size", 1, MAX_BATCH)
        if self.workers is not None:
            check_int(self.workers, "--workers", 1)
        check_threads(self.threads, "--threads")
        check_float(self.checkpoint_every, "--checkpoint-every", 0, min_open=True)

    @property
    def resolved_device(self) -> str:
        from .embedder import default_device

        return default_device(self.model, self.device)


@dataclass
class EmbedSummary:
    output: Path
    format: str
    total_rows: int
    new_rows: int
    already_done: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    runner: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.new_rows / self.seconds if self.seconds > 0 else 0.0


def model_identity(model: str, embedder: Any) -> str:
    """What must not change between a file's flushes: the artifact's hash, or variant + weights."""
    if os.path.isfile(model):
        return "sha256:" + sha256_file(model)
    meta = embedder.metadata
    return f"{meta.get('variant', model)}:{meta.get('weights', '?')}:{meta.get('head', '?')}"


def check_output(output: str | os.PathLike[str], fmt: str, inputs: list[str]) -> None:
    """Refuse, before any work, an output that cannot be written or that would replace an input:
    a directory (or a FIFO...) in its place or its sidecar's, a parent that is a file, or the same
    file as the model or an image (compared by device and inode, so links and ``..`` count)."""
    from .._io import file_problem, refuse_overwriting_inputs
    from .store import sidecar_path

    out = Path(output)
    if not str(output):
        raise UsageError("--output is empty; give a FILE.npy or FILE.parquet")
    targets = [out] + ([sidecar_path(out)] if fmt == "npy" else [])
    for target in targets:
        if os.path.lexists(target):
            problem = file_problem(target)
            if problem is not None:
                raise UsageError(f"output '{target}' {problem}; choose another --output")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write '{out}': '{parent}' is not a directory")
    refuse_overwriting_inputs(targets, inputs)


def embed_folder(cfg: EmbedConfig, on_start: Any = None) -> EmbedSummary:
    """Embed every image under ``cfg.inputs`` that ``cfg.output`` does not hold yet."""
    from ..models.preprocessing import list_images
    from .embedder import Embedder
    from .store import EmbeddingWriter, output_format
    from ..progress import bar

    cfg.validate()
    fmt = output_format(cfg.output, cfg.fmt)
    skipped: list[tuple[str, str]] = []  # FIFOs, devices, broken links named like images
    paths = [os.path.abspath(p) for p in list_images(cfg.inputs, skipped)]
    check_output(cfg.output, fmt, ([cfg.model] if os.path.isfile(cfg.model) else []) + paths)
    if not paths:
        raise UsageError(f"no images under '{cfg.inputs}' (looked for jpg, jpeg, png, webp, bmp, tif, tiff, gif)"
                         + (f"; skipped {len(skipped)} that are not regular files" if skipped else ""))
    # a batch job wants throughput: OpenVINO's throughput hint keeps several requests in flight
    kwargs = runner_options(cfg.model, cfg.backend, cfg.resolved_device, threads=cfg.threads,
                            precision=cfg.precision, hint="throughput")
    with Embedder(cfg.model, backend=cfg.backend, device=cfg.resolved_device, batch_size=cfg.batch_size,
                  workers=cfg.workers, **kwargs) as emb:
        info = emb.runner.info
        if on_start is not None:
            on_start(emb)
        metadata = {"model": str(cfg.model), "model_id": model_identity(cfg.model, emb), "backend": info.backend,
                    "device": info.device, "precision": info.precision, "head": emb.head,
                    "normalized": emb.normalized, "dim": emb.dim, "root": os.path.abspath(cfg.inputs),
                    "preprocessing": emb.preprocessing.to_dict(), "dtype": "float32"}
        writer = EmbeddingWriter(cfg.output, fmt=fmt, resume=cfg.resume, metadata=metadata)
        todo = [p for p in paths if p not in writer.done]
        already = len(paths) - len(todo)
        if already:
            log.info("%d of %d images are already in %s", already, len(paths), cfg.output)
        failed: list[tuple[str, str]] = list(skipped)
        for path, reason in skipped:
            writer.add_failure(path, reason)
        progress = bar(total=len(todo), desc="embed", unit="img")

        def on_error(path: Any, exc: Exception) -> None:
            log.warning("skipping unreadable image: %s", exc)
            failed.append((str(path), str(exc)))
            writer.add_failure(path, str(exc))
            progress.update(1)

        t0 = last_flush = time.perf_counter()
        interval = cfg.checkpoint_every
        new_rows = 0
        try:
            for chunk, rows in emb.iter_embed(todo, on_error=on_error):
                writer.add(chunk, rows)
                new_rows += len(chunk)
                progress.update(len(chunk))
                if time.perf_counter() - last_flush >= interval:
                    started = time.perf_counter()
                    writer.flush()
                    last_flush = time.perf_counter()
                    # a flush rewrites the whole file: keep it under ~20% of the time as the file grows
                    interval = max(cfg.checkpoint_every, 4 * (last_flush - started))
        finally:
            progress.close()
            seconds = time.perf_counter() - t0
            if new_rows:  # also on Ctrl-C: the rows done so far are kept for the rerun
                writer.flush()
        if writer.rows == 0:  # every image failed and the output holds none: write nothing, exit 2
            first = failed[-1][1] if failed else "?"
            raise UsageError(f"no image could be embedded: all {len(todo)} failed (e.g. {first}); nothing written "
                             f"to '{cfg.output}'")
    return EmbedSummary(output=Path(cfg.output), format=fmt, total_rows=writer.rows, new_rows=new_rows,
                        already_done=already, failed=failed, seconds=seconds, runner=emb.describe())
