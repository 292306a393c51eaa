"""Shapes as users type them (``1x3x224x224``) and the network's smallest input side."""

from __future__ import annotations

from .errors import UsageError

#: The smallest input side the check shapes and engine profiles accept: ResNet downsamples by 32,
#: so below 32 px layer4 sees less than one pixel of the image.
MIN_SPATIAL = 32


def parse_shape(text: str, *, rank: int = 4) -> tuple[int, ...]:
    """``1x3x224x224`` -> (1, 3, 224, 224); ``224x224`` with rank 2."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"bad shape '{text}': expected {'x'.join(['N'] * rank)} with integers, e.g. "
                         + ("1x3x224x224" if rank == 4 else "224x224")) from None
    if len(dims) != rank or any(d < 1 for d in dims):
        raise UsageError(f"bad shape '{text}': expected {rank} positive integers joined by 'x'")
    return dims
