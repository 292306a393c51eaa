"""Optimization profiles: the shapes an engine accepts, and the shapes it is tuned for.

A profile is three NCHW shapes. TensorRT accepts any input between ``min`` and ``max`` (per
dimension) and picks its kernels for ``opt``. The default covers batch 1..32 and 128..512 px,
tuned for 8x3x224x224: 224 is the crop size of every torchvision ResNet recipe, so it is the size
a deployment sees most, and batch 8 sits where ResNet-50 FP16 throughput on one GPU has mostly
saturated while latency is still a few milliseconds; a server that always sends 32 should pass its
own ``--opt-shape 32x3x224x224``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ...errors import UsageError
from ...shapes import MIN_SPATIAL, parse_shape
from ..base import shape_str

Shape = tuple[int, ...]
DIM_NAMES = ("batch", "channels", "height", "width")
DEFAULT_MIN: Shape = (1, 3, 128, 128)
DEFAULT_OPT: Shape = (8, 3, 224, 224)
DEFAULT_MAX: Shape = (32, 3, 512, 512)


@dataclass(frozen=True)
class Profile:
    """One optimization profile of the network's image input (NCHW)."""

    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        shape = tuple(int(d) for d in shape)
        return len(shape) == len(self.min) and all(lo <= d <= hi for d, lo, hi in zip(shape, self.min, self.max))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Profile":
        try:
            return cls(tuple(int(x) for x in d["min"]), tuple(int(x) for x in d["opt"]),
                       tuple(int(x) for x in d["max"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"bad profile record {d!r}: expected min, opt and max shapes") from exc

    def __str__(self) -> str:
        return f"min {shape_str(self.min)}, opt {shape_str(self.opt)}, max {shape_str(self.max)}"


def default_profiles() -> list[Profile]:
    """Batch 1..32 and 128..512 px, tuned for 8x3x224x224 (see the module docstring)."""
    return [Profile(DEFAULT_MIN, DEFAULT_OPT, DEFAULT_MAX)]


def profiles_from_args(min_shapes: Sequence[str] | None, opt_shapes: Sequence[str] | None,
                       max_shapes: Sequence[str] | None) -> list[Profile]:
    """Profiles from repeated ``--min-shape/--opt-shape/--max-shape`` (the i-th of each form profile i).

    No flag at all gives ``default_profiles()``. ``--opt-shape`` may be left out: opt is then the
    default opt (batch 8, 224 px) clamped into [min, max].
    """
    mins, opts, maxs = list(min_shapes or ()), list(opt_shapes or ()), list(max_shapes or ())
    if not (mins or opts or maxs):
        return default_profiles()
    if len(mins) != len(maxs) or (opts and len(opts) != len(mins)):
        raise UsageError(f"each profile needs --min-shape and --max-shape (and optionally --opt-shape): got "
                         f"{len(mins)} --min-shape, {len(opts)} --opt-shape, {len(maxs)} --max-shape")
    profiles = []
    for i, (lo_text, hi_text) in enumerate(zip(mins, maxs)):
        lo, hi = parse_shape(lo_text), parse_shape(hi_text)
        opt = parse_shape(opts[i]) if opts else tuple(min(max(d, a), b) for d, a, b in zip(DEFAULT_OPT, lo, hi))
        profiles.append(Profile(lo, opt, hi))
    return profiles


def validate_profiles(profiles: Sequence[Profile], *, channels: int = 3, min_spatial: int = MIN_SPATIAL,
                      input_shape: Sequence[int | str | None] | None = None) -> None:
    """Raise UsageError naming the profile and the values unless every profile is a valid NCHW range.

    ``input_shape`` is the network input's declared shape (ints for fixed dims): fixed dims must be
    the same in min, opt and max.
    """
    if not profiles:
        raise UsageError("at least one optimization profile is needed")
    for i, p in enumerate(profiles):
        where = f"profile {i} ({p})"
        for label, shape in (("min", p.min), ("opt", p.opt), ("max", p.max)):
            if len(shape) != 4:
                raise UsageError(f"{where}: {label} shape {shape_str(shape)} must have 4 dims, NxCxHxW")
            if shape[1] != channels:
                raise UsageError(f"{where}: {label} shape {shape_str(shape)} has {shape[1]} channels; the network "
                                 f"takes {channels}")
            if shape[0] < 1:
                raise UsageError(f"{where}: {label} batch must be >= 1, got {shape[0]}")
            if shape[2] < min_spatial or shape[3] < min_spatial:
                raise UsageError(f"{where}: {label} shape {shape_str(shape)} is below the network's spatial minimum: "
                                 f"ResNet downsamples by 32, so height and width must be >= {min_spatial}")
        for d, name in enumerate(DIM_NAMES):
            if not p.min[d] <= p.opt[d] <= p.max[d]:
                raise UsageError(f"{where}: {name} must satisfy min <= opt <= max, got {p.min[d]}, {p.opt[d]}, "
                                 f"{p.max[d]}")
        if input_shape is not None:
            if len(input_shape) != 4:
                raise UsageError(f"the network input has rank {len(input_shape)}; profiles are NCHW (rank 4)")
            for d, fixed in enumerate(input_shape):
                if isinstance(fixed, int) and fixed >= 0 and not p.min[d] == p.opt[d] == p.max[d] == fixed:
                    raise UsageError(f"{where}: the network's {DIM_NAMES[d]} is fixed at {fixed}; min, opt and "
                                     f"max must all be {fixed}")


def check_shapes(profile: Profile) -> list[Shape]:
    """Parity shapes for one profile: min, opt, max, and one off-grid shape (an odd size that is not a
    multiple of 32, and a batch that is neither min, opt nor max, where the range allows it)."""
    off = []
    for d, (lo, opt, hi) in enumerate(zip(profile.min, profile.opt, profile.max)):
        if lo == hi:
            off.append(lo)
            continue
        mid = (lo + hi) // 2
        if d >= 2:
            mid |= 1  # odd: off every stride-2 grid
        if mid in (lo, opt, hi):
            mid = next((v for v in range(lo, hi + 1) if v not in (lo, opt, hi)), mid)
        off.append(min(max(mid, lo), hi))
    shapes: list[Shape] = []
    for s in (profile.min, profile.opt, profile.max, tuple(off)):
        if s not in shapes:
            shapes.append(s)
    return shapes


def bounds(profiles: Iterable[Profile]) -> tuple[Shape, Shape]:
    """The smallest and largest shape any of ``profiles`` accepts, per dimension."""
    profiles = list(profiles)
    lo = tuple(min(p.min[d] for p in profiles) for d in range(len(profiles[0].min)))
    hi = tuple(max(p.max[d] for p in profiles) for d in range(len(profiles[0].max)))
    return lo, hi
