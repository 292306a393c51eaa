"""torchvision's state_dict layout, written down from its published architecture (no torchvision import)."""

from __future__ import annotations

import pytest

# torchvision's architecture, written down independently: block type, blocks per stage, groups, width.
ARCH = {
    "resnet18": ("basic", [2, 2, 2, 2], 1, 64), "resnet34": ("basic", [3, 4, 6, 3], 1, 64),
    "resnet50": ("bottleneck", [3, 4, 6, 3], 1, 64), "resnet101": ("bottleneck", [3, 4, 23, 3], 1, 64),
    "resnet152": ("bottleneck", [3, 8, 36, 3], 1, 64),
    "resnext50_32x4d": ("bottleneck", [3, 4, 6, 3], 32, 4), "resnext101_32x8d": ("bottleneck", [3, 4, 23, 3], 32, 8),
    "resnext101_64x4d": ("bottleneck", [3, 4, 23, 3], 64, 4),
    "wide_resnet50_2": ("bottleneck", [3, 4, 6, 3], 1, 128), "wide_resnet101_2": ("bottleneck", [3, 4, 23, 3], 1, 128),
}


def torchvision_state_dict_shapes(name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's resnet.py state_dict, derived from the published architecture."""
    kind, layers, groups, wpg = ARCH[name]
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{k}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    expansion = 1 if kind == "basic" else 4
    for stage, (planes, blocks) in enumerate(zip([64, 128, 256, 512], layers), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            if kind == "basic":
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            else:
                width = int(planes * wpg / 64) * groups
                shapes[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
                bn(f"{p}.bn1", width)
                shapes[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
                bn(f"{p}.bn2", width)
                shapes[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            if b == 0 and (stage > 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (num_classes, 512 * expansion)
    shapes["fc.bias"] = (num_classes,)
    return shapes



@pytest.fixture(scope="session")
def torchvision_shapes():
    return torchvision_state_dict_shapes
