"""The preprocessing record that travels with the weights (torchvision ``Weights.meta`` / timm
``PretrainedCfg``). Export, calibration, inference and the manifest all read this one record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """torchvision's ImageNet recipe: resize the short side, center crop, scale to [0, 1], normalize."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True
    layout: str = "NCHW"
    color: str = "RGB"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        return cls(**kw)


#: V1 checkpoints (the original recipe): resize 256, crop 224.
IMAGENET_V1 = Preprocessing(resize_size=256, crop_size=224)
#: V2 checkpoints (torchvision's new training recipe): resize 232, crop 224.
IMAGENET_V2 = Preprocessing(resize_size=232, crop_size=224)


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from, and how its inputs must be prepared."""

    source: str  # "random", "imagenet:IMAGENET1K_V2", or a file path
    sha256: str | None = None
    preprocessing: Preprocessing = field(default_factory=lambda: IMAGENET_V1)
    num_classes: int = 1000
    meaningful: bool = True  # False for random init: outputs carry no meaning

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "num_classes": self.num_classes,
                "meaningful": self.meaningful, "preprocessing": self.preprocessing.to_dict()}
