"""The engine manifest (``<engine>.json``) and the compatibility decision made before loading.

A serialized engine only runs on the TensorRT version and the GPU architecture it was built for;
asked to load anything else, TensorRT fails with a deserialization error that names neither. The
manifest beside every engine records what the engine needs (TensorRT version, compute capability,
the compatibility options it was built with) and what it is (precision, profiles, the ONNX it came
from and that ONNX's toolkit metadata: preprocessing, variant, head). ``check_compatible`` compares
it with the machine and says what to do instead.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ... import __version__
from ..._io import write_json
from ...artifacts import engine_manifest_path
from ...errors import UsageError
from .profiles import Profile

log = logging.getLogger(__name__)

FORMAT = 1
HARDWARE_COMPATIBILITY = ("none", "ampere+", "same-compute-capability")


class IncompatibleEngineError(UsageError):
    """The engine was built for another TensorRT version or GPU architecture than this machine's."""


@dataclass(frozen=True)
class MachineInfo:
    """What decides whether an engine loads here. ``None`` where it could not be determined."""

    tensorrt: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None  # "9.0"
    cuda_driver: str | None = None  # the newest CUDA version the driver supports ("12.8")
    cuda_binding: str | None = None  # the CUDA binding and the CUDA runtime version it reports
    tensorrt_cuda: int | None = None  # the CUDA major TensorRT was built for (its distribution's name)

    @classmethod
    def probe(cls, device: int = 0, backend: Any = None) -> "MachineInfo":
        """This machine, as far as the installed packages can tell (never raises)."""
        trt_version, trt_cuda = None, None
        try:
            import tensorrt as trt

            from .builder import tensorrt_cuda_major

            trt_version, trt_cuda = str(trt.__version__), tensorrt_cuda_major(trt)
        except ImportError:
            pass
        info: dict[str, Any] = {}
        try:
            from .cuda import get_backend

            cuda = backend or get_backend()
            with cuda.activate(device):
                dev = cuda.device_info(device)
            versions = cuda.versions()
            info = {"gpu_name": dev.name, "compute_capability": dev.cc, "cuda_driver": versions.get("cuda_driver"),
                    "cuda_binding": f"{cuda.name} (CUDA runtime {versions.get('cuda_runtime')})"}
        except Exception as exc:  # noqa: BLE001 - a probe reports what it can
            log.debug("CUDA probe failed: %s", exc)
            info = _probe_torch(device)
        return cls(tensorrt=trt_version, tensorrt_cuda=trt_cuda, **info)

    def describe(self) -> str:
        parts = [f"TensorRT {self.tensorrt}" if self.tensorrt else "no TensorRT"]
        if self.compute_capability:
            parts.append(f"compute capability {self.compute_capability}"
                         + (f" ({self.gpu_name})" if self.gpu_name else ""))
        else:
            parts.append("no usable CUDA device")
        return " and ".join(parts)


def _probe_torch(device: int) -> dict[str, Any]:
    """GPU facts from torch, for a host without a CUDA binding (building needs only TensorRT)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        from .cuda import driver_cuda_version

        major, minor = torch.cuda.get_device_capability(device)
        return {"gpu_name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}",
                "cuda_driver": driver_cuda_version(), "cuda_binding": f"torch (CUDA runtime {torch.version.cuda})"}
    except Exception as exc:  # noqa: BLE001 - a probe reports what it can
        log.debug("torch CUDA probe failed: %s", exc)
        return {}


@dataclass
class EngineManifest:
    """Everything recorded beside one engine. ``metadata`` is the ONNX's toolkit metadata."""

    precision: str
    tensorrt: str
    compute_capability: str
    profiles: list[Profile]
    gpu_name: str | None = None
    cuda_driver: str | None = None  # the driver's CUDA version on the build host
    cuda_binding: str | None = None  # the CUDA binding there and the runtime version it reported
    tensorrt_cuda: int | None = None  # the CUDA major TensorRT was built for (tensorrt-cu12 / -cu13)
    engine: str | None = None
    engine_sha256: str | None = None
    onnx: str | None = None
    onnx_sha256: str | None = None
    built_at: str | None = None
    build_seconds: float | None = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    flags: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    producer: str = f"resnet-deploy {__version__}"
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profiles"] = [p.to_dict() for p in self.profiles]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineManifest":
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("precision", "tensorrt", "compute_capability", "profiles") if k not in d]
        if missing:
            raise UsageError(f"engine manifest lacks {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in known}
        if "cuda_runtime" in d and "cuda_binding" not in d:  # format 1 manifests called the binding's version so
            kw["cuda_binding"] = f"CUDA runtime {d['cuda_runtime']}"
        kw["profiles"] = [Profile.from_dict(p) for p in d["profiles"]]
        return cls(**kw)

    def save(self, engine: str | os.PathLike[str]) -> Path:
        return write_json(engine_manifest_path(engine), self.to_dict())


def read_manifest(engine: str | os.PathLike[str]) -> EngineManifest | None:
    """The manifest beside ``engine``, or None for an engine without one (built elsewhere)."""
    path = engine_manifest_path(engine)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"engine manifest '{path}' is not valid JSON: {exc}") from exc
    try:
        return EngineManifest.from_dict(data)
    except (TypeError, UsageError) as exc:
        raise UsageError(f"engine manifest '{path}' is not one this toolkit wrote: {exc}") from exc


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in str(text).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def tensorrt_compatible(built: str, here: str, version_compatible: bool) -> bool:
    """A plain engine loads only in the TensorRT release it was built with (major.minor.patch); a
    version-compatible one also in later releases of the same major version. Unknown: not judged."""
    b, h = _version_tuple(built), _version_tuple(here)
    if not b or not h:
        return True
    if version_compatible:
        return b[0] == h[0] and h[:3] >= b[:3]
    return b[:3] == h[:3]


def gpu_compatible(built_cc: str, here_cc: str, hardware_compatibility: str) -> bool:
    """``ampere+`` engines run on compute capability 8.0 and later; others need the same one.
    Unknown (a build host whose GPU could not be probed): not judged."""
    b, h = _version_tuple(built_cc), _version_tuple(here_cc)
    if not h or (not b and hardware_compatibility != "ampere+"):
        return True
    if hardware_compatibility == "ampere+":
        return h[:2] >= (8, 0)
    return b[:2] == h[:2]


def rebuild_command(manifest: EngineManifest, engine: str | os.PathLike[str] | None = None) -> str:
    """The ``resnet-deploy build`` command that makes this engine again on this machine."""
    args = ["resnet-deploy", "build", manifest.onnx or "MODEL.onnx", "--output",
            str(engine or manifest.engine or "MODEL.engine")]
    for p in manifest.profiles:
        args += ["--min-shape", "x".join(map(str, p.min)), "--opt-shape", "x".join(map(str, p.opt)),
                 "--max-shape", "x".join(map(str, p.max))]
    flags = manifest.flags or {}
    if flags.get("workspace_gib") is not None:
        args += ["--workspace", str(flags["workspace_gib"])]
    if flags.get("opt_level") is not None:
        args += ["--opt-level", str(flags["opt_level"])]
    if flags.get("timing_cache"):
        args += ["--timing-cache", str(flags["timing_cache"])]
    if flags.get("profile_copies", 1) != 1:
        args += ["--profile-copies", str(flags["profile_copies"])]
    if flags.get("tf32") is False:
        args.append("--no-tf32")
    if manifest.version_compatible:
        args.append("--version-compatible")
    if manifest.hardware_compatibility != "none":
        args += ["--hardware-compatibility", manifest.hardware_compatibility]
    return shlex.join(args)


def check_compatible(manifest: EngineManifest, machine: MachineInfo,
                     engine: str | os.PathLike[str] | None = None) -> None:
    """Raise IncompatibleEngineError (a UsageError) when ``machine`` cannot load the engine.

    The message: "this engine was built with TensorRT X for compute capability Y; this machine has
    Z: rebuild with `resnet-deploy build ...`". Facts the machine could not report are not judged.
    """
    trt_ok = machine.tensorrt is None or tensorrt_compatible(manifest.tensorrt, machine.tensorrt,
                                                             manifest.version_compatible)
    gpu_ok = machine.compute_capability is None or gpu_compatible(
        manifest.compute_capability, machine.compute_capability, manifest.hardware_compatibility)
    if trt_ok and gpu_ok:
        if (manifest.hardware_compatibility == "none" and machine.gpu_name and manifest.gpu_name
                and machine.gpu_name != manifest.gpu_name):
            log.warning("engine built on %s, running on %s (same compute capability %s): it loads, but its "
                        "kernels were timed on the other GPU", manifest.gpu_name, machine.gpu_name,
                        machine.compute_capability)
        return
    built = f"TensorRT {manifest.tensorrt}" + (" (version-compatible)" if manifest.version_compatible else "")
    target = f"compute capability {manifest.compute_capability}"
    if manifest.hardware_compatibility == "ampere+":
        target = "compute capability 8.0 or later (ampere+)"
    elif manifest.gpu_name:
        target += f" ({manifest.gpu_name})"
    raise IncompatibleEngineError(
        f"this engine was built with {built} for {target}; this machine has {machine.describe()}: "
        f"rebuild with `{rebuild_command(manifest, engine)}`")
