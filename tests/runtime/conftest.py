"""Registers ``tensorrt_fakes`` (a fake TensorRT and CUDA backend for CPU tests), ``real_tensorrt`` (NVIDIA's
real bindings with a stand-in libnvinfer) and ``trt_contract`` (the checks against them) as importable
modules: tests are not a package, so they are loaded by path."""

import importlib.util
import sys
from pathlib import Path

for _name in ("real_tensorrt", "trt_contract", "tensorrt_fakes"):
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, Path(__file__).with_name(f"{_name}.py"))
        sys.modules[_name] = _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
