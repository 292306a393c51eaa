"""The GPU check (run by benchmarks/gpu_check.sh): every step records ok/failed/skipped, its time and
its numbers in OUT/summary.json and OUT/summary.md (rewritten after each step, so a run cut short
still leaves what it saw).

Steps: environment; PyTorch on the GPU against the CPU; the CUDA layer on the driver (cuda-python
and/or pycuda); then, where TensorRT is usable: ``resnet-export --fp16`` and ``resnet-export --int8
--int8-target tensorrt`` with ``--engine always`` for each variant (engines built and checked at
min/opt/max/off-grid by the export), a rebuild with the timing cache, several threads on one
runner, CUDA graphs and torch CUDA inputs; finally ``pytest -m gpu``. Without TensorRT the CUDA and
PyTorch steps still run and the TensorRT steps say why they were skipped.

    python benchmarks/gpu_check.py OUT [--variants 18 50] [--budget 290] [--no-pytest]
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
            rec.update(status="skipped", reason=f"time budget: {left:.0f}s left, the step needs ~{need_seconds:.0f}s")
            self.save()
            yield None
            return
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            yield rec["details"]
        except Skip as exc:
            rec.update(status="skipped", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a check reports and goes on
            rec.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"   {rec['status']} ({rec['seconds']}s){': ' + rec['reason'] if 'reason' in rec else ''}", flush=True)
        self.save()

    def save(self) -> None:
        data = {"started": self.started, "steps": self.steps}
        (self.out / "summary.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        lines = [f"# GPU check, {self.started}", "", "| step | status | s | details |", "|---|---|---|---|"]
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


def environment(d: dict[str, Any]) -> None:
    import torch

    d.update(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
             cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        d.update(gpu=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    for mod in ("tensorrt", "onnxruntime", "cuda.bindings", "pycuda"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            d[mod] = getattr(m, "__version__", "installed")
        except ImportError:
            d[mod] = None
    from resnet_deploy.runtime.tensorrt import tensorrt_usable
    from resnet_deploy.runtime.tensorrt.cuda import available_backends

    d["cuda_backends"] = available_backends()
    d["tensorrt_usable"] = list(tensorrt_usable())


def torch_parity(d: dict[str, Any]) -> None:
    import torch

    from resnet_deploy.parity import compare, seeded_inputs
    from resnet_deploy.runtime.torch_runner import TorchRunner

    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with TorchRunner.from_variant("resnet18") as cpu, TorchRunner.from_variant("resnet18", device="cuda:0") as gpu:
        rep = compare(cpu, gpu, seeded_inputs([(2, 3, 224, 224), (1, 3, 160, 288)], seed=0), precision="fp32")
    d.update(passed=rep.passed, **rep.worst())
    if not rep.passed:
        raise RuntimeError("PyTorch on the GPU differs from the CPU:\n" + rep.table())


def cuda_layer(d: dict[str, Any]) -> None:
    from resnet_deploy.runtime.tensorrt.cuda import DeviceBuffer, HostBuffer, Stream, available_backends, get_backend

    import torch

    names = available_backends()
    if not names:
        raise Skip("neither cuda-python nor pycuda is installed (pip install cuda-python)")
    if not torch.cuda.is_available():
        raise Skip("no CUDA device (torch sees none)")
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
            for b in (host, dev, dev2, back):
                b.free()
            stream.destroy()
        d[name] = {"round_trip_equal": same, "pinned_h2d_GBps": round(h2d, 1),
                   "device": cuda.device_info(0).to_dict(), **cuda.versions()}
        if not same:
            raise RuntimeError(f"{name}: the data came back different")


def need_tensorrt() -> None:
    from resnet_deploy.runtime.tensorrt import tensorrt_usable

    ok, why = tensorrt_usable()
    if not ok:
        raise Skip(f"TensorRT skipped: {why}")


def export_engines(d: dict[str, Any], out: Path, variant: str, int8: bool, timeout: float) -> None:
    need_tensorrt()
    name = f"resnet{variant}"
    target = out / "exports" / (name if not int8 else f"{name}-int8")
    args = ["export", "--variant", variant, "--exporter", "torchscript", "--check-shapes", "1x3x224x224",
            "--engine", "always", "--min-shape", PROFILE[0], "--opt-shape", PROFILE[1], "--max-shape", PROFILE[2],
            "--timing-cache", str(out / "timing.cache"), "--output", str(target)]
    args += ["--int8", "--int8-target", "tensorrt", "--calib-data", "synthetic"] if int8 else ["--fp16"]
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
    import torch

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
        on_gpu = runner.infer(torch.from_numpy(batches[0]).cuda())
    with TensorRTRunner(engine, cuda_graph=True) as graphed:
        graph_out = [graphed.infer(batches[0]) for _ in range(3)]
    d.update(threads=4, thread_errors=len(errors), images_per_s_1_thread=round(single, 1),
             images_per_s_4_threads=round(multi, 1), note="host copies included",
             torch_cuda_input_max_diff=float(np.abs(on_gpu - want[0]).max()),
             cuda_graph_max_diff=float(max(np.abs(g - want[0]).max() for g in graph_out)))
    if errors or d["torch_cuda_input_max_diff"] > 1e-3 * np.abs(want[0]).max() or \
            d["cuda_graph_max_diff"] > 1e-3 * np.abs(want[0]).max():
        raise RuntimeError(f"results differ: {errors[:3]}, torch input {d['torch_cuda_input_max_diff']:.3g}, "
                           f"graph {d['cuda_graph_max_diff']:.3g}")


def gpu_pytest(d: dict[str, Any], out: Path, timeout: float) -> None:
    log = out / "logs" / "pytest-gpu.log"
    env = {**os.environ, "RESNET_DEPLOY_GPU_EXPORTS": str((out / "exports").resolve()),
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
    ap.add_argument("--variants", nargs="+", default=["18", "50"])
    ap.add_argument("--budget", type=float, default=290.0, help="seconds; later steps are skipped past it")
    ap.add_argument("--no-pytest", action="store_true")
    args = ap.parse_args(argv)
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "engines").mkdir(exist_ok=True)
    check = Check(out, args.budget)
    with check.step("environment") as d:
        environment(d)
    with check.step("torch: ResNet-18 on the GPU vs the CPU (FP32)") as d:
        torch_parity(d)
    with check.step("CUDA layer: pinned/device buffers, async copies") as d:
        cuda_layer(d)
    for variant in args.variants:
        with check.step(f"resnet-export --variant {variant} --fp16 --engine always", need_seconds=30) as d:
            if d is not None:
                export_engines(d, out, variant, int8=False, timeout=max(check.deadline - time.monotonic(), 30))
    for variant in args.variants:
        with check.step(f"resnet-export --variant {variant} --int8 --int8-target tensorrt --engine always",
                        need_seconds=40) as d:
            if d is not None:
                export_engines(d, out, variant, int8=True, timeout=max(check.deadline - time.monotonic(), 40))
    with check.step("timing-cache rebuild, 4 threads, CUDA graph, torch CUDA input (ResNet-18 FP16)",
                    need_seconds=20) as d:
        if d is not None:
            rebuild_and_run(d, out, timeout=max(check.deadline - time.monotonic(), 20))
    if not args.no_pytest:
        with check.step("pytest -m gpu", need_seconds=20) as d:
            if d is not None:
                gpu_pytest(d, out, timeout=max(check.deadline - time.monotonic() + 60, 60))
    print(f"summary: {out / 'summary.md'}")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
