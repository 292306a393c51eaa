"""One validation of numeric options and shapes for every command.

The argparse types here (``positive_int``, ``batch_size``, ``positive_float``, ``input_shapes``
...) refuse a bad value while the command line is parsed: one line on stderr, exit 2, the same
words for the same option in every command. The ``check_*`` functions are the same rules for
library callers (runners, configs), raising :class:`~resnet_deploy.errors.UsageError`.

Floats must be finite everywhere: ``nan`` compares false with every bound, so a ``nan`` that gets
through turns a check off instead of failing it.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

from . import shapes
from .errors import UsageError

__all__ = ["batch_size", "check_float", "check_int", "check_threads", "finite_float", "float_range", "fraction",
           "input_shape", "input_shapes", "int_range", "non_negative_float", "non_negative_int", "percentile",
           "positive_float", "positive_int", "shape_list", "threads"]


def _bounds(minimum: float | None, maximum: float | None, min_open: bool = False, max_open: bool = False) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if min_open else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if max_open else '<='} {maximum:g}")
    return " and ".join(parts)


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum], else UsageError naming ``name``."""
    bounds = _bounds(minimum, maximum)
    want = f"an integer {bounds}".rstrip()
    if isinstance(value, bool):
        raise UsageError(f"{name} must be {want}, got {value!r}")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
        if not isinstance(value, str) and number != value:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{name} must be {want}, got {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise UsageError(f"{name} must be {want}, got {number}")
    return number


def check_float(value: Any, name: str, minimum: float | None = None, maximum: float | None = None, *,
                min_open: bool = False, max_open: bool = False) -> float:
    """``value`` as a finite float within the bounds (open bounds exclude the limit), else UsageError."""
    bounds = _bounds(minimum, maximum, min_open, max_open)
    want = f"a finite number {bounds}".rstrip()
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{name} must be {want}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise UsageError(f"{name} must be {want}, got {value!r}")
    if minimum is not None and (number < minimum or (min_open and number == minimum)):
        raise UsageError(f"{name} must be {want}, got {value!r}")
    if maximum is not None and (number > maximum or (max_open and number == maximum)):
        raise UsageError(f"{name} must be {want}, got {value!r}")
    return number


def check_threads(value: Any, name: str = "threads") -> int | None:
    """None (the backend's default) or an integer >= 1: the one rule of every backend."""
    return None if value is None else check_int(value, name, 1)


# -- argparse types -------------------------------------------------------------------------------

def _argtype(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """Turn a UsageError into argparse's error (``argument --x: message``, exit 2)."""

    def parse(text: str) -> Any:
        try:
            return fn(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def int_range(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer within [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            want = " ".join(filter(None, ("expected an integer", _bounds(minimum, maximum))))
            raise UsageError(f"{want}, got '{text}'") from None
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise UsageError(f"must be an integer {_bounds(minimum, maximum)}, got {number}")
        return number

    return _argtype(parse, "integer")


def float_range(minimum: float | None = None, maximum: float | None = None, *, min_open: bool = False,
                max_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float within the bounds."""
    def parse(text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or (minimum is not None and (number < minimum or (min_open and number == minimum))) \
                or (maximum is not None and (number > maximum or (max_open and number == maximum))):
            want = " ".join(filter(None, ("must be a finite number", _bounds(minimum, maximum, min_open, max_open))))
            raise UsageError(f"{want}, got '{text}'")
        return number

    return _argtype(parse, "number")


positive_int = int_range(1)
non_negative_int = int_range(0)
threads = int_range(1)
batch_size = int_range(1, shapes.MAX_BATCH)
finite_float = float_range()
positive_float = float_range(0, min_open=True)
non_negative_float = float_range(0)
fraction = float_range(0, 1)
percentile = float_range(0, 100, min_open=True)
input_shape = _argtype(shapes.input_shape, "shape")
input_shapes = _argtype(shapes.input_shapes, "shapes")
shape_list = _argtype(shapes.parse_shapes, "shapes")
