"""benchmarks/gpu_check.sh on a machine without a GPU, with NVIDIA's real TensorRT bindings (stand-in
libnvinfer) and cuda-bindings installed: every GPU step says "not run" and why, and only
``--require-gpu`` turns that into a non-zero exit, naming what was missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import real_tensorrt  # noqa: E402 - registered by tests/runtime/conftest.py

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env():
    try:
        extra = [real_tensorrt.cuda_bindings()]
        e = real_tensorrt.environment("11.4-cu13", extra_path=extra)
    except real_tensorrt.Unavailable as exc:
        pytest.skip(f"real TensorRT / cuda-bindings unavailable: {exc}")
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), e["PYTHONPATH"]])
    e["PYTHON"] = sys.executable
    e["PATH"] = os.pathsep.join(p for p in e.get("PATH", "").split(os.pathsep) if not Path(p, "nvidia-smi").exists())
    return e


def _run(env, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, json.loads((out / "summary.json").read_text())


def test_without_a_gpu_every_gpu_step_is_not_run(env, tmp_path):
    proc, summary = _run(env, tmp_path / "plain")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    steps = {s["step"]: s for s in summary["steps"]}
    environment = steps.pop("environment")
    assert environment["status"] == "ok"
    assert environment["details"]["tensorrt"].startswith("11.4") and environment["details"]["gpus"] == 0
    assert "cudaErrorInsufficientDriver" in environment["details"]["gpu_detection"]  # asked of CUDA, not torch
    assert len(steps) >= 8 and all(s["status"] == "not run" for s in steps.values()), steps
    assert all(s["reason"] for s in steps.values())
    assert any(name.startswith("CUDA layer") and s["reason"] == "no usable GPU" for name, s in steps.items())
    assert "not run" in (tmp_path / "plain" / "summary.md").read_text()
    assert "gpu check: exit 0" in proc.stdout


def test_require_gpu_fails_and_says_what_is_missing(env, tmp_path):
    proc, summary = _run(env, tmp_path / "strict", "--require-gpu")
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--require-gpu: no usable GPU (cudaGetDeviceCount failed" in proc.stdout + proc.stderr
    assert "no usable TensorRT" in proc.stdout + proc.stderr
    assert all(s["status"] != "failed" for s in summary["steps"])


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steps_that_do_not_fit_the_budget_are_not_run_not_failed(tmp_path):
    gc = _gpu_check_module()
    check = gc.Check(tmp_path, budget=10.0)
    with check.step("fits", need_seconds=1) as d:
        d["x"] = 1
    with check.step("too big", need_seconds=60) as d:
        assert d is None
    with check.step("cut short by the budget", need_seconds=1) as d:
        raise subprocess.TimeoutExpired(["resnet-deploy"], 5.0)
    with check.step("no GPU") as d:
        raise gc.Skip("no usable GPU")
    with check.step("broken") as d:
        raise ValueError("boom")
    status = {s["step"]: s["status"] for s in check.steps}
    assert status == {"fits": "ok", "too big": "not run (budget)", "cut short by the budget": "not run (budget)",
                      "no GPU": "not run", "broken": "failed"}
    assert all("seconds" in s for s in check.steps)  # every step says how long it took
    assert "needs ~60s" in check.steps[1]["reason"]
    assert check.failed  # only the real failure counts
    table = (tmp_path / "summary.md").read_text()
    assert "| too big | not run (budget) | 0.0 |" in table
