"""INT8 speed, side by side: ONNX Runtime INT8 (u8s8 Q/DQ) vs ONNX Runtime FP32 vs PyTorch eager
FP32, at batch 1 and 8, in one interleaved run (bench harness: warmup, rotated rounds, percentiles).

The targets of issue 5 on a 2-core Sapphire Rapids class CPU (AVX-512 VNNI, AMX), ResNet-50 at 224:
ORT INT8 >= 3x ORT FP32 at batch 1 and 8; >= 5x (batch 1) and >= 4x (batch 8) PyTorch eager FP32.
The script prints the ratios and says PASS/FAIL for each; it exits 1 when a target is missed.

    python benchmarks/int8_speed.py                       # ResNet-50 at 224, the real measurement
    python benchmarks/int8_speed.py --variant 18 --size 64 --iterations 3 --duration 0.5 --rounds 1  # smoke

Speed does not depend on the ranges, so calibration uses synthetic images (``--calib-data`` to
change it) and random weights; the export and the INT8 file are cached in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

TARGETS = {("onnxruntime:int8", "onnxruntime:fp32"): {1: 3.0, 8: 3.0},
           ("onnxruntime:int8", "torch:fp32"): {1: 5.0, 8: 4.0}}


def _export(variant: str, size: int, work: Path):
    from resnet_deploy.export import export_onnx, make_dynamic
    from resnet_deploy.models import create_model, resolve_variant

    spec = resolve_variant(variant)
    model, info = create_model(spec.name)
    model = make_dynamic(model)
    path = work / f"{spec.name}.onnx"
    if not path.is_file():
        import dataclasses

        prep = dataclasses.replace(info.preprocessing, crop_size=size, resize_size=round(size * 256 / 224))
        export_onnx(model, path, sample_shape=(2, 3, size, size),
                    metadata={"preprocessing": prep.to_dict(), "precision": "fp32", "input_layout": "NCHW",
                              "variant": spec.name})
    return spec.name, path, model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iterations", type=int, default=30, help="minimum timed iterations per configuration")
    ap.add_argument("--duration", type=float, default=10.0, help="minimum timed seconds per configuration")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=2.0, help="warmup seconds per configuration")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the backends' own)")
    ap.add_argument("--calib-data", default="synthetic")
    ap.add_argument("--calib-size", type=int, default=64)
    ap.add_argument("--work-dir", default=os.environ.get("RESNET_DEPLOY_BENCH_DIR", "/tmp/resnet-deploy-int8-speed"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s] %(message)s", stream=sys.stderr)

    from resnet_deploy.bench.harness import BenchConfig, Target, Warmup, run_benchmark
    from resnet_deploy.bench.report import speedup_checks
    from resnet_deploy.calibration import CalibrationConfig, run_int8_stage
    from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from resnet_deploy.runtime.torch_runner import TorchRunner

    work = Path(args.work_dir) / f"{args.variant}-{args.size}"
    work.mkdir(parents=True, exist_ok=True)
    name, fp32, model = _export(args.variant, args.size, work)
    int8 = work / f"{name}.int8.onnxruntime.onnx"
    if not int8.is_file():
        run_int8_stage(fp32, model, work, name, CalibrationConfig(
            calib_data=args.calib_data, calib_size=args.calib_size, target="onnxruntime", holdout=8,
            shape=(8, 3, args.size, args.size)))
    batches = tuple(int(b) for b in args.batches.split(","))
    threads = args.threads
    targets = [
        Target("onnxruntime:int8", "onnxruntime", "int8", lambda: OnnxRuntimeRunner(int8, threads=threads),
               variant=name, artifact=str(int8)),
        Target("onnxruntime:fp32", "onnxruntime", "fp32", lambda: OnnxRuntimeRunner(fp32, threads=threads),
               variant=name, artifact=str(fp32)),
        Target("torch:fp32", "torch", "fp32", lambda: TorchRunner(model, threads=threads, label=name),
               variant=name),
    ]
    cfg = BenchConfig(batch_sizes=batches, shapes=((args.size, args.size),), warmup=Warmup(iterations=2,
                      seconds=args.warmup), iterations=args.iterations, duration_s=args.duration, rounds=args.rounds,
                      threads=threads)
    t0 = time.perf_counter()
    result = run_benchmark(targets, cfg)
    wall = time.perf_counter() - t0
    print(f"{name} {args.size}x{args.size}, {os.cpu_count()} CPUs, wall {wall:.0f}s; latency per batch (ms)")
    print("| target | batch | median | mean | p90 | p99 | CV | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in result.measurements:
        s = m.stats
        print(f"| {m.label} | {m.batch} | {s.median_ms:.2f} | {s.mean_ms:.2f} | {s.p90_ms:.2f} | {s.p99_ms:.2f} | "
              f"{s.cv * 100:.1f}% | {s.throughput:.1f} |")
    table, ratios, ok = speedup_checks(result, TARGETS, batches)
    print("\n" + table)
    for note in result.notes + result.warnings:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"measurements": [m.to_dict() for m in result.measurements],
                                               "ratios": ratios, "notes": result.notes,
                                               "config": cfg.to_dict()}, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
