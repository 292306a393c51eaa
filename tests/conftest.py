"""Shared fixtures: tiny models, small exported ONNX files, a private torch.hub cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RESNET_DEPLOY_PROGRESS", "0")


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where a CUDA device and TensorRT are present; elsewhere they skip with the reason."""
    reason = _gpu_skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(marker)


def _gpu_skip_reason() -> str | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return "needs an NVIDIA GPU: torch sees no CUDA device"
    except ImportError:  # pragma: no cover
        return "needs torch with CUDA"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "needs TensorRT (pip install tensorrt): not installed"
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
