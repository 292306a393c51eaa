"""Package data: the 1000 ImageNet-1k class names, in index order (torchvision's list)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names; index ``i`` is the label of logit ``i``."""
    return list(_imagenet_classes())


__all__ = ["imagenet_classes"]
