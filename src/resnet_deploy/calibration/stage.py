"""The INT8 stage: calibration data -> ranges (or the cache) -> Q/DQ ONNX per target -> parity on
held-out images. ``resnet-export --int8`` and ``resnet-deploy calibrate`` both run it."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._io import sha256_file, write_json
from ..errors import MissingDependencyError, UsageError
from ..parity import ParityReport, Tolerances, compare, tolerances_for
from ..progress import stage
from .cache import CalibrationCache, table_path
from .qdq import TARGET_CHOICES, infer_metadata, prepare, qdq_summary, quantize, quantize_modelopt, targets_for
from .ranges import DEFAULT_NUM_BINS, DEFAULT_PERCENTILE, METHODS, MethodConfig, calibrate
from .sources import DEFAULT_HOLDOUT, DEFAULT_SIZE, CalibrationSource, make_source

log = logging.getLogger(__name__)

#: Calibration batch size when neither ``shape`` nor the engine profile says.
DEFAULT_BATCH = 8
Shape = tuple[int, int, int, int]


@dataclass
class CalibrationConfig:
    """Everything the INT8 stage does. CLI flags map one to one (see docs/int8.md)."""

    calib_data: str | os.PathLike[str] | None = None  # --calib-data: folder, .npy/.npz, synthetic[:N]
    method: str = "entropy"  # --calib-method
    percentile: float = DEFAULT_PERCENTILE  # --percentile
    num_bins: int = DEFAULT_NUM_BINS  # histogram bins for entropy / percentile
    calib_size: int = DEFAULT_SIZE  # --calib-size: images used for calibration
    batch_size: int | None = None  # --calib-batch: default the profile's opt batch, else 8
    shape: Shape | None = None  # --calib-shape NxCxHxW: overrides the profile's opt shape
    profile_opt_shape: Shape | None = None  # the engine profile's opt shape (filled by the export)
    target: str = "auto"  # --int8-target
    holdout: int = DEFAULT_HOLDOUT  # --holdout: images kept aside for the parity check
    seed: int = 0  # shuffling of the calibration images
    cache: str | os.PathLike[str] | None = None  # --calib-cache: explicit cache path (strict)
    recalibrate: bool = False  # --recalibrate: ignore and overwrite an existing cache
    modelopt: bool = False  # --modelopt: tensorrt flavour by NVIDIA ModelOpt
    workers: int | None = None  # image decoding threads
    tolerances: Tolerances | None = None  # parity bars (default: parity.tolerances_for("int8"))

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **defaults: Any) -> "CalibrationConfig":
        """From the ``int8_options`` dict of an ExportConfig; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"unknown INT8 option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        merged = {**{k: v for k, v in defaults.items() if k in known}, **dict(options)}
        for key in ("shape", "profile_opt_shape"):
            if merged.get(key) is not None:
                merged[key] = tuple(int(d) for d in merged[key])
        return cls(**merged)

    @property
    def method_config(self) -> MethodConfig:
        return MethodConfig(method=self.method, percentile=float(self.percentile), num_bins=int(self.num_bins))

    def validate(self) -> None:
        if self.calib_data is None or str(self.calib_data) == "":
            raise UsageError("INT8 needs calibration data: pass --calib-data DIR (a folder of images), a .npy/.npz "
                             "file of preprocessed NCHW float32 images, or 'synthetic' for a smoke test")
        if self.method not in METHODS:
            raise UsageError(f"unknown --calib-method '{self.method}'; choose one of: {', '.join(METHODS)}")
        self.method_config.validate()
        if self.target not in TARGET_CHOICES:
            raise UsageError(f"unknown --int8-target '{self.target}'; choose one of: {', '.join(TARGET_CHOICES)}")
        if self.calib_size < 1:
            raise UsageError(f"--calib-size must be >= 1, got {self.calib_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--calib-batch must be >= 1, got {self.batch_size}")
        if self.holdout < 2:
            raise UsageError(f"--holdout must be >= 2 (the parity check compares held-out images, and centered "
                             f"cosine needs at least two), got {self.holdout}")
        for name in ("shape", "profile_opt_shape"):
            s = getattr(self, name)
            if s is not None and (len(s) != 4 or s[1] != 3 or min(s) < 1):
                raise UsageError(f"calibration {name.replace('_', ' ')} {'x'.join(map(str, s))} must be Nx3xHxW")
        if self.shape is not None and self.batch_size is not None and self.shape[0] != self.batch_size:
            raise UsageError(f"--calib-shape {'x'.join(map(str, self.shape))} and --calib-batch {self.batch_size} "
                             "disagree on the batch size; give one of them")
        if self.modelopt and self.target == "onnxruntime":
            raise UsageError("--modelopt makes the tensorrt flavour; it does nothing with --int8-target onnxruntime")
        if self.modelopt:
            import importlib.util

            if importlib.util.find_spec("modelopt") is None:
                raise MissingDependencyError("nvidia-modelopt", "--modelopt (ModelOpt ONNX quantization)")

    def calibration_shape(self, crop_size: int) -> tuple[Shape, str]:
        """The calibration batch shape and why it was chosen."""
        if self.shape is not None:
            return tuple(self.shape), "--calib-shape"  # type: ignore[return-value]
        if self.profile_opt_shape is not None:
            n, c, h, w = self.profile_opt_shape
            return (self.batch_size or n, c, h, w), "the engine profile's opt shape" + (
                f" with --calib-batch {self.batch_size}" if self.batch_size else "")
        n = self.batch_size or DEFAULT_BATCH
        return (n, 3, crop_size, crop_size), (f"batch {n} at the crop size of the preprocessing record "
                                               f"({crop_size}); no engine profile given")


@dataclass
class Int8StageResult:
    """What the INT8 stage wrote and measured."""

    artifacts: dict[str, Path] = field(default_factory=dict)  # target -> INT8 ONNX
    parity: dict[str, ParityReport] = field(default_factory=dict)  # target -> report on held-out images
    parity_files: dict[str, Path] = field(default_factory=dict)
    qdq: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> qdq_summary
    cache: Path | None = None
    table: Path | None = None
    cache_reused: bool = False
    calibration: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.parity.values())

    def summary(self) -> dict[str, Any]:
        return {"targets": list(self.artifacts), "artifacts": {k: v.name for k, v in self.artifacts.items()},
                "cache": self.cache.name if self.cache else None, "table": self.table.name if self.table else None,
                "cache_reused": self.cache_reused, "calibration": self.calibration, "notes": self.notes,
                "parity_passed": {k: r.passed for k, r in self.parity.items()}}


def _ranges(config: CalibrationConfig, prepared: Path, source: CalibrationSource, fp32_sha: str, fp32: Path,
            prep: dict[str, Any], cache_path: Path, explicit_cache: bool, result: Int8StageResult,
            timings: dict[str, float] | None) -> CalibrationCache:
    """The cached ranges when they fit this request, else a fresh calibration (saved)."""
    method = config.method_config
    data = {**source.describe(), "fingerprint": source.fingerprint(), "num_images": source.num_images,
            "seed": config.seed}
    if cache_path.is_file() and not config.recalibrate:
        cached = CalibrationCache.load(cache_path)
        foreign = cached.foreign_reason(fp32_sha, prep)
        if foreign and explicit_cache:
            raise UsageError(f"calibration cache '{cache_path}' cannot be used: {foreign}. Pass --recalibrate to "
                             "overwrite it, or another --calib-cache path")
        stale = foreign or cached.stale_reason(method.method, method.params(), data)
        if stale is None:
            result.cache_reused = True
            result.notes.append(f"calibration cache '{cache_path.name}' reused ({cached.method}, "
                                f"{cached.num_images} images): no calibration run")
            log.info("reusing calibration cache %s", cache_path)
            return cached
        (log.warning if foreign else log.info)("calibration cache %s not reused: %s; calibrating again",
                                               cache_path, stale)
        result.notes.append(f"calibration cache '{cache_path.name}' recomputed: {stale}")
    with stage(f"calibrate ({method.method}, {source.num_images} images in {len(source)} batches)", timings):
        calib = calibrate(prepared, source, method, total=len(source))
    cached = CalibrationCache(ranges=calib.ranges, method=method.method, params=method.params(),
                              num_images=calib.num_images, batch_shape=calib.batch_shape, model_sha256=fp32_sha,
                              model_path=str(fp32), preprocessing=prep, data=data)
    cached.save(cache_path)
    return cached


def run_int8_stage(fp32_onnx: str | os.PathLike[str], reference_module: Any, out_dir: str | os.PathLike[str],
                   stem: str, config: CalibrationConfig, timings: dict[str, float] | None = None, *,
                   artifact_paths: Mapping[str, str | os.PathLike[str]] | None = None) -> Int8StageResult:
    """Calibrate ``fp32_onnx`` and write ``<stem>.int8.<target>.onnx`` per target into ``out_dir``, with
    the cache (``<stem>.int8.calib.json`` + TensorRT table ``.calib.cache``) and a parity report per
    artifact (``<stem>.int8.<target>.parity.json``) against ``reference_module`` (PyTorch; the FP32
    ONNX on ONNX Runtime when None) on held-out images at the calibration shape. ``artifact_paths``
    (target -> path) overrides the INT8 file names; the parity report goes beside each as
    ``<name>.parity.json``.

    Parity failures do not raise here: callers decide (the export raises CheckFailedError at the end,
    the CLI exits 1)."""
    from .._io import ensure_dir
    from ..artifacts import preprocessing_of, read_metadata

    config.validate()
    fp32 = Path(fp32_onnx)
    if not fp32.is_file():
        raise UsageError(f"ONNX file '{fp32}' does not exist")
    out = ensure_dir(out_dir)
    result = Int8StageResult()
    targets, why = targets_for(config.target)
    result.notes.append(f"INT8 target(s) {', '.join(targets)}: {why}")
    meta = read_metadata(fp32)
    if str(meta.get("input_layout", "NCHW")).startswith("NHWC"):
        raise UsageError(f"'{fp32}' takes uint8 NHWC pictures (fused preprocessing); INT8 calibration works on "
                         "the NCHW float32 export: export without --fuse-preprocess for INT8")
    prep = preprocessing_of(fp32)
    if str(meta.get("weights", "")) == "random":
        result.notes.append("the model has random weights: its outputs barely differ from image to image, so the "
                            "INT8 parity numbers (centered cosine above all) are a weak signal; "
                            "benchmarks/int8_accuracy.py measures INT8 accuracy on trained weights")
    if "preprocessing" not in meta:
        result.notes.append("the ONNX carries no preprocessing record: images are prepared with ImageNet's "
                            f"(resize {prep.resize_size}, crop {prep.crop_size})")
    shape, shape_why = config.calibration_shape(int(prep.crop_size))
    source = make_source(config.calib_data, prep, batch_size=shape[0], size=config.calib_size, seed=config.seed,
                         shape=shape if config.shape or config.profile_opt_shape else None,
                         holdout=config.holdout, workers=config.workers)
    actual = source.batch_shape
    result.notes.append(f"calibration shape {'x'.join(map(str, actual))}: {shape_why}"
                        + ("" if tuple(actual) == tuple(shape) else " (image size from the calibration array)"))
    cache_path = Path(config.cache) if config.cache else out / f"{stem}.int8.calib.json"
    fp32_sha = sha256_file(fp32)

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-int8.") as tmp:
        with stage("prepare FP32 ONNX for quantization (shape inference, BN folding)", timings):
            prepared = prepare(fp32, Path(tmp) / "prepared.onnx")
        cached = _ranges(config, prepared, source, fp32_sha, fp32, prep.to_dict(), cache_path,
                         config.cache is not None, result, timings)
        result.cache, result.table = cache_path, table_path(cache_path)
        if result.cache_reused and not result.table.is_file():
            cached.save(cache_path)
        result.calibration = {"method": cached.method, "params": cached.params, "num_images": cached.num_images,
                              "batch_shape": cached.batch_shape, "shape_reason": shape_why,
                              "heldout_images": source.heldout.num_images if source.heldout else 0,
                              "source": cached.data.get("kind"), "tensors": len(cached.ranges)}
        for target in targets:
            path = Path(artifact_paths[target]) if artifact_paths and target in artifact_paths \
                else out / f"{stem}.int8.{target}.onnx"
            md = infer_metadata(meta, int8_target=target, calibration_method=cached.method,
                                calibration_images=cached.num_images, calibration_cache=cache_path.name,
                                weights_quantization="per-channel symmetric int8",
                                activations_quantization="asymmetric uint8" if target == "onnxruntime"
                                else "symmetric int8")
            with stage(f"quantize to INT8 Q/DQ ({target})", timings):
                if target == "tensorrt" and config.modelopt:
                    md["quantizer"] = "nvidia-modelopt"
                    quantize_modelopt(fp32, path, method=cached.method, input_name=_input_name(fp32),
                                      calibration_data=np.concatenate(list(source)), batch_size=actual[0],
                                      table=result.table, metadata=md)
                else:
                    quantize(prepared, path, target, cached.ranges, metadata=md)
            result.artifacts[target] = path
            result.qdq[target] = qdq_summary(path)

    heldout = list(source.heldout) if source.heldout is not None else []
    for target, path in result.artifacts.items():
        with stage(f"verify INT8 ({target} flavour, ONNX Runtime CPU) on {sum(len(b) for b in heldout)} "
                   "held-out images", timings):
            report = _parity(path, fp32, reference_module, heldout, config.tolerances)
        result.parity[target] = report
        report_path = path.with_name((path.name[:-len(".onnx")] if path.name.endswith(".onnx") else path.name)
                                     + ".parity.json")
        result.parity_files[target] = write_json(report_path, report.to_dict())
        log.info("int8 %s parity: %s", target, "ok" if report.passed else "FAILED")
    return result


def _input_name(onnx_path: Path) -> str:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _parity(int8: Path, fp32: Path, reference_module: Any, batches: list[np.ndarray],
            tolerances: Tolerances | None) -> ParityReport:
    from ..runtime.onnxruntime_runner import OnnxRuntimeRunner
    from ..runtime.torch_runner import TorchRunner

    if reference_module is not None:
        ref: Any = TorchRunner(reference_module, label="PyTorch FP32")
    else:
        ref = OnnxRuntimeRunner(fp32)
    with ref, OnnxRuntimeRunner(int8) as cand:
        return compare(ref, cand, batches, precision="int8", tolerances=tolerances or tolerances_for("int8"))


def record_in_manifest(res: Int8StageResult, manifest: Any, *, source_name: str) -> None:
    """List the INT8 artifacts, the cache, the TensorRT table and the parity reports in ``manifest``."""
    for target, path in res.artifacts.items():
        manifest.add_artifact(path, precision="int8", backend=target, role="model", source=source_name,
                              int8_target=target, calibration=res.calibration, qdq=res.qdq.get(target),
                              parity_passed=res.parity[target].passed if target in res.parity else None)
    if res.cache is not None and res.cache.is_file():
        manifest.add_artifact(res.cache, precision="int8", backend="any", role="calibration-cache",
                              reused=res.cache_reused)
    if res.table is not None and res.table.is_file():
        manifest.add_artifact(res.table, precision="int8", backend="tensorrt", role="calibration-table",
                              format="TensorRT calibration table (scale = amax/127, big-endian float32 hex)")
    for target, path in res.parity_files.items():
        manifest.add_artifact(path, precision="int8", backend=target, role="parity-report")
    parity = manifest.data.setdefault("parity", {})
    for target, report in res.parity.items():
        parity[f"int8.{target}"] = report.to_dict()
    manifest.data["int8"] = res.summary()


__all__ = ["CalibrationConfig", "DEFAULT_BATCH", "Int8StageResult", "record_in_manifest",
           "run_int8_stage"]
