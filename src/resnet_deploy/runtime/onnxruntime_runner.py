"""ONNX Runtime runner: CPU, CUDA and TensorRT execution providers.

ONNX Runtime silently falls back to the CPU when the CUDA or TensorRT provider cannot load; after
creating the session we read ``session.get_providers()`` and fail loudly if what was asked for is
not what runs.

ONNX Runtime ships as several distributions that all install the one ``onnxruntime`` module
(``onnxruntime`` for the CPU, ``onnxruntime-gpu`` for CUDA and TensorRT, ...). With two of them
installed, whichever was installed last overwrites the other's files: ONNX Runtime documents this
as a broken install. It is detected from the installed distributions and reported with the fix.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from typing import Any

import numpy as np

from ..artifacts import modelmeta_props, onnx_precision, parse_props
from ..errors import MissingDependencyError, UsageError
from .base import Runner, RunnerInfo, TensorSpec

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

#: Distributions that provide the ``onnxruntime`` module; at most one may be installed.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                     "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-training", "ort-nightly", "ort-nightly-gpu")
#: Distributions that carry the CUDA and TensorRT execution providers.
ORT_GPU_DISTRIBUTIONS = ("onnxruntime-gpu", "ort-nightly-gpu")
_FIX = ("pip uninstall -y {names} && pip install 'resnet-deploy[{extra}]'")


def installed_distributions() -> list[str]:
    """The ONNX Runtime distributions installed in this environment (by package metadata)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def conflict_message(dists: list[str]) -> str | None:
    """The warning for several ONNX Runtime distributions installed side by side (None for 0 or 1)."""
    if len(dists) < 2:
        return None
    extra = "onnxruntime-gpu" if any(d in ORT_GPU_DISTRIBUTIONS for d in dists) else "onnxruntime"
    return (f"several ONNX Runtime packages are installed ({', '.join(dists)}); they share the 'onnxruntime' "
            f"module and the last one installed overwrites the others (the CPU package shadows the GPU one). "
            f"Keep one: {_FIX.format(names=' '.join(dists), extra=extra)}")


@functools.lru_cache(maxsize=1)
def check_distributions() -> tuple[str, ...]:
    """Warn once per process when several ONNX Runtime distributions are installed; returns them."""
    dists = installed_distributions()
    message = conflict_message(dists)
    if message:
        log.warning("%s", message)
    return tuple(dists)


def missing_provider_message(device: str, provider: str, available: list[str], version: str,
                             dists: tuple[str, ...]) -> str:
    """Why ``provider`` is not there, and what to install."""
    base = f"device '{device}' needs {provider}, but this onnxruntime ({version}) offers only {', '.join(available)}"
    if len(dists) > 1:
        return base + "; " + str(conflict_message(list(dists)))
    if dists and dists[0] not in ORT_GPU_DISTRIBUTIONS:
        return (base + f": '{dists[0]}' is the CPU package; replace it with the GPU one: "
                + _FIX.format(names=dists[0], extra="onnxruntime-gpu"))
    return base + "; install onnxruntime-gpu (pip install 'resnet-deploy[onnxruntime-gpu]') with its CUDA libraries"


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
}


def ort_dtype(type_name: str) -> np.dtype:
    """ONNX Runtime's ``tensor(float)`` ... -> the NumPy dtype (float32 for a type not listed)."""
    return np.dtype(_ORT_TYPES.get(type_name, np.float32))


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None,
                 inter_op_threads: int | None = None, optimization: str = "all",
                 provider_options: dict[str, Any] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime", "the ONNX Runtime backend",
                                         "onnxruntime-gpu" if device.startswith(("cuda", "tensorrt"))
                                         else "onnxruntime") from exc
        dists = check_distributions()
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
            raise UsageError(missing_provider_message(device, wanted[0], available, ort.__version__, dists))
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
        self.metadata = parse_props(modelmeta_props(self.session))
        self.info = RunnerInfo(backend="onnxruntime", device=dev, precision=onnx_precision(path, self.metadata),
                               artifact=path,
                               details={"providers": active, "onnxruntime": ort.__version__,
                                        "threads": threads or "default"})

    @staticmethod
    def _spec(node: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else (d or None) for d in node.shape)
        return TensorSpec(node.name, ort_dtype(node.type), shape)

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        outs = self.session.run(self._output_names, arrays)
        return dict(zip(self._output_names, outs))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
