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
    python benchmarks/int8_placement_speed.py --variant 18 --size 64 --pairs 3 --keep 1   # smoke

By default each comparison is its own A/B loop (A and B alternate call by call; the ratio of
their medians), which holds on a machine loaded by other jobs; ``--mode harness`` times every
configuration through the bench harness instead.
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
    ap.add_argument("--rebuild", action="store_true", help="quantize again (the files are cached in --work-dir)")
    ap.add_argument("--mode", choices=("pairs", "harness"), default="pairs",
                    help="pairs (default): each comparison as its own A/B loop, A and B alternating call by call, "
                         "the ratio of their medians (robust on a loaded machine); harness: every configuration "
                         "through the bench harness (rotated rounds)")
    ap.add_argument("--pairs", type=int, default=30, help="A/B call pairs per comparison and batch (pairs mode)")
    ap.add_argument("--compare", action="append", default=None, metavar="A/B",
                    help="only these comparisons (pairs mode), e.g. ort/nncf; repeatable")
    ap.add_argument("--backends", default="onnxruntime,openvino", help="pairs mode: backends to run")
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
    builders = {
        "ort.before": lambda p: quantize_onnxruntime(prepared, p, ranges, quantize_pool=False),
        "ort": lambda p: quantize_onnxruntime(prepared, p, ranges),
        "trt.before": lambda p: quantize_tensorrt(prepared, p, ranges, quantize_fc=True, maxpool_input=False),
        "trt.fc-float": lambda p: quantize_tensorrt(prepared, p, ranges, maxpool_input=False),
        "trt": lambda p: quantize_tensorrt(prepared, p, ranges),
    }
    files = {}
    for key, build in builders.items():
        files[key] = work / f"{key}.onnx"
        if args.rebuild or not files[key].is_file():
            build(files[key])
    keeps = [int(k) for k in args.keep.split(",") if k.strip()]
    mixed_layers: dict[str, list[str]] = {}
    layers_file = work / "mixed_layers.json"
    if keeps and not args.rebuild and layers_file.is_file() and all((work / f"{f}.keep{k}.onnx").is_file()
                                                                    for f in ("ort", "trt") for k in keeps):
        mixed_layers = json.loads(layers_file.read_text())
        files.update({key: work / f"{key}.onnx" for key in mixed_layers})
    elif keeps:
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
        layers_file.write_text(json.dumps(mixed_layers))
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
    if args.mode == "pairs":
        return _pairs(args, fp32, files, nncf if nncf.is_file() else None, ov, threads, mixed_layers, log)
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


def _pairs(args, fp32, files, nncf, ov, threads, mixed_layers, log) -> int:
    """Each comparison A vs B: both runners open, calls alternate A, B, A, B... on the same input, and
    the reported ratio is median(A) / median(B) (with the median of the per-pair ratios beside it). A
    load burst from other jobs hits both sides of a pair alike."""
    import statistics
    import time

    from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from resnet_deploy.runtime.openvino_runner import OpenVINORunner

    def runner(backend: str, path):
        if backend == "onnxruntime":
            return OnnxRuntimeRunner(path, threads=threads)
        return OpenVINORunner(path, threads=threads, **({"precision": "fp32"} if path == fp32 else {}))

    comparisons = [("ort", "ort.before", "the pool quantized, reshape on uint8 (onnxruntime flavour)"),
                   ("trt.fc-float", "trt.before", "fc left in float (tensorrt flavour)"),
                   ("trt", "trt.fc-float", "Q/DQ on the max-pool input (tensorrt flavour)"),
                   ("trt", "trt.before", "both tensorrt-flavour changes")]
    comparisons += [(f"{f}.keep{k}", f, f"{k} layer(s) kept out of INT8") for f in ("ort", "trt")
                    for k in sorted({int(key.rsplit("keep", 1)[1]) for key in mixed_layers})]
    comparisons += [("ort", "fp32", "INT8 (onnxruntime flavour) vs FP32")]
    paths = dict(files, fp32=fp32)
    if nncf is not None:
        paths["nncf"] = nncf
        comparisons += [("ort", "nncf", "toolkit's u8s8 Q/DQ vs NNCF's OpenVINO model"),
                        ("trt", "nncf", "toolkit's s8s8 Q/DQ vs NNCF's OpenVINO model")]
    if args.compare:
        known = {(a, b): what for a, b, what in comparisons}
        comparisons = [(a, b, known.get((a, b), f"{a} vs {b}")) for a, b in (c.split("/", 1) for c in args.compare)]
    backends = [b for b in args.backends.split(",") if b == "onnxruntime" or (b == "openvino" and ov)]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    rng = np.random.default_rng(0)
    for backend in backends:
        for a, b, what in comparisons:
            if "nncf" in (a, b) and backend != "openvino":
                continue
            if backend == "onnxruntime" and a.startswith("trt") and max(batches) > 1:
                use = [1]  # s8s8 on ONNX Runtime CPU is not a deployment target: batch 1 only
            else:
                use = batches
            ra, rb = runner(backend, paths[a]), runner(backend, paths[b])
            try:
                for n in use:
                    x = rng.standard_normal((n, 3, args.size, args.size)).astype(np.float32)
                    for _ in range(3):
                        ra.infer(x)
                        rb.infer(x)
                    ta, tb = [], []
                    for i in range(args.pairs):
                        order = (ra, rb) if i % 2 == 0 else (rb, ra)
                        for r in order:
                            t0 = time.perf_counter()
                            r.infer(x)
                            (ta if r is ra else tb).append((time.perf_counter() - t0) * 1e3)
                    ratio = statistics.median(ta) / statistics.median(tb)
                    pair = statistics.median(x_ / y_ for x_, y_ in zip(ta, tb))
                    rows.append({"backend": backend, "a": a, "b": b, "what": what, "batch": n,
                                 "a_ms": statistics.median(ta), "b_ms": statistics.median(tb), "ratio": ratio,
                                 "pair_ratio": pair})
                    log.info("%s b%d %s vs %s: %.2f / %.2f ms = %.3fx", backend, n, a, b, statistics.median(ta),
                             statistics.median(tb), ratio)
            finally:
                ra.close()
                rb.close()
    lines = ["| backend | A | B | what | batch | A median ms | B median ms | A/B | median pair A/B |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['a']} | {r['b']} | {r['what']} | {r['batch']} | {r['a_ms']:.2f} | "
                     f"{r['b_ms']:.2f} | {r['ratio']:.3f} | {r['pair_ratio']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if mixed_layers:
        print("layers kept: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in mixed_layers.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": "pairs", "pairs": args.pairs, "rows": rows,
                                               "mixed_layers": mixed_layers, "threads": threads}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
