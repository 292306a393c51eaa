"""What each deployment layer costs: the runner alone, the local ``embed``, Ray ``embed`` on a local
cluster, and Triton (the bytes entry on the nvidia-pytriton server) with 1, 4 and 16 concurrent clients.

All of them run the same ONNX with the same runner backend on the same JPEG files:

* ``runner``: ``runner.infer`` on one preprocessed picture (latency) and on batches (throughput):
  inference only, no decode;
* ``local embed``: ``Embedder.iter_embed`` over the files (decode in threads + inference);
* ``ray embed``: ``run_ray_embed`` on a local Ray cluster (decode tasks + an actor pool + Parquet parts);
  timed from the start of the job to the last part written, Ray itself already started;
* ``triton cN``: N client threads, each sending one encoded JPEG per request over gRPC (or HTTP) to
  the bytes entry; per-request latency p50/p99 seen by the client, and Triton's own queue and
  compute times from its statistics endpoint, so the overhead of each layer is visible.

Tiny run (validation, a few seconds of work per stage):

    python benchmarks/pipelines_bench.py --variant 18 --num-images 16 --requests 8 --concurrency 1,4

A real run (a quiet machine; ResNet-50, 256 photos):

    python benchmarks/pipelines_bench.py --variant 50 --num-images 256 --requests 64 \\
        --concurrency 1,4,16 --out-json benchmarks/results/pipelines.json --out-md benchmarks/results/pipelines_table.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_throughput import make_images  # noqa: E402  (same photos as the embed benchmark)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def export(variant: str, workdir: Path) -> Path:
    from resnet_deploy.export import ExportConfig, export_model

    out = workdir / f"export-{variant}"
    if (out / "manifest.json").is_file():
        return next(out.glob("*.onnx"))
    result = export_model(ExportConfig(variant=variant, head="embedding", output_dir=out, exporter="torchscript",
                                       check_shapes=((2, 3, 224, 224),)))
    return result.onnx_path


def bench_runner(onnx: Path, backend: str, crop: int, batch: int, iters: int) -> dict:
    from resnet_deploy.runtime import load_runner

    with load_runner(onnx, backend=backend) as runner:
        one = np.random.default_rng(0).standard_normal((1, 3, crop, crop), dtype=np.float32)
        many = np.random.default_rng(1).standard_normal((batch, 3, crop, crop), dtype=np.float32)
        for _ in range(3):
            runner.infer(one)
        lat = []
        for _ in range(iters):
            t0 = time.perf_counter()
            runner.infer(one)
            lat.append(time.perf_counter() - t0)
        runner.infer(many)
        t0 = time.perf_counter()
        reps = max(1, iters // 4)
        for _ in range(reps):
            runner.infer(many)
        dt = time.perf_counter() - t0
    return {"p50_ms": 1e3 * pct(lat, 50), "p99_ms": 1e3 * pct(lat, 99), "batch1_img_s": 1.0 / pct(lat, 50),
            f"batch{batch}_img_s": reps * batch / dt}


def bench_local(onnx: Path, backend: str, paths: list[Path], batch: int) -> dict:
    from resnet_deploy.pipelines import Embedder

    with Embedder(onnx, backend=backend, batch_size=batch) as emb:
        list(emb.iter_embed(paths[: batch]))  # warm up the runner and the decode pool
        t0 = time.perf_counter()
        n = sum(len(rows) for _, rows in emb.iter_embed(paths))
        dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "img_s": n / dt}


def bench_ray(onnx: Path, backend: str, paths: list[Path], batch: int, actors: int, workdir: Path) -> dict:
    import ray

    from resnet_deploy.pipelines.ray_job import run_ray_embed

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        out = Path(tempfile.mkdtemp(prefix="ray-out-", dir=workdir))  # a fresh job: nothing to skip
        t0 = time.perf_counter()
        summary = run_ray_embed(str(onnx), [str(p) for p in paths], out, backend=backend, batch_size=batch,
                                num_actors=actors,
                                rows_per_part=256)
        dt = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"images": summary["rows_written"], "seconds": dt, "img_s": summary["rows_written"] / dt,
            "actors": actors, "note": "includes starting the actors and loading the model in them"}


def _stats_delta(before: dict, after: dict) -> dict:
    def ns(stats: dict, key: str) -> tuple[int, int]:
        s = stats.get("inference_stats", {}).get(key, {})
        return int(s.get("count", 0)), int(s.get("ns", 0))

    out = {}
    for key in ("queue", "compute_infer", "success"):
        c1, n1 = ns(before, key)
        c2, n2 = ns(after, key)
        out[f"server_{key}_ms"] = (n2 - n1) / max(1, c2 - c1) / 1e6
    out["executions"] = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    out["inferences"] = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    return out


def bench_triton(onnx: Path, backend: str, paths: list[Path], concurrency: list[int], requests: int, protocol: str,
                 max_batch: int, workdir: Path) -> dict:
    from resnet_deploy.pipelines.triton import ServerConfig, TritonServer, write_repository
    from resnet_deploy.pipelines.triton.server import model_statistics

    repo = workdir / "triton-repo"
    if not repo.exists():
        write_repository(onnx.parent, repo, name="bench", entries=("bytes",), max_batch_size=max_batch,
                         runner_backend=backend, max_queue_delay_us=1000)
    model = "bench_bytes"
    images = [p.read_bytes() for p in paths]
    results = {}
    with TritonServer(ServerConfig(repo, http_port=0, grpc_port=0, metrics_port=None, models=(model,))) as srv:
        if protocol == "grpc":
            import tritonclient.grpc as client_mod

            def make_client():
                return client_mod.InferenceServerClient(srv.grpc_url)
        else:
            import tritonclient.http as client_mod

            def make_client():
                return client_mod.InferenceServerClient(srv.http_url.removeprefix("http://"),
                                                        connection_timeout=300, network_timeout=300)

        def send(client, data: bytes):
            inp = client_mod.InferInput("image", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[data]], dtype=object))
            return client.infer(model, [inp])

        # FP32 parity first: every image over gRPC and HTTP against the local Embedder (same runner)
        import tritonclient.grpc as grpc_mod
        import tritonclient.http as http_mod

        from resnet_deploy.pipelines import Embedder

        with Embedder(onnx, backend=backend) as emb:
            reference = emb.embed(images)
        worst = 0.0
        for mod, url in ((grpc_mod, srv.grpc_url), (http_mod, srv.http_url.removeprefix("http://"))):
            client = mod.InferenceServerClient(url)
            for data, ref in zip(images, reference):
                inp = mod.InferInput("image", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[data]], dtype=object))
                got = client.infer(model, [inp]).as_numpy("embedding")[0]
                worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
            client.close()
        results["parity_max_abs_over_max"] = worst
        print(f"  triton parity (HTTP + gRPC vs local Embedder): max |diff| / max |ref| = {worst:.2e}", flush=True)
        for c in concurrency:
            lat: list[float] = []
            lock = threading.Lock()

            def worker(k: int) -> None:
                client = make_client()
                mine = []
                for i in range(requests):
                    data = images[(k * requests + i) % len(images)]
                    t0 = time.perf_counter()
                    send(client, data)
                    mine.append(time.perf_counter() - t0)
                client.close()
                with lock:
                    lat.extend(mine)

            before = model_statistics(srv.http_url, model)
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(c)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            dt = time.perf_counter() - t0
            after = model_statistics(srv.http_url, model)
            row = {"clients": c, "requests": len(lat), "img_s": len(lat) / dt, "p50_ms": 1e3 * pct(lat, 50),
                   "p99_ms": 1e3 * pct(lat, 99), **_stats_delta(before, after)}
            row["mean_batch"] = row["inferences"] / max(1, row["executions"])
            results[f"c{c}"] = row
            print(f"  triton c{c}: {row['img_s']:.1f} img/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                  f"mean batch {row['mean_batch']:.2f}", flush=True)
    return results


def to_markdown(res: dict) -> str:
    lines = [f"Machine: {res['machine']}; model {res['model']} (backend {res['backend']}), {res['num_images']} JPEGs "
             f"(500x375 / 375x500), protocol {res['protocol']}.", "",
             "| path | images/s | p50 ms | p99 ms | notes |", "|---|---:|---:|---:|---|"]
    r = res.get("runner")
    if r:
        bkey = next(k for k in r if k.startswith("batch") and k != "batch1_img_s")
        lines.append(f"| runner, batch 1 (inference only) | {r['batch1_img_s']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | no decode |")
        lines.append(f"| runner, {bkey.split('_')[0]} (inference only) | {r[bkey]:.1f} | | | no decode |")
    if res.get("local"):
        lines.append(f"| local embed | {res['local']['img_s']:.1f} | | | decode threads + inference |")
    if res.get("ray"):
        lines.append(f"| ray embed (local cluster, {res['ray']['actors']} actor) | {res['ray']['img_s']:.1f} | | | "
                     "incl. actor start + model load |")
    for key, row in (res.get("triton") or {}).items():
        if not isinstance(row, dict):
            continue
        lines.append(f"| triton bytes, {row['clients']} client{'s' if row['clients'] > 1 else ''} | "
                     f"{row['img_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | server queue "
                     f"{row['server_queue_ms']:.1f} ms + compute {row['server_compute_infer_ms']:.1f} ms per "
                     f"request, mean batch {row['mean_batch']:.2f} |")
    if res.get("triton"):
        lines += ["", f"Triton answers vs the local Embedder (every image, HTTP and gRPC): max |diff| / max |ref| = "
                      f"{res['triton']['parity_max_abs_over_max']:.1e}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--variant", default="18", help="export this variant (embedding head, random weights)")
    src.add_argument("--model", default=None, help="an existing ONNX (embedding head) instead of --variant")
    ap.add_argument("--backend", default="onnxruntime", help="the runner in every path (default onnxruntime)")
    ap.add_argument("--num-images", type=int, default=64)
    ap.add_argument("--images", default=None, help="folder of JPEGs (default: written into the work dir)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--runner-iters", type=int, default=30)
    ap.add_argument("--ray-actors", type=int, default=1)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=32, help="requests per Triton client")
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--max-batch-size", type=int, default=16, help="Triton entry's max_batch_size")
    ap.add_argument("--skip", default="", help="comma-separated stages to skip: runner,local,ray,triton")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--out-md", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RESNET_DEPLOY_PROGRESS", "0")

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pipelines-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    onnx = Path(args.model) if args.model else export(args.variant, workdir)
    folder = Path(args.images) if args.images else workdir / "images"
    paths = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if len(paths) < args.num_images:
        paths = make_images(folder, args.num_images)
    paths = paths[: args.num_images]
    from resnet_deploy.artifacts import preprocessing_of

    crop = preprocessing_of(onnx).crop_size
    res: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                 "model": onnx.name, "backend": args.backend, "num_images": len(paths), "protocol": args.protocol,
                 "command": " ".join(sys.argv)}
    if "runner" not in skip:
        res["runner"] = bench_runner(onnx, args.backend, crop, args.batch_size, args.runner_iters)
        print(f"runner: {res['runner']}", flush=True)
    if "local" not in skip:
        res["local"] = bench_local(onnx, args.backend, paths, args.batch_size)
        print(f"local embed: {res['local']}", flush=True)
    if "ray" not in skip:
        res["ray"] = bench_ray(onnx, args.backend, paths, args.batch_size, args.ray_actors, workdir)
        print(f"ray embed: {res['ray']}", flush=True)
    if "triton" not in skip:
        conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
        res["triton"] = bench_triton(onnx, args.backend, paths, conc, args.requests, args.protocol,
                                     args.max_batch_size, workdir)
    md = to_markdown(res)
    print(md)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(res, indent=2) + "\n")
    if args.out_md:
        Path(args.out_md).write_text(md)


if __name__ == "__main__":
    main()
