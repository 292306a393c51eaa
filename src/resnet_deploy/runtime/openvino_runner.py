"""OpenVINO runner: the CPU fast path for the ONNX files this toolkit writes (FP32, FP16, INT8 Q/DQ).

Precision is explicit. On CPUs with bf16 support (AVX512-BF16, AMX) OpenVINO's default
``INFERENCE_PRECISION_HINT`` is bf16: an FP32 model silently runs in bf16. This runner always sets
the hint: ``f32`` unless the user asks for ``bf16`` (or ``fp16``). After compiling it reads back
what really runs (the compiled model's hint and the ``runtimePrecision`` of every layer of the
runtime model), records it in ``info``, and raises when it differs from what was asked: a user who
asks for FP32 never gets bf16.

What ``info.precision`` says (the precision class that bounds the numerical error, and so the
tolerances a parity check applies):

* ``int8``: the convolutions run in u8/i8 (a Q/DQ artifact; the non-quantized rest, e.g. the
  input quantizer and the final dequantize, runs in f32, recorded in ``details``),
* ``bf16`` / ``fp16``: the convolutions compute in that type,
* ``fp16`` as well for an FP16 artifact computed in f32 (its weights were rounded to fp16),
* ``fp32`` otherwise.

Dynamic shapes: the model is compiled once with its dynamic dims (batch, height, width); calls
with new shapes reuse the compiled model (the CPU plugin keeps a cache of shape-specialized
kernels); nothing is reshaped or recompiled per call.
"""

from __future__ import annotations

import logging
import os
import queue
from collections import Counter, deque
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import CheckFailedError, MissingDependencyError, UsageError
from .base import Runner, RunnerInfo, TensorSpec

log = logging.getLogger(__name__)

#: user precision -> OpenVINO ``INFERENCE_PRECISION_HINT`` value.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
PRECISIONS = (*PRECISION_HINTS, "int8")
#: ``hint`` -> OpenVINO ``PERFORMANCE_HINT`` value.
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
#: CPU capability (``OPTIMIZATION_CAPABILITIES``) a compute precision needs.
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
#: Layers whose execution precision decides what the model computes in.
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution")
_INT8_TYPES = ("u8", "i8")


class PrecisionMismatchError(CheckFailedError):
    """OpenVINO compiled the model in a precision other than the one asked for (exit code 1)."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError("openvino", "the OpenVINO backend", "openvino") from exc
    return openvino


def device_name(device: str) -> str:
    """``cpu`` -> ``CPU``, ``gpu`` -> ``GPU``, ``gpu:1`` -> ``GPU.1`` (OpenVINO's names; its GPUs are
    Intel GPUs)."""
    base, _, index = device.partition(":")
    base = base.strip().lower()
    if base in ("cuda", "tensorrt"):
        raise UsageError(f"OpenVINO does not run on NVIDIA devices (got device '{device}'); use --backend "
                         "tensorrt or onnxruntime for CUDA, or device 'cpu' for OpenVINO")
    names = {"cpu": "CPU", "gpu": "GPU"}
    if base not in names or (index and not index.isdigit()) or (base == "cpu" and index not in ("", "0")):
        raise UsageError(f"unknown device '{device}' for openvino; choose one of: cpu, gpu, gpu:N (Intel GPUs)")
    return names[base] + (f".{index}" if index and base == "gpu" else "")


def artifact_kind(model: Any) -> str:
    """What an ``openvino.Model`` read from ONNX holds: ``int8`` (Q/DQ: FakeQuantize or 8-bit
    constants), ``fp16`` (float16 weights) or ``fp32``."""
    ops = Counter()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant":
            ops["Constant:" + op.get_element_type().get_type_name()] += 1
        else:
            ops[kind] += 1
    if ops["FakeQuantize"] or ops["Constant:u8"] or ops["Constant:i8"]:
        return "int8"
    if ops["Constant:f16"]:
        return "fp16"
    return "fp32"


def runtime_precisions(compiled: Any) -> tuple[Counter, Counter]:
    """(``layerType:runtimePrecision`` counts over every layer, the same over compute layers only)."""
    every: Counter = Counter()
    compute: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "runtimePrecision" not in rt:
            continue
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        prec = rt["runtimePrecision"].astype(str)
        if layer in ("Const", "Input", "Output", "Parameter", "Result"):
            continue
        every[f"{layer}:{prec}"] += 1
        if layer in COMPUTE_LAYERS:
            compute[prec] += 1
    return every, compute


def _type_name(value: Any) -> str:
    """OpenVINO element types (``<Type: 'float32'>``) and strings -> ``f32``, ``bf16``..."""
    get = getattr(value, "get_type_name", None)
    return get() if callable(get) else str(value)


def _spec(port: Any) -> TensorSpec:
    pshape = port.get_partial_shape()
    shape = tuple(d.get_length() if d.is_static else None for d in pshape)
    # A port can carry several names (an FP16 artifact's output is both 'logits' and
    # '/fc/Gemm_cast_to_logits'); the graph's own name is the one without a node path.
    names = sorted(port.get_names(), key=lambda n: ("/" in n or ":" in n, len(n), n))
    name = names[0] if names else f"port{port.get_index()}"
    return TensorSpec(name, np.dtype(port.get_element_type().to_dtype()), shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _shapes(arrays: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in arrays.items())


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x)


class OpenVINORunner(Runner):
    """Run an ONNX artifact with OpenVINO.

    ``precision``: None (what the artifact is: f32 compute for FP32/FP16 artifacts, int8 for Q/DQ
    ones), ``fp32``, ``bf16``, ``fp16`` (compute precision; the CPU must support it) or ``int8``
    (the artifact must be Q/DQ). ``threads``: ``INFERENCE_NUM_THREADS``; ``hint``: ``latency`` or
    ``throughput`` (``PERFORMANCE_HINT``); ``streams``: ``NUM_STREAMS`` (an int or ``"auto"``);
    ``num_requests``: requests kept in flight by ``infer_stream`` (default: OpenVINO's optimal
    number for the compiled model); ``cache_dir``: OpenVINO's compiled-model cache.
    """

    def __init__(self, path: str | os.PathLike[str], *, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, hint: str = "latency", streams: int | str | None = None,
                 num_requests: int | None = None, cache_dir: str | os.PathLike[str] | None = None) -> None:
        ov = _openvino()
        from .._io import require_file
        from ..options import check_threads

        path = os.fspath(path)
        require_file(path, "ONNX file")
        if precision is not None and precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{precision}' for openvino; choose one of: "
                             f"{', '.join(PRECISIONS)} (or none: what the artifact is)")
        if hint not in PERFORMANCE_HINTS:
            raise UsageError(f"unknown performance hint '{hint}'; choose one of: {', '.join(PERFORMANCE_HINTS)}")
        threads = check_threads(threads)
        if num_requests is not None and int(num_requests) < 1:
            raise UsageError(f"num_requests must be >= 1, got {num_requests}")
        if streams is not None and not (str(streams).lower() == "auto" or (str(streams).isdigit()
                                                                           and int(streams) >= 1)):
            raise UsageError(f"streams must be a positive integer or 'auto', got {streams!r}")
        ov_device = device_name(device)

        self._core = ov.Core()
        available = self._core.available_devices
        if not any(d == ov_device or d.split(".")[0] == ov_device for d in available):
            raise UsageError(f"OpenVINO {ov.__version__} sees no device '{ov_device}' (for '{device}'); "
                             f"available: {', '.join(available) or 'none'}")
        if cache_dir is not None:
            self._core.set_property({"CACHE_DIR": os.fspath(cache_dir)})
        try:
            model = self._core.read_model(path)
        except Exception as exc:
            from ..artifacts import onnx_problem

            problem = onnx_problem(path)  # OpenVINO's own words for these name its source files
            if problem is not None:
                raise UsageError(f"'{path}' is not an ONNX model ({problem})") from exc
            raise UsageError(f"OpenVINO cannot read '{path}': {_first_line(exc)}") from exc
        kind = artifact_kind(model)
        wanted, precision_hint = self._resolve_precision(precision, kind, ov_device)

        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint,
                                  "PERFORMANCE_HINT": PERFORMANCE_HINTS[hint]}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams is not None:
            config["NUM_STREAMS"] = "AUTO" if str(streams).lower() == "auto" else int(streams)
        try:
            self._compiled = self._core.compile_model(model, ov_device, config)
        except Exception as exc:
            raise UsageError(f"OpenVINO cannot compile '{path}' for {ov_device} with {config}: "
                             f"{_first_line(exc)}") from exc

        used_hint = _type_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        every, compute = runtime_precisions(self._compiled)
        actual = self._actual_precision(compute, kind)
        self._check_precision(wanted, precision_hint, actual, used_hint, every, path)

        self.inputs = [_spec(p) for p in self._compiled.inputs]
        self.outputs = [_spec(p) for p in self._compiled.outputs]
        self._output_names = [o.name for o in self.outputs]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._num_requests = int(num_requests) if num_requests else None

        def prop(name: str) -> Any:
            try:
                value = self._compiled.get_property(name)
            except Exception:  # noqa: BLE001 - not every device reports every property
                return None
            return value.name.lower() if hasattr(value, "name") else value

        self.info = RunnerInfo(
            backend="openvino", device=device, precision=actual, artifact=path,
            details={"openvino": ov.__version__.split("-")[0], "ov_device": ov_device, "artifact_kind": kind,
                     "requested_precision": precision or "artifact",
                     "inference_precision_hint": used_hint,
                     "runtime_precisions": dict(sorted(every.items())),
                     "compute_precisions": dict(sorted(compute.items())),
                     "hint": hint, "streams": prop("NUM_STREAMS"), "threads": prop("INFERENCE_NUM_THREADS"),
                     "optimal_requests": prop("OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
                     "device_name": self._device_full_name(ov_device)})
        used_streams, used_threads = self.info.details["streams"], self.info.details["threads"]
        if streams is not None and str(streams).isdigit() and used_streams != int(streams):
            log.warning("asked OpenVINO for %s streams, it runs %s (with %s threads): each stream needs at "
                        "least one thread", streams, used_streams, used_threads)
        if threads is not None and used_threads not in (None, int(threads)):
            log.warning("asked OpenVINO for %s threads, it runs %s", threads, used_threads)
        log.info("openvino: %s on %s, precision %s (hint %s, compute %s)", os.path.basename(path), ov_device,
                 actual, used_hint, dict(compute))

    # -- precision -------------------------------------------------------------
    def _resolve_precision(self, precision: str | None, kind: str, ov_device: str) -> tuple[str, str]:
        """(the precision class to check the result against, OpenVINO's ``INFERENCE_PRECISION_HINT``);
        errors for requests the artifact or the device cannot meet."""
        if kind == "int8":
            if precision not in (None, "int8"):
                raise UsageError(f"the artifact is INT8 (Q/DQ); it runs as int8, not '{precision}': pass "
                                 "precision int8 (or none), or use the FP32 artifact for fp32/bf16/fp16")
            return "int8", "f32"  # the non-quantized rest (input quantizer, last dequantize) in f32
        if precision == "int8":
            raise UsageError("precision int8 needs an INT8 Q/DQ artifact (resnet-deploy calibrate writes "
                             f"<name>.int8.onnxruntime.onnx); this one is {kind}")
        wanted = precision or "fp32"
        need = _CAPABILITY.get(wanted)
        if need and ov_device.startswith("CPU"):
            caps = list(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            if need not in caps:
                if wanted == "fp16" and kind == "fp16":
                    # fp16 is what the artifact is; the CPU computes it in f32 (more exact, not less)
                    log.info("this CPU has no FP16 compute (%s): the FP16 artifact runs in f32", ", ".join(caps))
                    return "fp16", "f32"
                raise UsageError(f"precision {wanted} needs a CPU with {need} support; this CPU offers "
                                 f"{', '.join(caps)}: choose fp32" + (" or bf16" if "BF16" in caps else ""))
        return wanted, PRECISION_HINTS[wanted]

    @staticmethod
    def _actual_precision(compute: Counter, kind: str) -> str:
        if any(p in compute for p in _INT8_TYPES):
            return "int8"
        if "bf16" in compute:
            return "bf16"
        if "f16" in compute or kind == "fp16":
            return "fp16"
        return "fp32"

    @staticmethod
    def _check_precision(wanted: str, asked_hint: str, actual: str, used_hint: str, every: Counter,
                         path: str) -> None:
        """Raise PrecisionMismatchError when what was compiled is not what was asked."""
        half = sorted(k for k in every if k.endswith((":bf16", ":f16")))
        if asked_hint == "f32" and (used_hint != "f32" or half):
            raise PrecisionMismatchError(
                f"asked OpenVINO for {wanted} with f32 compute on '{path}', but the compiled model reports "
                f"inference precision {used_hint} and half-precision layers {half or 'none'}")
        if actual != wanted and not (wanted == "fp32" and actual == "fp16"):  # fp16 weights, f32 compute
            raise PrecisionMismatchError(f"asked OpenVINO for {wanted} on '{path}', but its convolutions run "
                                         f"in {actual} (inference precision {used_hint})")

    def _device_full_name(self, ov_device: str) -> str | None:
        try:
            return str(self._core.get_property(ov_device, "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001
            return None

    # -- inference -------------------------------------------------------------
    def _compiled_model(self) -> Any:
        compiled = getattr(self, "_compiled", None)
        if compiled is None:
            raise UsageError("this OpenVINO runner is closed")
        return compiled

    def _request(self) -> Any:
        """An idle InferRequest from the pool (one per concurrent caller, reused across calls)."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._compiled_model().create_infer_request()

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        self._compiled_model()
        arrays = {k: _as_array(v) for k, v in feeds.items()}
        request = self._request()
        try:
            # share_inputs: no copy of the batch; outputs are copied out of the request's buffers.
            try:
                result = request.infer(arrays, share_inputs=True, share_outputs=False)
            except RuntimeError as exc:
                raise UsageError(f"OpenVINO inference failed for {_shapes(arrays)}: {_first_line(exc)}") from exc
            return {name: np.asarray(result[i]) for i, name in enumerate(self._output_names)}
        finally:
            self._idle.put(request)

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """Results of ``batches`` in order, with up to ``num_requests`` batches in flight at once.
        Each batch is validated like ``infer``'s.

        A ring of ``num_requests`` asynchronous InferRequests: batch ``i`` goes to request
        ``i % n`` once batch ``i - n`` has been collected from it. Results come back in order
        without Python callbacks. (``openvino.AsyncInferQueue`` with a Python callback runs that
        callback on OpenVINO's worker threads under the GIL; destroying the compiled model right
        after a stream then deadlocked, 3 times in 6, with a THROUGHPUT hint in OpenVINO 2026.4.)
        """
        compiled = self._compiled_model()
        n = self._num_requests or max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        ring = [self._request() for _ in range(n)]
        in_flight: deque[tuple[Any, np.ndarray]] = deque()  # (request, the batch it reads), oldest first
        spec = self.input

        def collect() -> np.ndarray:
            request, _ = in_flight.popleft()
            try:
                request.wait()
            except RuntimeError as exc:
                raise UsageError(f"OpenVINO inference failed in a stream: {_first_line(exc)}") from exc
            return np.array(request.get_output_tensor(0).data, copy=True)

        try:
            for i, batch in enumerate(batches):
                spec.validate(batch)
                if len(in_flight) == n:
                    yield collect()
                array = _as_array(batch)
                request = ring[i % n]
                # share_inputs: OpenVINO reads the batch in place; it stays referenced until collected
                request.start_async({spec.name: array}, share_inputs=True)
                in_flight.append((request, array))
            while in_flight:
                yield collect()
        finally:
            for request, _ in in_flight:
                request.wait()
            in_flight.clear()
            for request in ring:
                self._idle.put(request)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait()
            except (queue.Empty, AttributeError):
                break
        self._compiled = None
        self._core = None
