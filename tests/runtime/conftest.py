"""Registers ``tensorrt_fakes`` (a fake TensorRT and CUDA backend for CPU tests) as an importable
module: tests are not a package, so it is loaded by path."""

import importlib.util
import sys
from pathlib import Path

if "tensorrt_fakes" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("tensorrt_fakes", Path(__file__).with_name("tensorrt_fakes.py"))
    sys.modules["tensorrt_fakes"] = _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
