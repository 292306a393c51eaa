"""The speed effect of each INT8 placement change (issue 13), and of mixed precision, side by side
with NNCF, on ONNX Runtime and OpenVINO, in one interleaved run (bench harness: warmup, rotated
rounds, median / p90, CV).

ResNet-50 at 224 (random weights: speed does not depend on the values), one calibration
(synthetic images, statistics collected once), then every variant from the same ranges:

* onnxruntime flavour (u8s8): ``ort.before`` (the pool in float: ``ReduceMean`` then
  ``DQ -> Reshape -> Q -> DQ`` before the fc) against ``ort`` (the pool quantized as
  ``GlobalAveragePool``, the reshape on uint8);
* tensorrt flavour (s8s8): ``trt.before`` (fc quantized, no Q/DQ on the max-pool input),
  ``trt.fc-float`` (fc left in float) and ``trt`` (fc in float + max-pool input Q/DQ: the new
  default);
* mixed precision: ``ort.keepK`` / ``trt.keepK``, the K most sensitive layers out of INT8 (float /
  FP16), chosen by the toolkit's sensitivity on held-out synthetic images;
* ``nncf``: NNCF's OpenVINO model (``benchmarks/reference_quantizers.py`` in ``--nncf-python``'s
  venv), on OpenVINO only;
* FP32 on both backends, for scale.

    python benchmarks/int8_placement_speed.py --json benchmarks/results/int8_placement_speed.json
    python benchmarks/int8_placement_speed.py --variant 18 --size 64 --duration 0.3 --rounds 1 --keep 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--keep", default="1,2,4", help="mixed-precision variants ('' for none)")
    ap.add_argument("--calib-size", type=int, default=32)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--nncf-python", default="/tmp/i13-nncf/bin/python")
    ap.add_argument("--work-dir", default="/tmp/resnet-deploy-int8-placement")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s] %(message)s", stream=sys.stderr)
    for noisy in ("torch.onnx", "onnxscript", "onnxruntime", "resnet_deploy.calibration.sources"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    log = logging.getLogger("int8_placement_speed")

    import onnx

    from resnet_deploy.bench import BenchConfig, Target, run_benchmark
    from resnet_deploy.bench.harness import Warmup
    from resnet_deploy.bench.report import to_dict as bench_dict
    from resnet_deploy.calibration import HeldoutScorer, MethodConfig, collect, make_source, sensitivity
    from resnet_deploy.calibration.qdq import (float_layers, prepare, quantize_onnxruntime, quantize_tensorrt,
                                               _finish)
    from resnet_deploy.runtime import openvino_available
    from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from resnet_deploy.runtime.openvino_runner import OpenVINORunner

    sys.path.insert(0, str(Path(__file__).parent))
    from int8_speed import _export  # noqa: E402 - the benchmark's shared export helper

    threads = args.threads or len(os.sched_getaffinity(0))
    work = Path(args.work_dir) / f"{args.variant}-{args.size}"
    work.mkdir(parents=True, exist_ok=True)
    name, fp32, _ = _export(args.variant, args.size, work)
    from resnet_deploy.artifacts import preprocessing_of

    prep = preprocessing_of(fp32)
    prepared = prepare(fp32, work / "prepared.onnx")
    src = make_source("synthetic", prep, batch_size=8, size=args.calib_size, holdout=8)
    ranges = collect(prepared, src).ranges(MethodConfig("entropy"))
    files = {
        "ort.before": quantize_onnxruntime(prepared, work / "ort.before.onnx", ranges, quantize_pool=False),
        "ort": quantize_onnxruntime(prepared, work / "ort.onnx", ranges),
        "trt.before": quantize_tensorrt(prepared, work / "trt.before.onnx", ranges, quantize_fc=True,
                                        maxpool_input=False),
        "trt.fc-float": quantize_tensorrt(prepared, work / "trt.fc-float.onnx", ranges, maxpool_input=False),
        "trt": quantize_tensorrt(prepared, work / "trt.onnx", ranges),
    }
    keeps = [int(k) for k in args.keep.split(",") if k.strip()]
    mixed_layers: dict[str, list[str]] = {}
    if keeps:
        # layers are the same at any input size: rank them at 64 px, cheaply
        small = make_source("synthetic", prep, batch_size=8, size=8, holdout=8, shape=(8, 3, 64, 64))
        scorer = HeldoutScorer(fp32, list(small.heldout))
        for flavour, dtype in (("ort", "float32"), ("trt", "float16")):
            model = onnx.load(str(files[flavour]))
            qi = flavour == "ort"  # as the INT8 stage does it
            order = sensitivity(model, scorer, dtype=dtype, quantized_inputs=qi, progress=False).order()
            for k in keeps:
                key = f"{flavour}.keep{k}"
                mixed_layers[key] = order[:k]
                files[key] = _finish(float_layers(model, order[:k], dtype=dtype, quantized_inputs=qi),
                                     work / f"{key}.onnx", None)
    nncf = work / "nncf.xml"
    if not nncf.is_file() and Path(args.nncf_python).is_file():
        calib = work / "calib.npy"
        np.save(calib, np.concatenate(list(src)))
        proc = subprocess.run([args.nncf_python, str(Path(__file__).with_name("reference_quantizers.py")), "nncf-ov",
                               "--onnx", str(fp32), "--calib", str(calib), "--out", str(nncf), "--batch", "8"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            log.warning("NNCF failed: %s", proc.stderr.strip().splitlines()[-3:])

    ov = openvino_available()
    targets = [Target("onnxruntime:fp32", "onnxruntime", "fp32", lambda: OnnxRuntimeRunner(fp32, threads=threads),
                      variant=name, artifact=str(fp32))]
    if ov:
        targets.append(Target("openvino:fp32", "openvino", "fp32",
                              lambda: OpenVINORunner(fp32, precision="fp32", threads=threads), variant=name,
                              artifact=str(fp32)))
    for key, path in files.items():
        targets.append(Target(f"onnxruntime:{key}", "onnxruntime", "int8",
                              lambda p=path: OnnxRuntimeRunner(p, threads=threads), variant=name, artifact=str(path)))
        if ov:
            targets.append(Target(f"openvino:{key}", "openvino", "int8",
                                  lambda p=path: OpenVINORunner(p, threads=threads), variant=name, artifact=str(path)))
    if ov and nncf.is_file():
        targets.append(Target("openvino:nncf", "openvino", "int8", lambda: OpenVINORunner(nncf, threads=threads),
                              variant=name, artifact=str(nncf)))
    cfg = BenchConfig(batch_sizes=tuple(int(b) for b in args.batches.split(",")), shapes=((args.size, args.size),),
                      warmup=Warmup(iterations=2, seconds=0.3), iterations=args.iterations, duration_s=args.duration,
                      rounds=args.rounds, threads=threads)
    result = run_benchmark(targets, cfg)
    med = {(m.label, m.batch): m.stats.median_ms for m in result.measurements}
    lines = ["| configuration | " + " | ".join(f"batch {b} median ms" for b in cfg.batch_sizes) + " | vs |",
             "|---|" + "---:|" * len(cfg.batch_sizes) + "---|"]
    base_of = {"ort": "ort.before", "trt.fc-float": "trt.before", "trt": "trt.before"}
    for t in targets:
        backend, key = t.label.split(":", 1)
        ref = base_of.get(key) or (key.split(".")[0] if key.startswith(("ort.keep", "trt.keep")) else None)
        ratio = []
        for b in cfg.batch_sizes:
            if ref and (f"{backend}:{ref}", b) in med:
                ratio.append(f"b{b} {med[(t.label, b)] / med[(f'{backend}:{ref}', b)]:.3f}x {ref}")
            if backend == "openvino" and key in ("ort", "trt") and ("openvino:nncf", b) in med:
                ratio.append(f"b{b} {med[(t.label, b)] / med[('openvino:nncf', b)]:.3f}x NNCF")
        lines.append(f"| {t.label} | " + " | ".join(f"{med.get((t.label, b), float('nan')):.2f}"
                                                  for b in cfg.batch_sizes) + f" | {'; '.join(ratio)} |")
    text = "\n".join(lines)
    print(text)
    if mixed_layers:
        print("layers kept: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in mixed_layers.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"table": text, "mixed_layers": mixed_layers,
                                               "result": bench_dict(result)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
