"""``resnet-deploy embed --model ARTIFACT INPUT_DIR --output FILE``: embeddings for every image under a
folder, as ``.npy`` (+ ``FILE.json`` listing the paths in row order) or Parquet (path + embedding).

Decoding runs in a thread pool ahead of inference; the job is resumable (a rerun skips the paths the
output already holds and appends the rest), checkpoints every ``--checkpoint-every`` seconds, and an
unreadable image is reported and skipped, never the end of the job.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import sha256_file
from ..errors import UsageError
from ..runtime import BACKEND_CHOICES, runner_options

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


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
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.checkpoint_every <= 0:
            raise UsageError(f"--checkpoint-every must be > 0 seconds, got {self.checkpoint_every}")

    @property
    def resolved_device(self) -> str:
        from ..pipelines.embedder import default_device

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


def embed_folder(cfg: EmbedConfig, on_start: Any = None) -> EmbedSummary:
    """Embed every image under ``cfg.inputs`` that ``cfg.output`` does not hold yet."""
    from ..models.preprocessing import list_images
    from ..pipelines.embedder import Embedder
    from ..pipelines.store import EmbeddingWriter, output_format
    from ..progress import bar

    cfg.validate()
    fmt = output_format(cfg.output, cfg.fmt)
    paths = [os.path.abspath(p) for p in list_images(cfg.inputs)]
    if not paths:
        raise UsageError(f"no images under '{cfg.inputs}' (looked for jpg, jpeg, png, webp, bmp, tif, tiff, gif)")
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
        failed: list[tuple[str, str]] = []
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
            writer.flush()  # also on Ctrl-C: the rows done so far are kept for the rerun
    return EmbedSummary(output=Path(cfg.output), format=fmt, total_rows=writer.rows, new_rows=new_rows,
                        already_done=already, failed=failed, seconds=seconds, runner=emb.describe())


# -- CLI ------------------------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("embed", parents=[common], help="embeddings for every image under a folder",
                       description="Embed every image under INPUT_DIR (recursive) with an artifact exported with "
                                   "--head embedding. Output: .npy (float32, one row per image) with FILE.json "
                                   "listing the paths in row order, or Parquet (path, embedding). Resumable: a "
                                   "rerun appends only images the output does not hold yet.")
    p.add_argument("inputs", metavar="INPUT_DIR", help="folder of images (searched recursively)")
    p.add_argument("--model", "-m", required=True, metavar="ARTIFACT",
                   help="ONNX file, TensorRT engine, or a variant name (torch backend, embedding head)")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="FILE.npy or FILE.parquet")
    p.add_argument("--format", dest="fmt", choices=("npy", "parquet"), default=None,
                   help="output format (default: from the suffix of --output)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="default auto")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda for engines, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU inference threads")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default=None,
                   help="what a backend with a choice runs (OpenVINO: fp32 unless bf16 is asked for)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: min(8, CPUs))")
    p.add_argument("--overwrite", action="store_true", help="start a new file instead of resuming an existing one")
    p.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="rewrite the output with the rows so far every SECONDS (default 60)")
    g = p.add_argument_group("distributed")
    g.add_argument("--executor", choices=EXECUTORS, default="local", help="local (default) or ray (Ray Data actors)")
    g.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    g.add_argument("--num-actors", type=int, default=None, help="Ray actors (default: one per GPU, else 1)")
    p.set_defaults(func=run)


def _run_ray(args: argparse.Namespace) -> int:
    from ..pipelines.embedder import default_device
    from ..pipelines.ray_job import run_ray_embed

    result = run_ray_embed(args.model, args.inputs, args.output, backend=args.backend, batch_size=args.batch_size,
                           num_actors=args.num_actors, ray_address=args.ray_address,
                           device=default_device(args.model, args.device))
    if isinstance(result, dict):
        for key, value in result.items():
            print(f"{key}: {value}")
    elif result is not None:
        print(result)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.executor == "ray":
        return _run_ray(args)
    if args.num_actors is not None or args.ray_address is not None:
        raise UsageError("--num-actors and --ray-address apply to --executor ray")
    cfg = EmbedConfig(model=args.model, inputs=args.inputs, output=args.output, fmt=args.fmt, backend=args.backend,
                      device=args.device, batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                      precision=args.precision, resume=not args.overwrite, checkpoint_every=args.checkpoint_every)

    def started(emb: Any) -> None:
        info = emb.runner.info
        print(f"backend: {info.backend} ({info.device}, {info.precision})  batch {emb.batch_size}, "
              f"{emb.workers} decode threads, dim {emb.dim}", flush=True)

    s = embed_folder(cfg, on_start=started)
    print(f"wrote {s.output} ({s.format}): {s.total_rows} rows; {s.new_rows} new in {s.seconds:.1f}s "
          f"({s.images_per_second:.1f} img/s), {s.already_done} already there, {len(s.failed)} unreadable skipped")
    for path, reason in s.failed[:20]:
        print(f"  skipped {path}: {reason}")
    if len(s.failed) > 20:
        print(f"  ... and {len(s.failed) - 20} more (listed in the output's metadata)")
    return 0
