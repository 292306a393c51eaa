"""What to time: the toolkit's runners and their peers, side by side in one run.

``plan_targets(Selection(...))`` turns a variant and/or artifact paths, backends, precisions and
``peers=True`` into ``Target``s (runner factories). Nothing heavy happens here: exporting the ONNX
(and the FP16, INT8 and engine artifacts) happens once, lazily, when the first target that needs
it is opened, through ``resnet_deploy.export.export_model`` into ``workdir``. A combination that
cannot run (INT8 in PyTorch eager, FP16 on a CPU execution provider, TensorRT without CUDA...) is
not an error: it becomes a note, and so does a peer whose package is missing.

Backends: ``torch`` (eager), ``torch-compile`` (``torch.compile``, inductor), ``onnxruntime``,
``openvino`` (the same ONNX, read by the runtime a CPU user would otherwise pick) and ``tensorrt``.
Precisions: ``fp32``, ``fp16``, ``bf16``, ``int8``.

Peers (``peers=True``): on a CPU, PyTorch eager FP32, PyTorch BF16 autocast, ``torch.compile``
FP32, ONNX Runtime FP32 and OpenVINO FP32 and BF16 (OpenVINO's own default on CPUs with native
BF16) on the same ONNX, plus the INT8 artifact in ONNX Runtime and OpenVINO when ``int8`` is among
the precisions; on CUDA, PyTorch FP32 and FP16, ONNX Runtime's CUDA provider, and TensorRT FP16.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import read_metadata
from ..errors import ResnetDeployError, UsageError
from ..runtime import ENGINE_SUFFIXES
from ..runtime.base import Runner
from .harness import Target

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-compile", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
ONNX_BACKENDS = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Selection:
    """What to benchmark. ``variant`` and/or ``artifacts``; ``workdir`` holds what bench exports
    (a manifest there whose variant and weights match is reused instead of exporting again)."""

    variant: str | None = None
    weights: str = "random"
    artifacts: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("torch", "onnxruntime")
    precisions: tuple[str, ...] = ("fp32",)
    peers: bool = False
    device: str = "cpu"
    threads: int | None = None
    workdir: Path | None = None
    exporter: str = "dynamo"
    int8_options: dict[str, Any] = field(default_factory=dict)  # CalibrationConfig fields for the INT8 export

    def __post_init__(self) -> None:
        for b in self.backends:
            if b not in BACKENDS:
                raise UsageError(f"unknown backend '{b}'; choose one of: {', '.join(BACKENDS)}")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise UsageError(f"unknown precision '{p}'; choose one of: {', '.join(PRECISIONS)}")
        if not self.variant and not self.artifacts:
            raise UsageError("give --variant V and/or artifact paths to benchmark")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise UsageError(f"unknown device '{self.device}'; choose one of: cpu, cuda, cuda:N")
        for a in self.artifacts:
            if not os.path.isfile(a):
                raise UsageError(f"artifact '{a}' does not exist")
        if self.variant:
            from ..models import resolve_variant

            resolve_variant(self.variant)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass
class Plan:
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, target: Target) -> None:
        if all(t.label != target.label for t in self.targets):
            self.targets.append(target)


def precision_of_name(path: str | os.PathLike[str]) -> str:
    """``resnet50.int8.onnxruntime.onnx`` -> int8, ``resnet50.fp16.engine`` -> fp16, else fp32."""
    parts = Path(path).name.lower().split(".")
    for p in ("int8", "fp16", "bf16"):
        if p in parts[1:]:
            return p
    return "fp32"


def unsupported(backend: str, precision: str, cuda: bool) -> str | None:
    """Why ``backend`` cannot run ``precision`` here, or None when it can."""
    if backend in ("torch", "torch-compile"):
        if precision == "int8":
            return "PyTorch eager has no INT8 path in this toolkit; the INT8 ONNX runs in onnxruntime and openvino"
        if precision == "fp16" and not cuda:
            return "FP16 on the CPU is not a deployment path (no fast FP16 kernels); use bf16"
    if backend == "onnxruntime":
        if precision == "bf16":
            return "this toolkit writes no BF16 ONNX; BF16 on the CPU runs in openvino and torch"
        if precision == "fp16" and not cuda:
            return "ONNX Runtime's CPU provider has no fast FP16 convolutions; use --device cuda, or openvino"
    if backend == "openvino" and cuda:
        return "OpenVINO does not run on NVIDIA GPUs"
    if backend == "tensorrt":
        if not cuda:
            return "TensorRT needs an NVIDIA GPU (--device cuda)"
        if precision in ("fp32", "bf16"):
            return "the export builds FP16 and INT8 engines only; pass an FP32 engine's path to time one"
    return None


class _Exports:
    """The artifacts of one variant in ``workdir``, exported once on first use (thread-safe)."""

    def __init__(self, sel: Selection, want: set[str]) -> None:
        self.sel = sel
        self.want = want  # keys: fp32, fp16, int8.onnxruntime, engine.fp16, engine.int8
        self.paths: dict[str, Path] = {}
        self.errors: dict[str, str] = {}
        self._done = False
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        with self._lock:
            if not self._done:
                self._ensure()
                self._done = True
        if key in self.paths:
            return self.paths[key]
        raise UsageError(self.errors.get(key) or f"the export made no '{key}' artifact")

    def _reuse(self, stem: str) -> dict[str, Path] | None:
        manifest = Path(self.sel.workdir or ".") / "manifest.json"
        if not manifest.is_file():
            return None
        try:
            data = json.loads(manifest.read_text())
        except ValueError:
            return None
        source = str((data.get("weights") or {}).get("source", ""))
        from ..models import resolve_variant

        if data.get("variant") != resolve_variant(self.sel.variant or "").name or not (
                source == self.sel.weights or source.startswith(self.sel.weights + ":")):
            return None
        found: dict[str, Path] = {}
        for a in data.get("artifacts", []):
            p = manifest.parent / a.get("path", "")
            if not p.is_file() or not p.name.startswith(stem + "."):
                continue
            if p.suffix == ".onnx":
                prec = a.get("precision")
                key = f"int8.{a.get('backend')}" if prec == "int8" else prec
            elif p.suffix in ENGINE_SUFFIXES:
                key = f"engine.{a.get('precision')}"
            else:
                continue
            found[str(key)] = p
        return found if self.want <= set(found) else None

    def _ensure(self) -> None:
        from ..export import ExportConfig, export_model

        cfg = ExportConfig(variant=str(self.sel.variant), weights=self.sel.weights, output_dir=self.sel.workdir,
                           exporter=self.sel.exporter, fp16="fp16" in self.want or "engine.fp16" in self.want,
                           int8=any(k.startswith("int8") or k == "engine.int8" for k in self.want),
                           engine="auto" if any(k.startswith("engine.") for k in self.want) else "never",
                           int8_options=dict(self.sel.int8_options))
        reused = self._reuse(cfg.stem)
        if reused is not None:
            log.info("bench: reusing the artifacts in %s", self.sel.workdir)
            self.paths = reused
            return
        log.info("bench: exporting %s (%s) into %s", cfg.stem, ", ".join(sorted(self.want)), self.sel.workdir)
        if cfg.int8 and str(cfg.int8_options.get("calib_data", "")).startswith("synthetic"):
            log.info("bench: INT8 calibrated on synthetic data: the same speed as real data, no accuracy claim")
        error = None
        try:
            result = export_model(cfg)
            self.paths = {k: Path(v) for k, v in result.artifacts.items()}
            for note in result.notes:
                log.info("export: %s", note)
        except ResnetDeployError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the calibration package is not there: skip INT8 only
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.debug("export failed", exc_info=True)
        if error is not None:
            log.warning("bench: export stopped: %s", error)
            self.paths = self._reuse_files(cfg.stem)
            for key in self.want - set(self.paths):
                self.errors[key] = f"no '{key}' artifact: the export stopped: {error}"

    def _reuse_files(self, stem: str) -> dict[str, Path]:
        """What an export that stopped part way left behind (a parity failure keeps its artifacts)."""
        d = Path(self.sel.workdir or ".")
        names = {"fp32": f"{stem}.onnx", "fp16": f"{stem}.fp16.onnx", "int8.onnxruntime": f"{stem}.int8.onnxruntime.onnx",
                 "engine.fp16": f"{stem}.fp16.engine", "engine.int8": f"{stem}.int8.engine"}
        return {k: d / n for k, n in names.items() if (d / n).is_file()}


class _Model:
    """The PyTorch model of the variant, built once; each torch target runs its own copy."""

    def __init__(self, sel: Selection) -> None:
        self.sel = sel
        self._model: Any = None
        self._lock = threading.Lock()

    def copy(self) -> Any:
        with self._lock:
            if self._model is None:
                from ..models import create_model

                self._model, self.weights = create_model(str(self.sel.variant), weights=self.sel.weights)
        return copy.deepcopy(self._model)


def _torch_target(sel: Selection, model: _Model, backend: str, precision: str) -> Target:
    def make() -> Runner:
        from ..runtime.torch_runner import TorchRunner

        return TorchRunner(model.copy(), device=sel.device, precision=precision, threads=sel.threads,
                           compile=backend == "torch-compile", label=f"{sel.variant} ({sel.weights})")

    return Target(f"{backend}:{precision}", backend, precision, make, device=sel.device, variant=sel.variant)


def _onnx_runner(backend: str, path: str, precision: str | None, sel: Selection) -> Runner:
    if backend == "onnxruntime":
        from ..runtime.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, device=sel.device, threads=sel.threads)
    from ..runtime import backend_class

    return backend_class(backend)(path, device=sel.device, precision=precision, threads=sel.threads)


def _export_target(sel: Selection, exports: _Exports, backend: str, precision: str) -> Target:
    key = {"fp32": "fp32", "bf16": "fp32", "fp16": "fp16", "int8": "int8.onnxruntime"}[precision]
    if backend == "tensorrt":
        key = f"engine.{precision}"

    def make() -> Runner:
        path = str(exports.path(key))
        if backend == "tensorrt":
            from ..runtime import backend_class

            return backend_class("tensorrt")(path, device=sel.device)
        # OpenVINO: the FP16 artifact computes in f32 unless asked otherwise; say what was asked
        ov_precision = precision if backend == "openvino" else None
        return _onnx_runner(backend, path, ov_precision, sel)

    return Target(f"{backend}:{precision}", backend, precision, make, device=sel.device, variant=sel.variant)


def _artifact_targets(sel: Selection, plan: Plan) -> None:
    rows: list[tuple[str, str, str]] = []  # (backend, precision, path)
    for a in sel.artifacts:
        prec = precision_of_name(a)
        if Path(a).suffix.lower() in ENGINE_SUFFIXES:
            rows.append(("tensorrt", prec, a))
            continue
        if Path(a).suffix.lower() != ".onnx":
            raise UsageError(f"'{a}' is neither an ONNX file nor a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})")
        backends = [b for b in sel.backends if b in ONNX_BACKENDS] or ["onnxruntime"]
        if sel.peers:
            backends = list(dict.fromkeys([*backends, *ONNX_BACKENDS]))
        for b in backends:
            rows.append((b, prec, a))
            if sel.peers and b == "openvino" and prec == "fp32" and not sel.cuda:
                rows.append((b, "bf16", a))
    counts: dict[str, int] = {}
    for b, p, _ in rows:
        counts[f"{b}:{p}"] = counts.get(f"{b}:{p}", 0) + 1
    for b, p, a in rows:
        why = unsupported(b, p, sel.cuda)
        label = f"{b}:{p}" + (f" [{Path(a).name}]" if counts[f"{b}:{p}"] > 1 else "")
        if why and not (b == "tensorrt" and p == "fp32"):  # an explicit FP32 engine is fine
            plan.notes.append(f"{label}: skipped: {why}")
            continue
        variant = _variant_of(a)

        def make(b: str = b, p: str = p, a: str = a) -> Runner:
            if b == "tensorrt":
                from ..runtime import backend_class

                return backend_class("tensorrt")(a, device=sel.device)
            return _onnx_runner(b, a, p if (b == "openvino" and p == "bf16") else None, sel)

        plan.add(Target(label, b, p, make, device=sel.device, variant=variant, artifact=a))


def _variant_of(artifact: str) -> str | None:
    """The variant recorded in an artifact's metadata (for its MAC count), if any."""
    try:
        value = read_metadata(artifact).get("variant")
    except UsageError:
        return None
    return str(value) if value else None


def _peer_combos(sel: Selection) -> list[tuple[str, str]]:
    if sel.cuda:
        combos = [("torch", "fp32"), ("torch", "fp16"), ("onnxruntime", "fp32"), ("tensorrt", "fp16")]
        if "int8" in sel.precisions:
            combos.append(("tensorrt", "int8"))
        return combos
    combos = [("torch", "fp32"), ("torch", "bf16"), ("torch-compile", "fp32"), ("onnxruntime", "fp32"),
              ("openvino", "fp32"), ("openvino", "bf16")]
    if "int8" in sel.precisions:
        combos += [("onnxruntime", "int8"), ("openvino", "int8")]
    return combos


def plan_targets(sel: Selection) -> Plan:
    """The targets of a benchmark run, and notes for the combinations that cannot run here."""
    plan = Plan()
    if sel.variant:
        combos = [(b, p) for b in sel.backends for p in sel.precisions]
        if sel.peers:
            combos = list(dict.fromkeys([*combos, *_peer_combos(sel)]))
        runnable = []
        for b, p in combos:
            why = unsupported(b, p, sel.cuda)
            if why:
                plan.notes.append(f"{b}:{p}: skipped: {why}")
            else:
                runnable.append((b, p))
        want = set()
        for b, p in runnable:
            if b in ONNX_BACKENDS:
                want.add({"fp32": "fp32", "bf16": "fp32", "fp16": "fp16", "int8": "int8.onnxruntime"}[p])
            elif b == "tensorrt":
                want.add(f"engine.{p}")
        exports = _Exports(sel, want) if want else None
        model = _Model(sel)
        for b, p in runnable:
            if b in ("torch", "torch-compile"):
                plan.add(_torch_target(sel, model, b, p))
            else:
                plan.add(_export_target(sel, exports, b, p))  # type: ignore[arg-type]
    elif sel.peers:
        plan.notes.append("PyTorch peers: skipped: they need --variant")
    if sel.artifacts:
        _artifact_targets(sel, plan)
    return plan
