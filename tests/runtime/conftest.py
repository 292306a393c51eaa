"""Registers ``tensorrt_fakes`` (a fake TensorRT and CUDA backend for CPU tests), ``real_tensorrt`` (NVIDIA's
real bindings with a stand-in libnvinfer) and ``trt_contract`` (the checks against them) as importable
modules: tests are not a package, so they are loaded by path."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

for _name in ("real_tensorrt", "trt_contract", "tensorrt_fakes"):
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, Path(__file__).with_name(f"{_name}.py"))
        sys.modules[_name] = _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)


@pytest.fixture()
def onnx_model(tmp_path):
    """A small dynamic ONNX with toolkit metadata (the fake TensorRT only reads its graph)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["pooled"], name="/avgpool/Pool"),
                               helper.make_node("Flatten", ["pooled"], ["logits"], name="/Flatten")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for k, v in {"variant": "resnet18", "precision": "fp16",
                 "preprocessing": json.dumps({"resize_size": 256, "crop_size": 224})}.items():
        model.metadata_props.add(key=k, value=v)
    path = tmp_path / "tiny.fp16.onnx"
    onnx.save(model, str(path))
    return path
