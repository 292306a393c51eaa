"""Shared fixtures: tiny models, small exported ONNX files, a private torch.hub cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RESNET_DEPLOY_PROGRESS", "0")


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where a CUDA device and TensorRT are present; elsewhere they skip with the reason."""
    if not any("gpu" in item.keywords for item in items):
        return
    reason = _gpu_skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(marker)


def _gpu_skip_reason() -> str | None:
    """Asked of the CUDA layer (cuda-python's cudaGetDeviceCount, else nvidia-smi), not of torch, which may
    be a CPU build on a GPU host; then whether TensorRT can build and run engines there."""
    from resnet_deploy.runtime.tensorrt import tensorrt_usable
    from resnet_deploy.runtime.tensorrt.cuda import gpu_count

    count, why = gpu_count()
    if count == 0:
        return f"needs an NVIDIA GPU: {why}"
    usable, why = tensorrt_usable()
    if not usable:
        return f"needs TensorRT on the GPU: {why}"
    try:
        import torch

        if not torch.cuda.is_available():
            return "the GPU tests compare with PyTorch on the GPU: this torch has no CUDA (install a CUDA build)"
    except ImportError:  # pragma: no cover
        return "needs torch with CUDA"
    return None


@pytest.fixture(scope="session")
def resnet18_onnx(tmp_path_factory):
    """A ResNet-18 (random weights, seed 0) exported once per session with dynamic N, H, W."""
    from resnet_deploy.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("resnet18")
    result = export_model(ExportConfig(variant="18", output_dir=out, check_shapes=((1, 3, 64, 64),),
                                       exporter="torchscript"))
    return result.onnx_path


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch):
    """A private, empty torch.hub cache."""
    import torch

    d = tmp_path / "hub"
    (d / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(d))
    return d
