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
from .ranges import DEFAULT_NUM_BINS, DEFAULT_PERCENTILE, METHOD_CHOICES, METHODS, MethodConfig, calibrate, collect
from .sources import DEFAULT_HOLDOUT, DEFAULT_SIZE, CalibrationSource, make_source

log = logging.getLogger(__name__)

#: Calibration batch size when neither ``shape`` nor the engine profile says.
DEFAULT_BATCH = 8
Shape = tuple[int, int, int, int]


@dataclass
class CalibrationConfig:
    """Everything the INT8 stage does. CLI flags map one to one (see docs/int8.md)."""

    calib_data: str | os.PathLike[str] | None = None  # --calib-data: folder, .npy/.npz, synthetic[:N]
    method: str = "auto"  # --calib-method: auto (every method scored on the held-out images) or one method
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
    score_images: int = 128  # --score-images: images auto/sensitivity score on (held-out + unused ones)
    quantize_fc: bool = False  # --quantize-fc: quantize the final fc in the tensorrt flavour too
    sensitivity: bool = False  # --sensitivity: per-layer held-out error with only that layer unquantized
    target_error: float | None = None  # --target-error E: keep sensitive layers unquantized until error <= E
    keep_float: int | None = None  # --keep-float K: keep the K most sensitive layers unquantized

    @property
    def mixed(self) -> bool:
        return self.target_error is not None or self.keep_float is not None

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
        """The range settings (``auto``: the first candidate's; each candidate gets its own method)."""
        return MethodConfig(method=METHODS[0] if self.method == "auto" else self.method,
                            percentile=float(self.percentile), num_bins=int(self.num_bins))

    def validate(self) -> None:
        if self.calib_data is None or str(self.calib_data) == "":
            raise UsageError("INT8 needs calibration data: pass --calib-data DIR (a folder of images), a .npy/.npz "
                             "file of preprocessed NCHW float32 images, or 'synthetic' for a smoke test")
        if self.method not in METHOD_CHOICES:
            raise UsageError(f"unknown --calib-method '{self.method}'; choose one of: {', '.join(METHOD_CHOICES)}")
        self.method_config.validate()
        if self.method == "auto":
            MethodConfig("entropy", percentile=float(self.percentile), num_bins=int(self.num_bins)).validate()
        if self.target_error is not None and self.keep_float is not None:
            raise UsageError("give one of --target-error E or --keep-float K, not both")
        if self.target_error is not None and not self.target_error >= 0:
            raise UsageError(f"--target-error must be >= 0 (a mean absolute logit error), got {self.target_error}")
        if self.score_images < 2:
            raise UsageError(f"--score-images must be >= 2, got {self.score_images}")
        if self.keep_float is not None and self.keep_float < 1:
            raise UsageError(f"--keep-float must be >= 1, got {self.keep_float}")
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
        if self.modelopt and (self.sensitivity or self.mixed):
            raise UsageError("--sensitivity, --target-error and --keep-float work on the toolkit's own Q/DQ, not on "
                             "ModelOpt's: drop --modelopt")
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
    sensitivity: dict[str, Any] = field(default_factory=dict)  # target -> accuracy.Sensitivity
    sensitivity_files: dict[str, list[Path]] = field(default_factory=dict)  # target -> [json, png]
    mixed: dict[str, Any] = field(default_factory=dict)  # target -> accuracy.MixedPrecision

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.parity.values())

    def summary(self) -> dict[str, Any]:
        return {"targets": list(self.artifacts), "artifacts": {k: v.name for k, v in self.artifacts.items()},
                "cache": self.cache.name if self.cache else None, "table": self.table.name if self.table else None,
                "cache_reused": self.cache_reused, "calibration": self.calibration, "notes": self.notes,
                "parity_passed": {k: r.passed for k, r in self.parity.items()},
                **({"sensitivity": {t: {"file": fs[0].name, "chart": fs[1].name if len(fs) > 1 else None,
                                        "most_sensitive": [r["layer"] for r in self.sensitivity[t].layers[:5]]}
                                    for t, fs in self.sensitivity_files.items()}} if self.sensitivity_files else {}),
                **({"mixed_precision": {t: m.to_dict() for t, m in self.mixed.items()}} if self.mixed else {})}


def _auto_params(config: CalibrationConfig, targets: list[str]) -> dict[str, Any]:
    """What an ``auto`` cache depends on besides the images: the candidates' settings, the flavours
    scored, and the placement they were scored with."""
    base = MethodConfig("entropy", percentile=float(config.percentile), num_bins=int(config.num_bins)).params()
    return {**base, "percentile": float(config.percentile), "candidates": list(METHODS), "targets": list(targets),
            "quantize_fc": bool(config.quantize_fc), "holdout": int(config.holdout),
            "score_images": int(config.score_images), "choice": "per flavour"}


def _ranges(config: CalibrationConfig, prepared: Path, source: CalibrationSource, fp32_sha: str, fp32: Path,
            prep: dict[str, Any], cache_path: Path, explicit_cache: bool, result: Int8StageResult,
            timings: dict[str, float] | None, targets: list[str], scorer: Any) -> CalibrationCache:
    """The cached ranges when they fit this request, else a fresh calibration (saved). ``auto``
    collects the histograms once, derives every method's ranges and keeps the best on the held-out
    images (``scorer()`` gives the :class:`~.accuracy.HeldoutScorer`)."""
    auto = config.method == "auto"
    method = config.method_config
    method_name, params = ("auto", _auto_params(config, targets)) if auto else (method.method, method.params())
    data = {**source.describe(), "fingerprint": source.fingerprint(), "num_images": source.num_images,
            "seed": config.seed}
    if cache_path.is_file() and not config.recalibrate:
        cached = CalibrationCache.load(cache_path)
        foreign = cached.foreign_reason(fp32_sha, prep)
        if foreign and explicit_cache:
            raise UsageError(f"calibration cache '{cache_path}' cannot be used: {foreign}. Pass --recalibrate to "
                             "overwrite it, or another --calib-cache path")
        stale = foreign or cached.stale_reason(method_name, params, data)
        if stale is None:
            result.cache_reused = True
            chosen = f"auto: {cached.chosen_method}" if cached.selection else cached.method
            result.notes.append(f"calibration cache '{cache_path.name}' reused ({chosen}, "
                                f"{cached.num_images} images): no calibration run")
            log.info("reusing calibration cache %s", cache_path)
            return cached
        (log.warning if foreign else log.info)("calibration cache %s not reused: %s; calibrating again",
                                               cache_path, stale)
        result.notes.append(f"calibration cache '{cache_path.name}' recomputed: {stale}")
    selection = None
    if auto:
        from .accuracy import choose_method

        with stage(f"calibrate (histograms for every method, {source.num_images} images in {len(source)} batches)",
                   timings):
            stats = collect(prepared, source, histogram=True, num_bins=method.num_bins, total=len(source),
                            desc="calibrating (auto)")
        sc = scorer()
        with stage(f"choose the calibration method ({', '.join(METHODS)}) on {sc.num_images} held-out images",
                   timings):
            choice = choose_method(prepared, stats, method, targets, sc, quantize_fc=config.quantize_fc)
        ranges, selection = choice.ranges, choice.to_dict()
        target_ranges = {t: r for t, r in choice.target_ranges.items() if choice.per_target[t] != choice.chosen}
        num_images, batch_shape = stats.num_images, stats.batch_shape
        result.notes.append("calibration method auto chose " + ", ".join(
            f"{m} for the {t} flavour" for t, m in choice.per_target.items()) + " (mean held-out logit error " +
            ", ".join(f"{m} {sc_['mean_abs']:.4g}" for m, sc_ in choice.scores.items()) + ")")
    else:
        with stage(f"calibrate ({method.method}, {source.num_images} images in {len(source)} batches)", timings):
            calib = calibrate(prepared, source, method, total=len(source))
        ranges, num_images, batch_shape = calib.ranges, calib.num_images, calib.batch_shape
        target_ranges = {}
    cached = CalibrationCache(ranges=ranges, method=method_name, params=params, num_images=num_images,
                              batch_shape=batch_shape, model_sha256=fp32_sha, model_path=str(fp32), preprocessing=prep,
                              data=data, selection=selection, target_ranges=target_ranges)
    cached.save(cache_path)
    return cached


def _sensitivity_and_mixed(config: CalibrationConfig, target: str, path: Path, md: dict[str, Any], scorer: Any,
                           result: Int8StageResult, timings: dict[str, float] | None) -> None:
    """``--sensitivity`` / ``--target-error`` / ``--keep-float`` for one INT8 file (rewritten in place
    when layers are kept out of INT8)."""
    import onnx

    from .accuracy import mixed_precision, plot_sensitivity, sensitivity
    from .qdq import _finish

    sc = scorer()
    model = onnx.load(str(path))
    dtype = "float16" if target == "tensorrt" else "float32"
    with stage(f"per-layer sensitivity ({target} flavour, layers in {dtype}) on {sc.num_images} held-out images",
               timings):
        sens = sensitivity(model, sc, dtype=dtype, quantized_inputs=target == "onnxruntime")
    result.sensitivity[target] = sens
    result.notes.append(f"{target} flavour: INT8 held-out error {sens.int8_error['mean_abs']:.4g}; most sensitive "
                        "layers (error with only that layer in " + dtype + "): " + ", ".join(
                            f"{r['layer']} {r['mean_abs']:.4g}" for r in sens.layers[:3]))
    base = path.name[:-len(".onnx")] if path.name.endswith(".onnx") else path.name
    if config.sensitivity:
        files = [write_json(path.with_name(base + ".sensitivity.json"), sens.to_dict())]
        chart = plot_sensitivity(sens, path.with_name(base + ".sensitivity.png"),
                                 title=f"{path.name}: held-out error with one layer in {dtype}")
        if chart is not None:
            files.append(chart)
        else:
            result.notes.append("no sensitivity chart: matplotlib is not installed")
        result.sensitivity_files[target] = files
    if not config.mixed:
        return
    with stage(f"mixed precision ({target} flavour)", timings):
        mp, mixed_model = mixed_precision(model, sens, sc, target_error=config.target_error,
                                          keep_float=config.keep_float, dtype=dtype)
    result.mixed[target] = mp
    if mp.kept:
        _finish(mixed_model, path, {**md, "int8_float_layers": ",".join(mp.kept), "int8_float_dtype": dtype})
    goal = (f"--target-error {config.target_error:g}" if config.target_error is not None
            else f"--keep-float {config.keep_float}")
    result.notes.append(f"{target} flavour: {len(mp.kept)} layer(s) kept in {dtype} for {goal} ("
                        + (", ".join(mp.kept) if mp.kept else "none needed") + f"); held-out error "
                        f"{sens.int8_error['mean_abs']:.4g} -> {mp.error['mean_abs']:.4g}"
                        + ("" if mp.met else f"; the target was NOT met with every layer kept"))


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

    heldout = list(source.heldout) if source.heldout is not None else []
    scorers: list[Any] = []

    def scorer() -> Any:
        """FP32 logits of the scoring images, computed on first use: the held-out images, plus
        images the calibration did not use (``source.spare``) up to ``config.score_images``."""
        if not scorers:
            from .accuracy import HeldoutScorer

            batches = list(heldout)
            extra = config.score_images - sum(len(b) for b in batches)
            if extra > 0 and source.spare is not None:
                spare = source.spare.subset(source.spare.items[:extra])
                batches += list(spare)
            scorers.append(HeldoutScorer(fp32, batches))
            n_held = sum(len(b) for b in heldout)
            result.notes.append(f"choices scored on {scorers[0].num_images} images never calibrated on "
                                f"({n_held} held out + {scorers[0].num_images - n_held} unused by the calibration)")
        return scorers[0]

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-int8.") as tmp:
        with stage("prepare FP32 ONNX for quantization (shape inference, BN folding)", timings):
            prepared = prepare(fp32, Path(tmp) / "prepared.onnx")
        cached = _ranges(config, prepared, source, fp32_sha, fp32, prep.to_dict(), cache_path,
                         config.cache is not None, result, timings, targets, scorer)
        result.cache, result.table = cache_path, table_path(cache_path)
        if result.cache_reused and not result.table.is_file():
            cached.save(cache_path)
        result.calibration = {"method": cached.method, "chosen": cached.chosen_method,
                              "chosen_per_target": {t: cached.method_for(t) for t in targets},
                              **({"selection": cached.selection} if cached.selection else {}),
                              "params": cached.params, "num_images": cached.num_images,
                              "batch_shape": cached.batch_shape, "shape_reason": shape_why,
                              "heldout_images": source.heldout.num_images if source.heldout else 0,
                              "source": cached.data.get("kind"), "tensors": len(cached.ranges)}
        for target in targets:
            path = Path(artifact_paths[target]) if artifact_paths and target in artifact_paths \
                else out / f"{stem}.int8.{target}.onnx"
            md = infer_metadata(meta, int8_target=target, calibration_method=cached.method_for(target),
                                calibration_choice="auto" if cached.selection else "explicit",
                                calibration_images=cached.num_images, calibration_cache=cache_path.name,
                                weights_quantization="per-channel symmetric int8",
                                activations_quantization="asymmetric uint8" if target == "onnxruntime"
                                else "symmetric int8")
            with stage(f"quantize to INT8 Q/DQ ({target})", timings):
                if target == "tensorrt" and config.modelopt:
                    md["quantizer"] = "nvidia-modelopt"
                    quantize_modelopt(fp32, path, method=_modelopt_method(cached.chosen_method, config.method),
                                      input_name=_input_name(fp32),
                                      calibration_data=np.concatenate(list(source)), batch_size=actual[0],
                                      table=result.table, metadata=md)
                else:
                    md["fc_quantized"] = bool(config.quantize_fc or target == "onnxruntime")
                    quantize(prepared, path, target, cached.ranges_for(target), metadata=md,
                             quantize_fc=config.quantize_fc)
            if config.sensitivity or config.mixed:
                _sensitivity_and_mixed(config, target, path, md, scorer, result, timings)
            result.artifacts[target] = path
            result.qdq[target] = qdq_summary(path)
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


def _modelopt_method(chosen: str, asked: str) -> str:
    """ModelOpt calibrates with entropy or max only; with ``auto`` our ranges reach it through the
    TensorRT table whatever the method, so a percentile/mse choice is passed as entropy."""
    if asked == "auto" and chosen not in ("entropy", "minmax"):
        return "entropy"
    return chosen


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
    for target, files in res.sensitivity_files.items():
        for path in files:
            manifest.add_artifact(path, precision="int8", backend=target,
                                  role="sensitivity-report" if path.suffix == ".json" else "sensitivity-chart")
    parity = manifest.data.setdefault("parity", {})
    for target, report in res.parity.items():
        parity[f"int8.{target}"] = report.to_dict()
    manifest.data["int8"] = res.summary()


__all__ = ["CalibrationConfig", "DEFAULT_BATCH", "Int8StageResult", "record_in_manifest",
           "run_int8_stage"]
