"""The family matches torchvision: shapes (the seed's arithmetic), parameter counts, state_dict keys."""

from __future__ import annotations

import pytest
import torch

from resnet_deploy.errors import UsageError
from resnet_deploy.models import VARIANTS, create_model, resolve_variant
from resnet_deploy.models.resnet import BasicBlock, Bottleneck

# torchvision's published num_params (torchvision.models.*_Weights.IMAGENET1K_V1.meta["num_params"]).
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
}

@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_torchvision(name):
    model = VARIANTS[name].build()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_state_dict_keys_and_shapes_match_torchvision(name, torchvision_shapes):
    expected = torchvision_shapes(name)
    got = {k: tuple(v.shape) for k, v in VARIANTS[name].build().state_dict().items()}
    assert got == expected


def test_resnet50_shapes_follow_the_seed():
    """224 -> 112 (conv1) -> 56 (maxpool) -> 56 -> 28 -> 14 -> 7 (layer1..4) -> 1 (pool)."""
    model, _ = create_model("50")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
        assert stem.shape == (1, 64, 112, 112)
        x = model.maxpool(stem)
        assert x.shape == (1, 64, 56, 56)
        sizes = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = layer(x)
            sizes.append(tuple(x.shape[1:]))
        assert sizes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
        assert model.avgpool(x).shape == (1, 2048, 1, 1)


@pytest.mark.parametrize("name,features", [("resnet18", 512), ("resnet50", 2048), ("wide_resnet50_2", 2048)])
def test_logits_and_features_at_any_size(name, features):
    model, _ = create_model(name)
    for h, w in ((224, 224), (97, 131), (320, 320)):
        with torch.no_grad():
            x = torch.randn(2, 3, h, w)
            assert model(x).shape == (2, 1000)
            assert model.forward_features(x).shape == (2, features)


def test_bottleneck_puts_the_stride_on_the_3x3_conv():
    block = VARIANTS["resnet50"].build().layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)
    assert isinstance(VARIANTS["resnet18"].build().layer1[0], BasicBlock)


@pytest.mark.parametrize("alias,name", [("50", "resnet50"), ("resnet50", "resnet50"), ("ResNet-50", "resnet50"),
                                        ("resnext50_32x4d", "resnext50_32x4d"),
                                        ("wide_resnet50_2", "wide_resnet50_2"), (152, "resnet152")])
def test_variant_aliases(alias, name):
    assert resolve_variant(alias).name == name


def test_unknown_variant_lists_the_choices():
    with pytest.raises(UsageError, match=r"unknown variant 'resnet51'; choose one of: 18, 34, 50.*wide_resnet101_2"):
        resolve_variant("resnet51")


def test_random_weights_are_seeded_and_flagged():
    a, info = create_model("18", seed=3)
    b, _ = create_model("18", seed=3)
    c, _ = create_model("18", seed=4)
    assert not info.meaningful and info.source == "random"
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_num_classes_sets_the_head():
    model, info = create_model("18", num_classes=10)
    assert model.fc.out_features == 10 and info.num_classes == 10
    with pytest.raises(UsageError, match="num-classes"):
        create_model("18", num_classes=0)
