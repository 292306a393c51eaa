"""The TensorRT path checked against NVIDIA's real bindings (10.13 and 11.4), without a GPU.

The real compiled module is installed once into a cache (tests/runtime/real_tensorrt.py) and loaded
with a stand-in libnvinfer; where the registry cannot be reached these tests skip and say why.
What they verify: every TensorRT attribute, enum member, constructor and method call, property
write and subclass override that ``src/`` makes (found by reading the source) exists in each
version with a matching signature; the fake module used by the CPU tests offers nothing the real
one lacks (names, enum values, signatures, return types); the runner and builder tests pass with
the real enums and base classes swapped into the fake; and each check catches a planted misuse.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import real_tensorrt  # noqa: E402 - registered by tests/runtime/conftest.py
import tensorrt_fakes as fakes  # noqa: E402
import trt_contract  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
HERE = Path(__file__).resolve().parent


def _surface(key: str) -> dict:
    try:
        return real_tensorrt.surface(key)
    except real_tensorrt.Unavailable as exc:
        pytest.skip(f"real TensorRT {key} bindings unavailable: {exc}")


@pytest.fixture(scope="module", params=list(real_tensorrt.VERSIONS))
def surface(request):
    return _surface(request.param)


def _env(key: str) -> dict[str, str]:
    try:
        env = real_tensorrt.environment(key)
    except real_tensorrt.Unavailable as exc:
        pytest.skip(f"real TensorRT {key} bindings unavailable: {exc}")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env["PYTHONPATH"]])
    return env


# -- the source against the real module ---------------------------------------------------------------

def test_source_uses_only_what_tensorrt_offers(surface):
    report = trt_contract.check_source(SRC, surface, root=REPO)
    assert not report.findings, "\n".join(report.findings)
    calls = report.used("call")
    # the scan reached the whole path: builder, parser, config, runtime, engine, context
    for owner in ("Builder", "IBuilderConfig", "OnnxParser", "ParserError", "Runtime", "ICudaEngine",
                  "IExecutionContext", "IOptimizationProfile", "INetworkDefinition", "ITimingCache"):
        assert any(c.startswith(owner + ".") for c in calls), f"no call on {owner} was found and checked"
    assert report.used("subclass") == {"ILogger", "IProgressMonitor"}
    assert not report.optional_missing, report.optional_missing


def test_fake_offers_nothing_the_real_module_lacks(surface):
    fake = fakes.fake_tensorrt(fakes.FakeCuda(), version=surface["version"].split(".post")[0])
    differences = trt_contract.check_fake(fake, surface, fake_only=fakes.FAKE_ONLY)
    assert not differences, "\n".join(differences)
    flag = fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert int(flag) == surface["module"]["NetworkDefinitionCreationFlag"]["values"]["STRONGLY_TYPED"]


@pytest.mark.parametrize("key", ["10.13", "11.4-cu13"])
def test_runner_and_builder_tests_pass_with_the_real_enums_and_base_classes(key, tmp_path):
    env = _env(key)
    env[fakes.REAL_ENV] = key
    env.pop("LD_LIBRARY_PATH", None)  # loaded in process: the stand-in is preloaded by soname
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           f"--basetemp={tmp_path / 'inner'}",
                           str(HERE / "test_cuda_layer.py"), str(HERE / "test_tensorrt_manifest.py"),
                           str(HERE / "test_tensorrt_defects.py")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


@pytest.mark.parametrize("key,cuda_major", [("10.13", 12), ("11.4-cu13", 13), ("11.4-cu12", 12)])
def test_real_module_without_a_gpu(key, cuda_major):
    """On the real bindings: Builder fails as on a GPU-less host, the toolkit says so plainly, and the
    manifest's TensorRT CUDA major comes from the distribution's name."""
    code = (
        "import tensorrt as trt\n"
        "from resnet_deploy.errors import UsageError\n"
        "from resnet_deploy.runtime.tensorrt import builder\n"
        "try:\n    trt.Builder(trt.Logger())\nexcept TypeError as e:\n    print('TypeError:', e)\n"
        "try:\n    builder.create_builder(trt)\nexcept UsageError as e:\n    print('UsageError:', e)\n"
        "print('cuda', builder.tensorrt_cuda_major(trt))\n"
        "print('usable', builder.tensorrt_usable(purpose='build'))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(key), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "TypeError: pybind11::init(): factory function returned nullptr" in out
    assert "cannot create a builder: no usable CUDA device" in out
    assert f"cuda {cuda_major}" in out
    assert "usable (False," in out


# -- the checks catch planted misuse ------------------------------------------------------------------

@pytest.fixture(scope="module")
def surface_10():
    return _surface("10.13")


@pytest.mark.parametrize("enum,member", [("BuilderFlag", "TF32"), ("MemoryPoolType", "WORKSPACE")])
def test_a_removed_enum_member_is_reported(surface_10, enum, member):
    planted = copy.deepcopy(surface_10)
    del planted["module"][enum]["values"][member]
    del planted["module"][enum]["members"][member]
    findings = trt_contract.check_source(SRC, planted, root=REPO).findings
    assert any(f"{enum}.{member} does not exist in TensorRT" in f for f in findings), findings


def test_a_removed_severity_is_reported(surface_10):
    planted = copy.deepcopy(surface_10)
    del planted["module"]["ILogger"]["members"]["Severity"]["members"]["VERBOSE"]
    findings = trt_contract.check_source(SRC, planted, root=REPO).findings
    assert any("ILogger.Severity.VERBOSE does not exist" in f for f in findings), findings


def _planted_src(tmp_path: Path, file: str, old: str, new: str) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SRC / "resnet_deploy" / "runtime" / "tensorrt", src / "resnet_deploy" / "runtime" / "tensorrt")
    path = src / "resnet_deploy" / "runtime" / "tensorrt" / file
    text = path.read_text()
    assert old in text, f"the code to plant into is gone: {old!r}"
    path.write_text(text.replace(old, new, 1))
    return src


@pytest.mark.parametrize("file,old,new,expect", [
    ("builder.py", "config.set_timing_cache(cache, ignore_mismatch=False)",
     "config.set_timing_cache(cache, mismatch=False)", "IBuilderConfig.set_timing_cache(arg, mismatch=) matches no"),
    ("builder.py", "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * 2**30))",
     "config.set_memory_pool_limit(int(cfg.workspace_gib * 2**30))",
     "IBuilderConfig.set_memory_pool_limit(arg) matches"),
    ("runner.py", "ctx.set_input_shape(name, shape)", "ctx.set_input_shape(name, shape, profile)",
     "IExecutionContext.set_input_shape(arg, arg, arg) matches no"),
    ("runner.py", "runtime.engine_host_code_allowed = True", "runtime.engine_host_code = True",
     "Runtime has no attribute 'engine_host_code'"),
    ("builder.py", "            trt.ILogger.__init__(self)\n", "", "does not call ILogger.__init__"),
    ("builder.py", "def step_complete(self, phase_name: str, step: int)", "def step_complete(self, phase_name: str)",
     "step_complete takes 1 argument(s)"),
])
def test_a_wrong_call_is_reported(surface_10, tmp_path, file, old, new, expect):
    src = _planted_src(tmp_path, file, old, new)  # the unplanted source has no findings (the first test)
    findings = trt_contract.check_source(src, surface_10, root=tmp_path).findings
    assert any(expect in f for f in findings), findings


def _planted_fakes(tmp_path: Path, old: str, new: str):
    text = (HERE / "tensorrt_fakes.py").read_text()
    assert old in text, f"the code to plant into is gone: {old!r}"
    path = tmp_path / "planted_fakes.py"
    path.write_text(text.replace(old, new, 1))
    spec = importlib.util.spec_from_file_location("planted_fakes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("old,new,expect", [
    ("def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory:",
     "def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:",
     "build_serialized_network returns bytes | None; TensorRT"),
    ("def set_tensor_address(self, name: str, memory: int) -> bool:",
     "def set_tensor_address(self, name: str, memory: int) -> None:", "set_tensor_address returns None"),
    ("def create_execution_context(self, strategy: Any = None)", "def create_execution_context(self, *strategy: Any)",
     "create_execution_context accepts any arguments"),
    ('"STRONGLY_TYPED": 1}', '"STRONGLY_TYPED": 5}', "STRONGLY_TYPED = 5; TensorRT"),
    ("def get_timing_cache(self) -> ITimingCache:", "def get_timing_cache(self, index) -> ITimingCache:",
     "get_timing_cache(index) matches no overload"),
])
def test_a_drifting_fake_is_reported(surface_10, tmp_path, old, new, expect):
    planted = _planted_fakes(tmp_path, old, new)
    fake = planted.fake_tensorrt(planted.FakeCuda(), version="10.13.3.9")
    differences = trt_contract.check_fake(fake, surface_10, fake_only=planted.FAKE_ONLY)
    assert any(expect in d for d in differences), differences


def test_string_enums_in_a_fake_are_reported(surface_10):
    import types

    fake = fakes.fake_tensorrt(fakes.FakeCuda(), version="10.13.3.9")
    fake.DataType = types.SimpleNamespace(FLOAT="FLOAT")  # what the fakes used to be
    differences = trt_contract.check_fake(fake, surface_10, fake_only=fakes.FAKE_ONLY)
    assert any("tensorrt.DataType is not an enum type" in d for d in differences), differences
