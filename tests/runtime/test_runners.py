"""The runner interface: validation before running, backend choice, the ONNX Runtime provider check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnet_deploy.errors import MissingDependencyError, UsageError
from resnet_deploy.runtime import InputError, choose_backend, load_runner
from resnet_deploy.runtime.base import TensorSpec
from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def ort_runner(resnet18_onnx):
    with OnnxRuntimeRunner(resnet18_onnx, threads=1) as r:
        yield r


def test_metadata(ort_runner):
    spec = ort_runner.input
    assert spec.name == "input" and spec.dtype == np.float32
    assert spec.shape == ("batch", 3, "height", "width") and spec.dynamic_dims == [0, 2, 3]
    assert ort_runner.info.backend == "onnxruntime" and ort_runner.info.precision == "fp32"
    assert ort_runner.info.details["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize("array,message", [
    (np.zeros((3, 64, 64), np.float32), r"got shape 3x64x64 \(rank 3\), expected rank 4"),
    (np.zeros((1, 4, 64, 64), np.float32), r"got shape 1x4x64x64, channels must be 3"),
    (np.zeros((1, 3, 64, 64), np.float64), r"got dtype float64, expected float32"),
    (np.zeros((0, 3, 64, 64), np.float32), r"empty dimension"),
])
def test_validation_names_what_was_received(ort_runner, array, message):
    with pytest.raises(InputError, match=message):
        ort_runner.infer(array)


def test_profile_limits_are_enforced():
    spec = TensorSpec("input", np.dtype(np.float32), (-1, 3, -1, -1), min_shape=(1, 3, 64, 64),
                      opt_shape=(4, 3, 224, 224), max_shape=(8, 3, 256, 256))
    spec.validate(np.zeros((2, 3, 128, 200), np.float32))
    with pytest.raises(InputError, match=r"shape 9x3x128x128 is outside the profile: allowed \?x3x\?x\? "
                                         r"within \[1x3x64x64 \.\. 8x3x256x256\]"):
        spec.validate(np.zeros((9, 3, 128, 128), np.float32))


def test_unknown_input_names(ort_runner):
    with pytest.raises(InputError, match=r"got inputs \['x'\], expected \['input'\]"):
        ort_runner.infer_dict({"x": np.zeros((1, 3, 64, 64), np.float32)})


def test_torch_runner_accepts_tensors_and_arrays():
    from resnet_deploy.models import create_model

    model, _ = create_model("18")
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with load_runner(model) as r:
        a = r.infer(x)
        b = r.infer(torch.from_numpy(x))
    assert a.shape == (2, 1000) and np.array_equal(a, b)


def test_load_runner_from_variant_name():
    with load_runner("18", backend="torch", weights="random") as r:
        assert r.info.backend == "torch" and r.infer(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 1000)


def test_backend_choice(tmp_path, monkeypatch):
    from resnet_deploy import runtime

    assert choose_backend("m.engine") == "tensorrt"
    assert choose_backend("m.plan") == "tensorrt"
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    assert choose_backend("m.onnx") == "onnxruntime"
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    assert choose_backend("m.onnx") == "openvino"
    assert choose_backend("m.onnx", device="cuda") == "onnxruntime"
    assert choose_backend("m.onnx", backend="onnxruntime") == "onnxruntime"
    with pytest.raises(UsageError, match="unknown backend 'tvm'; choose one of: auto, torch"):
        choose_backend("m.onnx", backend="tvm")
    with pytest.raises(UsageError, match="is a checkpoint"):
        choose_backend("w.pth")


def test_gpu_request_without_a_gpu_provider_fails_loudly(resnet18_onnx):
    """ONNX Runtime would fall back to the CPU silently; the runner refuses instead."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(UsageError, match="needs CUDAExecutionProvider, but this onnxruntime"):
        OnnxRuntimeRunner(resnet18_onnx, device="cuda")


def test_silent_fallback_is_detected(resnet18_onnx, monkeypatch):
    """A provider that is listed but fails to load leaves the session on the CPU: caught and reported."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def session(path, sess_options=None, providers=None):
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", session)
    with pytest.raises(UsageError, match="asked for TensorrtExecutionProvider but ONNX Runtime is running "
                                         "CPUExecutionProvider"):
        OnnxRuntimeRunner(resnet18_onnx, device="tensorrt")


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage-not-onnx" * 10])
def test_corrupt_onnx_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="is not an ONNX model"):
        load_runner(path, backend="onnxruntime")


def test_missing_artifact(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_runner(tmp_path / "nope.onnx", backend="onnxruntime")


def test_missing_dependency_message():
    err = MissingDependencyError("openvino", "the OpenVINO backend", "openvino")
    assert "pip install 'resnet-deploy[openvino]'" in str(err) and err.exit_code == 2
