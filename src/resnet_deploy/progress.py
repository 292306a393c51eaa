"""Progress bars for long work (export stages, calibration, engine builds, benchmarks, embedding).

Bars go to stderr and disappear when stderr is not a terminal unless forced, so logs and JSON on
stdout stay clean. ``RESNET_DEPLOY_PROGRESS=0`` turns them off, ``=1`` forces them on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("resnet_deploy")


def _enabled() -> bool:
    env = os.environ.get("RESNET_DEPLOY_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar on stderr (disabled when progress is off)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not _enabled(),
                dynamic_ncols=True, leave=False)


def track(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    yield from bar(iterable, total=total, desc=desc, unit=unit)


@contextmanager
def stage(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log (the CLI shows INFO on stderr) the start and end of a named stage and record its duration in ``timings``."""
    log.info("%s ...", name)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t0
        if timings is not None:
            timings[name] = round(dt, 3)
        log.info("%s done in %.2fs", name, dt)
