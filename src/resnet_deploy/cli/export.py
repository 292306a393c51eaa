"""``resnet-export`` / ``resnet-deploy export``: PyTorch -> dynamic ONNX (+ FP16, INT8, engine)."""

from __future__ import annotations

import argparse
import json

from ..calibration.ranges import METHOD_CHOICES
from ..export import DEFAULT_CHECK_SHAPES, DEFAULT_OPSET, ENGINE_MODES, EXPORTERS, ExportConfig, export_model
from .. import options
from ..models import variant_choices
from ..models.heads import HEADS
from .calibrate import add_int8_accuracy_options


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="export a ResNet to a dynamic ONNX (and FP16/INT8/engine)",
                       description="Export a ResNet to ONNX with dynamic batch, height and width, verify it against "
                                   "PyTorch, and write manifest.json. Exit 0 ok, 1 parity failed, 2 bad input.")
    g = p.add_argument_group("model")
    g.add_argument("--variant", default="50", help=f"one of: {', '.join(variant_choices())} (default 50)")
    g.add_argument("--weights", default="random",
                   help="'random' (default; outputs carry no meaning), 'imagenet' (torchvision's DEFAULT), "
                        "'imagenet:IMAGENET1K_V1', or a checkpoint path (.pth/.pt/.safetensors)")
    g.add_argument("--num-classes", type=options.positive_int, default=None, help="classes of a fine-tuned head (default: from "
                                                                 "the checkpoint, else 1000)")
    g.add_argument("--head", choices=HEADS, default="logits", help="logits, or the pooled embedding")
    g.add_argument("--normalize", action="store_true", help="L2-normalize embeddings (with --head embedding)")
    g.add_argument("--seed", type=options.non_negative_int, default=0, help="seed for random weights and check inputs")
    g = p.add_argument_group("ONNX")
    g.add_argument("--output", "-o", default=None, help="output directory (default ./exports/<variant>/)")
    g.add_argument("--opset", type=options.positive_int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    g.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="dynamo (torch.export, default) or the deprecated torchscript exporter (opset < 18)")
    g.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    g.add_argument("--check-shapes", type=options.input_shapes, default=DEFAULT_CHECK_SHAPES,
                   help="parity shapes, e.g. 1x3x224x224,3x3x160x288,2x3x320x320 (the default)")
    g.add_argument("--fuse-preprocess", action="store_true",
                   help="input uint8 NHWC (resized and cropped images); /255 and mean/std inside the graph")
    g = p.add_argument_group("precision and engine")
    g.add_argument("--fp16", action="store_true", help="also write <variant>.fp16.onnx (FP32 I/O), verified")
    g.add_argument("--int8", action="store_true", help="also write INT8 Q/DQ ONNX from a calibration set")
    g.add_argument("--engine", choices=ENGINE_MODES, default="auto",
                   help="TensorRT engine from the FP16/INT8 ONNX: auto (when a GPU and TensorRT are usable), "
                        "always (their absence is an error), never")
    g.add_argument("--min-shape", action="append", default=None, help="engine profile min, e.g. 1x3x128x128")
    g.add_argument("--opt-shape", action="append", default=None, help="engine profile opt, e.g. 8x3x224x224")
    g.add_argument("--max-shape", action="append", default=None, help="engine profile max, e.g. 32x3x512x512")
    g.add_argument("--workspace", type=options.positive_float, default=None, help="builder workspace limit in GiB")
    g.add_argument("--timing-cache", default=None, help="persistent TensorRT timing cache file")
    g = p.add_argument_group("INT8 calibration")
    g.add_argument("--calib-data", default=None, help="folder of images (recursive) or .npy/.npz batches")
    g.add_argument("--calib-method", choices=METHOD_CHOICES, default=None,
                   help="activation range method: auto (default: every method scored on the held-out images, the "
                        "best kept), minmax, entropy, percentile, mse")
    g.add_argument("--calib-size", type=options.positive_int, default=None,
                   help="images calibrated on (500; the --holdout images come on top)")
    g.add_argument("--calib-batch-size", type=options.batch_size, default=None, help="calibration batch size")
    g.add_argument("--percentile", type=options.percentile, default=None, help="for --calib-method percentile (default 99.99)")
    g.add_argument("--int8-target", choices=("onnxruntime", "tensorrt", "both"), default=None,
                   help="Q/DQ flavour (default: tensorrt when a GPU and TensorRT are usable, else onnxruntime)")
    g.add_argument("--calib-cache", default=None, help="calibration cache JSON (reused when it matches)")
    g.add_argument("--calib-shape", type=options.input_shape, default=None,
                   help="calibration shape NxCxHxW (default: the first --opt-shape, else batch 8 at the crop size)")
    g.add_argument("--holdout", type=options.non_negative_int, default=None, help="images kept aside for the INT8 parity check (16)")
    g.add_argument("--recalibrate", action="store_true", help="ignore and overwrite an existing calibration cache")
    g.add_argument("--modelopt", action="store_true", help="make the tensorrt flavour with NVIDIA ModelOpt")
    add_int8_accuracy_options(g)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead of the summary table")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    int8 = {k: v for k, v in {
        "calib_data": args.calib_data, "method": args.calib_method, "calib_size": args.calib_size,
        "batch_size": args.calib_batch_size, "percentile": args.percentile, "target": args.int8_target,
        "cache": args.calib_cache, "shape": args.calib_shape,
        "holdout": args.holdout, "recalibrate": args.recalibrate or None,
        "modelopt": args.modelopt or None, "quantize_fc": args.quantize_fc, "sensitivity": args.sensitivity,
        "score_images": args.score_images,
        "target_error": args.target_error, "keep_float": args.keep_float}.items() if v is not None}
    engine = {k: v for k, v in {
        "min_shapes": args.min_shape, "opt_shapes": args.opt_shape, "max_shapes": args.max_shape,
        "workspace_gib": args.workspace, "timing_cache": args.timing_cache}.items() if v is not None}
    return ExportConfig(
        variant=args.variant, weights=args.weights, num_classes=args.num_classes, head=args.head,
        normalize=args.normalize, output_dir=args.output, opset=args.opset, exporter=args.exporter,
        simplify=not args.no_simplify, check_shapes=args.check_shapes, fuse_preprocess=args.fuse_preprocess,
        seed=args.seed, fp16=args.fp16, int8=args.int8, engine=args.engine, int8_options=int8,
        engine_options=engine)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    if args.int8 and not args.calib_data:
        raise UsageError("--int8 needs a calibration set: --calib-data DIR (images) or FILE.npy/.npz")
    if args.calib_data and not args.int8:
        raise UsageError("--calib-data is only used with --int8")
    if args.normalize and args.head != "embedding":
        raise UsageError("--normalize applies to --head embedding only")
    result = export_model(config_from_args(args))
    if args.json:
        print(json.dumps(result.manifest.data, indent=2, default=str))
        return 0
    rows = result.summary_rows()
    w = [max(len(r[i]) for r in rows + [("artifact", "path", "size", "parity")]) for i in range(4)]
    print(f"{'artifact':<{w[0]}}  {'path':<{w[1]}}  {'size':>{w[2]}}  parity")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"manifest: {result.manifest_path}")
    return 0
