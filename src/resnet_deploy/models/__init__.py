"""The ResNet family, torchvision-compatible, with its weights and their preprocessing record.

The facts (variants, preprocessing records) import without PyTorch; the networks, weights and
builders import torch when first used, so serving code can read this package on a thin runtime.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

from ..errors import UsageError, require
from .registry import HEADS, VARIANTS, VariantSpec, resolve_variant, variant_choices
from .transforms import IMAGENET_V1, IMAGENET_V2, Preprocessing, WeightsInfo

if TYPE_CHECKING:
    from .resnet import BasicBlock, Bottleneck, ResNet, conv1x1, conv3x3
    from .weights import checkpoint_num_classes, load_weights

log = logging.getLogger(__name__)

#: Names this package exports from its torch modules, imported on first access.
_TORCH_NAMES = {"BasicBlock": "resnet", "Bottleneck": "resnet", "ResNet": "resnet", "conv1x1": "resnet",
                "conv3x3": "resnet", "checkpoint_num_classes": "weights", "load_weights": "weights"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        require("torch", f"resnet_deploy.models.{name}", "export")
        return getattr(importlib.import_module(f"{__name__}.{_TORCH_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


WeightsSpec = str | os.PathLike  # "random" | "imagenet[:TAG]" | a checkpoint path


def create_model(variant: str | int, *, weights: WeightsSpec | None = "random", num_classes: int | None = None,
                 seed: int = 0) -> tuple[ResNet, WeightsInfo]:
    """Build ``variant`` in eval mode with ``weights``; returns the model and its weights record.

    ``num_classes`` defaults to the checkpoint's own ``fc`` size, else 1000.
    """
    spec = resolve_variant(variant)
    torch = require("torch", "building a PyTorch model", "export")
    from .weights import checkpoint_num_classes, load_weights

    if num_classes is None:
        num_classes = checkpoint_num_classes(weights) or 1000
    if num_classes < 1:
        raise UsageError(f"--num-classes must be >= 1, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(num_classes=num_classes)
    info = load_weights(model, spec, weights, num_classes)
    if not info.meaningful:
        log.warning("%s has RANDOM weights (seed %d): its outputs carry no meaning. Pass --weights imagenet "
                    "or --weights PATH for a real model.", spec.name, seed)
    return model.eval(), info


def _resnet(name: str, weights: WeightsSpec | None, **kwargs: Any) -> ResNet:
    model, _ = create_model(name, weights=weights if weights is not None else "random", **kwargs)
    return model


def resnet18(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("resnet18", weights, **kwargs)


def resnet34(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("resnet34", weights, **kwargs)


def resnet50(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("resnet50", weights, **kwargs)


def resnet101(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("resnet101", weights, **kwargs)


def resnet152(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("resnet152", weights, **kwargs)


def resnext50_32x4d(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("resnext50_32x4d", weights, **kwargs)


def resnext101_32x8d(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("resnext101_32x8d", weights, **kwargs)


def resnext101_64x4d(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("resnext101_64x4d", weights, **kwargs)


def wide_resnet50_2(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("wide_resnet50_2", weights, **kwargs)


def wide_resnet101_2(*, weights: WeightsSpec | None = None, **kwargs: Any) -> ResNet:
    return _resnet("wide_resnet101_2", weights, **kwargs)


__all__ = [
    "BasicBlock", "Bottleneck", "ResNet", "conv1x1", "conv3x3", "VARIANTS", "VariantSpec", "resolve_variant",
    "variant_choices", "create_model", "HEADS", "Preprocessing", "WeightsInfo", "IMAGENET_V1", "IMAGENET_V2",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
]
