"""Shapes as users type them (``1x3x224x224``) and the one check of an input shape every command
applies: NCHW, 3 channels, batch >= 1, height and width >= ``MIN_SPATIAL``.

``parse_shape`` / ``parse_shapes`` read the text; ``validate_input_shape`` / ``validate_spatial``
check what the network can take; ``input_shape`` / ``input_shapes`` do both (the argparse types of
``--check-shapes``, ``check --shapes``, ``calibrate --shape`` are built on them in
:mod:`resnet_deploy.options`).
"""

from __future__ import annotations

from typing import Sequence

from .errors import UsageError

#: The smallest input side the check shapes and engine profiles accept: ResNet downsamples by 32,
#: so below 32 px layer4 sees less than one pixel of the image.
MIN_SPATIAL = 32
#: The largest input side (the dynamic-shape range an export declares).
MAX_SPATIAL = 8192
#: The largest batch (the dynamic-shape range an export declares).
MAX_BATCH = 4096

Shape = tuple[int, ...]


def _text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def parse_shape(text: str, *, rank: int = 4) -> tuple[int, ...]:
    """``1x3x224x224`` -> (1, 3, 224, 224); ``224x224`` with rank 2."""
    parts = str(text).strip().lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"bad shape '{text}': expected {'x'.join(['N'] * rank)} with integers, e.g. "
                         + ("1x3x224x224" if rank == 4 else "224x224")) from None
    if len(dims) != rank or any(d < 1 for d in dims):
        raise UsageError(f"bad shape '{text}': expected {rank} positive integers joined by 'x'")
    return dims


def parse_shapes(text: str, *, rank: int = 4) -> tuple[tuple[int, ...], ...]:
    """``1x3x224x224,2x3x160x288`` -> ((1, 3, 224, 224), (2, 3, 160, 288)); at least one shape."""
    shapes = tuple(parse_shape(s.strip(), rank=rank) for s in str(text).split(",") if s.strip())
    if not shapes:
        raise UsageError(f"bad shape list '{text}': expected one or more shapes joined by ',', e.g. "
                         + ("1x3x224x224,2x3x160x288" if rank == 4 else "224x224,320x320"))
    return shapes


def validate_spatial(height: int, width: int) -> None:
    """Raise UsageError unless the network can take an ``height`` x ``width`` image."""
    if height < MIN_SPATIAL or width < MIN_SPATIAL:
        raise UsageError(f"input size {height}x{width} is too small for the network: ResNet downsamples by 32, so "
                         f"height and width must be at least {MIN_SPATIAL}")
    if height > MAX_SPATIAL or width > MAX_SPATIAL:
        raise UsageError(f"input size {height}x{width} is too large: height and width must be at most {MAX_SPATIAL}")


def validate_input_shape(shape: Sequence[int], *, channels: int = 3) -> Shape:
    """Raise UsageError unless ``shape`` is an NCHW batch the network takes: rank 4, ``channels``
    channels, 1 <= N <= MAX_BATCH, MIN_SPATIAL <= H, W <= MAX_SPATIAL. Returns it as a tuple."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 4 or shape[1] != channels:
        raise UsageError(f"shape {_text(shape)} must be Nx{channels}xHxW")
    if not 1 <= shape[0] <= MAX_BATCH:
        raise UsageError(f"shape {_text(shape)}: batch must be between 1 and {MAX_BATCH}")
    try:
        validate_spatial(shape[2], shape[3])
    except UsageError as exc:
        raise UsageError(f"shape {_text(shape)}: {exc}") from None
    return shape


def input_shape(text: str) -> Shape:
    """Parse and check one NCHW input shape (``8x3x224x224``)."""
    return validate_input_shape(parse_shape(text))


def input_shapes(text: str) -> tuple[Shape, ...]:
    """Parse and check a comma-separated list of NCHW input shapes."""
    return tuple(validate_input_shape(s) for s in parse_shapes(text))


__all__ = ["MAX_BATCH", "MAX_SPATIAL", "MIN_SPATIAL", "input_shape", "input_shapes", "parse_shape", "parse_shapes",
           "validate_input_shape", "validate_spatial"]
