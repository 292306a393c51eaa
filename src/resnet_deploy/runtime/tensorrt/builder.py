"""ONNX -> TensorRT engine, one code path for TensorRT 10 and 11.

Every network is strongly typed: TensorRT 11 knows nothing else, and on 10.x the
``STRONGLY_TYPED`` creation flag gives the same behaviour. The precision therefore comes from the
ONNX (FP16 graph -> FP16 engine, Q/DQ graph -> INT8 engine) and no precision flag is ever set.
The build uses only what both majors offer: ``OnnxParser``, optimization profiles, the workspace
memory pool, the builder optimization level, ``ITimingCache``, ``IProgressMonitor``,
``build_serialized_network``, and the hardware/version compatibility options.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..._io import sha256_file, write_bytes
from ...artifacts import onnx_precision, read_metadata
from ...errors import MissingDependencyError, UsageError
from ...progress import bar
from .manifest import HARDWARE_COMPATIBILITY, EngineManifest, MachineInfo
from .profiles import Profile, check_shapes, default_profiles, profiles_from_args, validate_profiles

log = logging.getLogger(__name__)
trt_log = logging.getLogger("resnet_deploy.tensorrt")  # TensorRT's own messages

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
NO_DEVICE = "no usable CUDA device"


#: The other install, named beside ``[tensorrt-cu12]`` wherever TensorRT is missing.
TENSORRT_CU13 = "or 'resnet-deploy[tensorrt-cu13]' with an R580+ driver: see nvidia-smi's CUDA version"


class EngineBuildError(UsageError):
    """TensorRT could not build the engine (the message carries TensorRT's last errors)."""


def import_tensorrt(feature: str = "TensorRT engines") -> Any:
    """``import tensorrt`` or one clear error naming the package to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError("tensorrt", feature, "tensorrt-cu12", alternative=TENSORRT_CU13) from exc
    return trt


_LOGGER: Any = None


def trt_logger(trt: Any) -> Any:
    """The process-wide TensorRT logger (TensorRT wants one), routed to ``resnet_deploy.tensorrt``:
    TensorRT's INFO goes to DEBUG (``-v`` shows it), VERBOSE to level 5. It remembers the last errors."""
    global _LOGGER
    if _LOGGER is not None:
        return _LOGGER
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.CRITICAL, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING,
              sev.INFO: logging.DEBUG, sev.VERBOSE: logging.DEBUG - 5}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                self.errors = (self.errors + [msg])[-5:]
            trt_log.log(level, "%s", msg)

    _LOGGER = _Logger()
    return _LOGGER


def tensorrt_cuda_major(trt: Any = None) -> int | None:
    """The CUDA major TensorRT was built for, from the installed distribution's name (``tensorrt-cu12``,
    ``tensorrt-cu13``, or their ``-bindings``/``-libs`` parts) whose version is the imported one's."""
    import re
    from importlib import metadata

    version = str(getattr(trt, "__version__", "")) if trt is not None else ""
    found: set[int] = set()
    for dist in metadata.distributions():
        m = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_](?:bindings|libs))?", str(dist.metadata["Name"] or "").lower())
        if m and (not version or dist.version.split(".post")[0] == version.split(".post")[0]):
            found.add(int(m.group(1)))
    return found.pop() if len(found) == 1 else None


def create_builder(trt: Any) -> Any:
    """``trt.Builder`` or a plain error: without a usable CUDA device its constructor raises
    ``TypeError: pybind11::init(): factory function returned nullptr`` after a CUDA log line. When the
    driver is older than the CUDA TensorRT was built for, the error names the packages to install."""
    try:
        return trt.Builder(trt_logger(trt))
    except TypeError as exc:
        from .cuda import driver_cuda_version, driver_hint

        last = trt_logger(trt).errors[-1:] or [str(exc)]
        hint = driver_hint(tensorrt_cuda_major(trt), driver_cuda_version())
        raise UsageError(f"TensorRT {trt.__version__} cannot create a builder: {NO_DEVICE} ({last[0]}){hint}") \
            from exc


def tensorrt_usable(device: int = 0, *, purpose: str = "run") -> tuple[bool, str]:
    """Whether engines can be built (``purpose='build'``: TensorRT and a device) or built and run
    (``'run'``: also a CUDA binding for the runner) here: ``(True, 'TensorRT X on ...')`` or
    ``(False, reason)``."""
    if purpose not in ("build", "run"):
        raise UsageError(f"purpose must be 'build' or 'run', got '{purpose}'")
    try:
        trt = import_tensorrt()
    except MissingDependencyError:
        return False, ("TensorRT is not installed (pip install 'resnet-deploy[tensorrt-cu12]' or "
                       "'resnet-deploy[tensorrt-cu13]': see nvidia-smi's CUDA version)")
    from .cuda import available_backends, get_backend

    if not available_backends():
        if purpose == "run":
            return False, ("running engines needs a CUDA binding: pip install 'resnet-deploy[tensorrt-cu12]' or "
                           "[tensorrt-cu13] (cuda-python), or pycuda")
        if device != 0:
            return False, f"selecting cuda:{device} for a build needs cuda-python (or set CUDA_VISIBLE_DEVICES)"
        try:
            create_builder(trt)
        except UsageError as exc:
            return False, str(exc)
        return True, f"TensorRT {trt.__version__} (builds only: no CUDA binding to run engines)"
    try:
        cuda = get_backend()
    except MissingDependencyError as exc:
        return False, str(exc)
    try:
        count = cuda.device_count()
    except UsageError as exc:
        from .cuda import binding_cuda_major, driver_cuda_version, driver_hint

        return False, f"{NO_DEVICE}: {exc}{driver_hint(binding_cuda_major(), driver_cuda_version())}"
    if count <= device:
        return False, f"{NO_DEVICE}: CUDA reports {count} device(s), device {device} was asked for"
    try:
        with cuda.activate(device):
            create_builder(trt)
            dev = cuda.device_info(device)
    except UsageError as exc:
        return False, str(exc)
    return True, f"TensorRT {trt.__version__} on {dev.name} (compute capability {dev.cc}, {cuda.name})"


@dataclass(frozen=True)
class BuildConfig:
    """How an engine is built. Precision is not here: it comes from the ONNX (strong typing)."""

    profiles: tuple[Profile, ...] = field(default_factory=lambda: tuple(default_profiles()))
    workspace_gib: float | None = None  # None: TensorRT's default (the device's memory)
    opt_level: int | None = None  # builder optimization level 0..5; None: TensorRT's default (3)
    timing_cache: Path | None = None  # loaded when present, saved after the build
    version_compatible: bool = False
    hardware_compatibility: str = "none"  # none | ampere+ | same-compute-capability
    profile_copies: int = 1  # each profile this many times: one per thread running the engine at once
    tf32: bool = True  # TensorRT's default; FP32 layers may use TF32 tensor cores
    device: int = 0

    @classmethod
    def from_options(cls, *, min_shapes: Sequence[str] | None = None, opt_shapes: Sequence[str] | None = None,
                     max_shapes: Sequence[str] | None = None, **fields: Any) -> "BuildConfig":
        """From CLI-style options: ``--min/--opt/--max-shape`` strings plus any field of this class."""
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise UsageError(f"unknown engine option(s) {', '.join(sorted(unknown))}; known: min_shapes, "
                             f"opt_shapes, max_shapes, {', '.join(cls.__dataclass_fields__)}")
        if fields.get("timing_cache") is not None:
            fields["timing_cache"] = Path(fields["timing_cache"])
        profiles = tuple(profiles_from_args(min_shapes, opt_shapes, max_shapes))
        return cls(profiles=profiles, **fields)

    def validate(self) -> None:
        validate_profiles(self.profiles)
        if self.workspace_gib is not None and not self.workspace_gib > 0:
            raise UsageError(f"--workspace must be a positive number of GiB, got {self.workspace_gib}")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise UsageError(f"--opt-level must be 0..5 (TensorRT's builder optimization level), got {self.opt_level}")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise UsageError(f"unknown --hardware-compatibility '{self.hardware_compatibility}'; choose one of: "
                             + ", ".join(HARDWARE_COMPATIBILITY))
        if not 1 <= self.profile_copies <= 16:
            raise UsageError(f"--profile-copies must be 1..16, got {self.profile_copies}")
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise UsageError(f"--timing-cache '{self.timing_cache}' is a directory; give a file path")
        if self.device < 0:
            raise UsageError(f"device must be >= 0, got {self.device}")

    def flags(self) -> dict[str, Any]:
        """The options recorded in the engine manifest (and used to rebuild it)."""
        return {"workspace_gib": self.workspace_gib, "opt_level": self.opt_level,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                "profile_copies": self.profile_copies, "tf32": self.tf32, "strongly_typed": True}


@dataclass
class EngineBuildResult:
    engine: Path
    manifest_path: Path
    manifest: EngineManifest
    build_seconds: float
    timing_cache: Path | None = None
    timing_cache_loaded: bool = False

    @property
    def precision(self) -> str:
        return self.manifest.precision

    def to_dict(self) -> dict[str, Any]:
        return {"engine": str(self.engine), "manifest": str(self.manifest_path), "precision": self.precision,
                "build_seconds": self.build_seconds, "size_bytes": self.engine.stat().st_size,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                "timing_cache_loaded": self.timing_cache_loaded, "tensorrt": self.manifest.tensorrt,
                "compute_capability": self.manifest.compute_capability,
                "profiles": [p.to_dict() for p in self.manifest.profiles]}


def _parse_errors(parser: Any) -> str:
    """The parser's errors, each with the ONNX node name and operator when TensorRT reports them."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name, op, index = err.node_name(), err.node_operator(), err.node()
        code = err.code()
        if name:
            where = f"node '{name}'" + (f" ({op})" if op else "")
        elif isinstance(index, int) and index >= 0:
            where = f"node #{index}" + (f" ({op})" if op else "")
        else:
            where = "graph"
        lines.append(f"{where}: {err.desc()} [{getattr(code, 'name', code)}]")
    return "; ".join(lines) or "no details from the parser"


def _progress_monitor(trt: Any) -> Any:
    """An ``IProgressMonitor`` that drives one progress bar per build phase (builds take minutes)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}
            self.depth: dict[str, int] = {}
            self.cancelled = False
            self.timing_cache: Any = None

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
                trt_log.debug("build phase %s (%d steps)", phase_name, num_steps)
                self.bars[phase_name] = bar(total=max(int(num_steps), 1), unit="step",
                                            desc="  " * self.depth[phase_name] + phase_name)
            except KeyboardInterrupt:
                self.cancelled = True

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                b = self.bars.get(phase_name)
                if b is not None:
                    b.update(min(int(step) + 1, b.total) - b.n)
            except KeyboardInterrupt:
                self.cancelled = True
            return not self.cancelled  # False cancels the build

        def phase_finish(self, phase_name: str) -> None:
            b = self.bars.pop(phase_name, None)
            if b is not None:
                b.close()

    return _Monitor()


def _dtype_name(trt: Any, dt: Any) -> str:
    import numpy as np

    try:
        return np.dtype(trt.nptype(dt)).name
    except (TypeError, KeyError):
        return str(dt).split(".")[-1].lower()


def _tensor_info(trt: Any, t: Any) -> dict[str, Any]:
    return {"name": t.name, "dtype": _dtype_name(trt, t.dtype), "shape": [int(d) for d in t.shape]}


def _timing_cache(config: Any, path: Path | None) -> tuple[Any, bool]:
    """The timing cache for ``config`` and whether one was loaded from ``path``. Like Polygraphy: a cache
    TensorRT cannot read (``create_timing_cache`` returns None: corrupt, or another TensorRT version) or
    refuses (``set_timing_cache`` returns False: another GPU) is replaced by an empty one with a warning;
    when even that fails, the build goes on without a cache."""
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    if data:
        cache = config.create_timing_cache(data)
        if cache is None:
            log.warning("timing cache '%s' cannot be read (corrupt, or written by another TensorRT version); "
                        "starting an empty one", path)
        elif not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("timing cache '%s' was made by another TensorRT version or GPU; starting an empty one", path)
        else:
            log.info("timing cache loaded: %s (%.1f kB)", path, len(data) / 1e3)
            return cache, True
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("TensorRT could not set up an empty timing cache; building without one")
        return None, False
    return cache, False


def _configure(trt: Any, builder: Any, network: Any, cfg: BuildConfig) -> tuple[Any, Any, bool]:
    """The builder config (profiles, memory, optimization level, compatibility, timing cache, progress
    monitor), the monitor, and whether a timing cache was loaded."""
    config = builder.create_builder_config()
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise UsageError(f"the network has {network.num_inputs} inputs ({', '.join(names)}); profiles here "
                         "describe one NCHW image input")
    inp = network.get_input(0)
    declared = [int(d) for d in inp.shape]
    validate_profiles(cfg.profiles, input_shape=[d if d >= 0 else None for d in declared])
    for _ in range(cfg.profile_copies):
        for p in cfg.profiles:
            profile = builder.create_optimization_profile()
            profile.set_shape(inp.name, p.min, p.opt, p.max)
            config.add_optimization_profile(profile)
    if cfg.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * 2**30))
    if cfg.opt_level is not None:
        config.builder_optimization_level = int(cfg.opt_level)
    if not cfg.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if cfg.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if cfg.hardware_compatibility != "none":
        levels = {"ampere+": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
                  "same-compute-capability": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY}
        config.hardware_compatibility_level = levels[cfg.hardware_compatibility]
    cache, loaded = _timing_cache(config, cfg.timing_cache)
    monitor = _progress_monitor(trt)
    config.progress_monitor = monitor
    monitor.timing_cache = cache  # the config refers to both: keep them alive as long as it is
    return config, monitor, loaded


@contextlib.contextmanager
def _on_device(device: int) -> Iterator[None]:
    """Make ``device`` the calling thread's current CUDA device (``cudaSetDevice``) for a build. Without a
    CUDA binding only the default device can be used (CUDA_VISIBLE_DEVICES picks another)."""
    from .cuda import available_backends, get_backend

    if not available_backends():
        if device != 0:
            raise UsageError(f"building on cuda:{device} needs cuda-python to select the device "
                             f"(pip install 'resnet-deploy[tensorrt-cu12]' or [tensorrt-cu13]), or run with "
                             f"CUDA_VISIBLE_DEVICES={device} and device 0")
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(get_backend().activate(device))
        except UsageError as exc:
            from .cuda import binding_cuda_major, driver_cuda_version, driver_hint

            raise UsageError(f"cannot build on cuda:{device}: {NO_DEVICE} ({exc})"
                             f"{driver_hint(binding_cuda_major(), driver_cuda_version())}") from exc
        yield


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str],
                 config: BuildConfig | None = None, *, metadata: dict[str, Any] | None = None) -> EngineBuildResult:
    """Build ``engine_path`` from ``onnx_path`` and write ``<engine>.json`` beside it.

    ``metadata`` (default: the ONNX's toolkit metadata, with its preprocessing record) goes into the
    manifest so runners and embedders find the preprocessing. Raises UsageError for bad input or
    when TensorRT or a GPU is missing, EngineBuildError when TensorRT fails.
    """
    cfg = config or BuildConfig()
    cfg.validate()  # before any TensorRT work
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise UsageError(f"ONNX file '{onnx_path}' does not exist")
    if engine_path.suffix.lower() == ".onnx":
        raise UsageError(f"--output '{engine_path}' ends in .onnx; engines are written as .engine or .plan")
    meta = dict(read_metadata(onnx_path) if metadata is None else metadata)
    if str(meta.get("input_layout", "NCHW")).startswith("NHWC"):
        raise UsageError(f"'{onnx_path}' takes uint8 NHWC images (fused preprocessing); engine profiles here are "
                         "NCHW: export without --fuse-preprocess to build an engine")
    precision = onnx_precision(onnx_path, meta)
    trt = import_tensorrt("building TensorRT engines")
    with _on_device(cfg.device):  # the builder times kernels on, and the manifest describes, this GPU
        builder = create_builder(trt)
        flag = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED  # always on in 11 (deprecated there), opt-in in 10
        network = builder.create_network(1 << int(flag))
        parser = trt.OnnxParser(network, trt_logger(trt))
        if not parser.parse_from_file(str(onnx_path)):
            raise UsageError(f"TensorRT {trt.__version__} cannot parse '{onnx_path}': {_parse_errors(parser)}")
        bconfig, monitor, loaded = _configure(trt, builder, network, cfg)
        log.info("building a %s engine from %s with TensorRT %s on cuda:%d (%d profile(s)%s); this takes minutes",
                 precision, onnx_path.name, trt.__version__, cfg.device, len(cfg.profiles) * cfg.profile_copies,
                 ", timing cache loaded" if loaded else "")
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, bconfig)
        seconds = round(time.perf_counter() - t0, 2)
    if serialized is None and monitor.cancelled:
        raise KeyboardInterrupt  # Ctrl-C during the build: the monitor cancelled it; the CLI exits 130
    if serialized is None:
        errors = "; ".join(trt_logger(trt).errors[-3:]) or "no error message (run with -v for TensorRT's log)"
        reason = "cancelled" if monitor.cancelled else "failed"
        raise EngineBuildError(f"TensorRT {trt.__version__} {reason} building '{engine_path}' from "
                               f"'{onnx_path}': {errors}")
    write_bytes(engine_path, memoryview(serialized).tobytes())
    if cfg.timing_cache is not None:
        cache = bconfig.get_timing_cache()
        if cache is None:
            log.warning("TensorRT returned no timing cache; '%s' was not written", cfg.timing_cache)
        else:
            write_bytes(cfg.timing_cache, memoryview(cache.serialize()).tobytes())
    machine = MachineInfo.probe(cfg.device)
    meta["precision"] = precision
    manifest = EngineManifest(
        precision=precision, tensorrt=str(trt.__version__), tensorrt_cuda=tensorrt_cuda_major(trt),
        compute_capability=machine.compute_capability or "unknown", profiles=list(cfg.profiles) * cfg.profile_copies,
        gpu_name=machine.gpu_name, cuda_driver=machine.cuda_driver, cuda_binding=machine.cuda_binding,
        engine=engine_path.name, engine_sha256=sha256_file(engine_path), onnx=str(onnx_path),
        onnx_sha256=sha256_file(onnx_path), built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=seconds, hardware_compatibility=cfg.hardware_compatibility,
        version_compatible=cfg.version_compatible, flags=cfg.flags(),
        inputs=[_tensor_info(trt, network.get_input(i)) for i in range(network.num_inputs)],
        outputs=[_tensor_info(trt, network.get_output(i)) for i in range(network.num_outputs)], metadata=meta)
    manifest_path = manifest.save(engine_path)
    log.info("engine written: %s (%.1f MB, %.1fs)", engine_path, engine_path.stat().st_size / 1e6, seconds)
    return EngineBuildResult(engine=engine_path, manifest_path=manifest_path, manifest=manifest,
                             build_seconds=seconds, timing_cache=cfg.timing_cache, timing_cache_loaded=loaded)


def engine_check_shapes(profiles: Sequence[Profile]) -> list[tuple[int, ...]]:
    """Min, opt, max and an off-grid shape of every distinct profile."""
    shapes: list[tuple[int, ...]] = []
    for p in dict.fromkeys(profiles):
        shapes += [s for s in check_shapes(p) if s not in shapes]
    return shapes


def check_engine(engine: str | os.PathLike[str], reference: Any, *, shapes: Sequence[Sequence[int]] | None = None,
                 seed: int = 0, device: str = "cuda:0", backend: str | None = None,
                 update_manifest: bool = True) -> Any:
    """Parity of ``engine`` against ``reference`` (an ONNX path, run on ONNX Runtime, or any Runner)
    at min, opt, max and an off-grid shape of each profile. The result goes into the manifest."""
    from ...parity import compare, seeded_inputs, tolerances_for
    from ..base import Runner
    from .manifest import read_manifest
    from .runner import TensorRTRunner

    manifest = read_manifest(engine)
    if shapes is None:
        if manifest is None:
            raise UsageError(f"'{engine}' has no manifest; pass the shapes to check")
        shapes = engine_check_shapes(manifest.profiles)
    shapes = [tuple(int(d) for d in s) for s in shapes]
    with TensorRTRunner(engine, device=device, backend=backend) as cand:
        precision = cand.info.precision
        # TF32 has FP16's 10-bit mantissa: an FP32 engine that may use it is held to FP16's bars
        tf32 = precision == "fp32" and (manifest is None or manifest.flags.get("tf32", True))
        tol = tolerances_for("fp16" if tf32 else precision if precision in PRECISIONS else "fp32")
        if isinstance(reference, Runner):
            report = compare(reference, cand, seeded_inputs(shapes, seed), precision=precision, tolerances=tol)
        else:
            from ..onnxruntime_runner import OnnxRuntimeRunner
            import onnxruntime as ort

            ort_device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
            with OnnxRuntimeRunner(reference, device=ort_device) as ref:
                report = compare(ref, cand, seeded_inputs(shapes, seed), precision=precision, tolerances=tol)
    if update_manifest and manifest is not None:
        manifest.parity = {"passed": report.passed, "reference": report.reference, "worst": report.worst(),
                           "shapes": [list(s) for s in shapes], "tolerances": tol.to_dict(), "seed": seed}
        manifest.save(engine)
    return report


__all__ = ["BuildConfig", "EngineBuildError", "EngineBuildResult", "build_engine", "check_engine",
           "create_builder", "engine_check_shapes", "import_tensorrt", "onnx_precision", "tensorrt_cuda_major",
           "tensorrt_usable",
           "trt_logger"]
