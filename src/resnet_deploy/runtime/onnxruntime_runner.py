"""ONNX Runtime runner: CPU, CUDA and TensorRT execution providers.

ONNX Runtime silently falls back to the CPU when the CUDA or TensorRT provider cannot load; after
creating the session we read ``session.get_providers()`` and fail loudly if what was asked for is
not what runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..artifacts import onnx_precision
from ..errors import MissingDependencyError, UsageError
from .base import Runner, RunnerInfo, TensorSpec

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
}


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None,
                 inter_op_threads: int | None = None, optimization: str = "all",
                 provider_options: dict[str, Any] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover
            raise MissingDependencyError("onnxruntime", "the ONNX Runtime backend") from exc
        from .._io import require_file
        from ..options import check_threads

        path = os.fspath(path)
        require_file(path, "ONNX file")
        threads = check_threads(threads)
        inter_op_threads = check_threads(inter_op_threads, "inter_op_threads")
        dev = device.split(":")[0]
        if dev not in PROVIDERS:
            raise UsageError(f"unknown device '{device}' for onnxruntime; choose one of: {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[dev]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise UsageError(f"device '{device}' needs {wanted[0]}, but this onnxruntime "
                             f"({ort.__version__}) offers only {', '.join(available)}; install onnxruntime-gpu")
        so = ort.SessionOptions()
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        so.graph_optimization_level = levels[optimization]
        if threads:
            so.intra_op_num_threads = int(threads)
        if inter_op_threads:
            so.inter_op_num_threads = int(inter_op_threads)
        so.log_severity_level = 3
        providers: list[Any] = list(wanted)
        if provider_options:
            providers = [(wanted[0], provider_options)] + wanted[1:]
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=providers)
        except Exception as exc:
            from ..artifacts import onnx_problem

            problem = onnx_problem(path)
            if problem is not None:
                raise UsageError(f"'{path}' is not an ONNX model ({problem})") from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"onnxruntime cannot load '{path}': {first}") from exc
        active = self.session.get_providers()
        if active[0] != wanted[0]:
            raise UsageError(f"asked for {wanted[0]} but ONNX Runtime is running {active[0]} (it falls back "
                             "silently when a provider cannot load: check the CUDA/TensorRT libraries)")
        self.inputs = [self._spec(i) for i in self.session.get_inputs()]
        self.outputs = [self._spec(o) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self.info = RunnerInfo(backend="onnxruntime", device=dev, precision=onnx_precision(path), artifact=path,
                               details={"providers": active, "onnxruntime": ort.__version__,
                                        "threads": threads or "default"})

    @staticmethod
    def _spec(node: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else (d or None) for d in node.shape)
        return TensorSpec(node.name, np.dtype(_ORT_TYPES.get(node.type, np.float32)), shape)

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        outs = self.session.run(self._output_names, arrays)
        return dict(zip(self._output_names, outs))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
