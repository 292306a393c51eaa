"""``resnet-deploy bench``: latency and throughput of backends and their peers, side by side.

    resnet-deploy bench --variant 50 --backends torch,onnxruntime --batch-sizes 1,8 --json bench.json --plot bench.png
    resnet-deploy bench --variant 50 --peers --precisions fp32,int8 --batch-sizes 1,8,32 --shapes 224x224,448x448
    resnet-deploy bench exports/resnet50/resnet50.onnx exports/resnet50/resnet50.int8.onnxruntime.onnx \\
        --backends onnxruntime,openvino
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import options
from ..errors import UsageError

log = logging.getLogger(__name__)

EPILOG = """\
timing: --warmup, then timed rounds over all configurations in turn (--rounds, order rotated each
round); --iterations and --duration are minimums per configuration over all rounds, both met
(default: 10 iterations and 3 s; giving only one of them drops the other). Every iteration is
infer + synchronize. Latency is per batch; images/s = batch / mean latency. Percentiles: numpy
'linear'; std: population; cv = std / mean (a warning above --cv-warn).
"""


def _csv(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"--{what} needs at least one value")
    return items


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in _csv(text, what))
    except ValueError:
        raise UsageError(f"--{what} takes comma-separated integers, got '{text}'") from None
    if any(v < 1 for v in values):
        raise UsageError(f"--{what} values must be >= 1, got '{text}'")
    return tuple(dict.fromkeys(values))


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    from ..shapes import validate_spatial

    out = []
    for item in _csv(text, "shapes"):
        parts = item.lower().split("x")
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise UsageError(f"bad --shapes entry '{item}': use HxW (e.g. 224x224) or one side (224)") from None
        if len(dims) == 1:
            dims = dims * 2
        if len(dims) != 2:
            raise UsageError(f"bad --shapes entry '{item}': use HxW (e.g. 224x224) or one side (224)")
        validate_spatial(dims[0], dims[1])
        out.append((dims[0], dims[1]))
    return tuple(dict.fromkeys(out))


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..bench.peers import BACKENDS, PRECISIONS

    p = sub.add_parser("bench", parents=[common], help="latency/throughput of backends and peers, side by side",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                   help="ONNX files (.onnx) or TensorRT engines to time as they are")
    what = p.add_argument_group("what to time")
    what.add_argument("--variant", help="a ResNet variant (18, 34, 50, ...): exports what the backends need")
    what.add_argument("--weights", default="random",
                      help="random (default: same speed, no download), imagenet[:TAG] or a checkpoint path")
    what.add_argument("--backends", default="torch,onnxruntime",
                      help=f"comma-separated: {', '.join(BACKENDS)} (default: torch,onnxruntime)")
    what.add_argument("--precisions", default="fp32", help=f"comma-separated: {', '.join(PRECISIONS)} (default: fp32)")
    what.add_argument("--peers", action="store_true",
                      help="add the peers: torch fp32/bf16, torch.compile, onnxruntime, openvino fp32/bf16 (CPU); "
                           "torch fp16, onnxruntime CUDA, tensorrt fp16 (CUDA)")
    what.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    what.add_argument("--threads", type=options.threads, help="intra-op threads for every backend (default: each one's own)")
    what.add_argument("--calib-data", default="synthetic",
                      help="calibration set of the INT8 export (folder, .npy/.npz, synthetic[:N]); latency does not "
                           "depend on it (default: synthetic)")
    what.add_argument("--workdir", type=Path,
                      help="where exported artifacts go and are reused from (default: a temporary directory)")
    how = p.add_argument_group("how to measure")
    how.add_argument("--batch-sizes", default="1", help="comma-separated (default: 1)")
    how.add_argument("--shapes", default="224x224", help="comma-separated HxW input sizes (default: 224x224)")
    how.add_argument("--warmup", default="200ms", help="iterations (10) or a time (200ms, 2s) (default: 200ms)")
    how.add_argument("--iterations", type=options.positive_int, help="minimum timed iterations per configuration")
    how.add_argument("--duration", type=options.non_negative_float, help="minimum timed seconds per configuration")
    how.add_argument("--rounds", type=options.positive_int, default=3, help="interleaved rounds over all configurations (default: 3)")
    how.add_argument("--pause-ms", type=options.non_negative_float, default=50.0,
                     help="idle gap between configurations, so the previous backend's threads go quiet (default: 50)")
    how.add_argument("--cv-warn", type=options.positive_float, default=0.05,
                     help="warn when the coefficient of variation exceeds this fraction (default: 0.05)")
    how.add_argument("--seed", type=options.non_negative_int, default=0, help="seed of the input batches (default: 0)")
    how.add_argument("--no-device-timing", action="store_true", help="on CUDA, skip the CUDA-event compute timing")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    out.add_argument("--csv", type=Path, metavar="OUT", help="write one CSV row per configuration")
    out.add_argument("--plot", type=Path, metavar="OUT.png", help="write the latency/throughput figure")
    out.add_argument("--baseline", help="the target the speedup column divides by (default: torch:fp32)")
    out.add_argument("--cpu-ghz", type=options.positive_float, help="the CPU clock for the peak (default: what the system reports)")
    p.set_defaults(func=run)


def _iterations_duration(args: argparse.Namespace) -> tuple[int, float]:
    if args.iterations is None and args.duration is None:
        return 10, 3.0
    return (args.iterations if args.iterations is not None else 1,
            args.duration if args.duration is not None else 0.0)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, Selection, Warmup, benchmark
    from ..bench.limits import detect_cpu
    from ..bench.report import format_table, save_csv, save_json

    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG: give a path ending in .png, got '{args.plot}'")
    iterations, duration = _iterations_duration(args)
    config = BenchConfig(batch_sizes=_ints(args.batch_sizes, "batch-sizes"), shapes=_shapes(args.shapes),
                         warmup=Warmup.parse(args.warmup), iterations=iterations, duration_s=duration,
                         rounds=args.rounds, pause_s=args.pause_ms / 1e3, cv_warn=args.cv_warn, seed=args.seed,
                         threads=args.threads, device_timing=not args.no_device_timing)
    selection = Selection(variant=args.variant, weights=args.weights, artifacts=tuple(args.artifacts),
                          backends=tuple(dict.fromkeys(_csv(args.backends, "backends"))),
                          precisions=tuple(dict.fromkeys(_csv(args.precisions, "precisions"))), peers=args.peers,
                          device=args.device, threads=args.threads, workdir=args.workdir,
                          int8_options={"calib_data": args.calib_data})
    cpu = detect_cpu(args.cpu_ghz)
    result = benchmark(selection, config, cpu=cpu, baseline=args.baseline)
    print(format_table(result))
    if args.json:
        print(f"wrote {save_json(result, args.json)}")
    if args.csv:
        print(f"wrote {save_csv(result, args.csv)}")
    if args.plot:
        from ..bench.plot import plot_results

        print(f"wrote {plot_results(result, args.plot)}")
    return 0
