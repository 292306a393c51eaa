"""Small FP32 ONNX models for the calibration tests, exported once per session.

``tiny_resnet``: a two-stage ResNet (BasicBlock, one block per stage, 10 classes) with seeded,
non-trivial BatchNorm statistics, exported *without* constant folding so the BatchNormalization
nodes are still in the graph and the INT8 stage has to fold them itself. Its preprocessing record
prepares images at 64x64.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest

PREP = {"resize_size": 73, "crop_size": 64}


def build_tiny_resnet(seed: int = 0):
    import torch
    from torch import nn

    from resnet_deploy.models import BasicBlock, ResNet

    torch.manual_seed(seed)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def export_unfolded(model, path: Path, prep: dict | None = None) -> Path:
    """TorchScript export without constant folding (BatchNormalization nodes stay), dynamic N, H, W,
    with the toolkit's metadata (preprocessing record) so the INT8 stage reads it."""
    import onnx
    import torch

    from resnet_deploy.artifacts import metadata_props
    from resnet_deploy.models import Preprocessing

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it keeps BN unfolded on request
        torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), buf, dynamo=False, opset_version=18,
                          input_names=["input"], output_names=["logits"], do_constant_folding=False,
                          training=torch.onnx.TrainingMode.EVAL,
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    record = Preprocessing(**(prep or PREP)).to_dict()
    for key, value in metadata_props({"preprocessing": record, "precision": "fp32", "input_layout": "NCHW",
                                      "variant": "tiny"}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory):
    """(path of the FP32 ONNX, the PyTorch module) of the two-stage ResNet."""
    model = build_tiny_resnet()
    path = export_unfolded(model, tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    return path, model


@pytest.fixture(scope="session")
def resnet18_fp32(tmp_path_factory):
    """(path, module) of a ResNet-18 (random weights) exported by the toolkit's own exporter."""
    from resnet_deploy.export import export_onnx, make_dynamic
    from resnet_deploy.models import Preprocessing, create_model

    model, info = create_model("18")
    model = make_dynamic(model)
    path = tmp_path_factory.mktemp("r18") / "resnet18.onnx"
    export_onnx(model, path, exporter="torchscript", sample_shape=(2, 3, 64, 64),
                metadata={"preprocessing": Preprocessing(**PREP).to_dict(), "precision": "fp32",
                          "input_layout": "NCHW"})
    return path, model


def write_images(folder: Path, count: int, size: tuple[int, int] = (80, 72), seed: int = 0,
                 nested: bool = True) -> list[Path]:
    """``count`` small RGB PNGs with varied content, half of them in a subfolder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        sub = folder / ("sub" if nested and i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, size=3)
        freq = rng.uniform(0.02, 0.3, size=2)
        img = np.stack([(base[c] + 80 * np.sin(freq[0] * xx + c) * np.cos(freq[1] * yy)) for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        p = sub / f"img_{i:03d}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


@pytest.fixture()
def make_images():
    """``make_images(folder, count, size=(h, w), seed=0, nested=True) -> [paths]``."""
    return write_images


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 24)
    return folder
