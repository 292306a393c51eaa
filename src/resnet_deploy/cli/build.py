"""``resnet-deploy build MODEL.onnx --output X.engine``: a TensorRT engine from an ONNX.

The precision comes from the ONNX (TensorRT 10 and 11 build strongly typed networks): pass the
FP16 ONNX for an FP16 engine, the TensorRT Q/DQ ONNX for an INT8 one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import options
from ..runtime.tensorrt.manifest import HARDWARE_COMPATIBILITY
from ..runtime.tensorrt.profiles import DEFAULT_MAX, DEFAULT_MIN, DEFAULT_OPT


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s))


def add_parser(sub, common) -> None:
    p = sub.add_parser("build", parents=[common], help="build a TensorRT engine from an ONNX (TensorRT 10/11)",
                       description="Build a TensorRT engine from an ONNX and write <engine>.json beside it. The "
                                   "precision comes from the ONNX: FP16 ONNX -> FP16 engine, Q/DQ ONNX -> INT8. "
                                   "Exit 0 ok, 1 --check failed, 2 bad input or no TensorRT/GPU.")
    p.add_argument("onnx", metavar="MODEL.onnx", help="the ONNX to build from")
    p.add_argument("--output", "-o", required=True, metavar="X.engine", help="engine file to write")
    g = p.add_argument_group("optimization profiles (repeat the three flags for several profiles)")
    g.add_argument("--min-shape", action="append", default=None, metavar="NxCxHxW",
                   help=f"smallest input accepted (default {_shape(DEFAULT_MIN)})")
    g.add_argument("--opt-shape", action="append", default=None, metavar="NxCxHxW",
                   help=f"shape the kernels are tuned for (default {_shape(DEFAULT_OPT)})")
    g.add_argument("--max-shape", action="append", default=None, metavar="NxCxHxW",
                   help=f"largest input accepted (default {_shape(DEFAULT_MAX)})")
    g.add_argument("--profile-copies", type=options.positive_int, default=1, metavar="N",
                   help="build each profile N times, so N threads can run the engine at once (default 1)")
    g = p.add_argument_group("builder")
    g.add_argument("--workspace", type=options.positive_float, default=None, metavar="GiB", help="workspace memory limit")
    g.add_argument("--opt-level", type=options.int_range(0, 5), default=None, metavar="N",
                   help="builder optimization level 0..5 (TensorRT's default 3; lower builds faster)")
    g.add_argument("--timing-cache", default=None, metavar="PATH",
                   help="timing cache file: loaded when present, saved after the build (rebuilds take seconds)")
    g.add_argument("--no-tf32", action="store_true", help="keep FP32 layers off TF32 tensor cores")
    g = p.add_argument_group("moving engines between machines")
    g.add_argument("--version-compatible", action="store_true",
                   help="engine also loads in later TensorRT releases of the same major version")
    g.add_argument("--hardware-compatibility", choices=HARDWARE_COMPATIBILITY, default="none",
                   help="none (this GPU's architecture), ampere+ (any GPU of compute capability 8.0+), "
                        "same-compute-capability")
    g = p.add_argument_group("check")
    g.add_argument("--check", action="store_true",
                   help="compare the engine with the ONNX (ONNX Runtime) at min, opt, max and an off-grid shape")
    g.add_argument("--reference", default=None, metavar="REF.onnx",
                   help="ONNX to compare with (default: MODEL.onnx; give the FP32 ONNX when building from FP16)")
    g.add_argument("--seed", type=options.non_negative_int, default=0, help="seed of the check inputs")
    p.add_argument("--json", action="store_true", help="print the engine manifest as JSON")
    p.set_defaults(func=run)


def _forget_in_export_manifest(engine: Path):
    """An engine built into an export directory: first drop the entries it replaces from the directory's
    manifest (saved before the engine is written, so a killed build leaves a true manifest)."""
    from ..artifacts import MANIFEST_NAME, engine_manifest_path
    from ..export.manifest import Manifest

    if not (engine.parent / MANIFEST_NAME).is_file():
        return None
    manifest = Manifest.load(engine.parent)
    dropped = manifest.forget([engine, engine_manifest_path(engine)])
    if dropped:
        for entry in dropped:
            manifest.data.get("parity", {}).pop(f"engine.{entry.get('precision')}", None)
        manifest.save()
    return manifest


def _list_in_export_manifest(manifest, result, onnx: Path, report) -> None:
    """List the new engine (and its check, when run) in the export directory's manifest."""
    from ..artifacts import engine_manifest_path

    m = result.manifest
    manifest.add_artifact(result.engine, precision=m.precision, backend="tensorrt", role="engine", source=onnx.name,
                          engine_manifest=engine_manifest_path(result.engine).name, tensorrt=m.tensorrt,
                          compute_capability=m.compute_capability, build_seconds=result.build_seconds,
                          profiles=[p.to_dict() for p in m.profiles])
    if report is not None:
        manifest.data.setdefault("parity", {})[f"engine.{m.precision}"] = report.to_dict()
    manifest.save()


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..runtime.tensorrt import BuildConfig, build_engine, check_engine, tensorrt_usable

    cfg = BuildConfig.from_options(
        min_shapes=args.min_shape, opt_shapes=args.opt_shape, max_shapes=args.max_shape,
        workspace_gib=args.workspace, opt_level=args.opt_level,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        version_compatible=args.version_compatible, hardware_compatibility=args.hardware_compatibility,
        profile_copies=args.profile_copies, tf32=not args.no_tf32)
    cfg.validate()
    from .._io import require_file

    require_file(args.onnx, "ONNX file")
    if args.reference:
        require_file(args.reference, "--reference")
    # building needs TensorRT and a GPU; --check also runs the engine, which needs a CUDA binding
    usable, reason = tensorrt_usable(cfg.device, purpose="run" if args.check else "build")
    if not usable:
        raise UsageError(f"cannot build a TensorRT engine on this machine: {reason}")
    manifest = _forget_in_export_manifest(Path(args.output))
    result = build_engine(args.onnx, args.output, cfg)
    report = None
    if args.check:
        report = check_engine(result.engine, args.reference or args.onnx, seed=args.seed)
    if manifest is not None:
        _list_in_export_manifest(manifest, result, Path(args.onnx), report)
    if args.json:
        from ..runtime.tensorrt import read_manifest

        print(json.dumps(read_manifest(result.engine).to_dict(), indent=2, default=str))
    else:
        m = result.manifest
        print(f"engine:    {result.engine} ({result.engine.stat().st_size / 1e6:.1f} MB, {m.precision})")
        print(f"manifest:  {result.manifest_path}")
        print(f"built in:  {result.build_seconds:.1f} s with TensorRT {m.tensorrt} on {m.gpu_name} "
              f"(compute capability {m.compute_capability})"
              + (", timing cache reused" if result.timing_cache_loaded else ""))
        for i, prof in enumerate(m.profiles):
            print(f"profile {i}: {prof}")
        if report is not None:
            print(report.table())
    return 0 if report is None or report.passed else 1
