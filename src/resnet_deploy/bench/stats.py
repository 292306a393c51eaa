"""Latency statistics from per-iteration timings (seconds in, milliseconds out).

The definitions, so that two runs (and a reader of trtexec's output) agree on what a number means:

* **percentiles** (p90, p95, p99): numpy's default ``linear`` method (Hyndman & Fan type 7): sort the
  ``n`` timings, take position ``q/100 * (n - 1)`` and interpolate between its two neighbours.
  trtexec instead takes a nearest rank, ``sorted[max(n - 1 - int((1 - q/100) * n), 0)]``
  (``findPercentile`` in TensorRT's ``samples/common/sampleReporting.cpp``); ``percentile(...,
  method="trtexec")`` gives that one. The two agree when ``n`` is large and differ by at most one
  rank otherwise.
* **median**: the middle timing, or the mean of the two middle ones (trtexec's ``findMedian``; the
  same as the linear 50th percentile).
* **std**: the population standard deviation (divide by ``n``), as trtexec's
  ``findCoeffOfVariance``; **cv** = std / mean as a fraction (trtexec prints it in percent and
  warns above 1 % for GPU compute time).
* **throughput**: images per second = ``batch * n / sum(timings)`` = ``batch / mean``. trtexec divides
  queries by the host wall time from the first query to the last; with one synchronized query at a
  time the two agree up to the gaps between iterations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from ..errors import UsageError

#: The tail percentiles every measurement reports.
PERCENTILES = (90, 95, 99)
PERCENTILE_METHODS = ("linear", "trtexec")


def percentile(values: Sequence[float], q: float, method: str = "linear") -> float:
    """The ``q``-th percentile (0..100) of ``values``; see the module docstring for ``method``."""
    if method not in PERCENTILE_METHODS:
        raise UsageError(f"unknown percentile method '{method}'; choose one of: {', '.join(PERCENTILE_METHODS)}")
    if not 0 <= q <= 100:
        raise UsageError(f"percentile must be within 0..100, got {q}")
    data = np.sort(np.asarray(values, dtype=np.float64))
    if data.size == 0:
        raise UsageError("no timings to summarize")
    if method == "linear":
        return float(np.percentile(data, q, method="linear"))
    n = data.size
    # trtexec computes the excluded count in float32: at q=90, n=10 that is int(1.0000002) = 1, where
    # float64 would give int(0.9999999999999998) = 0 and pick a different rank
    f32 = np.float32
    exclude = int((f32(1) - f32(q) / f32(100)) * f32(n))
    return float(data[max(n - 1 - exclude, 0)])


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one configuration's timed iterations; times in milliseconds."""

    n: int
    batch: int
    min_ms: float
    max_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    std_ms: float
    cv: float  # std / mean, a fraction
    throughput: float  # images per second

    @classmethod
    def from_seconds(cls, timings: Iterable[float], batch: int = 1) -> "LatencyStats":
        """Summarize per-iteration wall times in seconds of batches of ``batch`` images."""
        ms = np.asarray(list(timings), dtype=np.float64) * 1e3
        return cls.from_milliseconds(ms, batch)

    @classmethod
    def from_milliseconds(cls, timings_ms: Iterable[float], batch: int = 1) -> "LatencyStats":
        ms = np.asarray(list(timings_ms), dtype=np.float64)
        if ms.size == 0:
            raise UsageError("no timings to summarize")
        if batch < 1:
            raise UsageError(f"batch must be >= 1, got {batch}")
        if not np.all(np.isfinite(ms)) or np.any(ms < 0):
            raise UsageError("timings must be finite and non-negative")
        mean = float(ms.mean())
        std = float(ms.std(ddof=0))
        return cls(n=int(ms.size), batch=int(batch), min_ms=float(ms.min()), max_ms=float(ms.max()), mean_ms=mean,
                   median_ms=float(np.median(ms)), p90_ms=percentile(ms, 90), p95_ms=percentile(ms, 95),
                   p99_ms=percentile(ms, 99), std_ms=std, cv=std / mean if mean > 0 else math.inf,
                   throughput=batch * 1e3 / mean if mean > 0 else math.inf)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)
