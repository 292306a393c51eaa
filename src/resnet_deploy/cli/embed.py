"""``resnet-deploy embed --model ARTIFACT INPUT_DIR --output FILE``: a thin CLI over
:mod:`resnet_deploy.pipelines.embed_job` (local) and :mod:`resnet_deploy.pipelines.ray_job` (Ray).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import options
from ..errors import UsageError
from ..pipelines.embed_job import EmbedConfig, embed_folder
from ..runtime import BACKEND_CHOICES

EXECUTORS = ("local", "ray")


# -- CLI ------------------------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("embed", parents=[common], help="embeddings for every image under a folder",
                       description="Embed every image under INPUT_DIR (recursive) with an artifact exported with "
                                   "--head embedding. Output: .npy (float32, one row per image) with FILE.json "
                                   "listing the paths in row order, or Parquet (path, embedding). Resumable: a "
                                   "rerun appends only images the output does not hold yet.")
    p.add_argument("inputs", metavar="INPUT_DIR", help="folder of images (searched recursively)")
    p.add_argument("--model", "-m", required=True, metavar="ARTIFACT",
                   help="ONNX file, TensorRT engine, or a variant name (torch backend, embedding head)")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="FILE.npy or FILE.parquet")
    p.add_argument("--format", dest="fmt", choices=("npy", "parquet"), default=None,
                   help="output format (default: from the suffix of --output)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="default auto")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda for engines, else cpu)")
    p.add_argument("--threads", type=options.threads, default=None, help="CPU inference threads")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default=None,
                   help="what a backend with a choice runs (OpenVINO: fp32 unless bf16 is asked for)")
    p.add_argument("--batch-size", type=options.batch_size, default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=options.positive_int, default=None, help="decode threads (default: min(8, CPUs))")
    p.add_argument("--overwrite", action="store_true", help="start a new file instead of resuming an existing one")
    p.add_argument("--checkpoint-every", type=options.positive_float, default=60.0, metavar="SECONDS",
                   help="rewrite the output with the rows so far every SECONDS (default 60)")
    g = p.add_argument_group("distributed")
    g.add_argument("--executor", choices=EXECUTORS, default="local", help="local (default) or ray (Ray Data actors)")
    g.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    g.add_argument("--num-actors", type=options.positive_int, default=None, help="Ray actors (default: one per GPU, else 1)")
    g.add_argument("--ray-timeout", type=options.positive_float, default=None, metavar="SECONDS",
                   help="give up connecting to the cluster at --ray-address after SECONDS (default 30)")
    p.set_defaults(func=run)


def _run_ray(args: argparse.Namespace) -> int:
    from ..pipelines.embedder import default_device
    from ..pipelines.ray_job import run_ray_embed

    extra = {} if args.ray_timeout is None else {"ray_timeout": args.ray_timeout}  # default: the job's own (30 s)
    result = run_ray_embed(args.model, args.inputs, args.output, backend=args.backend, batch_size=args.batch_size,
                           num_actors=args.num_actors, ray_address=args.ray_address,
                           device=default_device(args.model, args.device), **extra)
    if isinstance(result, dict):
        for key, value in result.items():
            print(f"{key}: {value}")
    elif result is not None:
        print(result)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.executor == "ray":
        return _run_ray(args)
    if args.num_actors is not None or args.ray_address is not None or args.ray_timeout is not None:
        raise UsageError("--num-actors, --ray-address and --ray-timeout apply to --executor ray")
    cfg = EmbedConfig(model=args.model, inputs=args.inputs, output=args.output, fmt=args.fmt, backend=args.backend,
                      device=args.device, batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                      precision=args.precision, resume=not args.overwrite, checkpoint_every=args.checkpoint_every)

    def started(emb: Any) -> None:
        info = emb.runner.info
        print(f"backend: {info.backend} ({info.device}, {info.precision})  batch {emb.batch_size}, "
              f"{emb.workers} decode threads, dim {emb.dim}", flush=True)

    s = embed_folder(cfg, on_start=started)
    print(f"wrote {s.output} ({s.format}): {s.total_rows} rows; {s.new_rows} new in {s.seconds:.1f}s "
          f"({s.images_per_second:.1f} img/s), {s.already_done} already there, {len(s.failed)} unreadable skipped")
    for path, reason in s.failed[:20]:  # to stderr, with the errors
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    if len(s.failed) > 20:
        print(f"  ... and {len(s.failed) - 20} more (listed in the output's metadata)", file=sys.stderr)
    return 0
