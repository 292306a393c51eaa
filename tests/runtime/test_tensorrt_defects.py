"""Defects a GPU host would hit, each reproduced on the fakes (which match the real module's surface:
see test_tensorrt_contract.py): timing caches TensorRT cannot read, INT8 engine parity with random
weights, CUDA-graph capture errors, refused addresses and shapes, building without a CUDA binding,
the manifest's CUDA fields, the CUDA 12/13 driver matrix, and the device a build runs on."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

from resnet_deploy.errors import UsageError
from resnet_deploy.runtime import InputError
from resnet_deploy.runtime.tensorrt import BuildConfig, Profile, build_engine, tensorrt_usable
from resnet_deploy.runtime.tensorrt import cuda as cuda_mod
from resnet_deploy.runtime.tensorrt.runner import TensorRTRunner

import tensorrt_fakes as fakes  # noqa: E402 - registered by tests/runtime/conftest.py

TINY = BuildConfig(profiles=(Profile((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 96)),))

P = ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 96))


# 1. timing cache ---------------------------------------------------------------------------------------
def test_unreadable_timing_cache_falls_back_to_an_empty_one(monkeypatch, tmp_path, onnx_model, caplog):
    fakes.install(monkeypatch, timing_cache_readable=False)
    cache = tmp_path / "timing.cache"
    cache.write_text(json.dumps([{"gpu": "Fake H200"}]))  # create_timing_cache(data) returns None for it
    with caplog.at_level(logging.WARNING):
        result = build_engine(onnx_model, tmp_path / "e.engine", BuildConfig(profiles=TINY.profiles,
                                                                           timing_cache=cache))
    assert not result.timing_cache_loaded and (tmp_path / "e.engine").is_file()
    assert "cannot be read (corrupt, or written by another TensorRT version); starting an empty one" in caplog.text
    assert json.loads(cache.read_text()) == [{"gpu": "Fake H200", "layer": 0}]  # the new cache replaced it


def test_garbage_timing_cache_and_no_cache_at_all(monkeypatch, tmp_path, onnx_model, caplog):
    trt, _ = fakes.install(monkeypatch, empty_timing_cache=False)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        result = build_engine(onnx_model, tmp_path / "e.engine", BuildConfig(profiles=TINY.profiles,
                                                                           timing_cache=cache))
    assert not result.timing_cache_loaded and trt.built_configs[-1].cache is None
    assert "building without one" in caplog.text and "was not written" in caplog.text
    assert cache.read_bytes() == b"\x00garbage"  # nothing to save: the old file is left alone


# 2. INT8 engine parity with random weights ------------------------------------------------------------
def _scaled_onnx(path, scale: float):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]), helper.make_node("Mul", ["flat", "s"], ["logits"])]
    init = [numpy_helper.from_array(np.array([scale, -scale, scale], np.float32), "s")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], init),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("meaningful", [False, True])
def test_int8_engine_parity_follows_the_random_weights_rule(monkeypatch, tmp_path, onnx_model, meaningful):
    from resnet_deploy.export import ExportConfig, Manifest
    from resnet_deploy.export.pipeline import ExportResult, engine_stage

    fakes.install(monkeypatch)
    out = tmp_path / "export"
    out.mkdir()
    int8 = out / "tiny.int8.tensorrt.onnx"
    int8.write_bytes(onnx_model.read_bytes())
    reference = _scaled_onnx(out / "tiny.onnx", 1.7)  # the engine disagrees with its FP32 reference
    result = ExportResult(output_dir=out, manifest=Manifest(out), artifacts={"fp32": reference, "int8.tensorrt": int8})
    result.manifest.data["weights"] = {"source": "random" if not meaningful else "imagenet", "meaningful": meaningful}
    cfg = ExportConfig(variant="18", int8=True, engine="always",
                       engine_options={"min_shapes": ["1x3x32x32"], "opt_shapes": ["2x3x64x64"],
                                       "max_shapes": ["3x3x80x80"]})
    engine_stage(cfg, result, {})
    assert not result.parity["engine.int8"].passed
    assert ("engine.int8" in result.informational) is (not meaningful)
    assert result.passed is (not meaningful)  # random weights: reported, not gating; trained: it fails


# 7. CUDA-graph capture keeps the first error ------------------------------------------------------------
def _runner(cuda=None, **kw):
    cuda = cuda or fakes.FakeCuda()
    trt = fakes.make(cuda, **kw)
    engine = fakes.FakeEngine(trt, [P], cuda)
    return TensorRTRunner.from_engine(engine, trt=trt, cuda=cuda, cuda_graph=True), engine, cuda


def test_graph_capture_reports_the_enqueue_error_not_the_end_capture_error():
    runner, engine, cuda = _runner()
    cuda.fail_capture_end = True  # the failed enqueue invalidated the capture

    calls = {"n": 0}
    real_execute = fakes.FakeContext.execute_async_v3

    def execute(self, stream_handle):
        calls["n"] += 1
        if calls["n"] == 2:  # the captured enqueue
            raise RuntimeError("enqueue failed: an operation not permitted during stream capture")
        return real_execute(self, stream_handle)

    fakes.FakeContext.execute_async_v3 = execute
    try:
        with pytest.raises(RuntimeError, match="enqueue failed: an operation not permitted"):
            runner.infer(np.zeros((1, 3, 32, 32), np.float32))
    finally:
        fakes.FakeContext.execute_async_v3 = real_execute
    assert not cuda.capturing  # the capture was ended
    runner.close()


def test_graph_capture_that_returns_false_says_so():
    runner, engine, cuda = _runner()
    cuda.fail_capture_end = True
    real_execute = fakes.FakeContext.execute_async_v3
    seen = {"n": 0}

    def execute(self, stream_handle):
        seen["n"] += 1
        return False if seen["n"] == 2 else real_execute(self, stream_handle)

    fakes.FakeContext.execute_async_v3 = execute
    try:
        with pytest.raises(UsageError, match="failed while capturing a CUDA graph"):
            runner.infer(np.zeros((1, 3, 32, 32), np.float32))
    finally:
        fakes.FakeContext.execute_async_v3 = real_execute
    runner.close()


# 8. refused addresses and shapes name the tensor and shape --------------------------------------------------
def test_refused_tensor_address_names_the_tensor_and_shape():
    cuda = fakes.FakeCuda()
    trt = fakes.make(cuda)
    engine = fakes.FakeEngine(trt, [P], cuda)
    engine.refuse = ("logits",)
    runner = TensorRTRunner.from_engine(engine, trt=trt, cuda=cuda)
    with pytest.raises(UsageError, match=r"refused the device address 0x[0-9a-f]+ for tensor 'logits' \(shape 2x5\)"):
        runner.infer(np.zeros((2, 3, 40, 40), np.float32))
    runner.close()


def test_refused_input_shape_names_the_tensor_shape_and_profile(monkeypatch):
    cuda = fakes.FakeCuda()
    trt = fakes.make(cuda)
    engine = fakes.FakeEngine(trt, [P], cuda)
    runner = TensorRTRunner.from_engine(engine, trt=trt, cuda=cuda)
    monkeypatch.setattr(fakes.FakeContext, "set_input_shape", lambda self, name, shape: False)
    with pytest.raises(InputError, match=r"refused input shape 2x3x40x40 for tensor 'input' \(profile 0: "
                                         r"1x3x32x32 \.\. 4x3x96x96\)"):
        runner.infer(np.zeros((2, 3, 40, 40), np.float32))
    runner.close()


# 9. build needs only TensorRT ---------------------------------------------------------------------------------
def test_building_needs_no_cuda_binding_running_does(monkeypatch, tmp_path, onnx_model):
    trt, _ = fakes.install(monkeypatch)
    monkeypatch.setattr(cuda_mod, "_ADAPTERS", {})  # `pip install tensorrt` only: no cuda-python, no pycuda
    ok, why = tensorrt_usable(purpose="build")
    assert ok and "builds only: no CUDA binding to run engines" in why
    ok, why = tensorrt_usable(purpose="run")
    assert not ok and "running engines needs a CUDA binding" in why
    result = build_engine(onnx_model, tmp_path / "e.engine", TINY)
    assert result.engine.is_file()
    with pytest.raises(UsageError, match="building on cuda:1 needs cuda-python"):
        build_engine(onnx_model, tmp_path / "e1.engine", BuildConfig(profiles=TINY.profiles, device=1))


def test_cli_build_without_a_cuda_binding(monkeypatch, tmp_path, onnx_model, capsys):
    from resnet_deploy.cli.main import main

    fakes.install(monkeypatch)
    monkeypatch.setattr(cuda_mod, "_ADAPTERS", {})
    out = tmp_path / "e.engine"
    rc = main(["build", str(onnx_model), "--output", str(out), "--min-shape", "1x3x32x32", "--max-shape", "4x3x96x96"])
    assert rc == 0 and out.is_file()


# 10. the manifest's CUDA fields ---------------------------------------------------------------------------------
def test_manifest_records_tensorrt_cuda_major_driver_and_binding(monkeypatch, tmp_path, onnx_model):
    from resnet_deploy.runtime.tensorrt import builder

    fakes.install(monkeypatch)
    monkeypatch.setattr(builder, "tensorrt_cuda_major", lambda trt=None: 13)
    m = build_engine(onnx_model, tmp_path / "e.engine", TINY).manifest
    assert m.tensorrt_cuda == 13 and m.cuda_driver == "12.8"
    assert m.cuda_binding == "fake-cuda (CUDA runtime 12.8)"
    saved = json.loads((tmp_path / "e.engine.json").read_text())
    assert "cuda_runtime" not in saved and saved["tensorrt_cuda"] == 13


def test_tensorrt_cuda_major_from_the_distribution_name(monkeypatch):
    from importlib import metadata

    from resnet_deploy.runtime.tensorrt.builder import tensorrt_cuda_major

    class Dist:
        def __init__(self, name, version):
            self.metadata, self.version = {"Name": name}, version

    trt = type(sys)("tensorrt")
    trt.__version__ = "11.4.0.106"
    dists = [Dist("tensorrt", "11.4.0.106"), Dist("tensorrt_cu13", "11.4.0.106"),
             Dist("tensorrt-cu13-bindings", "11.4.0.106"), Dist("tensorrt-cu12-bindings", "10.13.3.9.post1")]
    monkeypatch.setattr(metadata, "distributions", lambda: iter(dists))
    assert tensorrt_cuda_major(trt) == 13  # the cu12 bindings are another version: not the imported one
    trt.__version__ = "10.13.3.9"
    assert tensorrt_cuda_major(trt) == 12


def test_old_manifests_still_load():
    from resnet_deploy.runtime.tensorrt import EngineManifest

    m = EngineManifest.from_dict({"precision": "fp16", "tensorrt": "10.3.0.26", "compute_capability": "9.0",
                                  "profiles": [], "cuda_runtime": "12.4"})
    assert m.cuda_binding == "CUDA runtime 12.4" and m.tensorrt_cuda is None


# 6. the driver matrix ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("built,driver,hint", [
    (13, "12.8", "pip install 'resnet-deploy[tensorrt-cu12]'"),
    (13, "13.0", ""),
    (12, "12.4", ""),
    (12, "13.1", ""),
    (None, "12.8", ""),
])
def test_driver_hint_names_the_packages(built, driver, hint):
    text = cuda_mod.driver_hint(built, driver)
    assert (hint in text) if hint else text == ""
    if hint:
        assert "R580+" in text and "CUDA 12.8" in text


def test_builder_failure_on_an_old_driver_names_the_packages(monkeypatch, tmp_path, onnx_model):
    from resnet_deploy.runtime.tensorrt import builder

    fakes.install(monkeypatch, usable=False)
    monkeypatch.setattr(builder, "tensorrt_cuda_major", lambda trt=None: 13)
    monkeypatch.setattr(cuda_mod, "driver_cuda_version", lambda: "12.8")
    with pytest.raises(UsageError, match=r"no usable CUDA device .*built for CUDA 13, but this driver supports "
                                         r"CUDA 12\.8 .*resnet-deploy\[tensorrt-cu12\]"):
        build_engine(onnx_model, tmp_path / "e.engine", TINY)


# 11. the build runs on BuildConfig.device ---------------------------------------------------------------
def test_build_runs_on_the_configured_device(monkeypatch, tmp_path, onnx_model):
    cuda = fakes.FakeCuda(devices=3)
    trt, _ = fakes.install(monkeypatch, cuda=cuda)
    build_engine(onnx_model, tmp_path / "e.engine", BuildConfig(profiles=TINY.profiles, device=2))
    assert trt.built_configs[-1].device == 2  # the builder was created with cuda:2 current on its thread
    assert cuda.current == 0  # and the thread's device is restored afterwards


# 4. GPU detection goes through the CUDA layer, not torch ----------------------------------------------------
def test_gpu_count_without_cuda_python_asks_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setattr(cuda_mod, "_installed", lambda module: False)
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nif [ \"$1\" = -L ]; then echo 'GPU 0: NVIDIA H200 (UUID: GPU-x)'; "
                   "else echo '| NVIDIA-SMI 570.1   Driver Version: 570.1   CUDA Version: 12.8 |'; fi\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}")
    n, why = cuda_mod.gpu_count()
    assert n == 1 and "nvidia-smi lists 1 GPU(s)" in why
    assert cuda_mod._nvidia_smi()[1] == "12.8"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    n, why = cuda_mod.gpu_count()
    assert n == 0 and "nvidia-smi is not on PATH" in why


def test_build_on_a_device_cuda_cannot_select_says_so(monkeypatch, tmp_path, onnx_model):
    from resnet_deploy.runtime.tensorrt.cuda import CudaError

    cuda = fakes.FakeCuda()
    fakes.install(monkeypatch, cuda=cuda)

    def refuse(ordinal):
        raise CudaError("cudaSetDevice failed: invalid device ordinal (cudaErrorInvalidDevice)")

    monkeypatch.setattr(cuda, "activate", refuse)
    with pytest.raises(UsageError, match=r"cannot build on cuda:3: no usable CUDA device \(cudaSetDevice failed"):
        build_engine(onnx_model, tmp_path / "e.engine", BuildConfig(profiles=TINY.profiles, device=3))
