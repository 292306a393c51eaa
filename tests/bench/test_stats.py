from __future__ import annotations

import math

import numpy as np
import pytest

from resnet_deploy.bench.stats import LatencyStats, percentile
from resnet_deploy.errors import UsageError


def test_known_timings_give_exact_statistics():
    ms = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    s = LatencyStats.from_seconds([x / 1e3 for x in ms], batch=4)
    assert s.n == 10 and s.batch == 4
    assert s.min_ms == pytest.approx(1) and s.max_ms == pytest.approx(10)
    assert s.mean_ms == pytest.approx(5.5)
    assert s.median_ms == pytest.approx(5.5)
    # linear (numpy default): position q/100 * (n - 1)
    assert s.p90_ms == pytest.approx(9.1)
    assert s.p95_ms == pytest.approx(9.55)
    assert s.p99_ms == pytest.approx(9.91)
    # population standard deviation, as trtexec
    assert s.std_ms == pytest.approx(math.sqrt(8.25))
    assert s.cv == pytest.approx(math.sqrt(8.25) / 5.5)
    assert s.throughput == pytest.approx(4 * 1000 / 5.5)


def test_odd_count_median_is_the_middle_value():
    s = LatencyStats.from_milliseconds([3.0, 1.0, 100.0])
    assert s.median_ms == 3.0
    assert s.mean_ms == pytest.approx(104 / 3)


def test_constant_timings_have_zero_spread():
    s = LatencyStats.from_milliseconds([2.5] * 7, batch=2)
    assert s.std_ms == 0 and s.cv == 0
    assert s.p99_ms == 2.5 and s.min_ms == 2.5
    assert s.throughput == pytest.approx(800.0)


def test_trtexec_percentile_is_the_nearest_rank():
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    # trtexec: sorted[max(n - 1 - int((1 - q/100) * n), 0)]
    assert percentile(values, 90, "trtexec") == 9
    assert percentile(values, 99, "trtexec") == 10
    assert percentile(values, 50, "trtexec") == 5
    assert percentile(values, 0, "trtexec") == 1
    assert percentile(values, 90, "linear") == pytest.approx(9.1)


def test_linear_percentiles_match_numpy_on_random_data():
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 3.0, size=101)
    s = LatencyStats.from_milliseconds(data)
    for q, got in ((90, s.p90_ms), (95, s.p95_ms), (99, s.p99_ms)):
        assert got == pytest.approx(np.percentile(data, q))
    assert s.std_ms == pytest.approx(np.std(data))


@pytest.mark.parametrize("bad", [[], [1.0, -0.5], [float("nan")]])
def test_bad_timings_are_rejected(bad):
    with pytest.raises(UsageError):
        LatencyStats.from_milliseconds(bad)


def test_bad_percentile_arguments_are_rejected():
    with pytest.raises(UsageError, match="method"):
        percentile([1.0], 50, "nearest")
    with pytest.raises(UsageError, match="0..100"):
        percentile([1.0], 101)
    with pytest.raises(UsageError, match="batch"):
        LatencyStats.from_milliseconds([1.0], batch=0)


def test_to_dict_round_trips_every_field():
    s = LatencyStats.from_milliseconds([1.0, 2.0])
    d = s.to_dict()
    assert LatencyStats(**d) == s
    assert set(d) >= {"min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "std_ms", "cv", "throughput"}
