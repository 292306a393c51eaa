"""What the Python-backend model does with a batch of Triton requests, free of Triton itself.

The ``model.py`` written into each Python-backend entry is a thin shim: it turns Triton's requests
into arrays, calls :meth:`RequestHandler.handle`, and turns the results (an array, or an exception
for a request that failed) back into responses. The work is the shared
:class:`~resnet_deploy.pipelines.embedder.Embedder`, so Triton answers exactly what the local
``embed`` command computes.

Every request is bounded before any work is done on it: its bytes (``max_request_bytes``), a
tensor's height and width (from the export's 32 px minimum up to ``max_height``/``max_width``), and
each image's decoded pixels (``max_image_pixels``). Tensors of a large size run in fewer rows per
call, so no call sees more pixels than a full batch at the crop size. The model file must resolve
inside the entry and match the sha256 that ``triton-repo`` recorded.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...errors import UsageError

log = logging.getLogger(__name__)

INPUT_KINDS = ("tensor", "bytes")
#: Default largest tensor height/width the tensor entry accepts.
DEFAULT_MAX_SIDE = 1024
#: Default bound on one request's bytes (all its tensors' or images' bytes).
DEFAULT_MAX_REQUEST_BYTES = 64 << 20


def _positive_int(params: Mapping[str, str], key: str, default: int | None) -> int | None:
    text = str(params.get(key, "") or "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"parameter {key} must be a positive integer, got '{text}'") from None
    if value < 1:
        raise UsageError(f"parameter {key} must be a positive integer, got {value}")
    return value


@dataclass(frozen=True)
class HandlerConfig:
    """The ``parameters`` of a Python-backend entry's config.pbtxt."""

    artifact: Path
    input_kind: str = "tensor"  # tensor | bytes
    runner_backend: str = "auto"
    device: str = "cpu"
    head: str = ""
    batch_size: int = 32
    decode_workers: int | None = None
    warmup: bool = False  # run one generated PNG through decode + inference before serving
    max_height: int = DEFAULT_MAX_SIDE  # tensor entry
    max_width: int = DEFAULT_MAX_SIDE
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_image_pixels: int | None = None  # bytes entry; None: the process default (40 MP)

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], version_dir: Path,
                        device_id: int | None = None) -> "HandlerConfig":
        kind = params.get("input_kind", "tensor")
        if kind not in INPUT_KINDS:
            raise UsageError(f"parameter input_kind '{kind}' is not one of {', '.join(INPUT_KINDS)}")
        from ...artifacts import resolve_inside

        name = params.get("artifact", "model.onnx")
        resolve_inside(version_dir, name, what="parameter artifact")  # refuses ../ and links out of the entry
        artifact = version_dir / name
        if not artifact.is_file():
            raise UsageError(f"the model file '{artifact}' is missing from the repository entry")
        verify_sha256(artifact, params.get("artifact_sha256", ""))
        device = params.get("device", "cpu") or "cpu"
        if device == "cuda" and device_id is not None:
            device = f"cuda:{device_id}"
        workers = params.get("decode_workers")
        return cls(artifact=artifact, input_kind=kind, runner_backend=params.get("runner_backend", "auto") or "auto",
                   device=device, head=params.get("head", ""), batch_size=int(params.get("batch_size", 32) or 32),
                   decode_workers=int(workers) if workers else None,
                   warmup=params.get("warmup", "false").lower() == "true",
                   max_height=_positive_int(params, "max_height", DEFAULT_MAX_SIDE),
                   max_width=_positive_int(params, "max_width", DEFAULT_MAX_SIDE),
                   max_request_bytes=_positive_int(params, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES),
                   max_image_pixels=_positive_int(params, "max_image_pixels", None))


def _nbytes(data: Any) -> int:
    if isinstance(data, np.ndarray):
        return int(data.nbytes) if data.dtype != object else sum(_nbytes(x) for x in data.reshape(-1))
    return len(data) if isinstance(data, (bytes, bytearray, str, memoryview)) else 0


def verify_sha256(artifact: Path, expected: str) -> None:
    """UsageError unless ``artifact`` has the sha256 ``triton-repo`` recorded (nothing recorded: not
    checked, as for a repository written before it recorded one)."""
    from ..._io import sha256_file

    expected = (expected or "").strip().lower()
    if not expected:
        log.warning("%s: no artifact_sha256 in the entry's parameters; the model file is not verified", artifact)
        return
    actual = sha256_file(artifact)
    if actual != expected:
        raise UsageError(f"'{artifact}' does not match its entry: sha256 {actual}, config.pbtxt records {expected}; "
                         "the file was replaced after `resnet-deploy triton-repo` wrote it: write the entry again")


class RequestHandler:
    """One model instance: an Embedder (or, for a logits head, the same machinery as ImageModel)."""

    def __init__(self, cfg: HandlerConfig) -> None:
        from ..embedder import Embedder, ImageModel

        self.cfg = cfg
        cls = ImageModel if cfg.head == "logits" else Embedder
        self.model = cls(cfg.artifact, backend=cfg.runner_backend, device=cfg.device, batch_size=cfg.batch_size,
                         workers=cfg.decode_workers, max_image_pixels=cfg.max_image_pixels)
        self._pool: ThreadPoolExecutor | None = None
        if cfg.input_kind == "bytes":
            self._pool = ThreadPoolExecutor(self.model.workers, thread_name_prefix="triton-decode")
        log.info("Triton %s model on %s", cfg.input_kind, self.model.describe())
        if cfg.warmup and cfg.input_kind == "bytes":
            result = self.handle([np.array([[warmup_png(int(self.model.preprocessing.crop_size))]], dtype=object)])[0]
            if isinstance(result, Exception):
                raise result


    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.model.close()

    def __enter__(self) -> "RequestHandler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handle(self, arrays: list[np.ndarray]) -> list[np.ndarray | Exception]:
        """One array per request (``(b, 1)`` encoded images for bytes, ``(b, ...)`` tensors otherwise)
        -> one ``(b, D)`` float32 array or an exception per request, in order. A bad request fails
        alone; the others in the same batch are answered."""
        if self.cfg.input_kind == "bytes":
            return self._handle_bytes(arrays)
        return self._handle_tensors(arrays)

    # -- encoded images --------------------------------------------------------------------------------
    def _decode(self, request: int, element: int, data: Any) -> np.ndarray:
        if isinstance(data, np.ndarray):  # a 0-d object array
            data = data.item()
        if isinstance(data, str):
            data = data.encode("latin-1")
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise UsageError(f"image {element} of the request is empty or not bytes")
        try:
            return self.model.prepare(bytes(data))
        except UsageError as exc:
            raise UsageError(f"image {element} of the request: {exc}") from exc
        except Exception as exc:  # a decoder failure must not end the model instance
            raise UsageError(f"image {element} of the request: cannot decode: {type(exc).__name__}: {exc}") from exc

    def _request_too_large(self, nbytes: int) -> UsageError | None:
        if nbytes > self.cfg.max_request_bytes:
            return UsageError(f"the request holds {nbytes} bytes, more than this model accepts "
                              f"({self.cfg.max_request_bytes}, parameter max_request_bytes)")
        return None

    def _handle_bytes(self, arrays: list[np.ndarray]) -> list[np.ndarray | Exception]:
        if self._pool is None:
            raise UsageError("this model instance does not decode images")
        futures: list[list[Any] | Exception] = []
        for r, arr in enumerate(arrays):
            flat = np.asarray(arr, dtype=object).reshape(-1)
            size = sum(_nbytes(x) for x in flat)
            refused = self._request_too_large(size)
            if refused is not None:  # refused before any decoding
                futures.append(refused)
                continue
            futures.append([self._pool.submit(self._decode, r, i, x) for i, x in enumerate(flat)])
        results: list[np.ndarray | Exception] = []
        rows: list[np.ndarray] = []
        owners: list[tuple[int, int]] = []  # (request, row count)
        for r, futs in enumerate(futures):
            if isinstance(futs, Exception):
                results.append(futs)
                continue
            try:
                decoded = [f.result() for f in futs]
            except Exception as exc:  # noqa: BLE001 - becomes this request's error response
                results.append(exc)
                continue
            if not decoded:
                results.append(UsageError("the request holds no image"))
                continue
            results.append(np.empty(0))  # placeholder, filled below
            owners.append((r, len(decoded)))
            rows.extend(decoded)
        if rows:
            try:
                out = self.model.run_batch(np.stack(rows))
            except Exception as exc:  # noqa: BLE001 - every request of this batch gets the error
                for r, _ in owners:
                    results[r] = exc
                return results
            start = 0
            for r, n in owners:
                results[r] = out[start:start + n]
                start += n
        return results

    # -- tensors ---------------------------------------------------------------------------------------
    def _check_tensor(self, arr: np.ndarray) -> UsageError | None:
        """Why a tensor request is refused before it is read (its shape and size only), or None."""
        from ...shapes import MIN_SPATIAL

        refused = self._request_too_large(int(arr.nbytes))
        if refused is not None:
            return refused
        if arr.ndim != 4:
            return UsageError(f"expected a 4-D batch, got shape {'x'.join(map(str, arr.shape))}")
        h, w = (arr.shape[1], arr.shape[2]) if self.model.uint8_input else (arr.shape[2], arr.shape[3])
        if h < MIN_SPATIAL or w < MIN_SPATIAL or h > self.cfg.max_height or w > self.cfg.max_width:
            return UsageError(f"height and width must be within {MIN_SPATIAL}..{self.cfg.max_height} and "
                              f"{MIN_SPATIAL}..{self.cfg.max_width} (ResNet downsamples by 32; the entry's "
                              f"max_height/max_width), got {h}x{w}")
        return None

    def _rows_per_call(self, shape: tuple[int, ...]) -> int:
        """Rows of this shape per runner call: a full batch at the crop size holds as many pixels."""
        crop = int(self.model.preprocessing.crop_size)
        h, w = (shape[0], shape[1]) if self.model.uint8_input else (shape[1], shape[2])
        return max(1, min(self.model.batch_size, self.model.batch_size * crop * crop // max(1, h * w)))

    def _handle_tensors(self, arrays: list[np.ndarray]) -> list[np.ndarray | Exception]:
        results: list[np.ndarray | Exception] = [np.empty(0)] * len(arrays)
        groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
        for r, arr in enumerate(arrays):  # requests of one shape run as one batch
            refused = self._check_tensor(arr)
            if refused is not None:
                results[r] = refused
                continue
            groups.setdefault((tuple(arr.shape[1:]), arr.dtype.str), []).append(r)
        for (shape, _), members in groups.items():
            batch = np.concatenate([arrays[r] for r in members]) if len(members) > 1 else arrays[members[0]]
            step = self._rows_per_call(shape)
            try:
                outs = [self.model.run_batch(batch[i:i + step]) for i in range(0, len(batch), step)]
                out = outs[0] if len(outs) == 1 else np.concatenate(outs)
            except Exception as exc:  # noqa: BLE001 - the requests of this shape get the error
                for r in members:
                    results[r] = exc
                continue
            start = 0
            for r in members:
                n = len(arrays[r])
                results[r] = out[start:start + n]
                start += n
        return results


def warmup_png(size: int) -> bytes:
    """A small noise PNG, encoded: the warmup request of the bytes entry."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def from_triton_args(args: Mapping[str, Any], model_config: Mapping[str, Any]) -> RequestHandler:
    """A handler from the ``args`` Triton passes to ``TritonPythonModel.initialize``."""
    params = {k: (v.get("string_value", "") if isinstance(v, Mapping) else str(v))
              for k, v in (model_config.get("parameters") or {}).items()}
    version_dir = Path(args["model_repository"]) / str(args["model_version"])
    device_id = args.get("model_instance_device_id")
    cfg = HandlerConfig.from_parameters(params, version_dir,
                                        int(device_id) if device_id not in (None, "") else None)
    return RequestHandler(cfg)


__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_SIDE", "HandlerConfig", "INPUT_KINDS", "RequestHandler",
           "from_triton_args", "verify_sha256", "warmup_png"]
