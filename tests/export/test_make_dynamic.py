"""The seed's fix: a fixed AvgPool2d(7) head becomes adaptive, so any input size works."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnet_deploy.export import export_onnx, make_dynamic
from resnet_deploy.models import create_model


@pytest.fixture(scope="module")
def legacy_model(legacy_seed):
    torch.manual_seed(0)
    model = legacy_seed.resnet50().eval()
    with torch.no_grad():  # non-trivial BN statistics so that outputs differ per image
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_legacy_code_breaks_off_224(legacy_model):
    with torch.no_grad():
        assert legacy_model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        with pytest.raises(RuntimeError):  # 10x10 map -> 4x4 after the pool -> 32768 features for fc
            legacy_model(torch.randn(1, 3, 320, 320))
        with pytest.raises(RuntimeError):  # 5x7 map is smaller than the 7x7 kernel
            legacy_model(torch.randn(1, 3, 160, 200))


def test_make_dynamic_keeps_224_and_opens_other_sizes(legacy_model):
    dynamic = make_dynamic(legacy_model)
    assert isinstance(dynamic.avgpool, nn.AdaptiveAvgPool2d)
    assert isinstance(legacy_model.avgpool, nn.AvgPool2d)  # the original is left alone
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), legacy_model(x), rtol=1e-4, atol=1e-4)  # summation order only
        assert dynamic(torch.randn(2, 3, 160, 200)).shape == (2, 1000)
        assert dynamic(torch.randn(1, 3, 320, 320)).shape == (1, 1000)


def test_make_dynamic_on_a_user_subclass(legacy_seed):
    class MyNet(legacy_seed.ResNet):
        def forward(self, x):
            return super().forward(x) * 2

    model = make_dynamic(MyNet(legacy_seed.Bottleneck, [1, 1, 1, 1], num_classes=7).eval())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 7)


def test_make_dynamic_leaves_adaptive_models_unchanged():
    model, _ = create_model("18")
    out = make_dynamic(model)
    assert type(out.avgpool) is nn.AdaptiveAvgPool2d
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(out(x), model(x))


def test_legacy_model_exports_dynamic_after_the_fix(legacy_model, tmp_path):
    import numpy as np
    import onnxruntime as ort

    path = tmp_path / "legacy.onnx"
    export_onnx(make_dynamic(legacy_model), path, exporter="torchscript")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 320, 320)).astype(np.float32)
    with torch.no_grad():
        ref = make_dynamic(legacy_model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], ref, rtol=1e-3, atol=1e-3)
