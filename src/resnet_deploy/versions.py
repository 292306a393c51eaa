"""Versions of the packages involved, for manifests, engine manifests and benchmark reports."""

from __future__ import annotations

import platform
from importlib import metadata as importlib_metadata

PACKAGES = ("resnet-deploy", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "onnxconverter-common",
            "openvino", "tensorrt", "cuda-python", "pycuda", "nvidia-modelopt", "numpy")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """``{"python": ..., name: version}`` for each installed package of ``names``."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out
