"""A Triton model repository from an export directory.

    write_repository("exports/resnet50-embedding", "triton-repo", name="resnet50")

Entries (each a model directory ``<name>_<kind>``):

* ``onnxruntime``: ``platform: "onnxruntime_onnx"`` with ``1/model.onnx`` (native, NVIDIA's containers);
* ``openvino``: the ``openvino`` backend on the same ONNX (native, NVIDIA's containers);
* ``tensorrt``: ``platform: "tensorrt_plan"``, one engine per compute capability (``cc_model_filenames``),
  dims and batch size from the engine profile (native, NVIDIA's containers);
* ``python``: the Python backend running this toolkit's runner on NCHW float32 tensors;
* ``bytes``: the Python backend taking encoded JPEG/PNG bytes (``TYPE_STRING``), decoding and
  preprocessing with the toolkit's own preprocessing (a few KB per image instead of 600 KB of floats).

The two Python-backend entries run on any Triton, including the CPU server in ``nvidia-pytriton``
(``resnet-deploy triton-serve``). The repository is written under a temporary name and renamed,
entry by entry when it already exists, so a failure leaves no half-written model behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._io import ensure_dir
from ...artifacts import read_manifest, resolve_inside, verify_artifact
from ...errors import UsageError
from .config import (DynamicBatching, ModelConfig, TensorConfig, Warmup, preferred_batch_sizes, triton_dtype,
                     validate_config, validate_model_name)

log = logging.getLogger(__name__)

#: Entry kinds in the order they are written. ``native`` ones need NVIDIA's Triton containers.
ENTRY_KINDS = ("onnxruntime", "openvino", "tensorrt", "python", "bytes")
NATIVE_KINDS = ("onnxruntime", "openvino", "tensorrt")
PYTHON_KINDS = ("python", "bytes")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
DEVICES = ("cpu", "cuda")
RUNNER_BACKENDS = ("auto", "onnxruntime", "openvino", "torch")
#: The name of the toolkit's record in each entry directory (Triton ignores extra files there).
ENTRY_RECORD = "resnet_deploy.json"
TEMPLATE = Path(__file__).with_name("python_model") / "model.py"


# -- what an export directory holds -----------------------------------------------------------------

@dataclass(frozen=True)
class ExportArtifact:
    """One model file of an export directory."""

    path: Path
    kind: str  # "onnx" or "engine"
    precision: str
    compute_capability: str | None = None  # engines: "8.9"
    profiles: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = ()  # (min, opt, max)
    manifest: dict[str, Any] = field(default_factory=dict)  # engines: <engine>.json
    sha256: str | None = None  # what manifest.json records (and the file was checked against)


@dataclass(frozen=True)
class ModelIO:
    """Input and output facts of the exported model (from the ONNX graph and its metadata)."""

    input_name: str
    input_dtype: str  # numpy name
    input_dims: tuple[int, ...]  # without batch; -1 for dynamic
    output_name: str
    output_dtype: str
    output_dims: tuple[int, ...]
    crop_size: int
    head: str | None
    metadata: dict[str, Any]

    @property
    def layout(self) -> str:
        return "NHWC" if len(self.input_dims) == 3 and self.input_dims[-1] == 3 and self.input_dims[0] != 3 else "NCHW"

    def concrete_input_dims(self, height: int, width: int) -> tuple[int, ...]:
        if self.layout == "NHWC":
            return (height, width, 3)
        return (3, height, width)


def _normalize_cc(value: Any) -> str | None:
    """``"8.9"``, ``[8, 9]``, ``8.9``, ``"sm_89"``, ``"89"`` -> ``"8.9"``."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        return f"{int(value[0])}.{int(value[1])}"
    text = str(value).strip().lower().removeprefix("sm_").removeprefix("sm")
    if "." in text:
        major, minor = text.split(".", 1)
        if major.isdigit() and minor[:1].isdigit():
            return f"{int(major)}.{int(minor[:1])}"
    if text.isdigit() and len(text) >= 2:
        return f"{int(text[:-1])}.{int(text[-1])}"
    return None


def _profiles(manifest: dict[str, Any]) -> tuple:
    out = []
    for p in manifest.get("profiles") or ():
        try:
            out.append(tuple(tuple(int(d) for d in p[k]) for k in ("min", "opt", "max")))
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring an unreadable engine profile %r", p)
    return tuple(out)


def _engine_artifact(path: Path, entry: dict[str, Any] | None) -> ExportArtifact:
    side = path.with_name(path.name + ".json")
    manifest: dict[str, Any] = {}
    if side.is_file():
        try:
            manifest = json.loads(side.read_text())
        except ValueError as exc:
            raise UsageError(f"engine manifest '{side}' is not valid JSON: {exc}") from exc
    cc = _normalize_cc(manifest.get("compute_capability") or (manifest.get("gpu") or {}).get("compute_capability")
                       or (entry or {}).get("compute_capability"))
    precision = str((entry or {}).get("precision") or manifest.get("precision") or "unknown")
    return ExportArtifact(path, "engine", precision, cc, _profiles(manifest), manifest)


def scan_export(export_dir: str | os.PathLike[str]) -> list[ExportArtifact]:
    """The ONNX files and engines of an export directory: those ``manifest.json`` lists, else the
    ``*.onnx`` and engine files found in it."""
    root = Path(export_dir)
    if not root.is_dir():
        raise UsageError(f"export directory '{root}' does not exist")
    manifest_path = root / "manifest.json"
    found: list[ExportArtifact] = []
    manifest = read_manifest(root)  # schema-checked; paths resolve inside the export directory
    if manifest is not None:
        for entry in manifest.get("artifacts", []):
            resolve_inside(root, entry["path"])
            path = root / entry["path"]
            if not path.is_file():
                log.warning("%s lists %s, which is missing; skipped", manifest_path, path)
                continue
            verified = verify_artifact(path) or {}
            if path.suffix.lower() == ".onnx":
                found.append(ExportArtifact(path, "onnx", str(entry.get("precision") or "fp32"),
                                            sha256=verified.get("sha256")))
            elif path.suffix.lower() in ENGINE_SUFFIXES:
                found.append(_engine_artifact(path, entry))
    listed = {a.path.resolve() for a in found}
    for path in sorted(root.iterdir()):  # engines built later may not be in manifest.json
        if path.resolve() in listed or not path.is_file():
            continue
        if path.suffix.lower() in ENGINE_SUFFIXES:
            found.append(_engine_artifact(path, None))
        elif path.suffix.lower() == ".onnx" and not manifest_path.is_file():
            found.append(ExportArtifact(path, "onnx", _precision_from_name(path.name)))
    return found


def _precision_from_name(name: str) -> str:
    for p in ("fp16", "int8", "bf16", "fp8"):
        if f".{p}." in name or name.endswith(f".{p}.onnx"):
            return p
    return "fp32"


Facts = tuple[str, str, tuple[int, ...]]  # name, dtype, dims after the batch


def _after_batch(onnx_path: Path, name: str, dims: tuple[int, ...]) -> tuple[int, ...]:
    if len(dims) < 2:
        raise UsageError(f"'{onnx_path}': {name} has rank {len(dims)}; expected a batch dimension first")
    return dims[1:]


def _graph_io_onnx(onnx_path: Path, onnx: Any) -> tuple[Facts, Facts]:
    from onnx import helper

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"'{onnx_path}' is not a readable ONNX file: {exc}") from exc
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if not inputs or not model.graph.output:
        raise UsageError(f"'{onnx_path}' has no graph input or output")

    def facts(value: Any) -> Facts:
        tt = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim)
        return value.name, dtype, _after_batch(onnx_path, value.name, dims)

    return facts(inputs[0]), facts(model.graph.output[0])


def _graph_io_onnxruntime(onnx_path: Path) -> tuple[Facts, Facts]:
    """The same facts from an ONNX Runtime session, on a runtime without the onnx package."""
    from ...artifacts import inspection_session
    from ...runtime.onnxruntime_runner import ort_dtype

    session = inspection_session(onnx_path, "reading the inputs and outputs of")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not inputs or not outputs:
        raise UsageError(f"'{onnx_path}' has no graph input or output")

    def facts(node: Any) -> Facts:
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in node.shape)
        return node.name, ort_dtype(node.type).name, _after_batch(onnx_path, node.name, dims)

    return facts(inputs[0]), facts(outputs[0])


def model_io(onnx_path: Path) -> ModelIO:
    """Input/output names, dtypes and dims of an ONNX (the first input and output), and its metadata
    (read with onnx, or with ONNX Runtime where onnx is not installed)."""
    from ...artifacts import read_metadata

    try:
        import onnx
    except ImportError:
        graph_in, graph_out = _graph_io_onnxruntime(onnx_path)
    else:
        graph_in, graph_out = _graph_io_onnx(onnx_path, onnx)
    (in_name, in_dtype, in_dims), (out_name, out_dtype, out_dims) = graph_in, graph_out
    meta = read_metadata(onnx_path)
    if any(d < 0 for d in out_dims) and str(meta.get("output_dim", "")).isdigit():
        out_dims = tuple(int(meta["output_dim"]) if d < 0 else d for d in out_dims)
    prep = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    crop = int(prep.get("crop_size") or meta.get("crop_size") or 224)
    head = meta.get("head") or (out_name if out_name in ("logits", "embedding") else None)
    return ModelIO(in_name, in_dtype, in_dims, out_name, out_dtype, out_dims, crop, head, meta)


# -- configuration ----------------------------------------------------------------------------------

@dataclass
class RepositoryConfig:
    """What ``resnet-deploy triton-repo`` writes."""

    export_dir: Path
    output: Path
    name: str | None = None  # model name prefix; default: the ONNX file's stem
    max_batch_size: int = 32
    instances: int = 1
    entries: tuple[str, ...] | None = None  # None: every entry the export has the artifacts for
    precision: str = "fp32"  # the ONNX the onnxruntime/openvino/python/bytes entries use
    trt_precision: str | None = None  # None: the engines' only precision (fp16 when several)
    device: str = "cpu"  # instance kind of the onnxruntime and Python-backend entries
    runner_backend: str = "auto"  # the toolkit runner inside the Python-backend entries
    max_queue_delay_us: int = 500
    decode_workers: int | None = None  # bytes entry: decode threads per instance (None: the Embedder's default)
    warmup: bool = True
    #: python (tensor) entry: largest height and width a request may have (None: the handler's 1024)
    max_side: int | None = None
    #: python and bytes entries: largest request in bytes (None: the handler's 64 MiB)
    max_request_bytes: int | None = None
    #: bytes entry: most pixels an image may decode to (None: the server process's default, 40 MP)
    max_image_pixels: int | None = None
    force: bool = False  # replace entries that already exist in ``output``

    def __post_init__(self) -> None:
        self.export_dir = Path(self.export_dir)
        self.output = Path(self.output)
        if self.entries is not None:
            self.entries = tuple(self.entries)

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise UsageError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.instances < 1:
            raise UsageError(f"--instances must be >= 1, got {self.instances}")
        if self.max_queue_delay_us < 0:
            raise UsageError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        if self.decode_workers is not None and self.decode_workers < 1:
            raise UsageError(f"--decode-workers must be >= 1, got {self.decode_workers}")
        from ...artifacts import PRECISIONS
        from ...shapes import MIN_SPATIAL

        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown --precision '{self.precision}'; choose one of: {', '.join(PRECISIONS)}")
        if self.trt_precision is not None and self.trt_precision not in PRECISIONS:
            raise UsageError(f"unknown --trt-precision '{self.trt_precision}'; choose one of: "
                             f"{', '.join(PRECISIONS)}")
        if self.max_side is not None and self.max_side < MIN_SPATIAL:
            raise UsageError(f"--max-side must be >= {MIN_SPATIAL} (ResNet downsamples by 32), got {self.max_side}")
        for flag, value in (("--max-request-bytes", self.max_request_bytes),
                            ("--max-image-pixels", self.max_image_pixels)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        if self.device not in DEVICES:
            raise UsageError(f"unknown --device '{self.device}'; choose one of: {', '.join(DEVICES)}")
        if self.runner_backend not in RUNNER_BACKENDS:
            raise UsageError(f"unknown --runner-backend '{self.runner_backend}'; choose one of: "
                             f"{', '.join(RUNNER_BACKENDS)}")
        if self.entries is not None:
            if not self.entries:
                raise UsageError(f"--entries is empty; choose from: {', '.join(ENTRY_KINDS)}")
            unknown = [e for e in self.entries if e not in ENTRY_KINDS]
            if unknown:
                raise UsageError(f"unknown entry kind {', '.join(repr(u) for u in unknown)}; choose from: "
                                 f"{', '.join(ENTRY_KINDS)}")
        if self.name is not None:
            validate_model_name(self.name)


@dataclass
class RepositoryEntry:
    name: str
    kind: str
    directory: Path
    artifact: Path
    native: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "directory": str(self.directory),
                "artifact": str(self.artifact), "native": self.native}


@dataclass
class RepositoryResult:
    path: Path
    entries: list[RepositoryEntry]
    skipped: dict[str, str]  # kind -> why it was not written
    schema_checked: bool

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "entries": [e.to_dict() for e in self.entries], "skipped": self.skipped,
                "schema_checked": self.schema_checked}


# -- building each entry ----------------------------------------------------------------------------

def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (exports are replaced by rename, never edited in
    place, so the link keeps the content it was made with), a copy otherwise."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _batching(cfg: RepositoryConfig, max_batch: int) -> DynamicBatching:
    return DynamicBatching(preferred_batch_sizes(max_batch), cfg.max_queue_delay_us)


def _tensor_warmup(io_: ModelIO, dims: tuple[int, ...]) -> list[Warmup]:
    return [Warmup("warmup_batch1", 1, ((io_.input_name, triton_dtype(io_.input_dtype), dims),))]


def _native_onnx_config(cfg: RepositoryConfig, name: str, io_: ModelIO, kind: str) -> ModelConfig:
    crop = io_.crop_size
    mc = ModelConfig(
        name=name,
        inputs=[TensorConfig(io_.input_name, triton_dtype(io_.input_dtype), io_.input_dims)],
        outputs=[TensorConfig(io_.output_name, triton_dtype(io_.output_dtype), io_.output_dims)],
        max_batch_size=cfg.max_batch_size, instance_count=cfg.instances,
        dynamic_batching=_batching(cfg, cfg.max_batch_size),
        default_model_filename="model.onnx",
        warmup=_tensor_warmup(io_, io_.concrete_input_dims(crop, crop)) if cfg.warmup else [])
    if kind == "onnxruntime":
        mc.platform = "onnxruntime_onnx"
        mc.instance_kind = "KIND_GPU" if cfg.device == "cuda" else "KIND_CPU"
    else:
        mc.backend = "openvino"
        mc.instance_kind = "KIND_CPU"
    return mc


def _engine_limits(engines: list[ExportArtifact], io_: ModelIO, max_batch: int) -> tuple[tuple[int, ...], int,
                                                                                            tuple[int, ...]]:
    """(dims without batch, max batch size, warmup dims) that every engine's first profile accepts."""
    profiles = [e.profiles[0] for e in engines if e.profiles]
    if not profiles:
        crop = io_.crop_size
        return io_.input_dims, max_batch, io_.concrete_input_dims(crop, crop)
    mins = tuple(max(p[0][i] for p in profiles) for i in range(len(profiles[0][0])))
    maxs = tuple(min(p[2][i] for p in profiles) for i in range(len(profiles[0][2])))
    opt = profiles[0][1]
    if any(lo > hi for lo, hi in zip(mins, maxs)):
        raise UsageError("the engines' profiles do not overlap, so one Triton entry cannot describe them; "
                         "rebuild them with the same --min-shape/--max-shape")
    if mins[0] > 1:
        raise UsageError(f"the engine profile's minimum batch is {mins[0]}; Triton's dynamic batcher sends batches "
                         "from 1 up, so rebuild with a minimum batch of 1")
    dims = tuple(lo if lo == hi else -1 for lo, hi in zip(mins[1:], maxs[1:]))
    warm = tuple(min(max(o, lo), hi) for o, lo, hi in zip(opt[1:], mins[1:], maxs[1:]))
    return dims, min(max_batch, maxs[0]), warm


def _tensorrt_config(cfg: RepositoryConfig, name: str, io_: ModelIO,
                     engines: list[ExportArtifact]) -> tuple[ModelConfig, dict[str, Path]]:
    dims, max_batch, warm = _engine_limits(engines, io_, cfg.max_batch_size)
    if max_batch < cfg.max_batch_size:
        log.info("tensorrt entry: max_batch_size %d (the engine profile's maximum batch)", max_batch)
    files: dict[str, Path] = {}
    cc_files: dict[str, str] = {}
    for e in engines:
        cc = e.compute_capability
        if cc is None:
            if len(engines) > 1:
                raise UsageError(f"engine '{e.path}' has no compute capability in its manifest, so it cannot be told "
                                 "apart from the other engines; rebuild it with `resnet-deploy build`")
            files["model.plan"] = e.path
            continue
        if cc in cc_files:
            raise UsageError(f"two {e.precision} engines for compute capability {cc}: '{files[cc_files[cc]]}' and "
                             f"'{e.path}'; keep one")
        fname = f"model.sm{cc.replace('.', '')}.plan"
        cc_files[cc] = fname
        files[fname] = e.path
    mc = ModelConfig(
        name=name, platform="tensorrt_plan",
        inputs=[TensorConfig(io_.input_name, triton_dtype(io_.input_dtype), dims)],
        outputs=[TensorConfig(io_.output_name, triton_dtype(io_.output_dtype), io_.output_dims)],
        max_batch_size=max_batch, instance_kind="KIND_GPU", instance_count=cfg.instances,
        dynamic_batching=_batching(cfg, max_batch), cc_model_filenames=cc_files,
        warmup=_tensor_warmup(io_, warm) if cfg.warmup else [])
    return mc, files


def _python_config(cfg: RepositoryConfig, name: str, io_: ModelIO, kind: str, sha256: str = "") -> ModelConfig:
    from .handler import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_SIDE

    crop = io_.crop_size
    params = {"artifact": "model.onnx", "artifact_sha256": sha256,
              "input_kind": "bytes" if kind == "bytes" else "tensor",
              "runner_backend": cfg.runner_backend, "device": cfg.device, "head": str(io_.head or ""),
              "batch_size": str(cfg.max_batch_size),
              "max_request_bytes": str(cfg.max_request_bytes or DEFAULT_MAX_REQUEST_BYTES)}
    if kind == "bytes":
        if cfg.max_image_pixels is not None:
            params["max_image_pixels"] = str(cfg.max_image_pixels)
    else:
        side = max(cfg.max_side or DEFAULT_MAX_SIDE, crop)
        params["max_height"] = params["max_width"] = str(side)
    if cfg.decode_workers is not None:
        params["decode_workers"] = str(cfg.decode_workers)
    out = TensorConfig(io_.output_name, "TYPE_FP32", io_.output_dims)
    if kind == "bytes":
        inputs = [TensorConfig("image", "TYPE_STRING", (1,))]
        # Triton 2.51 garbles a TYPE_STRING warmup read from input_data_file (the stub receives the
        # first byte repeated), so the bytes entry warms up inside initialize() instead.
        warm: list[Warmup] = []
        params["warmup"] = "true" if cfg.warmup else "false"
    else:
        inputs = [TensorConfig(io_.input_name, triton_dtype(io_.input_dtype), io_.input_dims)]
        warm = _tensor_warmup(io_, io_.concrete_input_dims(crop, crop))
    return ModelConfig(name=name, backend="python", inputs=inputs, outputs=[out],
                       max_batch_size=cfg.max_batch_size,
                       instance_kind="KIND_GPU" if cfg.device == "cuda" else "KIND_CPU",
                       instance_count=cfg.instances, dynamic_batching=_batching(cfg, cfg.max_batch_size),
                       parameters=params, warmup=warm if cfg.warmup else [])


# -- the repository ---------------------------------------------------------------------------------

def _default_name(onnx: ExportArtifact | None, engines: list[ExportArtifact]) -> str:
    base = onnx.path if onnx is not None else engines[0].path
    stem = base.name.split(".")[0]
    return "".join(c if (c.isascii() and (c.isalnum() or c in "_-")) else "_" for c in stem).replace("-", "_") or "model"


def _choose_trt_precision(cfg: RepositoryConfig, engines: list[ExportArtifact]) -> list[ExportArtifact]:
    precisions = sorted({e.precision for e in engines})
    if cfg.trt_precision is not None:
        chosen = [e for e in engines if e.precision == cfg.trt_precision]
        if not chosen:
            raise UsageError(f"no {cfg.trt_precision} engine in '{cfg.export_dir}'; it has: "
                             f"{', '.join(precisions) or 'no engines'}")
        return chosen
    if len(precisions) == 1:
        return engines
    if "fp16" in precisions:
        log.info("engines of several precisions (%s): the tensorrt entry uses fp16 (--trt-precision to choose)",
                 ", ".join(precisions))
        return [e for e in engines if e.precision == "fp16"]
    raise UsageError(f"engines of several precisions ({', '.join(precisions)}); choose one with --trt-precision")


def plan_entries(cfg: RepositoryConfig, artifacts: list[ExportArtifact]
                 ) -> tuple[dict[str, tuple[ExportArtifact, list[ExportArtifact]]], dict[str, str]]:
    """Which entries to write, with their artifacts; and, for the entries left out, why."""
    onnx = next((a for a in artifacts if a.kind == "onnx" and a.precision == cfg.precision), None)
    engines = [a for a in artifacts if a.kind == "engine"]
    onnx_kinds = ("onnxruntime", "openvino", "python", "bytes")
    wanted = cfg.entries or ENTRY_KINDS
    explicit = cfg.entries is not None
    plan: dict[str, tuple[ExportArtifact, list[ExportArtifact]]] = {}
    skipped: dict[str, str] = {}
    have = ", ".join(f"{a.path.name} ({a.precision})" for a in artifacts) or "nothing"
    for kind in wanted:
        if kind in onnx_kinds:
            if onnx is None:
                why = (f"no {cfg.precision} ONNX in '{cfg.export_dir}' (it has: {have}); run `resnet-deploy export` "
                       "or pass --precision")
                if explicit:
                    raise UsageError(f"the {kind} entry needs an ONNX model: {why}")
                skipped[kind] = why
                continue
            plan[kind] = (onnx, [])
        elif kind == "tensorrt":
            if not engines:
                why = (f"no TensorRT engine in '{cfg.export_dir}' (it has: {have}); build one on the target GPU with "
                       "`resnet-deploy build`")
                if explicit:
                    raise UsageError(f"the tensorrt entry needs an engine: {why}")
                skipped[kind] = why
                continue
            chosen = _choose_trt_precision(cfg, engines)
            plan[kind] = (chosen[0], chosen)
    if not plan:
        raise UsageError(f"nothing to serve in '{cfg.export_dir}': it has {have}; run `resnet-deploy export` first")
    return plan, skipped


def _write_entry(staging: Path, kind: str, name: str, cfg: RepositoryConfig, artifact: ExportArtifact,
                 engines: list[ExportArtifact], io_: ModelIO | None) -> tuple[RepositoryEntry, str]:
    entry_dir = staging / name
    version = entry_dir / "1"
    version.mkdir(parents=True)
    sha256 = None
    if kind == "tensorrt":
        if io_ is None:
            io_ = _io_from_engine(artifact)
        mc, files = _tensorrt_config(cfg, name, io_, engines)
        for fname, src in files.items():
            _link_or_copy(src, version / fname)
    else:
        if io_ is None:
            raise UsageError(f"the {kind} entry needs the ONNX model's facts")
        _link_or_copy(artifact.path, version / "model.onnx")
        sha256 = _written_sha256(version / "model.onnx", artifact)
        if kind in NATIVE_KINDS:
            mc = _native_onnx_config(cfg, name, io_, kind)
        else:
            mc = _python_config(cfg, name, io_, kind, sha256)
            shutil.copyfile(TEMPLATE, version / "model.py")
    text = mc.render()
    (entry_dir / "config.pbtxt").write_text(text)
    record = {"kind": kind, "native": kind in NATIVE_KINDS, "source": str(artifact.path.resolve()),
              "precision": artifact.precision, "engines": [str(e.path.resolve()) for e in engines],
              "producer": "resnet-deploy triton-repo"}
    if sha256 is not None:
        record["sha256"] = sha256
    (entry_dir / ENTRY_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return RepositoryEntry(name, kind, cfg.output / name, artifact.path, kind in NATIVE_KINDS), text


def _written_sha256(written: Path, artifact: ExportArtifact) -> str:
    """The sha256 of a model file as written into an entry, checked against the export manifest's."""
    from ..._io import sha256_file

    actual = sha256_file(written)
    if artifact.sha256 is not None and actual != artifact.sha256:
        raise UsageError(f"'{artifact.path}' changed while it was copied: sha256 {actual}, its manifest records "
                         f"{artifact.sha256}; run triton-repo again")
    return actual


def _io_from_engine(engine: ExportArtifact) -> ModelIO:
    """Input/output facts of an engine-only export, from its manifest (``inputs``/``outputs``/``metadata``)."""
    man = engine.manifest
    meta = man.get("metadata") or {}
    ins, outs = man.get("inputs") or [{}], man.get("outputs") or [{}]
    out_dim = int(meta.get("output_dim") or 0)
    out_shape = outs[0].get("shape") or [-1, out_dim or -1]
    prep = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    return ModelIO(str(ins[0].get("name") or "input"), str(ins[0].get("dtype") or "float32"), (3, -1, -1),
                   str(outs[0].get("name") or ("embedding" if meta.get("head") == "embedding" else "logits")),
                   str(outs[0].get("dtype") or "float32"),
                   tuple(int(d) if isinstance(d, int) else -1 for d in out_shape[1:]),
                   int(prep.get("crop_size") or 224), meta.get("head"), meta)


def write_repository(export_dir: str | os.PathLike[str], output: str | os.PathLike[str], **options: Any
                     ) -> RepositoryResult:
    """Write a Triton model repository for ``export_dir`` into ``output``; ``options`` are the other
    fields of :class:`RepositoryConfig` (``name``, ``max_batch_size``, ``instances``, ``entries``...)."""
    return build_repository(RepositoryConfig(export_dir=Path(export_dir), output=Path(output), **options))


def build_repository(cfg: RepositoryConfig) -> RepositoryResult:
    cfg.validate()
    artifacts = scan_export(cfg.export_dir)
    plan, skipped = plan_entries(cfg, artifacts)
    onnx = next((a for a, _ in plan.values() if a.kind == "onnx"), None)
    base = cfg.name or _default_name(onnx, [a for a in artifacts if a.kind == "engine"])
    validate_model_name(base)
    names = {kind: validate_model_name(f"{base}_{kind}") for kind in plan}
    out = cfg.output
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output '{out}' exists and is not a directory")
    taken = [n for n in names.values() if (out / n).exists()]
    if taken and not cfg.force:
        raise UsageError(f"'{out}' already has {', '.join(taken)}; pass --force to replace them (other models in it "
                         "are kept)")
    io_ = model_io(onnx.path) if onnx is not None else None
    ensure_dir(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a repository is read by the server's user too
    entries: list[RepositoryEntry] = []
    schema_checked = False
    try:
        for kind, (artifact, engines) in plan.items():
            entry, text = _write_entry(staging, kind, names[kind], cfg, artifact, engines, io_)
            parsed = validate_config(text, expected_name=names[kind], source=f"{names[kind]}/config.pbtxt")
            schema_checked = parsed is not None
            entries.append(entry)
            log.info("wrote %s (%s)", names[kind], kind)
        _publish(staging, out, list(names.values()))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    for kind, why in skipped.items():
        log.info("no %s entry: %s", kind, why)
    return RepositoryResult(out, entries, skipped, schema_checked)


def _publish(staging: Path, out: Path, names: list[str]) -> None:
    """Move the staged entries into ``out``: one rename of the whole tree when ``out`` is new, else
    one rename per entry (an entry being replaced is moved aside first and deleted last)."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = staging / ".replaced"
    old.mkdir()
    for n in names:
        if (out / n).exists():
            os.rename(out / n, old / n)
        os.rename(staging / n, out / n)


def list_models(repository: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The models of a repository: ``name``, ``platform``, ``backend``, ``directory``, and ``servable``
    (True for the Python backend, the one the ``nvidia-pytriton`` server carries)."""
    from .config import read_config_fields

    repo = Path(repository)
    if not repo.is_dir():
        raise UsageError(f"model repository '{repo}' does not exist")
    models = []
    for d in sorted(repo.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        cfg_path = d / "config.pbtxt"
        if not cfg_path.is_file():
            models.append({"name": d.name, "platform": "", "backend": "", "directory": str(d), "servable": False,
                           "reason": "no config.pbtxt"})
            continue
        fields = read_config_fields(cfg_path.read_text())
        backend = fields.get("backend") or ""
        platform = fields.get("platform") or ""
        servable = backend == "python"
        models.append({"name": fields.get("name") or d.name, "platform": platform, "backend": backend,
                       "directory": str(d), "servable": servable,
                       "reason": "" if servable else f"{platform or backend} needs NVIDIA's Triton container"})
    return models


__all__ = ["ENTRY_KINDS", "ENTRY_RECORD", "ExportArtifact", "ModelIO", "NATIVE_KINDS", "PYTHON_KINDS",
           "RepositoryConfig", "RepositoryEntry", "RepositoryResult", "build_repository", "list_models", "model_io",
           "plan_entries", "scan_export", "write_repository"]
