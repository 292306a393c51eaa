"""Batch embedding on Ray Data: ``resnet-deploy embed ... --executor ray``.

    run_ray_embed("exports/resnet50-embedding/resnet50-embedding.onnx", "photos/", "emb.parquet")

* The inputs (a folder, a ``.txt`` list of paths or URIs, a URI prefix such as ``s3://bucket/photos/``,
  or a Python list) are listed and sorted, and cut into parts of ``rows_per_part`` images: part ``i``
  is always the same images, so its file ``part-0000i.parquet`` can be skipped by a rerun.
* Ray tasks read and decode the images and apply the artifact's own preprocessing, in parallel.
* An actor pool runs inference: one :class:`~resnet_deploy.pipelines.embedder.Embedder` per actor (the
  same code as the local ``embed`` and the Triton model), one GPU per actor when ``device`` is cuda.
* The driver gathers the rows of each part and writes it atomically (temporary name, then rename)
  with a ``path`` and an ``embedding`` column, as the local ``embed`` writes Parquet. An unreadable
  image is skipped and listed in the part's metadata and in the summary.
* A rerun writes only the parts that are missing (a job killed halfway is completed; a deleted part is
  rewritten). ``_job.json`` records the model and the input list: a rerun with other inputs or another
  model is refused instead of mixing rows.
* Connecting to a cluster (``ray_address``) gives up after ``ray_timeout`` seconds (default 30) with one
  error, before the output directory is made: the address is probed first (nothing listening: the
  common mistake), then ``ray.init`` runs in a helper thread, since Ray's own connect retries for
  minutes in C++ where Ctrl-C cannot reach it. A local Ray is started in the main thread (started from
  another thread, Ray's driver ends the process with status 1 on Ctrl-C instead of raising
  KeyboardInterrupt). A run that fails or is interrupted before its first part removes the output
  directory it made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import atomic_path, ensure_dir, sha256_file, write_json
from ..errors import UsageError, require

log = logging.getLogger(__name__)

JOB_FILE = "_job.json"
JOB_SCHEMA = "resnet-deploy.ray-embed/1"
PART_SCHEMA = "resnet-deploy.embeddings/1"  # the schema of pipelines.store, so read_embeddings reads a part
LIST_SUFFIXES = (".txt", ".lst")
DECODE_WORKER_BYTES = 320 << 20  # what a decode worker holds besides its batch (Python, numpy, PIL, torch)
#: Seconds to wait for a Ray cluster at ``--ray-address`` (``--ray-timeout``).
DEFAULT_RAY_TIMEOUT = 30.0


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


# -- inputs ---------------------------------------------------------------------------------------------

def _is_uri(text: str) -> bool:
    return "://" in text


def _list_uri(uri: str) -> list[str]:
    """Image files under a URI prefix (``s3://``, ``gs://``, ``hdfs://``, ``file://``), via pyarrow.fs."""
    from pyarrow import fs as pafs

    from ..models.preprocessing import IMAGE_SUFFIXES

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad URIs
        raise UsageError(f"cannot open '{uri}': {exc}") from exc
    scheme = uri.split("://", 1)[0]
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type != pafs.FileType.Directory:
        raise UsageError(f"'{uri}' does not exist")
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(f"{scheme}://{f.path}" for f in found
                  if f.type == pafs.FileType.File and os.path.splitext(f.path)[1].lower() in IMAGE_SUFFIXES)


def resolve_inputs(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Every image to embed, sorted: a folder (recursive), one image, a ``.txt`` file listing paths or
    URIs (one a line), a URI prefix, or a list of any of these."""
    from ..models.preprocessing import list_images

    if isinstance(inputs, (list, tuple)):
        items: list[str] = []
        for x in inputs:
            text = os.fspath(x)
            folder = os.path.isdir(text) or (_is_uri(text) and text.endswith("/"))
            items.extend(resolve_inputs(text) if folder else [text])
        return sorted(dict.fromkeys(items))
    text = os.fspath(inputs)
    if _is_uri(text):
        return _list_uri(text)
    p = Path(text)
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in p.read_text().splitlines()]
        return sorted(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    return [str(x) for x in list_images(p)]


def read_image_bytes(path: str, filesystems: dict[str, Any] | None = None) -> bytes:
    """The encoded bytes of a local path or a URI."""
    if not _is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    from pyarrow import fs as pafs

    cache = filesystems if filesystems is not None else {}
    scheme = path.split("://", 1)[0]
    if scheme not in cache:
        cache[scheme] = pafs.FileSystem.from_uri(path)[0]
    _, inner = pafs.FileSystem.from_uri(path)
    with cache[scheme].open_input_file(inner) as f:
        return f.read()


# -- the Ray stages (module level: the workers import them) -----------------------------------------------

def decode_batch(batch: dict[str, np.ndarray], prep: dict[str, Any], uint8: bool) -> dict[str, np.ndarray]:
    """Ray task: read and preprocess each image; an unreadable one gets a zero picture and its error."""
    from ..models.preprocessing import preprocess, preprocess_uint8
    from ..models.transforms import Preprocessing

    p = Preprocessing.from_dict(prep)
    crop = int(p.crop_size)
    shape, dtype = ((crop, crop, 3), np.uint8) if uint8 else ((3, crop, crop), np.float32)
    paths = [str(x) for x in batch["path"]]
    pixels = np.zeros((len(paths), *shape), dtype)
    errors = []
    filesystems: dict[str, Any] = {}
    fn = preprocess_uint8 if uint8 else preprocess
    for i, path in enumerate(paths):
        try:
            src = read_image_bytes(path, filesystems) if _is_uri(path) else path  # a local path names itself
            pixels[i] = fn(src, p)
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - one broken file is reported, never the end of the job
            errors.append(str(exc) or type(exc).__name__)
    return {"part": batch["part"], "index": batch["index"], "path": np.asarray(paths, dtype=object),
            "pixels": pixels, "error": np.asarray(errors, dtype=object)}


class EmbedActor:
    """Ray actor: one model per actor, loaded once; embeds the decoded rows it is given."""

    def __init__(self, model: str, backend: str, device: str, batch_size: int) -> None:
        from .embedder import Embedder

        if device.startswith("cuda"):
            device = "cuda:0"  # Ray gives each actor its GPU through CUDA_VISIBLE_DEVICES
        self.embedder = Embedder(model, backend=backend, device=device, batch_size=batch_size, workers=1)
        self.dim = int(self.embedder.dim)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch["error"], dtype=object)
        ok = np.array([not e for e in errors], dtype=bool)
        out = np.zeros((len(errors), self.dim), np.float32)
        if ok.any():
            out[ok] = self.embedder.embed_batch(np.asarray(batch["pixels"])[ok])
        return {"part": batch["part"], "index": batch["index"], "path": batch["path"], "error": errors,
                "embedding": out}


# -- the job ----------------------------------------------------------------------------------------------

@dataclass
class RayEmbedConfig:
    model: str
    inputs: Any
    output: Path
    backend: str = "auto"
    batch_size: int = 32
    num_actors: int | None = None  # None: one per GPU with a cuda device, else 1
    ray_address: str | None = None  # None: the running Ray, else a local cluster sized to this machine
    device: str = "cpu"
    rows_per_part: int = 1024
    decode_batch_size: int = 16
    decode_cpus: float = 1.0  # per decode task
    actor_cpus: float = 1.0  # per inference actor (its runner may use more threads)
    ray_timeout: float = DEFAULT_RAY_TIMEOUT  # seconds to reach the cluster at ray_address

    def validate(self) -> None:
        for name in ("batch_size", "rows_per_part", "decode_batch_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_actors is not None and self.num_actors < 1:
            raise UsageError(f"--num-actors must be >= 1, got {self.num_actors}")
        if not (isinstance(self.ray_timeout, (int, float)) and math.isfinite(self.ray_timeout)
                and self.ray_timeout > 0):
            raise UsageError(f"--ray-timeout must be a positive number of seconds, got {self.ray_timeout}")


@dataclass
class RaySummary:
    output: Path
    parts: int
    parts_written: int
    parts_skipped: int
    rows_written: int
    rows_total: int
    broken: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "parts": self.parts, "parts_written": self.parts_written,
                "parts_skipped": self.parts_skipped, "rows_written": self.rows_written,
                "rows_total": self.rows_total, "broken": len(self.broken),
                "broken_files": [f"{p}: {r}" for p, r in self.broken],
                "seconds": round(self.seconds, 2), "images_per_second": round(self.images_per_second, 1)}


def _model_identity(model: str) -> str:
    if os.path.isfile(model):
        return "sha256:" + sha256_file(model)
    return f"variant:{model}"


def _model_facts(cfg: RayEmbedConfig) -> tuple[dict[str, Any], bool]:
    """(preprocessing dict, uint8 input) of the artifact, without loading it when it is a file."""
    from ..artifacts import read_metadata
    from ..models.transforms import Preprocessing

    if os.path.isfile(cfg.model):
        meta = read_metadata(cfg.model)
        prep = meta.get("preprocessing")
        prep_dict = Preprocessing.from_dict(prep).to_dict() if isinstance(prep, dict) else Preprocessing().to_dict()
        return prep_dict, str(meta.get("input_layout", "")).upper().startswith("NHWC")
    from .embedder import Embedder

    with Embedder(cfg.model, backend=cfg.backend, device="cpu") as emb:  # a variant name: the torch reference
        return emb.preprocessing.to_dict(), bool(emb.uint8_input)


def _check_job(out: Path, record: dict[str, Any]) -> None:
    path = out / JOB_FILE
    if not path.is_file():
        if any(out.glob("part-*.parquet")):
            raise UsageError(f"'{out}' holds parts but no {JOB_FILE}: it was not written by this job; use another "
                             "--output")
        write_json(path, record)
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"'{path}' is not valid JSON ({exc}); delete '{out}' or use another --output") from exc
    for key, what in (("model_id", "model"), ("inputs_sha256", "list of inputs"), ("rows_per_part", "part size"),
                      ("preprocessing", "preprocessing")):
        if old.get(key) != record.get(key):
            extra = f" ({old.get('inputs')} files then, {record.get('inputs')} now)" if key == "inputs_sha256" else ""
            raise UsageError(f"'{out}' was written by a job with another {what}{extra}; its parts would not match. "
                             "Use another --output, or delete it to start again")


def _existing_broken(part: Path) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        meta = json.loads((pq.read_schema(part).metadata or {}).get(b"resnet_deploy", b"{}"))
    except Exception:  # noqa: BLE001 - an unreadable part is rewritten by deleting it; report nothing
        return []
    return [(b.get("path", "?"), b.get("error", "")) for b in meta.get("failed", [])]


def write_part(path: Path, paths: list[str], rows: np.ndarray, meta: dict[str, Any]) -> None:
    """One part, atomically: the columns and schema metadata of :mod:`resnet_deploy.pipelines.store`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(meta.get("dim") or rows.shape[1])
    schema = pa.schema([("path", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={"resnet_deploy": json.dumps(meta, default=str)})
    emb = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), pa.float32()), dim)
    table = pa.table([pa.array(paths, pa.string()), emb], schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _address_host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address (``ray://`` client addresses too); None for ``auto``/``local``."""
    text = address.split("://", 1)[1] if "://" in address else address
    text = text.rstrip("/")
    if text in ("auto", "local") or ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise UsageError(f"bad --ray-address '{address}': expected HOST:PORT (or ray://HOST:PORT)") from None


def _wait_reachable(address: str, deadline: float, timeout: float) -> None:
    """Wait until something listens at ``address`` (Ray's own connect retries for minutes and cannot be
    interrupted), or raise UsageError at ``deadline``."""
    hp = _address_host_port(address)
    if hp is None:
        return
    reason = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(hp, timeout=max(0.1, min(2.0, left))):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() + 0.5 >= deadline:
            raise UsageError(f"cannot reach the Ray cluster at '{address}' within {timeout:g} s ({reason.lower()}); "
                             "check --ray-address, or wait longer with --ray-timeout")
        time.sleep(0.5)


def _in_thread(fn: Any, deadline: float | None, what: str) -> Any:
    """Run ``fn`` in a daemon thread; the caller waits in short slices, so Ctrl-C ends the wait at once.
    UsageError when ``deadline`` (time.monotonic) passes first."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="ray-init", daemon=True).start()
    while not done.wait(0.1):
        if deadline is not None and time.monotonic() >= deadline:
            raise UsageError(what)
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, (UsageError, KeyboardInterrupt)):
            raise exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"Ray did not start: {first}") from exc
    return box.get("value")


class _NotMainThread(logging.Filter):
    """Ray warns that it sets no SIGTERM handler when it is started outside the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "not the main thread" not in record.getMessage()


def _init_ray(cfg: RayEmbedConfig) -> bool:
    """Connect to Ray; returns True when this call started it (and must shut it down)."""
    ray = require("ray", "resnet-deploy embed --executor ray", "ray")
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": log.isEnabledFor(logging.DEBUG)}
    for name in ("ray", "ray._private.worker"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NotMainThread) for f in logger.filters):
            logger.addFilter(_NotMainThread())
    if cfg.ray_address:
        import resnet_deploy

        # ship this package's code to the cluster's workers (its dependencies must be installed there)
        kwargs["runtime_env"] = {"py_modules": [str(Path(resnet_deploy.__file__).parent)]}
        deadline = time.monotonic() + float(cfg.ray_timeout)
        _wait_reachable(cfg.ray_address, deadline, float(cfg.ray_timeout))
        _in_thread(lambda: ray.init(address=cfg.ray_address, **kwargs), deadline,
                   f"could not connect to the Ray cluster at '{cfg.ray_address}' within {cfg.ray_timeout:g} s; "
                   "check --ray-address, or wait longer with --ray-timeout")
    else:
        ray.init(num_cpus=os.cpu_count() or 1, **kwargs)  # in the main thread: Ctrl-C stays Python's (see below)
    return True


def run_ray_embed(model: str, inputs: Any, output: str | os.PathLike[str], *, backend: str = "auto",
                  batch_size: int = 32, num_actors: int | None = None, ray_address: str | None = None,
                  device: str = "cpu", rows_per_part: int = 1024, decode_batch_size: int = 16,
                  ray_timeout: float = DEFAULT_RAY_TIMEOUT) -> dict[str, Any]:
    """Embed ``inputs`` with ``model`` on Ray into Parquet parts under the directory ``output``; returns
    the summary (parts written and skipped, rows, broken files). See the module docstring."""
    cfg = RayEmbedConfig(model=str(model), inputs=inputs, output=Path(output), backend=backend,
                         batch_size=batch_size, num_actors=num_actors, ray_address=ray_address, device=device,
                         rows_per_part=rows_per_part, decode_batch_size=decode_batch_size, ray_timeout=ray_timeout)
    return embed_on_ray(cfg).to_dict()


def embed_on_ray(cfg: RayEmbedConfig) -> RaySummary:
    cfg.validate()
    require("pyarrow.parquet", "Parquet embedding parts", "parquet")
    if not os.path.isfile(cfg.model) and any(cfg.model.endswith(s) for s in (".onnx", ".engine", ".plan")):
        raise UsageError(f"model '{cfg.model}' does not exist")
    paths = resolve_inputs(cfg.inputs)
    if not paths:
        raise UsageError(f"no images found in {cfg.inputs!r}")
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output '{out}' is a file; with --executor ray it is a directory of Parquet parts")
    n = cfg.rows_per_part
    parts = [paths[i:i + n] for i in range(0, len(paths), n)]
    todo = [i for i in range(len(parts)) if not (out / part_name(i)).is_file()]
    t0 = time.perf_counter()
    started = _init_ray(cfg) if todo else False  # first: a failed connect loads nothing and leaves nothing
    created = not out.exists()
    try:
        prep, uint8 = _model_facts(cfg)
        record = {"schema": JOB_SCHEMA, "model": cfg.model, "model_id": _model_identity(cfg.model),
                  "backend": cfg.backend, "inputs": len(paths),
                  "inputs_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
                  "rows_per_part": n, "parts": len(parts), "preprocessing": prep}
        ensure_dir(out)
        _check_job(out, record)
        summary = RaySummary(out, len(parts), 0, len(parts) - len(todo), 0, len(paths))
        for i in range(len(parts)):
            if i not in todo:
                summary.broken.extend(_existing_broken(out / part_name(i)))
        if not todo:
            log.info("%s: all %d parts are written already", out, len(parts))
            return summary
        _run_pipeline(cfg, parts, todo, prep, uint8, record, summary)
    except BaseException:
        if created and out.is_dir() and not any(out.glob("part-*.parquet")):
            import shutil

            shutil.rmtree(out, ignore_errors=True)  # nothing embedded yet: leave no directory behind
        raise
    finally:
        if started:
            import ray

            ray.shutdown()
    summary.seconds = time.perf_counter() - t0
    done = sum(len(parts[i]) for i in todo)
    summary.images_per_second = done / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _actor_count(cfg: RayEmbedConfig) -> int:
    import ray

    if cfg.num_actors is not None:
        return cfg.num_actors
    if cfg.device.startswith("cuda"):
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < 1:
            raise UsageError("device cuda, but the Ray cluster has no GPU; start it with GPUs or use --device cpu")
        return gpus
    return 1


def _run_pipeline(cfg: RayEmbedConfig, parts: list[list[str]], todo: list[int], prep: dict[str, Any], uint8: bool,
                  record: dict[str, Any], summary: RaySummary) -> None:
    import ray
    import ray.data

    from ..progress import bar

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    rows = [{"part": i, "index": j, "path": p} for i in todo for j, p in enumerate(parts[i])]
    actors = _actor_count(cfg)
    cuda = cfg.device.startswith("cuda")
    log.info("Ray: %d images in %d parts to write, %d actor%s (%s), batch %d", len(rows), len(todo), actors,
             "s" if actors > 1 else "", cfg.device, cfg.batch_size)
    blocks = max(1, min(len(rows) // cfg.decode_batch_size, 1000))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    # Decoding runs in tasks that scale with the cluster's CPUs. Ray fuses a task stage into the actor
    # stage after it when their resource requests are equal (decoding would then run inside the few
    # actors); the decode tasks' memory request keeps them apart, and is what they use: a worker that
    # imports the preprocessing (with torch, ~250 MiB) plus a batch of decoded pictures.
    crop = int(prep.get("crop_size", 224))
    decoded_bytes = cfg.decode_batch_size * crop * crop * 3 * (1 if uint8 else 4)
    ds = ds.map_batches(decode_batch, fn_kwargs={"prep": prep, "uint8": uint8}, batch_size=cfg.decode_batch_size,
                        batch_format="numpy", num_cpus=cfg.decode_cpus, memory=DECODE_WORKER_BYTES + 2 * decoded_bytes)
    ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"model": cfg.model, "backend": cfg.backend,
                                                           "device": cfg.device, "batch_size": cfg.batch_size},
                        batch_size=cfg.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        num_gpus=1 if cuda else 0, num_cpus=cfg.actor_cpus)
    pending: dict[int, dict[str, Any]] = {i: {"rows": {}, "broken": []} for i in todo}
    with bar(total=len(rows), desc="embed (ray)", unit="img") as progress:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            record["dim"] = int(np.asarray(batch["embedding"]).shape[1])
            for part, index, path, error, emb in zip(batch["part"], batch["index"], batch["path"], batch["error"],
                                                     batch["embedding"]):
                state = pending[int(part)]
                if error:
                    state["broken"].append((str(path), str(error)))
                    log.warning("skipping %s: %s", path, error)
                else:
                    state["rows"][int(index)] = (str(path), np.asarray(emb, np.float32))
                if len(state["rows"]) + len(state["broken"]) == len(parts[int(part)]):
                    _finish_part(cfg, int(part), state, record, summary)
                    del pending[int(part)]
            progress.update(len(batch["part"]))
    if pending:  # cannot happen unless Ray dropped rows: say so rather than leave a silent gap
        raise UsageError(f"Ray returned no rows for parts {sorted(pending)}; rerun to complete them")


def _finish_part(cfg: RayEmbedConfig, part: int, state: dict[str, Any], record: dict[str, Any],
                 summary: RaySummary) -> None:
    ordered = [state["rows"][k] for k in sorted(state["rows"])]
    paths = [p for p, _ in ordered]
    dim = int(record["dim"])
    rows = np.stack([e for _, e in ordered]) if ordered else np.zeros((0, dim), np.float32)
    meta = {"schema": PART_SCHEMA, "format": "parquet", "rows": len(paths), "dim": dim, "part": part,
            "model": record["model"], "model_id": record["model_id"], "backend": cfg.backend,
            "preprocessing": record["preprocessing"],
            "failed": [{"path": p, "error": e} for p, e in state["broken"]]}
    write_part(Path(cfg.output) / part_name(part), paths, rows, meta)
    summary.parts_written += 1
    summary.rows_written += len(paths)
    summary.broken.extend(state["broken"])
    log.info("wrote %s (%d rows, %d unreadable)", part_name(part), len(paths), len(state["broken"]))


def read_parts(output: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """All rows of a Ray embedding output, in part order: ``(paths, (N, D) float32)``."""
    from .store import read_embeddings

    paths: list[str] = []
    rows: list[np.ndarray] = []
    for part in sorted(Path(output).glob("part-*.parquet")):
        p, r, _ = read_embeddings(part)
        paths.extend(p)
        if len(r):
            rows.append(r)
    return paths, (np.concatenate(rows) if rows else np.zeros((0, 0), np.float32))


__all__ = ["EmbedActor", "JOB_FILE", "RayEmbedConfig", "RaySummary", "decode_batch", "embed_on_ray", "part_name",
           "read_image_bytes", "read_parts", "resolve_inputs", "run_ray_embed", "write_part"]
