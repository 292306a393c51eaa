"""``resnet-deploy calibrate MODEL.onnx --calib-data DIR --output MODEL.int8.onnx``: INT8 Q/DQ for an
FP32 ONNX that came from elsewhere (``resnet-export --int8`` runs the same stage after export).

The parity reference is the FP32 ONNX itself on ONNX Runtime (there is no PyTorch module here).
Exit 0 ok, 1 the INT8 parity check failed (artifacts kept), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import options
from ..calibration.qdq import TARGET_CHOICES
from ..calibration.ranges import DEFAULT_PERCENTILE, METHOD_CHOICES
from ..calibration.sources import DEFAULT_HOLDOUT, DEFAULT_SIZE


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("calibrate", parents=[common], help="INT8 Q/DQ ONNX from an FP32 ONNX and a calibration set",
                       description="Calibrate an FP32 ONNX on representative images and write explicit INT8 (Q/DQ) "
                                   "ONNX for ONNX Runtime (u8s8) and/or TensorRT (symmetric s8s8), the calibration "
                                   "cache (JSON + TensorRT table) and a parity report on held-out images. "
                                   "Exit 0 ok, 1 parity failed, 2 bad input.")
    p.add_argument("model", help="FP32 ONNX (NCHW float32 input, e.g. from resnet-export)")
    p.add_argument("--calib-data", required=True,
                   help="folder of images (searched recursively; prepared with the model's preprocessing record), "
                        "a .npy/.npz of NCHW float32 (preprocessed) or NHWC uint8 images, or 'synthetic[:N]' "
                        "for a smoke test")
    p.add_argument("--output", "-o", default=None,
                   help="INT8 ONNX path (default <model>.int8.<target>.onnx beside the model); with "
                        "--int8-target both, the target name is inserted: OUT.onnxruntime.onnx, OUT.tensorrt.onnx")
    p.add_argument("--calib-method", choices=METHOD_CHOICES, default="auto",
                   help="activation ranges: auto (default: minmax, entropy, percentile and mse ranges from one "
                        "collection, each scored on the held-out images by logit error vs FP32, the best kept), or "
                        "force one: minmax, entropy (TensorRT's KL, 2048 bins), percentile, mse")
    p.add_argument("--percentile", type=options.percentile, default=DEFAULT_PERCENTILE,
                   help=f"for --calib-method percentile (default {DEFAULT_PERCENTILE})")
    p.add_argument("--calib-size", type=options.positive_int, default=DEFAULT_SIZE,
                   help=f"images calibrated on (default {DEFAULT_SIZE}; the --holdout images come on top; fewer "
                        "than 500 warns)")
    p.add_argument("--batch-size", "--calib-batch-size", dest="batch_size", type=options.batch_size, default=None,
                   help="calibration batch size (default 8, or N of --shape)")
    p.add_argument("--shape", "--calib-shape", dest="shape", type=options.input_shape, default=None,
                   help="calibration shape NxCxHxW, e.g. 8x3x224x224 (default: batch 8 at the record's crop size); "
                        "pass the engine profile's opt shape here")
    p.add_argument("--int8-target", choices=TARGET_CHOICES, default="auto",
                   help="onnxruntime (uint8 activations, fast on VNNI/AMX CPUs), tensorrt (symmetric int8), both; "
                        "auto: tensorrt when a GPU and TensorRT are usable here, else onnxruntime")
    p.add_argument("--cache", "--calib-cache", dest="cache", default=None,
                   help="calibration cache JSON (default <output dir>/<model>.int8.calib.json); reused when it "
                        "matches, refused when it was made for another model or preprocessing")
    p.add_argument("--recalibrate", action="store_true", help="calibrate again and overwrite the cache")
    p.add_argument("--holdout", type=options.non_negative_int, default=DEFAULT_HOLDOUT,
                   help=f"images kept aside for the parity check, never calibrated on (default {DEFAULT_HOLDOUT})")
    p.add_argument("--seed", type=options.non_negative_int, default=0, help="seed of the image shuffle")
    p.add_argument("--modelopt", action="store_true",
                   help="make the tensorrt flavour with NVIDIA ModelOpt (needs nvidia-modelopt)")
    add_int8_accuracy_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def add_int8_accuracy_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--score-images``, ``--quantize-fc``, ``--sensitivity``, ``--target-error``, ``--keep-float``
    (calibrate and export)."""
    p.add_argument("--score-images", type=options.int_range(2), default=None, metavar="N",
                   help="images --calib-method auto, --sensitivity and --target-error score on: the held-out images "
                        "plus images the calibration did not use, up to N (default 128)")
    p.add_argument("--quantize-fc", action="store_true", default=None,
                   help="quantize the final fc in the tensorrt flavour too (default: left in float, as ModelOpt does)")
    p.add_argument("--sensitivity", action="store_true", default=None,
                   help="per quantized layer, the held-out logit error with only that layer unquantized: "
                        "<int8>.sensitivity.json + .png chart, most sensitive first")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-error", type=options.non_negative_float, default=None, metavar="E",
                   help="keep the most sensitive layers unquantized (FP16 in the tensorrt flavour, float in the "
                        "onnxruntime flavour) until the held-out mean |logit error| is <= E (default: full INT8)")
    g.add_argument("--keep-float", type=options.positive_int, default=None, metavar="K",
                   help="keep the K most sensitive layers unquantized")


def _paths(model: Path, output: str | None, targets: list[str]) -> tuple[Path, dict[str, Path]]:
    """(output directory, target -> INT8 ONNX path)."""
    stem = model.name[:-len(".onnx")] if model.name.endswith(".onnx") else model.stem
    if output is None:
        return model.parent, {t: model.parent / f"{stem}.int8.{t}.onnx" for t in targets}
    out = Path(output)
    if len(targets) == 1:
        return out.parent, {targets[0]: out}
    base = out.name[:-len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.parent, {t: out.with_name(f"{base}.{t}.onnx") for t in targets}


def _calibration_files(spec: str) -> list[Path]:
    """The files a --calib-data reads (an array file, or the images of a folder)."""
    from ..models.preprocessing import list_images

    p = Path(spec)
    if p.is_file():
        return [p]
    if p.is_dir():
        return list_images(p, skipped=[])  # the calibration source reports what it skips
    return []


def run(args: argparse.Namespace) -> int:
    from ..calibration.cache import table_path
    from ..calibration.qdq import targets_for
    from ..calibration.stage import CalibrationConfig, record_in_manifest, run_int8_stage
    from ..errors import CheckFailedError, UsageError
    from ..export.manifest import MANIFEST_NAME, Manifest

    from .._io import refuse_overwriting_inputs, require_file

    from ..artifacts import read_metadata

    model = require_file(args.model, "ONNX file")
    if model.suffix.lower() != ".onnx":
        raise UsageError(f"'{model}' is not an .onnx file; calibrate takes an FP32 ONNX")
    read_metadata(model)  # "not an ONNX model" now, not the quantizer's words later
    shape = args.shape
    config = CalibrationConfig(calib_data=args.calib_data, method=args.calib_method, percentile=args.percentile,
                               calib_size=args.calib_size, batch_size=args.batch_size, shape=shape,
                               target=args.int8_target, holdout=args.holdout, seed=args.seed, cache=args.cache,
                               recalibrate=args.recalibrate, modelopt=args.modelopt,
                               quantize_fc=bool(args.quantize_fc), sensitivity=bool(args.sensitivity),
                               **({"score_images": args.score_images} if args.score_images is not None else {}),
                               target_error=args.target_error, keep_float=args.keep_float)
    config.validate()
    targets, _ = targets_for(args.int8_target)
    out_dir, paths = _paths(model, args.output, targets)
    if model.resolve() in {p.resolve() for p in paths.values()}:
        raise UsageError(f"--output '{args.output}' would overwrite the FP32 model")
    refuse_overwriting_inputs(paths.values(), [model, *_calibration_files(args.calib_data)])
    stem = model.name[:-len(".onnx")]
    timings: dict[str, float] = {}
    manifest = Manifest.load(out_dir) if (out_dir / MANIFEST_NAME).is_file() else None
    if manifest is not None:
        # an export directory: first drop what this run rewrites from its manifest, then write the files,
        # then list them again; a run killed in between leaves a manifest that lists only matching files
        cache = Path(args.cache) if args.cache else out_dir / f"{stem}.int8.calib.json"
        rewritten = {*paths.values(), *(p.with_name(p.name[:-len(".onnx")] + ".parity.json") for p in paths.values()),
                     cache, table_path(cache)}
        if manifest.forget(rewritten):
            for target in targets:
                manifest.data.get("parity", {}).pop(f"int8.{target}", None)
            manifest.data.pop("int8", None)
            manifest.save()
    res = run_int8_stage(model, None, out_dir, stem, config, timings, artifact_paths=paths)

    manifest = manifest or Manifest(out_dir)
    record_in_manifest(res, manifest, source_name=str(model))
    manifest.data.setdefault("timings_s", {}).update({f"int8: {k}": v for k, v in timings.items()})
    manifest.save()

    if args.json:
        print(json.dumps({**res.summary(), "parity": {k: r.to_dict() for k, r in res.parity.items()},
                          **({"sensitivity_layers": {t: s.to_dict() for t, s in res.sensitivity.items()}}
                             if res.sensitivity else {}),
                          "manifest": str(manifest.path)}, indent=2, default=str))
    else:
        for target, sens in res.sensitivity.items():
            if target in res.sensitivity_files:
                print(f"sensitivity ({target} flavour): " + ", ".join(str(f) for f in res.sensitivity_files[target]))
                print(sens.table())
        for target, path in res.artifacts.items():
            report = res.parity.get(target)
            worst = report.worst() if report else {}
            verdict = "-" if report is None else ("ok" if report.passed else "FAILED")
            print(f"int8.{target:<12} {path}  parity {verdict} (cent.cos {worst.get('min_centered_cosine', 0):.4f}, "
                  f"top-1 {worst.get('min_top1', 0):.2f}, max abs {worst.get('max_abs', 0):.2e})")
        print(f"cache: {res.cache}{' (reused)' if res.cache_reused else ''}")
        print(f"TensorRT calibration table: {res.table}")
        for note in res.notes:
            print(f"note: {note}")
        print(f"manifest: {manifest.path}")
    if not res.passed:
        failed = [t for t, r in res.parity.items() if not r.passed]
        raise CheckFailedError(f"INT8 parity check failed for {', '.join(failed)} (see the .parity.json reports); "
                               "artifacts kept for inspection")
    return 0
