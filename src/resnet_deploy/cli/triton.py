"""``resnet-deploy triton-repo`` (a Triton model repository from an export) and ``resnet-deploy
triton-serve`` (the CPU server from ``nvidia-pytriton`` on that repository, for a local try)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pipelines.triton.server import ServerConfig, TritonServer

from .. import options

DOCKER_HINT = ("docker run --gpus all --rm --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 "
               "-v {repo}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..pipelines.triton.repository import DEVICES, ENTRY_KINDS, RUNNER_BACKENDS

    p = sub.add_parser(
        "triton-repo", parents=[common], help="write a Triton model repository from an export directory",
        description="Write a Triton model repository: native entries (onnxruntime_onnx, tensorrt_plan, openvino) "
                    "for NVIDIA's Triton containers, and Python-backend entries (NCHW tensors, or encoded image "
                    "bytes decoded and preprocessed on the server) that run this toolkit's Embedder on any Triton. "
                    "Every config.pbtxt is checked against Triton's schema. Exit 0 ok, 2 bad input.")
    p.add_argument("export_dir", help="an export directory (manifest.json, the ONNX, engines)")
    p.add_argument("--output", "-o", required=True, help="the model repository to write (entries already in it are "
                                                         "kept; replacing one needs --force)")
    p.add_argument("--name", default=None, help="model name prefix; entries are NAME_<kind> (default: the ONNX "
                                                "file's stem, e.g. resnet50_embedding)")
    p.add_argument("--max-batch-size", type=options.batch_size, default=32, help="max_batch_size of every entry (default 32; "
                                                                  "an engine's profile may lower it)")
    p.add_argument("--instances", type=options.positive_int, default=1, help="model instances per entry (instance_group count)")
    p.add_argument("--entries", type=_csv, default=None,
                   help=f"comma-separated subset of: {', '.join(ENTRY_KINDS)} (default: every entry the export has "
                        "the artifacts for; naming one it lacks is an error)")
    p.add_argument("--precision", default="fp32", help="which ONNX the onnxruntime/openvino/python/bytes entries "
                                                       "use (default fp32)")
    p.add_argument("--trt-precision", default=None, help="which engines the tensorrt entry uses (default: their "
                                                         "only precision, fp16 when there are several)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="instance kind of the onnxruntime and "
                                                                    "Python-backend entries (default cpu)")
    p.add_argument("--runner-backend", choices=RUNNER_BACKENDS, default="auto",
                   help="the toolkit runner inside the Python-backend entries (default auto: openvino on a CPU "
                        "when installed, else onnxruntime)")
    p.add_argument("--max-queue-delay-us", type=options.non_negative_int, default=500,
                   help="dynamic batching: how long a request may wait for others (default 500 us)")
    p.add_argument("--decode-workers", type=options.positive_int, default=None,
                   help="bytes entry: decode threads per instance (default: the Embedder's)")
    p.add_argument("--max-side", type=int, default=None,
                   help="python entry: largest tensor height/width a request may have (default 1024; the "
                        "smallest is 32, as for export)")
    p.add_argument("--max-request-bytes", type=int, default=None,
                   help="python and bytes entries: largest request in bytes, refused before any work "
                        "(default 64 MiB)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="bytes entry: most pixels an image may decode to, checked from its header (default: "
                        "the server's, 40 MP or $RESNET_DEPLOY_MAX_IMAGE_PIXELS)")
    p.add_argument("--no-warmup", action="store_true", help="no warmup request before a model is marked ready")
    p.add_argument("--force", action="store_true", help="replace entries of the same names in --output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_repo)

    s = sub.add_parser(
        "triton-serve", parents=[common], help="serve a model repository with the nvidia-pytriton server (CPU)",
        description="Start the Triton server shipped in the nvidia-pytriton wheel on the Python-backend models of "
                    "REPO (it has no ONNX Runtime/TensorRT/OpenVINO backends: use NVIDIA's container for the native "
                    "entries), wait until it is ready, print the endpoints, watch that every model stays "
                    "ready, and stop on Ctrl-C. Model control (load/unload) and Triton's other admin APIs are "
                    "closed unless --allow-model-control; it listens on 127.0.0.1 unless --host says otherwise. "
                    "Exit 130 after Ctrl-C (143 after SIGTERM), 1 when a model stopped being ready while "
                    "serving, 2 when it cannot start (Triton's own log line is quoted) or stops on its own.")
    s.add_argument("repository", help="a model repository written by `resnet-deploy triton-repo`")
    s.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 picks a free one)")
    s.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")
    s.add_argument("--no-metrics", action="store_true", help="no metrics endpoint")
    s.add_argument("--host", default="127.0.0.1", help="IP address to listen on (default 127.0.0.1, loopback; "
                                                       "0.0.0.0 for every interface, with a warning naming what "
                                                       "is exposed: there is no authentication)")
    s.add_argument("--allow-model-control", action="store_true",
                   help="open Triton's model control: --model-control-mode=explicit and the model-repository and "
                        "model-config APIs (load/unload). Anyone who reaches them can load a Python model, that is "
                        "run code as this user. Off by default (shared-memory, trace and logging stay closed)")
    s.add_argument("--model", action="append", default=None, dest="models",
                   help="load only this model (repeatable; default: every Python-backend model)")
    s.add_argument("--log-file", default=None, help="write Triton's log to this file")
    s.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level")
    s.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for readiness (default 300)")
    s.add_argument("--stub-site", action="append", default=None,
                   help="directory put first on the Python backend's import path, e.g. one holding numpy<2 "
                        "(repeatable; default $RESNET_DEPLOY_TRITON_STUB_SITE or <prefix>/triton-stub-site)")
    s.set_defaults(func=run_serve)


def run_repo(args: argparse.Namespace) -> int:
    from ..pipelines.triton.repository import RepositoryConfig, build_repository

    cfg = RepositoryConfig(export_dir=Path(args.export_dir), output=Path(args.output), name=args.name,
                           max_batch_size=args.max_batch_size, instances=args.instances, entries=args.entries,
                           precision=args.precision, trt_precision=args.trt_precision, device=args.device,
                           runner_backend=args.runner_backend, max_queue_delay_us=args.max_queue_delay_us,
                           decode_workers=args.decode_workers, warmup=not args.no_warmup, force=args.force,
                           max_side=args.max_side, max_request_bytes=args.max_request_bytes,
                           max_image_pixels=args.max_image_pixels)
    result = build_repository(cfg)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    checked = "checked against Triton's schema" if result.schema_checked else \
        "NOT checked against Triton's schema (install tritonclient)"
    print(f"wrote {len(result.entries)} models into {result.path} (config.pbtxt {checked})")
    width = max(len(e.name) for e in result.entries)
    for e in result.entries:
        where = "NVIDIA's Triton container" if e.native else "any Triton (Python backend; triton-serve)"
        print(f"  {e.name:<{width}}  {e.kind:<11}  {where}")
    for kind, why in result.skipped.items():
        print(f"  no {kind} entry: {why}")
    print(f"try it here:  resnet-deploy triton-serve {result.path}")
    if any(e.native for e in result.entries):
        print(f"production:   {DOCKER_HINT.format(repo=Path(result.path).resolve())}")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM while the server starts: unwinds like Ctrl-C (the server is stopped)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated()


def run_serve(args: argparse.Namespace) -> int:
    from ..pipelines.triton.server import ServerConfig, TritonServer

    cfg = ServerConfig(repository=Path(args.repository), http_port=args.http_port, grpc_port=args.grpc_port,
                       metrics_port=None if args.no_metrics else args.metrics_port, host=args.host,
                       models=tuple(args.models) if args.models else None, startup_timeout_s=args.startup_timeout,
                       log_file=Path(args.log_file) if args.log_file else None, log_verbose=args.log_verbose,
                       stub_site=tuple(Path(p) for p in args.stub_site) if args.stub_site else None,
                       allow_model_control=args.allow_model_control)
    server = TritonServer(cfg)
    # SIGTERM before serve_forever takes over (while starting, or printing) unwinds like Ctrl-C, so
    # the server (in its own session) is stopped rather than left behind.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _serve(server, cfg)
    except _Terminated:
        server.stop()
        print("terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(server: "TritonServer", cfg: "ServerConfig") -> int:
    server.start()
    try:
        print(f"Triton is ready ({len(server.models)} model{'s' if len(server.models) != 1 else ''}):")
        print(f"  HTTP     {server.http_url}")
        print(f"  gRPC     {server.grpc_url}")
        if server.metrics_url:
            print(f"  metrics  {server.metrics_url}")
        for m in server.models:
            print(f"  model    {m}    ({server.http_url}/v2/models/{m})")
        for m, why in server.skipped.items():
            print(f"  skipped  {m}: {why}")
        if cfg.log_file:
            print(f"  log      {cfg.log_file}")
        control = "open (--allow-model-control)" if cfg.allow_model_control else "closed"
        print(f"  model control {control}")
        # a model that stops being ready is logged as it happens
        reason = server.serve_forever(on_serving=lambda: print("Ctrl-C to stop", flush=True))
    finally:
        server.stop()
    print(f"stopped ({reason})", flush=True)
    if server.unready:
        print(f"error: {len(server.unready)} model{'s' if len(server.unready) != 1 else ''} stopped being ready "
              f"while serving: {', '.join(server.unready)}", file=sys.stderr)
        return 1
    return {"SIGINT": 130, "SIGTERM": 143}.get(reason, 0)
