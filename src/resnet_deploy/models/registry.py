"""The variants, their aliases, and torchvision's published facts about them (no torch here: serving
code and the CLI read these facts without PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .transforms import IMAGENET_V1, IMAGENET_V2, Preprocessing

if TYPE_CHECKING:
    from .resnet import ResNet

#: Block kinds of :class:`VariantSpec` -> the class in :mod:`resnet_deploy.models.resnet` (imported, with
#: torch, only when a network is built: the registry itself is read by torch-free serving code).
BLOCKS = {"basic": "BasicBlock", "bottleneck": "Bottleneck"}
#: Heads an export can carry (built by :func:`resnet_deploy.models.heads.wrap_head`).
HEADS = ("logits", "embedding")


@dataclass(frozen=True)
class PublishedWeights:
    tag: str  # torchvision's enum member name, e.g. IMAGENET1K_V2
    url: str
    preprocessing: Preprocessing


@dataclass(frozen=True)
class VariantSpec:
    name: str
    block: str  # "basic" or "bottleneck" (see BLOCKS)
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64
    num_params: int = 0  # torchvision's published count for 1000 classes
    gmacs_224: float = 0.0  # torchvision's published GFLOPS figure (multiply-adds) at 224x224
    weights: tuple[PublishedWeights, ...] = ()

    def block_class(self) -> type:
        from . import resnet

        return getattr(resnet, BLOCKS[self.block])

    def build(self, num_classes: int = 1000, **kwargs: Any) -> ResNet:
        from .resnet import ResNet

        return ResNet(self.block_class(), list(self.layers), num_classes=num_classes, groups=self.groups,
                      width_per_group=self.width_per_group, **kwargs)

    @property
    def num_features(self) -> int:
        return 512 * self.block_class().expansion

    def published(self, tag: str | None = None) -> PublishedWeights:
        """The published checkpoint ``tag``; ``None`` means torchvision's DEFAULT (the newest)."""
        if not self.weights:
            raise UsageError(f"no published weights for {self.name}")
        if tag is None:
            return self.weights[-1]
        for w in self.weights:
            if w.tag.lower() == tag.lower():
                return w
        raise UsageError(f"{self.name} has no published weights '{tag}'; choose one of: "
                         + ", ".join(w.tag for w in self.weights))


_URL = "https://download.pytorch.org/models/"


def _w(v1: str, v2: str | None = None, v1_prep: Preprocessing = IMAGENET_V1) -> tuple[PublishedWeights, ...]:
    out = [PublishedWeights("IMAGENET1K_V1", _URL + v1, v1_prep)]
    if v2:
        out.append(PublishedWeights("IMAGENET1K_V2", _URL + v2, IMAGENET_V2))
    return tuple(out)


VARIANTS: dict[str, VariantSpec] = {
    s.name: s
    for s in (
        VariantSpec("resnet18", "basic", (2, 2, 2, 2), num_params=11_689_512, gmacs_224=1.81,
                    weights=_w("resnet18-f37072fd.pth")),
        VariantSpec("resnet34", "basic", (3, 4, 6, 3), num_params=21_797_672, gmacs_224=3.66,
                    weights=_w("resnet34-b627a593.pth")),
        VariantSpec("resnet50", "bottleneck", (3, 4, 6, 3), num_params=25_557_032, gmacs_224=4.09,
                    weights=_w("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")),
        VariantSpec("resnet101", "bottleneck", (3, 4, 23, 3), num_params=44_549_160, gmacs_224=7.80,
                    weights=_w("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth")),
        VariantSpec("resnet152", "bottleneck", (3, 8, 36, 3), num_params=60_192_808, gmacs_224=11.51,
                    weights=_w("resnet152-394f9c45.pth", "resnet152-f82ba261.pth")),
        VariantSpec("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4,
                    num_params=25_028_904, gmacs_224=4.23,
                    weights=_w("resnext50_32x4d-7cdf4587.pth", "resnext50_32x4d-1a0047aa.pth")),
        VariantSpec("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), groups=32, width_per_group=8,
                    num_params=88_791_336, gmacs_224=16.41,
                    weights=_w("resnext101_32x8d-8ba56ff5.pth", "resnext101_32x8d-110c445d.pth")),
        VariantSpec("resnext101_64x4d", "bottleneck", (3, 4, 23, 3), groups=64, width_per_group=4,
                    num_params=83_455_272, gmacs_224=15.46,
                    weights=_w("resnext101_64x4d-173b62eb.pth", v1_prep=IMAGENET_V2)),
        VariantSpec("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), width_per_group=128,
                    num_params=68_883_240, gmacs_224=11.40,
                    weights=_w("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth")),
        VariantSpec("wide_resnet101_2", "bottleneck", (3, 4, 23, 3), width_per_group=128,
                    num_params=126_886_696, gmacs_224=22.75,
                    weights=_w("wide_resnet101_2-32ee1156.pth", "wide_resnet101_2-d733dc28.pth")),
    )
}

_ALIASES = {str(n): f"resnet{n}" for n in (18, 34, 50, 101, 152)}
_ALIASES.update({"resnext50": "resnext50_32x4d", "wide_resnet50": "wide_resnet50_2",
                 "wide_resnet101": "wide_resnet101_2", "wrn50_2": "wide_resnet50_2",
                 "wrn101_2": "wide_resnet101_2"})


def variant_choices() -> list[str]:
    return ["18", "34", "50", "101", "152"] + [n for n in VARIANTS if not n.startswith("resnet")]


def resolve_variant(name: str | int) -> VariantSpec:
    """Accept ``50``, ``resnet50``, ``ResNet-50``, ``resnext50_32x4d``, ``wide_resnet50_2`` ..."""
    key = str(name).strip().lower().replace("-", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in VARIANTS:
        raise UsageError(f"unknown variant '{name}'; choose one of: " + ", ".join(variant_choices()))
    return VARIANTS[key]
