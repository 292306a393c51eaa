"""One runner interface over every backend: torch, onnxruntime, openvino, tensorrt.

    with load_runner("exports/resnet50/resnet50.onnx") as runner:
        logits = runner.infer(batch)

Adding a backend is one module plus an entry in ``BACKENDS``. Importing this package needs NumPy
only: each backend's package (torch, onnxruntime, openvino, tensorrt) is imported when chosen, and a
missing one is one error naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..artifacts import verify_artifact
from ..errors import MissingDependencyError, UsageError
from .base import InputError, Runner, RunnerInfo, TensorSpec

log = logging.getLogger(__name__)

#: backend name -> "module:Class", imported only when chosen.
BACKENDS: dict[str, str] = {
    "torch": "resnet_deploy.runtime.torch_runner:TorchRunner",
    "onnxruntime": "resnet_deploy.runtime.onnxruntime_runner:OnnxRuntimeRunner",
    "openvino": "resnet_deploy.runtime.openvino_runner:OpenVINORunner",
    "tensorrt": "resnet_deploy.runtime.tensorrt.runner:TensorRTRunner",
}
#: backend name -> (the package its module imports at the top, the extra that installs it).
BACKEND_PACKAGES: dict[str, tuple[str, str]] = {
    "torch": ("torch", "export"),
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "openvino": ("openvino", "openvino"),
    "tensorrt": ("tensorrt", "tensorrt-cu12"),
}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKEND_CHOICES = ("auto", *BACKENDS)


def is_torch_module(obj: Any) -> bool:
    """``obj`` is a ``torch.nn.Module``, answered without importing torch (if torch was never
    imported, no object can be one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def backend_class(name: str) -> type[Runner]:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend '{name}'; choose one of: {', '.join(BACKEND_CHOICES)}")
    module, cls = BACKENDS[name].split(":")
    package, extra = BACKEND_PACKAGES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        if exc.name != package:  # only the package itself missing; anything else is a real error
            raise
        raise MissingDependencyError(package, f"the {name} backend", extra) from exc


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _refuse_non_file(text: str) -> None:
    """A path that exists but is a directory, a FIFO or a device: say so (not "unknown variant")."""
    from .._io import file_problem

    looks_like_path = os.sep in text or bool(os.altsep and os.altsep in text) or bool(Path(text).suffix)
    if looks_like_path and os.path.lexists(text):
        problem = file_problem(text)
        if problem is not None:
            raise UsageError(f"artifact '{text}' {problem}")


def choose_backend(artifact: Any, backend: str = "auto", device: str = "cpu") -> str:
    """The backend for ``artifact``: engines -> tensorrt, ONNX -> the fastest usable on this machine
    (openvino on a CPU when installed, else onnxruntime), modules and variant names -> torch."""
    if isinstance(artifact, (str, os.PathLike)):
        _refuse_non_file(os.fspath(artifact))
    if backend != "auto":
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKEND_CHOICES)}")
        return backend
    if is_torch_module(artifact):
        return "torch"
    suffix = Path(os.fspath(artifact)).suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix == ".onnx":
        if device.startswith("cuda"):
            return "onnxruntime"
        return "openvino" if openvino_available() else "onnxruntime"
    if suffix in (".pth", ".pt", ".safetensors", ".bin"):
        raise UsageError(f"'{artifact}' is a checkpoint; pass --variant V --weights {artifact} for the torch "
                         "backend")
    return "torch"  # a variant name


def _accepted(cls: type[Runner], backend: str) -> set[str]:
    names = set(inspect.signature(cls.__init__).parameters)
    if backend == "torch":
        names |= set(inspect.signature(cls.from_variant).parameters)
    return names - {"self", "args", "kwargs", "path", "model", "variant"}


def runner_options(artifact: Any, backend: str = "auto", device: str = "cpu", **options: Any) -> dict[str, Any]:
    """The subset of ``options`` (threads, precision, hint, ...) that the backend chosen for
    ``artifact`` accepts, ``None`` values dropped: CLIs pass their knobs through this."""
    chosen = choose_backend(artifact, backend, device)
    accepted = _accepted(backend_class(chosen), chosen)
    return {k: v for k, v in options.items() if v is not None and k in accepted}


def load_runner(artifact: Any, backend: str = "auto", device: str = "cpu", **kwargs: Any) -> Runner:
    """A runner for an ONNX file, an engine, an ``nn.Module``, or a variant name (+ ``weights=``)."""
    chosen = choose_backend(artifact, backend, device)
    module = is_torch_module(artifact)
    log.info("backend: %s (for %s)", chosen, "module" if module else artifact)
    cls = backend_class(chosen)
    if chosen != "torch":
        if module:
            raise UsageError(f"backend '{chosen}' needs a file, not an nn.Module")
        from .._io import require_file

        require_file(artifact, "artifact")
        verify_artifact(artifact)  # the sha256 its export manifest records, when there is one
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(kwargs) - _accepted(cls, chosen))
    if unknown:
        raise UsageError(f"backend '{chosen}' does not take option(s) {', '.join(unknown)}; it takes: "
                         + ", ".join(sorted(_accepted(cls, chosen))))
    if chosen == "torch":
        if module:
            return cls(artifact, device=device, **kwargs)
        return cls.from_variant(str(artifact), device=device, **kwargs)
    return cls(os.fspath(artifact), device=device, **kwargs)


__all__ = ["BACKENDS", "BACKEND_CHOICES", "BACKEND_PACKAGES", "ENGINE_SUFFIXES", "InputError", "Runner", "RunnerInfo",
           "TensorSpec", "backend_class", "choose_backend", "is_torch_module", "load_runner", "openvino_available",
           "runner_options"]
