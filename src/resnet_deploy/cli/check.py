"""``resnet-deploy check ARTIFACT``: parity of any artifact against PyTorch (or another artifact).

A thin CLI over :mod:`resnet_deploy.check`. Exit 0 within tolerance, 1 outside, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os

from .. import options
from .._io import write_json
from ..check import TOLERANCE_FLAGS, CheckConfig, run_check
from ..errors import UsageError
from ..parity import DEFAULT_TOLERANCES
from ..runtime import BACKEND_CHOICES


# -- CLI ------------------------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", parents=[common], help="parity of an artifact against PyTorch (or another artifact)",
                       description="Run an artifact and a reference on the same inputs and compare their outputs "
                                   "(max abs/rel error, cosine, centered cosine, top-1/top-5 agreement). Exit 0 "
                                   "within tolerance, 1 outside, 2 bad input.")
    p.add_argument("artifact", metavar="ARTIFACT", help="ONNX file or TensorRT engine")
    g = p.add_argument_group("runtime")
    g.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="backend for ARTIFACT (default auto)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda for engines, else cpu)")
    g.add_argument("--threads", type=options.threads, default=None, help="CPU threads for both runners")
    g = p.add_argument_group("reference")
    g.add_argument("--reference", default=None, metavar="OTHER_ARTIFACT",
                   help="compare against another artifact instead of PyTorch")
    g.add_argument("--reference-backend", choices=BACKEND_CHOICES, default="auto", help="backend for --reference")
    g.add_argument("--variant", default=None, help="PyTorch reference variant (default: from the artifact)")
    g.add_argument("--weights", default=None, help="reference weights: random, imagenet[:TAG], or a checkpoint "
                                                   "(default: from the artifact)")
    g.add_argument("--num-classes", type=options.positive_int, default=None, help="reference classes (default: from the artifact)")
    g.add_argument("--head", choices=("logits", "embedding"), default=None, help="reference head (default: from "
                                                                                  "the artifact)")
    g.add_argument("--seed", type=int, default=None, help="seed of random reference weights and of the inputs")
    g = p.add_argument_group("inputs")
    g.add_argument("--shapes", type=options.input_shapes, default=None,
                   help="seeded input shapes NxCxHxW, comma-separated (default 1x3x224x224,3x3x160x288,"
                        "2x3x320x320; an engine's min/opt/max are always added)")
    g.add_argument("--images", default=None, metavar="DIR", help="also check on the images under DIR")
    g.add_argument("--max-images", type=options.positive_int, default=32, help="at most this many images from --images (32)")
    g.add_argument("--inputs", default=None, metavar="FILE", help="saved batches: .npy (one) or .npz (several)")
    g = p.add_argument_group("tolerances (default: by the artifact's precision)")
    g.add_argument("--precision", choices=tuple(DEFAULT_TOLERANCES), default=None,
                   help="tolerance class (default: what the runner reports)")
    g.add_argument("--max-abs-rel", type=options.non_negative_float, default=None, help="max abs error / max |reference|")
    g.add_argument("--min-cosine", type=options.float_range(-1, 1), default=None)
    g.add_argument("--min-centered-cosine", type=options.float_range(-1, 1), default=None)
    g.add_argument("--min-top1", type=options.fraction, default=None, help="top-1 agreement (0..1)")
    g.add_argument("--min-top5", type=options.fraction, default=None, help="reference top-1 within candidate top-5 (0..1)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON to OUT ('-': stdout)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CheckConfig:
    if args.max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {args.max_images}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    overrides = {k: getattr(args, k) for k in TOLERANCE_FLAGS if getattr(args, k) is not None}
    return CheckConfig(artifact=args.artifact, backend=args.backend, device=args.device, threads=args.threads,
                       reference=args.reference, reference_backend=args.reference_backend, variant=args.variant,
                       weights=args.weights, num_classes=args.num_classes, head=args.head, seed=args.seed,
                       shapes=args.shapes, images=args.images, max_images=args.max_images, inputs=args.inputs,
                       precision=args.precision, tolerance_overrides=overrides)


def _check_json_output(path: str) -> None:
    from .._io import file_problem

    if os.path.lexists(path) and file_problem(path) is not None:
        raise UsageError(f"--json '{path}' {file_problem(path)}; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"--json '{path}': '{parent}' is not a directory")


def run(args: argparse.Namespace) -> int:
    from .._io import require_file

    cfg = config_from_args(args)
    require_file(cfg.artifact, "artifact")
    if args.json and args.json != "-":
        _check_json_output(args.json)  # before the check runs, not after
    report, candidate, reference = run_check(cfg)
    to_stdout = args.json == "-"
    if not to_stdout:
        info = candidate.info
        print(f"backend: {info.backend} ({info.device}, {info.precision})  artifact: {cfg.artifact}")
        print(f"reference: {reference.info.backend} ({reference.info.artifact or reference.info.device})")
        print(report.table())
    if args.json:
        if to_stdout:
            print(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            write_json(args.json, report.to_dict())
    return 0 if report.passed else 1
