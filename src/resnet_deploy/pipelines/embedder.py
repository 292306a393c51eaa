"""One embedding API that every deployment reuses: the local ``embed`` command, the Triton model and
the Ray actor all call :class:`Embedder`.

    with Embedder("exports/resnet50-embedding/resnet50-embedding.onnx") as emb:
        rows = emb.embed(["cat.jpg", open("dog.png", "rb").read(), pil_image, hwc_uint8_array])

It reads the preprocessing record that travels with the artifact, decodes in a thread pool ahead of
inference, batches, and is thread-safe (decoding runs concurrently; calls into the runner are
serialized by a lock). :class:`ImageModel` is the same machinery without the embedding semantics
(``infer`` uses it for logits).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..models.preprocessing import ImageError, default_workers, preprocess, preprocess_uint8
from ..models.transforms import Preprocessing
from ..runtime import is_torch_module, load_runner
from ..runtime.base import Runner

log = logging.getLogger(__name__)

OnError = Callable[[Any, Exception], None]

#: How many batches are decoded ahead of the one being inferred.
PREFETCH_BATCHES = 3


def default_device(artifact: Any, device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` for a TensorRT engine and ``cpu`` for anything else."""
    from ..runtime import ENGINE_SUFFIXES

    if device:
        return device
    if isinstance(artifact, (str, os.PathLike)) and os.path.splitext(os.fspath(artifact))[1].lower() in ENGINE_SUFFIXES:
        return "cuda"
    return "cpu"


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _log_skip(item: Any, exc: Exception) -> None:
    log.warning("skipping unreadable image: %s", exc)


def _is_single(items: Any) -> bool:
    if isinstance(items, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return True
    return isinstance(items, np.ndarray) and items.ndim in (2, 3)


class ImageModel:
    """An artifact with its preprocessing, batched and thread-safe: images in, output rows out.

    ``artifact``: an ONNX file or engine (preprocessing and head from its metadata), a variant name
    (torch backend; ``weights=``, ``head=`` ... go to the runner), an ``nn.Module`` (torch backend;
    pass ``preprocessing=``), or an already loaded :class:`~resnet_deploy.runtime.base.Runner`.
    """

    def __init__(self, artifact: Any, backend: str = "auto", device: str = "cpu", batch_size: int = 32,
                 workers: int | None = None, *, preprocessing: Preprocessing | None = None,
                 max_image_pixels: int | None = None, **runner_kwargs: Any) -> None:
        if int(batch_size) < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if workers is not None and int(workers) < 1:
            raise UsageError(f"workers must be >= 1, got {workers}")
        self.artifact = artifact
        #: decode cap per image (None: the process default, see models.preprocessing.max_image_pixels)
        self.max_image_pixels: int | None = None
        if max_image_pixels is not None:
            from ..models.preprocessing import max_image_pixels as checked_cap

            self.max_image_pixels = checked_cap(max_image_pixels)
        self.metadata: dict[str, Any] = {}
        self._owns_runner = True
        prep = preprocessing
        if isinstance(artifact, Runner):
            self.runner = artifact
            self._owns_runner = False
        elif is_torch_module(artifact):
            self.runner = load_runner(artifact, backend=backend, device=device, **runner_kwargs)
        elif isinstance(artifact, (str, os.PathLike)) and os.path.isfile(artifact):
            from ..artifacts import read_metadata

            self.runner = load_runner(artifact, backend=backend, device=device, **runner_kwargs)
            # the runner's copy when it read the metadata while loading (no second parse of the file)
            meta = self.runner.metadata
            self.metadata = dict(meta) if meta is not None else read_metadata(artifact)
            if prep is None and isinstance(self.metadata.get("preprocessing"), dict):
                prep = Preprocessing.from_dict(self.metadata["preprocessing"])
        else:  # a variant name (or a missing file, which load_runner reports)
            self._variant_defaults(runner_kwargs)
            self.runner = load_runner(artifact, backend=backend, device=device, **runner_kwargs)
            winfo = getattr(self.runner, "weights_info", None)
            if winfo is not None:
                if prep is None:
                    prep = winfo.preprocessing
                self.metadata = {"variant": str(artifact), "weights": winfo.source,
                                 "num_classes": winfo.num_classes, "head": runner_kwargs.get("head", "logits")}
        self.preprocessing = prep or Preprocessing()
        self.backend = self.runner.info.backend
        spec = self.runner.input
        # A model exported with fused preprocessing takes uint8 NHWC pictures, resized and cropped.
        self.uint8_input = np.dtype(spec.dtype) == np.uint8
        self._input_dtype = np.dtype(spec.dtype)
        self._min_batch, max_batch = self._batch_limits()
        self.batch_size = min(int(batch_size), max_batch) if max_batch else int(batch_size)
        self.batch_size = max(self.batch_size, self._min_batch)
        if self.batch_size != int(batch_size):
            log.info("batch size %d -> %d to fit the artifact's batch range", batch_size, self.batch_size)
        self.workers = default_workers() if workers is None else int(workers)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._streaming = type(self.runner).infer_stream is not Runner.infer_stream

    def _variant_defaults(self, runner_kwargs: dict[str, Any]) -> None:
        """Hook: defaults for a runner built from a variant name."""

    def _batch_limits(self) -> tuple[int, int | None]:
        spec = self.runner.input
        first = spec.shape[0] if spec.shape else None
        if isinstance(first, int) and first > 0:  # a static batch dimension
            return first, first
        lo = spec.min_shape[0] if spec.min_shape else 1
        hi = spec.max_shape[0] if spec.max_shape else None
        return int(lo), (int(hi) if hi else None)

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
        if self._owns_runner:
            self.runner.close()

    def __enter__(self) -> "ImageModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
            return self._pool

    # -- one item ------------------------------------------------------------------------------------
    def prepare(self, item: Any) -> np.ndarray:
        """One image -> the runner's input row: (3, crop, crop) float32, or (crop, crop, 3) uint8 for
        a fused-preprocessing artifact. A (3, H, W) float array is taken as already preprocessed."""
        if isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[0] == 3 and \
                np.issubdtype(item.dtype, np.floating):
            if self.uint8_input:
                raise UsageError("this artifact takes uint8 HxWx3 pictures (fused preprocessing); got a "
                                 "preprocessed float array")
            return item
        if self.uint8_input:
            return preprocess_uint8(item, self.preprocessing, max_pixels=self.max_image_pixels)
        return preprocess(item, self.preprocessing, max_pixels=self.max_image_pixels)

    def _prepare_checked(self, item: Any) -> np.ndarray:
        try:
            return self.prepare(item)
        except ImageError:
            raise
        except UsageError:
            raise
        except Exception as exc:  # a decoder bug on one file must not end a long job
            raise ImageError(f"cannot preprocess {item!r}: {type(exc).__name__}: {exc}") from exc

    # -- batches -------------------------------------------------------------------------------------
    def _fit(self, batch: np.ndarray) -> tuple[np.ndarray, int]:
        """Cast to the input dtype and pad up to the artifact's minimum batch; returns (batch, n)."""
        n = len(batch)
        if not self.uint8_input and batch.dtype != self._input_dtype and np.issubdtype(batch.dtype, np.floating):
            batch = batch.astype(self._input_dtype)
        if n < self._min_batch:
            batch = np.concatenate([batch, np.repeat(batch[-1:], self._min_batch - n, axis=0)])
        return np.ascontiguousarray(batch), n

    def _run(self, batch: np.ndarray) -> np.ndarray:
        fitted, n = self._fit(batch)
        with self._lock:
            out = self.runner.infer(fitted)
        return np.asarray(out[:n], dtype=np.float32)

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """An already prepared batch (NCHW float32, or NHWC uint8 for fused preprocessing) -> output rows,
        split into chunks of ``batch_size``."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise UsageError(f"expected a 4-D batch, got shape {'x'.join(map(str, batch.shape))}")
        if len(batch) == 0:
            return np.empty((0, self.dim), np.float32)
        outs = [self._run(batch[i:i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _is_prepared_batch(self, items: Any) -> bool:
        if not (isinstance(items, np.ndarray) and items.ndim == 4):
            return False
        if self.uint8_input:
            return items.dtype == np.uint8 and items.shape[-1] == 3
        return np.issubdtype(items.dtype, np.floating)

    def run(self, items: Any) -> np.ndarray:
        """Images (paths, bytes, PIL images, HxWxC uint8 arrays, in any mix; or one of them) -> (N, D)
        float32 output rows in order. A 4-D float array is an already preprocessed batch (for a
        fused-preprocessing artifact: a 4-D uint8 NHWC array). The first unreadable image raises."""
        if self._is_prepared_batch(items):
            return self.run_batch(items)
        if _is_single(items):
            items = [items]
        items = list(items)
        outs = [rows for _, rows in self._pipeline(items, on_error=None)]
        if not outs:
            return np.empty((0, self.dim), np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def iter_run(self, items: Iterable[Any], on_error: OnError | None = _log_skip,
                 batch_size: int | None = None) -> Iterator[tuple[list[Any], np.ndarray]]:
        """Yield ``(items_of_this_batch, rows)`` in order, decoding ahead of inference in the thread
        pool. An unreadable image is passed to ``on_error(item, error)`` (default: a warning) and
        skipped; ``on_error=None`` raises instead."""
        yield from self._pipeline(items, on_error=on_error, batch_size=batch_size)

    def _decoded(self, items: Iterable[Any], bs: int,
                 on_error: OnError | None) -> Iterator[tuple[list[Any], np.ndarray]]:
        pool = self._executor()
        source = iter(items)
        window: deque[list[tuple[Any, Future]]] = deque()

        def submit() -> bool:
            chunk = list(islice(source, bs))
            if chunk:
                window.append([(item, pool.submit(self._prepare_checked, item)) for item in chunk])
            return bool(chunk)

        try:
            for _ in range(PREFETCH_BATCHES):
                if not submit():
                    break
            while window:
                chunk = window.popleft()
                submit()
                ok, rows = [], []
                for item, fut in chunk:
                    try:
                        rows.append(fut.result())
                    except ImageError as exc:
                        if on_error is None:
                            raise
                        on_error(item, exc)
                        continue
                    ok.append(item)
                if rows:
                    yield ok, np.stack(rows)
        finally:
            for chunk in window:
                for _, fut in chunk:
                    fut.cancel()

    def _pipeline(self, items: Iterable[Any], on_error: OnError | None,
                  batch_size: int | None = None) -> Iterator[tuple[list[Any], np.ndarray]]:
        bs = self.batch_size if batch_size is None else max(self._min_batch, int(batch_size))
        decoded = self._decoded(items, bs, on_error)
        if not self._streaming:
            for ok, batch in decoded:  # the pool keeps decoding the next batches meanwhile
                yield ok, self._run(batch)
            return
        # The runner keeps several requests in flight (OpenVINO's async queue): feed it a stream.
        pending: deque[tuple[list[Any], int]] = deque()

        def batches() -> Iterator[np.ndarray]:
            for ok, batch in decoded:
                fitted, n = self._fit(batch)
                pending.append((ok, n))
                yield fitted

        stream = self.runner.infer_stream(batches())
        try:
            while True:
                with self._lock:
                    out = next(stream, None)
                if out is None:
                    return
                ok, n = pending.popleft()
                yield ok, np.asarray(out[:n], dtype=np.float32)
        finally:
            with self._lock:
                stream.close()

    # -- facts ---------------------------------------------------------------------------------------
    @property
    def head(self) -> str | None:
        """``logits`` or ``embedding`` when known (artifact metadata, variant kwargs, output name)."""
        head = self.metadata.get("head")
        if head:
            return str(head)
        model = getattr(self.runner, "model", None)
        if is_torch_module(model):  # the torch backend: its module says
            from ..models.heads import EmbeddingModel

            if isinstance(model, EmbeddingModel):
                return "embedding"
        name = self.runner.outputs[0].name if self.runner.outputs else ""
        return name if name in ("logits", "embedding") else None

    @property
    def dim(self) -> int:
        """Width of an output row."""
        cached = getattr(self, "_dim", None)
        if cached is not None:
            return cached
        last = self.runner.outputs[0].shape[-1] if self.runner.outputs and self.runner.outputs[0].shape else None
        if isinstance(last, int) and last > 0:
            dim = last
        elif str(self.metadata.get("output_dim", "")).isdigit():
            dim = int(self.metadata["output_dim"])
        else:  # probe once with a blank picture
            crop = int(self.preprocessing.crop_size)
            shape = (1, crop, crop, 3) if self.uint8_input else (1, 3, crop, crop)
            dim = int(self._run(np.zeros(shape, np.uint8 if self.uint8_input else np.float32)).shape[1])
        self._dim = dim
        return dim

    def describe(self) -> dict[str, Any]:
        return {**self.runner.info.to_dict(), "batch_size": self.batch_size, "workers": self.workers,
                "input": "uint8 NHWC (fused preprocessing)" if self.uint8_input else "float32 NCHW",
                "preprocessing": self.preprocessing.to_dict()}


class Embedder(ImageModel):
    """``Embedder(artifact, backend="auto")``: images in, ``np.ndarray`` embedding rows out.

    Meant for artifacts exported with ``--head embedding``; with a logits artifact it still returns
    its output rows, after a warning. A variant name builds the torch reference with the embedding
    head (``head="embedding"`` unless given).
    """

    def __init__(self, artifact: Any, backend: str = "auto", device: str = "cpu", batch_size: int = 32,
                 workers: int | None = None, **runner_kwargs: Any) -> None:
        super().__init__(artifact, backend=backend, device=device, batch_size=batch_size, workers=workers,
                         **runner_kwargs)
        if self.head == "logits":
            log.warning("%s has a logits head: its rows are class scores, not embeddings (export with --head "
                        "embedding for features)", self.runner.info.artifact or self.backend)
        self.normalized = _truthy(self.metadata.get("normalize", runner_kwargs.get("normalize", False)))

    def _variant_defaults(self, runner_kwargs: dict[str, Any]) -> None:
        runner_kwargs.setdefault("head", "embedding")

    def embed(self, items: Any) -> np.ndarray:
        """Images (any mix of paths, bytes, PIL images, HxWxC uint8 arrays) -> (N, D) float32. A 4-D
        float32 (N, 3, H, W) array is an already preprocessed batch."""
        return self.run(items)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """An already preprocessed batch -> (N, D) float32."""
        return self.run_batch(batch)

    def iter_embed(self, paths: Iterable[Any], on_error: OnError | None = _log_skip,
                   batch_size: int | None = None) -> Iterator[tuple[list[Any], np.ndarray]]:
        """Yield ``(paths_of_this_batch, embeddings)``; unreadable images go to ``on_error`` and are skipped."""
        return self.iter_run(paths, on_error=on_error, batch_size=batch_size)

    def __enter__(self) -> "Embedder":
        return self


__all__ = ["Embedder", "ImageModel", "PREFETCH_BATCHES", "default_device"]
