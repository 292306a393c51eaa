"""The GPU check (run by benchmarks/gpu_check.sh): every step records ok / failed / not run (with the
reason: no GPU, no TensorRT, or "budget" when it would not fit the time left), its time and its
numbers in OUT/summary.json and OUT/summary.md (rewritten after each step, so a run cut short still
leaves what it saw).

Sized to ~5 minutes on one H100/H200. The GPU is found through the CUDA layer (cuda-python's
cudaGetDeviceCount, else nvidia-smi), never through torch, which may be a CPU build.

* Without TensorRT (e.g. an H200 with PyTorch CUDA, cuda-bindings and CuPy, no registry): the CUDA
  layer through cuda-bindings (pinned and device buffers, copies, streams, events, graph capture of a
  copy), PyTorch's FP32/FP16 runner parity on the GPU, and the bench's CUDA-event path with PyTorch
  and torch.compile rows; every TensorRT step says "not run".
* With TensorRT: ResNet-18 FP16 and INT8 (64 calibration images, calibrated once) and ResNet-50 FP16
  exports with engines, a rebuild from the timing cache with two profile copies (context i on
  profile i, threads, CUDA graph, torch CUDA input), then ``pytest -m gpu`` on those engines.

    python benchmarks/gpu_check.py OUT [--budget 290] [--require-gpu [--allow-no-tensorrt]] [--no-pytest]

``--require-gpu``: exit 3 unless a GPU and TensorRT were usable (says which was missing); with
``--allow-no-tensorrt`` a usable GPU is enough. Otherwise: exit 1 if a step failed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

PROFILE = ("1x3x128x128", "4x3x224x224", "16x3x320x320")  # min, opt, max of every engine built here
CLI = [sys.executable, "-m", "resnet_deploy.cli.main"]


class Check:
    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.deadline = out, time.monotonic() + budget
        self.steps: list[dict[str, Any]] = []
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")

    @contextlib.contextmanager
    def step(self, name: str, need_seconds: float = 0.0):
        rec: dict[str, Any] = {"step": name, "status": "ok", "details": {}}
        self.steps.append(rec)
        left = self.deadline - time.monotonic()
        if left < need_seconds:
            rec.update(status="not run (budget)", seconds=0.0,
                       reason=f"{left:.0f}s of the budget left, the step needs ~{need_seconds:.0f}s")
            print(f"== {name}\n   not run (budget): {rec['reason']}", flush=True)
            self.save()
            yield None
            return
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            yield rec["details"]
        except Skip as exc:
            rec.update(status="not run", reason=str(exc))
        except subprocess.TimeoutExpired as exc:  # a step the budget cut short did not fail
            rec.update(status="not run (budget)", reason=f"stopped at the end of the budget ({exc.timeout:.0f}s)")
        except Exception as exc:  # noqa: BLE001 - a check reports and goes on
            rec.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"   {rec['status']} ({rec['seconds']}s){': ' + rec['reason'] if 'reason' in rec else ''}", flush=True)
        self.save()

    def save(self) -> None:
        data = {"started": self.started, "steps": self.steps}
        (self.out / "summary.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        total = sum(s.get("seconds") or 0 for s in self.steps)
        lines = [f"# GPU check, {self.started} ({total:.0f}s of steps)", "", "| step | status | s | details |",
                 "|---|---|---|---|"]
        for s in self.steps:
            detail = s.get("reason") or json.dumps(s["details"], default=str)
            lines.append(f"| {s['step']} | {s['status']} | {s.get('seconds', '')} | {detail[:400]} |")
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")

    @property
    def failed(self) -> bool:
        return any(s["status"] == "failed" for s in self.steps)


class Skip(Exception):
    """The step cannot run here; the message says why."""


def run_cli(args: list[str], log: Path, timeout: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ resnet-deploy " + " ".join(args) + "\n")
        f.flush()
        proc = subprocess.run(CLI + args, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, "RESNET_DEPLOY_PROGRESS": "0"})
    return proc.returncode, round(time.perf_counter() - t0, 1)


def _torch_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def environment(d: dict[str, Any]) -> dict[str, Any]:
    """What this host offers; returns {'gpus', 'gpu_why', 'torch_cuda', 'tensorrt', 'tensorrt_why'}."""
    from resnet_deploy.runtime.tensorrt import tensorrt_usable
    from resnet_deploy.runtime.tensorrt.cuda import available_backends, driver_cuda_version, gpu_count

    gpus, gpu_why = gpu_count()
    d.update(python=platform.python_version(), gpus=gpus, gpu_detection=gpu_why, driver_cuda=driver_cuda_version())
    try:
        import torch

        d.update(torch=torch.__version__, torch_cuda=torch.version.cuda, torch_sees_cuda=torch.cuda.is_available())
        if torch.cuda.is_available():
            d.update(gpu=torch.cuda.get_device_name(0),
                     capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    except ImportError:
        d.update(torch=None)
    for mod in ("tensorrt", "onnxruntime", "cuda.bindings", "pycuda", "cupy"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            d[mod] = getattr(m, "__version__", "installed")
        except ImportError:
            d[mod] = None
        except Exception as exc:  # noqa: BLE001 - a broken install is a finding, not a crash
            d[mod] = f"import failed: {type(exc).__name__}: {exc}"
    d["cuda_backends"] = available_backends()
    ok, why = tensorrt_usable() if gpus else (False, "no usable GPU")
    d["tensorrt_usable"] = [ok, why]
    return {"gpus": gpus, "gpu_why": gpu_why, "torch_cuda": _torch_cuda(), "tensorrt": ok, "tensorrt_why": why}


def torch_parity(d: dict[str, Any]) -> None:
    """The PyTorch runner on the GPU, FP32 and FP16, against FP32 on the CPU."""
    if not _torch_cuda():
        raise Skip("this torch has no CUDA (a CPU build, or no GPU)")
    import torch

    from resnet_deploy.parity import compare, seeded_inputs, tolerances_for
    from resnet_deploy.runtime.torch_runner import TorchRunner

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    inputs = seeded_inputs([(2, 3, 224, 224), (1, 3, 160, 288)], seed=0)
    failed = []
    with TorchRunner.from_variant("resnet18") as cpu:
        for precision in ("fp32", "fp16"):
            tol = tolerances_for(precision)
            if precision == "fp16":  # random weights: near-tied logits make top-k flips noise, not error
                tol = replace(tol, min_top1=0.0, min_top5=0.0)
            with TorchRunner.from_variant("resnet18", device="cuda:0", precision=precision) as gpu:
                rep = compare(cpu, gpu, inputs, precision=precision, tolerances=tol)
            d[precision] = {"passed": rep.passed, **rep.worst()}
            if not rep.passed:
                failed.append(f"{precision}:\n{rep.table()}")
    if failed:
        raise RuntimeError("PyTorch on the GPU differs from the CPU: " + "\n".join(failed))


def cuda_layer(d: dict[str, Any], gpus: int) -> None:
    """The runner's CUDA layer on the driver: pinned and device buffers, copies, a stream, events, and a
    CUDA graph that captures a copy, for each installed binding."""
    from resnet_deploy.runtime.tensorrt.cuda import DeviceBuffer, HostBuffer, Stream, available_backends, get_backend

    if not gpus:
        raise Skip("no usable GPU")
    names = available_backends()
    if not names:
        raise Skip("neither cuda-python (cuda-bindings) nor pycuda is installed")
    x = np.random.default_rng(0).standard_normal(16 * 2**20 // 4).astype(np.float32)  # 16 MiB
    for name in names:
        cuda = get_backend(name)
        with cuda.activate(0):
            host, dev, dev2, back = (HostBuffer(cuda, x.nbytes), DeviceBuffer(cuda, x.nbytes),
                                     DeviceBuffer(cuda, x.nbytes), HostBuffer(cuda, x.nbytes))
            stream = Stream(cuda)
            np.copyto(host.view(x.shape, x.dtype), x)
            t0 = time.perf_counter()
            for _ in range(10):
                stream.htod(dev, host, x.nbytes)
            stream.synchronize()
            h2d = 10 * x.nbytes / (time.perf_counter() - t0) / 1e9
            stream.dtod(dev2, dev.ptr, x.nbytes)
            stream.dtoh(back, dev2, x.nbytes)
            stream.synchronize()
            same = bool(np.array_equal(back.view(x.shape, x.dtype), x))
            rec: dict[str, Any] = {"round_trip_equal": same, "pinned_h2d_GBps": round(h2d, 1),
                                   "device": cuda.device_info(0).to_dict(), **cuda.versions()}
            if name == "cuda-python":
                rec.update(_events_and_graph(cuda, stream, host, dev, dev2, back, x))
            for b in (host, dev, dev2, back):
                b.free()
            stream.destroy()
        d[name] = rec
        if not same or rec.get("graph_copy_equal") is False:
            raise RuntimeError(f"{name}: the data came back different: {rec}")


def _events_and_graph(cuda: Any, stream: Any, host: Any, dev: Any, dev2: Any, back: Any, x: np.ndarray
                      ) -> dict[str, Any]:
    """CUDA events around a device copy, then a graph that captured a copy, replayed onto fresh data."""
    rt = cuda._rt
    s = cuda._objects.get(stream.handle, stream.handle)
    start = cuda._call("cudaEventCreate", rt.cudaEventCreate())
    end = cuda._call("cudaEventCreate", rt.cudaEventCreate())
    cuda._call("cudaEventRecord", rt.cudaEventRecord(start, s))
    stream.dtod(dev2, dev.ptr, x.nbytes)
    cuda._call("cudaEventRecord", rt.cudaEventRecord(end, s))
    cuda._call("cudaEventSynchronize", rt.cudaEventSynchronize(end))
    ms = float(cuda._call("cudaEventElapsedTime", rt.cudaEventElapsedTime(start, end)))
    for e in (start, end):
        cuda._call("cudaEventDestroy", rt.cudaEventDestroy(e))
    cuda.graph_begin(stream.handle)
    stream.dtod(dev2, dev.ptr, x.nbytes)  # captured, not run
    graph = cuda.graph_end(stream.handle)
    y = (x * 2).astype(np.float32)
    np.copyto(host.view(y.shape, y.dtype), y)
    stream.htod(dev, host, y.nbytes)
    cuda.graph_launch(graph, stream.handle)  # copies the new data
    stream.dtoh(back, dev2, y.nbytes)
    stream.synchronize()
    cuda.graph_destroy(graph)
    return {"event_dtod_ms": round(ms, 3), "dtod_GBps": round(x.nbytes / (ms / 1e3) / 1e9, 1) if ms else None,
            "graph_copy_equal": bool(np.array_equal(back.view(y.shape, y.dtype), y))}


def bench_cuda_events(d: dict[str, Any], out: Path, timeout: float) -> None:
    """``resnet-deploy bench`` on the GPU: PyTorch and torch.compile rows, timed with CUDA events."""
    if not _torch_cuda():
        raise Skip("this torch has no CUDA")
    args = ["bench", "--variant", "18", "--backends", "torch,torch-compile", "--precisions", "fp32,fp16",
            "--device", "cuda:0", "--batch-sizes", "1,8", "--warmup", "1s", "--duration", "2",
            "--json", str(out / "bench-gpu.json")]
    rc, seconds = run_cli(args, out / "logs" / "bench-gpu.log", timeout)
    d.update(command="resnet-deploy " + " ".join(args), rc=rc, seconds=seconds)
    if rc != 0:
        raise RuntimeError(f"exit {rc}; see logs/bench-gpu.log")
    data = json.loads((out / "bench-gpu.json").read_text())
    d["rows"] = [{"label": r.get("label"), "precision": r.get("precision_used"), "batch": r.get("batch"),
                  "median_ms": (r.get("latency_ms") or {}).get("median"),
                  "device_median_ms": (r.get("device_latency_ms") or {}).get("median"),
                  "images_per_s": r.get("throughput_ips"), "timed": r.get("timed")} for r in data.get("results", [])]
    if not any(r["device_median_ms"] for r in d["rows"]):
        raise RuntimeError("no row was timed with CUDA events (device_latency_ms missing)")


def need_tensorrt() -> None:
    from resnet_deploy.runtime.tensorrt import tensorrt_usable

    ok, why = tensorrt_usable()
    if not ok:
        raise Skip(f"TensorRT: {why}")


def export_engines(d: dict[str, Any], out: Path, variant: str, int8: bool, timeout: float) -> None:
    need_tensorrt()
    name = f"resnet{variant}"
    target = out / "exports" / (name if not int8 else f"{name}-int8")
    args = ["export", "--variant", variant, "--exporter", "torchscript", "--check-shapes", "1x3x224x224",
            "--engine", "always", "--min-shape", PROFILE[0], "--opt-shape", PROFILE[1], "--max-shape", PROFILE[2],
            "--timing-cache", str(out / "timing.cache"), "--output", str(target)]
    # 64 calibration images, calibrated once: the cache beside the ONNX is reused by later runs
    args += (["--int8", "--int8-target", "tensorrt", "--calib-data", "synthetic", "--calib-size", "64"] if int8
             else ["--fp16"])
    rc, seconds = run_cli(args, out / "logs" / f"export-{target.name}.log", timeout)
    d.update(command="resnet-deploy " + " ".join(args), rc=rc, seconds=seconds)
    manifest = target / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        for key, rep in data.get("parity", {}).items():
            d[f"parity.{key}"] = {"passed": rep.get("passed"), **{k: rep.get("worst", {}).get(k) for k in
                                                                 ("max_abs", "min_cosine", "min_centered_cosine",
                                                                  "min_top1")}}
        d["engine_build_s"] = {a["path"]: a.get("build_seconds") for a in data.get("artifacts", [])
                               if a.get("role") == "engine"}
        d["timings_s"] = data.get("timings_s")
    if rc != 0:
        raise RuntimeError(f"exit {rc}; see logs/export-{target.name}.log")


def rebuild_and_run(d: dict[str, Any], out: Path, timeout: float) -> None:
    """Rebuild ResNet-18 FP16 from the timing cache (two profile copies), then threads, graphs, torch."""
    need_tensorrt()
    from resnet_deploy.parity import seeded_inputs
    from resnet_deploy.runtime.tensorrt import TensorRTRunner, read_manifest

    src = out / "exports" / "resnet18"
    first = read_manifest(src / "resnet18.fp16.engine")
    engine = out / "engines" / "resnet18.fp16.x2.engine"
    args = ["build", str(src / "resnet18.fp16.onnx"), "--output", str(engine), "--min-shape", PROFILE[0],
            "--opt-shape", PROFILE[1], "--max-shape", PROFILE[2], "--profile-copies", "2",
            "--timing-cache", str(out / "timing.cache"), "--check", "--reference", str(src / "resnet18.onnx")]
    rc, seconds = run_cli(args, out / "logs" / "rebuild-resnet18.log", timeout)
    again = read_manifest(engine) if engine.is_file() else None
    d.update(rc=rc, first_build_s=first.build_seconds if first else None,
             rebuild_s=again.build_seconds if again else None, rebuild_command_s=seconds,
             parity=again.parity if again else None)
    if rc != 0 or again is None:
        raise RuntimeError(f"rebuild exit {rc}; see logs/rebuild-resnet18.log")

    batches = seeded_inputs([(4, 3, 224, 224)] * 8, seed=1)
    with TensorRTRunner(engine) as runner:
        want = [runner.infer(b) for b in batches]
        t0 = time.perf_counter()
        for _ in range(5):
            for b in batches:
                runner.infer(b)
        single = 5 * len(batches) * 4 / (time.perf_counter() - t0)
        errors: list[str] = []

        def work() -> None:
            for _ in range(5):
                for b, w in zip(batches, want):
                    got = runner.infer(b)
                    if np.abs(got - w).max() > 1e-2 * np.abs(w).max():
                        errors.append(f"max diff {np.abs(got - w).max():.3g}")

        threads = [threading.Thread(target=work) for _ in range(4)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        multi = 4 * 5 * len(batches) * 4 / (time.perf_counter() - t0)
        # context i holds profile i (two profile copies: two contexts for four threads)
        bound = [(i, s.profile) for i, s in enumerate(runner._slots) if s is not None]
        if not bound or any(i != p for i, p in bound):
            errors.append(f"contexts and profiles: {bound}")
        d["contexts_and_profiles"] = bound
        on_gpu = None
        if _torch_cuda():  # a torch CUDA tensor passed by pointer; skipped where torch is a CPU build
            import torch

            on_gpu = runner.infer(torch.from_numpy(batches[0]).cuda())
    with TensorRTRunner(engine, cuda_graph=True) as graphed:
        graph_out = [graphed.infer(batches[0]) for _ in range(3)]
    d.update(threads=4, thread_errors=len(errors), images_per_s_1_thread=round(single, 1),
             images_per_s_4_threads=round(multi, 1), note="host copies included",
             torch_cuda_input_max_diff=None if on_gpu is None else float(np.abs(on_gpu - want[0]).max()),
             cuda_graph_max_diff=float(max(np.abs(g - want[0]).max() for g in graph_out)))
    if on_gpu is None:
        d["torch_cuda_input"] = "not run: this torch has no CUDA"
    bar = 1e-3 * np.abs(want[0]).max()
    if errors or (d["torch_cuda_input_max_diff"] or 0) > bar or d["cuda_graph_max_diff"] > bar:
        raise RuntimeError(f"results differ: {errors[:3]}, torch input {d['torch_cuda_input_max_diff']}, "
                           f"graph {d['cuda_graph_max_diff']:.3g}")


def gpu_pytest(d: dict[str, Any], out: Path, timeout: float) -> None:
    log = out / "logs" / "pytest-gpu.log"
    env = {**os.environ, "RESNET_DEPLOY_GPU_EXPORTS": str((out / "exports").resolve()),
           "RESNET_DEPLOY_GPU_VARIANTS": "resnet18",
           "RESNET_DEPLOY_TIMING_CACHE": str((out / "timing.cache").resolve()), "RESNET_DEPLOY_PROGRESS": "0"}
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
                               f"--junitxml={out / 'pytest-gpu.xml'}", "tests"], stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env)
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    d.update(rc=proc.returncode, result=tail[0])
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m gpu exit {proc.returncode}: {tail[0]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="gpu_check_out", type=Path)
    ap.add_argument("--budget", type=float, default=290.0, help="seconds; steps that would not fit are not run")
    ap.add_argument("--require-gpu", action="store_true",
                    help="exit 3 unless a GPU and TensorRT were usable (a misconfigured GPU host must not pass)")
    ap.add_argument("--allow-no-tensorrt", action="store_true", help="with --require-gpu: a usable GPU is enough")
    ap.add_argument("--no-pytest", action="store_true")
    args = ap.parse_args(argv)
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "engines").mkdir(exist_ok=True)
    check = Check(out, args.budget)
    host = {"gpus": 0, "gpu_why": "environment step failed", "torch_cuda": False, "tensorrt": False,
            "tensorrt_why": "environment step failed"}
    with check.step("environment") as d:
        host = environment(d)

    def left(floor: float) -> float:
        return max(check.deadline - time.monotonic(), floor)

    with check.step("CUDA layer (cuda-bindings): buffers, copies, stream, events, graph of a copy",
                    need_seconds=5) as d:
        if d is not None:
            cuda_layer(d, host["gpus"])
    with check.step("torch runner on the GPU vs the CPU: ResNet-18 FP32 and FP16", need_seconds=20) as d:
        if d is not None:
            torch_parity(d)
    with check.step("bench on the GPU (CUDA events): torch, torch.compile, FP32/FP16", need_seconds=60) as d:
        if d is not None:
            bench_cuda_events(d, out, timeout=left(60))
    trt_steps = [("resnet-export --variant 18 --fp16 --engine always", 40,
                  lambda d: export_engines(d, out, "18", int8=False, timeout=left(40))),
                 ("resnet-export --variant 18 --int8 --int8-target tensorrt --engine always", 50,
                  lambda d: export_engines(d, out, "18", int8=True, timeout=left(50))),
                 ("timing-cache rebuild x2 profiles, 4 threads, CUDA graph, torch CUDA input (ResNet-18 FP16)", 30,
                  lambda d: rebuild_and_run(d, out, timeout=left(30))),
                 ("resnet-export --variant 50 --fp16 --engine always", 60, lambda d: export_engines(
                     d, out, "50", int8=False, timeout=left(60)))]
    if not args.no_pytest:
        trt_steps.append(("pytest -m gpu (on the engines built above)", 30,
                          lambda d: gpu_pytest(d, out, timeout=left(30))))
    for name, need, fn in trt_steps:
        if not host["tensorrt"]:  # say why once per step, without spending budget
            with check.step(name) as d:
                raise Skip(f"TensorRT: {host['tensorrt_why']}")
            continue
        with check.step(name, need_seconds=need) as d:
            if d is not None:
                fn(d)
    print(f"summary: {out / 'summary.md'}")
    for s in check.steps:
        print(f"  {s['status']:<17} {s.get('seconds', 0):>7.1f}s  {s['step']}")
    if args.require_gpu:
        missing = []
        if not host["gpus"]:
            missing.append(f"no usable GPU ({host['gpu_why']})")
        if not host["tensorrt"] and not args.allow_no_tensorrt:
            missing.append(f"no usable TensorRT ({host['tensorrt_why']})")
        if missing:
            print("--require-gpu: " + "; ".join(missing), file=sys.stderr)
            return 3
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
