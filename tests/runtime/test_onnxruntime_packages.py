"""ONNX Runtime's distributions (``onnxruntime``, ``onnxruntime-gpu``, ...) share one module: two of
them installed is a warning naming the fix, a GPU provider asked of the CPU package is a clear
error, and ONNX metadata is read without the onnx package (``get_modelmeta()``)."""

from __future__ import annotations

import importlib.metadata
import logging
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from resnet_deploy import artifacts  # noqa: E402
from resnet_deploy.errors import MissingDependencyError, UsageError  # noqa: E402
from resnet_deploy.runtime import onnxruntime_runner as ortr  # noqa: E402
from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402


def _tiny_onnx(path, *, qdq: bool = False, props: dict[str, str] | None = None):
    """y = relu(x) on (N, 3, H, W) float32; with ``qdq``, x goes through Quantize/DequantizeLinear."""
    nodes, first = [], "x"
    inits = []
    if qdq:
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]),
                 helper.make_tensor("z", TensorProto.UINT8, [], [128])]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        first = "dq"
    nodes.append(helper.make_node("Relu", [first], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in (props or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def installed(monkeypatch):
    """Pretend that exactly the given ONNX Runtime distributions are installed."""

    def set_installed(*names: str) -> None:
        def distribution(name):
            if name in names:
                return object()
            raise importlib.metadata.PackageNotFoundError(name)

        monkeypatch.setattr(ortr.importlib.metadata, "distribution", distribution)
        ortr.check_distributions.cache_clear()

    yield set_installed
    ortr.check_distributions.cache_clear()


def test_the_installed_distributions_are_read_from_package_metadata(installed):
    installed("onnxruntime", "onnxruntime-gpu")
    assert ortr.installed_distributions() == ["onnxruntime", "onnxruntime-gpu"]
    installed("onnxruntime-gpu")
    assert ortr.installed_distributions() == ["onnxruntime-gpu"]


def test_both_packages_installed_warn_once_with_the_fix(installed, tmp_path, caplog):
    installed("onnxruntime", "onnxruntime-gpu")
    path = _tiny_onnx(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger="resnet_deploy"):
        OnnxRuntimeRunner(path).close()
        OnnxRuntimeRunner(path).close()
    warnings = [r.getMessage() for r in caplog.records if "several ONNX Runtime packages" in r.getMessage()]
    assert len(warnings) == 1
    assert "onnxruntime, onnxruntime-gpu" in warnings[0]
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'resnet-deploy[onnxruntime-gpu]'" in warnings[0]


def test_one_package_gives_no_warning(installed, tmp_path, caplog):
    installed("onnxruntime")
    with caplog.at_level(logging.WARNING, logger="resnet_deploy"):
        OnnxRuntimeRunner(_tiny_onnx(tmp_path / "m.onnx")).close()
    assert not [r for r in caplog.records if "several ONNX Runtime" in r.getMessage()]


@pytest.mark.parametrize("device, provider", [("cuda", "CUDAExecutionProvider"),
                                              ("tensorrt", "TensorrtExecutionProvider")])
def test_a_gpu_provider_asked_of_the_cpu_package_is_a_clear_error(installed, tmp_path, device, provider):
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has {provider}")
    installed("onnxruntime")
    with pytest.raises(UsageError) as err:
        OnnxRuntimeRunner(_tiny_onnx(tmp_path / "m.onnx"), device=device)
    msg = str(err.value)
    assert f"device '{device}' needs {provider}" in msg
    assert "'onnxruntime' is the CPU package" in msg
    assert "pip uninstall -y onnxruntime && pip install 'resnet-deploy[onnxruntime-gpu]'" in msg


def test_a_gpu_provider_missing_with_both_packages_names_the_conflict(installed, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    installed("onnxruntime", "onnxruntime-gpu")
    with pytest.raises(UsageError, match="several ONNX Runtime packages are installed"):
        OnnxRuntimeRunner(_tiny_onnx(tmp_path / "m.onnx"), device="cuda")


def test_no_onnxruntime_names_the_extra_for_the_device(monkeypatch, tmp_path):
    path = _tiny_onnx(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'resnet-deploy\[onnxruntime\]'"):
        OnnxRuntimeRunner(path)
    with pytest.raises(MissingDependencyError, match=r"pip install 'resnet-deploy\[onnxruntime-gpu\]'"):
        OnnxRuntimeRunner(path, device="cuda")


# -- metadata without the onnx package -------------------------------------------------------------

def test_metadata_without_onnx_equals_metadata_with_it(monkeypatch, tmp_path):
    props = {"variant": "resnet18", "head": "embedding", "preprocessing": '{"resize_size": 72, "crop_size": 64}',
             "mean": "[0.5, 0.5, 0.5]", "precision": "fp32"}
    path = _tiny_onnx(tmp_path / "m.onnx", props=props)
    with_onnx = artifacts.read_metadata(path)
    monkeypatch.setitem(sys.modules, "onnx", None)
    without = artifacts.read_metadata(path)
    assert without == with_onnx
    assert without["preprocessing"] == {"resize_size": 72, "crop_size": 64} and without["mean"] == [0.5, 0.5, 0.5]


def test_the_runner_hands_over_the_metadata_its_session_read(tmp_path):
    path = _tiny_onnx(tmp_path / "m.onnx", props={"head": "logits", "precision": "fp16"})
    with OnnxRuntimeRunner(path) as runner:
        assert runner.metadata == {"head": "logits", "precision": "fp16"}
        assert runner.info.precision == "fp16"
        assert runner.infer(np.full((1, 3, 2, 2), -1, np.float32)).max() == 0


def test_precision_of_a_foreign_onnx_without_onnx(monkeypatch, tmp_path):
    plain, qdq = _tiny_onnx(tmp_path / "plain.onnx"), _tiny_onnx(tmp_path / "qdq.onnx", qdq=True)
    assert (artifacts.onnx_precision(plain), artifacts.onnx_precision(qdq)) == ("fp32", "int8")
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert (artifacts.onnx_precision(plain, {}), artifacts.onnx_precision(qdq, {})) == ("fp32", "int8")


def test_unreadable_onnx_without_onnx_is_one_usage_error(monkeypatch, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UsageError, match="is not an ONNX model"):
        artifacts.read_metadata(bad)
