"""OpenVINO on the CPU, side by side with ONNX Runtime and PyTorch eager, in one interleaved run.

Configurations (ResNet-50 at 224x224, batch 1 and 8 by default), all timed by the bench harness
(warmup, rotated rounds, median / p90 / p99, CV), with the precision each runner reports it runs:

* ``torch:fp32``             PyTorch eager, FP32
* ``onnxruntime:fp32``       ONNX Runtime, the FP32 ONNX
* ``onnxruntime:int8``       ONNX Runtime, the INT8 Q/DQ ONNX (u8 activations, s8 per-channel weights)
* ``openvino:fp32``          OpenVINO, the FP32 ONNX with INFERENCE_PRECISION_HINT=f32
* ``openvino:default``       OpenVINO, the FP32 ONNX with no hint (on BF16 CPUs it silently runs bf16)
* ``openvino:bf16``          OpenVINO, the FP32 ONNX asked for bf16 (only on CPUs with BF16)
* ``openvino:int8``          OpenVINO, the same INT8 Q/DQ ONNX that ONNX Runtime runs

Then a throughput section: ``infer_stream`` (several requests in flight, THROUGHPUT hint) against
back-to-back ``infer`` calls (LATENCY hint), alternating, for the OpenVINO rows at the largest
batch: the path ``resnet-deploy embed`` uses.

It prints the speedups the issue asks for (OpenVINO INT8 >= 1.5x ONNX Runtime INT8 at batch 8 and
>= 8x PyTorch eager FP32 at batch 8) with PASS/FAIL, and the fraction of this CPU's peak each row
reaches (``resnet_deploy.bench.limits``: the peak of the precision the row actually ran in). Exit
code 1 when a target is missed.

    python benchmarks/openvino_bench.py --json benchmarks/results/openvino.json      # the real run
    python benchmarks/openvino_bench.py --variant 18 --size 64 --iterations 3 --duration 0.3 \\
        --rounds 1 --stream-batches 4                                                  # smoke

Speed does not depend on the calibration ranges: calibration uses synthetic images and the
weights are random; the export and the INT8 file are cached in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: (candidate, baseline) -> {batch: minimum speedup of the candidate (median latency ratio)}
TARGETS = {("openvino:int8", "onnxruntime:int8"): {8: 1.5}, ("openvino:int8", "torch:fp32"): {8: 8.0}}


def _export(variant: str, size: int, work: Path, exporter: str):
    import dataclasses

    from resnet_deploy.export import export_onnx, make_dynamic
    from resnet_deploy.models import create_model, resolve_variant

    spec = resolve_variant(variant)
    model, info = create_model(spec.name)
    model = make_dynamic(model).eval()
    path = work / f"{spec.name}.onnx"
    if not path.is_file():
        prep = dataclasses.replace(info.preprocessing, crop_size=size, resize_size=round(size * 256 / 224))
        export_onnx(model, path, exporter=exporter, sample_shape=(2, 3, size, size),
                    metadata={"preprocessing": prep.to_dict(), "precision": "fp32", "input_layout": "NCHW",
                              "variant": spec.name})
    return spec.name, path, model


def _int8(fp32: Path, model: Any, work: Path, name: str, size: int, calib_size: int) -> Path:
    """The calibration package's ONNX Runtime INT8 artifact (u8 activations, s8 per-channel weights)."""
    from resnet_deploy.calibration import CalibrationConfig, run_int8_stage

    int8 = work / f"{name}.int8.onnxruntime.onnx"
    if not int8.is_file():
        run_int8_stage(fp32, model, work, name, CalibrationConfig(
            calib_data=f"synthetic:{calib_size}", calib_size=calib_size, target="onnxruntime", holdout=8,
            shape=(8, 3, size, size)))
    return int8


def _default_openvino(path: Path, threads: int | None):
    """OpenVINO as a user gets it without this toolkit: no precision hint (bf16 on BF16 CPUs). The
    precision it really runs is read back the same way the runner does."""
    import numpy as np
    import openvino as ov

    from resnet_deploy.runtime.base import Runner, RunnerInfo
    from resnet_deploy.runtime.openvino_runner import OpenVINORunner, _spec, artifact_kind, runtime_precisions

    class DefaultOpenVINO(Runner):
        def __init__(self) -> None:
            core = ov.Core()
            model = core.read_model(str(path))
            config = {"PERFORMANCE_HINT": "LATENCY"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            self.compiled = core.compile_model(model, "CPU", config)
            _, compute = runtime_precisions(self.compiled)
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            self.inputs = [_spec(p) for p in self.compiled.inputs]
            self.outputs = [_spec(p) for p in self.compiled.outputs]
            self.request = self.compiled.create_infer_request()
            self.info = RunnerInfo("openvino", "cpu", OpenVINORunner._actual_precision(compute, artifact_kind(model)),
                                   str(path), {"inference_precision_hint": hint, "compute_precisions": dict(compute),
                                               "openvino": ov.__version__.split("-")[0], "hint": "latency (default)"})

        def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
            res = self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
            return {self.outputs[0].name: np.asarray(res[0])}

    return DefaultOpenVINO()


def _stream_vs_infer(make_stream, make_sync, batch: int, size: int, n_batches: int,
                     repeats: int) -> dict[str, Any]:
    """Images per second of ``infer_stream`` (THROUGHPUT runner) and of back-to-back ``infer``
    (LATENCY runner) over the same ``n_batches`` batches, alternating, ``repeats`` times each, so
    that both see the same machine load; medians."""
    from resnet_deploy.parity import seeded_inputs

    feed = [seeded_inputs([(batch, 3, size, size)], seed=1)[0]] * n_batches
    stream_rates, sync_rates = [], []
    with make_stream() as streamer, make_sync() as sync:
        list(streamer.infer_stream(feed[: 2 * int(streamer.info.details.get("optimal_requests") or 2)]))  # warm all
        sync.infer(feed[0])
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in streamer.infer_stream(iter(feed)):
                pass
            stream_rates.append(n_batches * batch / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for x in feed:
                sync.infer(x)
            sync_rates.append(n_batches * batch / (time.perf_counter() - t0))
        info = streamer.info.to_dict()
    return {"stream_images_per_s": statistics.median(stream_rates), "infer_images_per_s": statistics.median(sync_rates),
            "stream_all": stream_rates, "infer_all": sync_rates, "streams": info.get("streams"),
            "threads": info.get("threads"), "precision_used": info.get("precision"),
            "requests": info.get("optimal_requests")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iterations", type=int, default=50, help="minimum timed iterations per configuration")
    ap.add_argument("--duration", type=float, default=10.0, help="minimum timed seconds per configuration")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each configuration once per round)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warmup seconds per configuration")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every backend (default: the CPUs this process may use)")
    ap.add_argument("--calib-size", type=int, default=32, help="synthetic calibration images for the INT8 file")
    ap.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"))
    ap.add_argument("--no-default", action="store_true", help="leave out the openvino:default row")
    ap.add_argument("--stream-batches", type=int, default=32,
                    help="batches per infer_stream throughput run (0: skip the throughput section)")
    ap.add_argument("--stream-repeats", type=int, default=3)
    ap.add_argument("--work-dir", default=os.environ.get("RESNET_DEPLOY_BENCH_DIR", "/tmp/resnet-deploy-openvino-bench"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s] %(message)s", stream=sys.stderr)
    for noisy in ("torch.onnx", "onnxscript", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    import openvino as ov

    from resnet_deploy.bench.harness import BenchConfig, Target, Warmup, run_benchmark
    from resnet_deploy.bench.report import speedup_checks
    from resnet_deploy.bench.limits import cpu_peak, detect_cpu, variant_macs
    from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from resnet_deploy.runtime.openvino_runner import OpenVINORunner
    from resnet_deploy.runtime.torch_runner import TorchRunner

    threads = args.threads or len(os.sched_getaffinity(0))
    work = Path(args.work_dir) / f"{args.variant}-{args.size}-{args.exporter}"
    work.mkdir(parents=True, exist_ok=True)
    name, fp32, model = _export(args.variant, args.size, work, args.exporter)
    int8 = _int8(fp32, model, work, name, args.size, args.calib_size)
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")

    def ov_target(label: str, path: Path, precision: str | None) -> Target:
        return Target(label, "openvino", label.split(":")[1],
                      lambda: OpenVINORunner(path, precision=precision, threads=threads, hint="latency"),
                      variant=name, artifact=str(path))

    targets = [
        Target("torch:fp32", "torch", "fp32", lambda: TorchRunner(model, threads=threads, label=name), variant=name),
        Target("onnxruntime:fp32", "onnxruntime", "fp32", lambda: OnnxRuntimeRunner(fp32, threads=threads),
               variant=name, artifact=str(fp32)),
        Target("onnxruntime:int8", "onnxruntime", "int8", lambda: OnnxRuntimeRunner(int8, threads=threads),
               variant=name, artifact=str(int8)),
        ov_target("openvino:fp32", fp32, "fp32"),
        ov_target("openvino:int8", int8, None),
    ]
    if bf16:
        targets.insert(4, ov_target("openvino:bf16", fp32, "bf16"))
    if not args.no_default:
        targets.insert(4, Target("openvino:default", "openvino", "default", lambda: _default_openvino(fp32, threads),
                                 variant=name, artifact=str(fp32)))
    batches = tuple(int(b) for b in args.batches.split(","))
    cfg = BenchConfig(batch_sizes=batches, shapes=((args.size, args.size),),
                      warmup=Warmup(iterations=2, seconds=args.warmup), iterations=args.iterations,
                      duration_s=args.duration, rounds=args.rounds, threads=threads)
    t0 = time.perf_counter()
    result = run_benchmark(targets, cfg)
    wall = time.perf_counter() - t0

    cpu = detect_cpu()
    macs = variant_macs(name, args.size, args.size)
    by = {(m.label, m.batch): m for m in result.measurements}
    print(f"{name} {args.size}x{args.size}, {threads} threads, {cpu.model_name} ({cpu.microarchitecture}, "
          f"{cpu.ghz or 0:.2f} GHz: {cpu.ghz_source}), OpenVINO {ov.__version__.split('-')[0]}, wall {wall:.0f}s")
    print(f"{macs / 1e9:.2f} GMACs per image; latency per batch in ms (medians of {args.rounds} interleaved rounds)\n")
    print("| target | runs as | batch | median ms | p90 ms | CV | images/s | x torch fp32 | % of peak (ISA) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for m in result.measurements:
        s = m.stats
        base = by.get(("torch:fp32", m.batch))
        speed = base.stats.median_ms / s.median_ms if base else None
        peak = cpu_peak(cpu, m.precision_used, cores=threads) if m.precision_used in ("fp32", "bf16", "fp16",
                                                                                      "int8") else None
        frac = macs * s.throughput / (peak.gmacs_per_s * 1e9) if peak else None
        hint = m.runner.get("inference_precision_hint")
        runs_as = m.precision_used + (f" (hint {hint})" if hint else "")
        print(f"| {m.label} | {runs_as} | {m.batch} | {s.median_ms:.2f} | {s.p90_ms:.2f} | {s.cv * 100:.1f}% | "
              f"{s.throughput:.1f} | {'' if speed is None else f'{speed:.2f}x'} | "
              f"{'' if frac is None else f'{frac * 100:.1f}% ({peak.isa}, {peak.gmacs_per_s:.0f} GMAC/s)'} |")
        rows.append({**m.to_dict(), "speedup_vs_torch_fp32": speed, "fraction_of_peak": frac,
                     "peak": None if peak is None else peak.to_dict()})

    table, ratios, ok = speedup_checks(result, TARGETS, batches)
    print("\n" + table)

    stream: list[dict[str, Any]] = []
    if args.stream_batches > 0:
        b = max(batches)
        print(f"\nthroughput at batch {b}, {args.stream_batches} batches per run, medians of {args.stream_repeats} "
              "alternating runs: infer_stream (THROUGHPUT hint, requests in flight) vs back-to-back infer "
              "(LATENCY hint)\n")
        print("| target | streams x threads | requests | stream images/s | infer images/s | ratio |")
        print("|---|---|---:|---:|---:|---:|")
        for label, path, precision in [("openvino:fp32", fp32, "fp32"), ("openvino:int8", int8, None)] + \
                ([("openvino:bf16", fp32, "bf16")] if bf16 else []):
            def make(p: Path = path, q: str | None = precision, hint: str = "latency") -> OpenVINORunner:
                return OpenVINORunner(p, precision=q, threads=threads, hint=hint)

            res = _stream_vs_infer(lambda: make(hint="throughput"), make, b, args.size, args.stream_batches,
                                   args.stream_repeats)
            res.update(label=label, batch=b)
            stream.append(res)
            print(f"| {label} | {res['streams']} x {res['threads']} | {res['requests']} | "
                  f"{res['stream_images_per_s']:.1f} | {res['infer_images_per_s']:.1f} | "
                  f"{res['stream_images_per_s'] / res['infer_images_per_s']:.2f} |")
    for note in result.notes + result.warnings:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "variant": name, "size": args.size, "threads": threads, "gmacs_per_image": macs / 1e9,
            "cpu": {"model": cpu.model_name, "microarchitecture": cpu.microarchitecture, "ghz": cpu.ghz,
                    "ghz_source": cpu.ghz_source, "flags": sorted(cpu.flags)},
            "measurements": rows, "ratios": ratios, "stream": stream, "notes": result.notes,
            "warnings": result.warnings, "config": cfg.to_dict(), "wall_s": wall}, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
