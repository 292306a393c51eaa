from __future__ import annotations

import numpy as np
import pytest

from resnet_deploy.bench.harness import BenchConfig, HostMemory, Target, Warmup, make_input, run_benchmark
from resnet_deploy.errors import MissingDependencyError, UsageError


def _cfg(**kw):
    base = dict(batch_sizes=(1,), shapes=((64, 64),), warmup=Warmup(iterations=1), iterations=5, duration_s=0.0,
                rounds=1, round_warmup=0, pause_s=0.0)
    base.update(kw)
    return BenchConfig(**base)


def _run(targets, cfg, clock):
    return run_benchmark(targets, cfg, clock=clock, sleep=lambda s: None)


def test_statistics_come_from_the_timed_iterations_only(fake_clock, make_target):
    # 1 warmup call (100 ms), then 5 timed calls of known length
    target, log = make_target("a", [0.100, 0.001, 0.002, 0.003, 0.004, 0.010])
    result = _run([target], _cfg(), fake_clock)
    (m,) = result.measurements
    s = m.stats
    assert s.n == 5
    assert s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(10.0)
    assert s.mean_ms == pytest.approx(4.0)
    assert s.median_ms == pytest.approx(3.0)
    assert s.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))
    assert s.throughput == pytest.approx(250.0)
    assert m.warmup_iterations == 1
    assert m.round_medians_ms == [pytest.approx(3.0)]
    runner = target.holder["runner"]
    # every infer is followed by a synchronize, and the runner is closed at the end
    infers = [e for e in log if e[0] == "infer"]
    assert runner.synced == len(infers) == 6
    assert all(log[i + 1][0] == "sync" for i, e in enumerate(log) if e[0] == "infer")
    assert runner.closed


def test_rounds_interleave_the_configurations_in_rotated_order(fake_clock, make_target):
    log: list = []
    a, _ = make_target("a", 0.001, log)
    b, _ = make_target("b", 0.002, log)
    cfg = _cfg(iterations=4, rounds=2, round_warmup=1, warmup=Warmup(iterations=2))
    result = _run([a, b], cfg, fake_clock)
    names = [e[1] for e in log if e[0] == "infer"]
    # warmup a x2, b x2; round 1: a (1 + 2), b (1 + 2); round 2 rotated: b (1 + 2), a (1 + 2)
    assert names == ["a"] * 2 + ["b"] * 2 + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    by = {m.label: m for m in result.measurements}
    assert by["a"].stats.n == 4 and by["b"].stats.n == 4
    assert by["a"].stats.median_ms == pytest.approx(1.0)
    assert by["b"].stats.median_ms == pytest.approx(2.0)
    assert len(by["a"].round_medians_ms) == 2


def test_every_batch_size_and_shape_is_a_configuration(fake_clock, make_target):
    target, log = make_target("a", 0.001)  # 1 ms per image
    cfg = _cfg(batch_sizes=(1, 4), shapes=((64, 64), (96, 96)), iterations=2)
    result = _run([target], cfg, fake_clock)
    got = {(m.batch, m.height, m.width): m.stats for m in result.measurements}
    assert set(got) == {(1, 64, 64), (4, 64, 64), (1, 96, 96), (4, 96, 96)}
    assert got[(4, 96, 96)].median_ms == pytest.approx(4.0)
    assert got[(4, 96, 96)].throughput == pytest.approx(1000.0)
    seen = {(e[2], e[3]) for e in log if e[0] == "infer"}
    assert seen == {(1, 64), (4, 64), (1, 96), (4, 96)}


def test_duration_is_a_minimum_next_to_iterations(fake_clock, make_target):
    target, _ = make_target("a", 0.25)
    result = _run([target], _cfg(iterations=1, duration_s=1.0), fake_clock)
    assert result.measurements[0].stats.n == 4  # 4 x 0.25 s reaches 1 s
    target, _ = make_target("b", 0.25)
    result = _run([target], _cfg(iterations=6, duration_s=1.0), fake_clock)
    assert result.measurements[0].stats.n == 6


def test_warmup_by_time(fake_clock, make_target):
    target, log = make_target("a", 0.1)
    result = _run([target], _cfg(warmup=Warmup(seconds=0.35), iterations=1), fake_clock)
    assert result.measurements[0].warmup_iterations == 4  # 0.1 s steps until 0.35 s passed
    assert len([e for e in log if e[0] == "infer"]) == 5


def test_high_variation_is_warned_about(fake_clock, make_target):
    steady, _ = make_target("steady", 0.010)
    noisy, _ = make_target("noisy", [0.01, 0.010, 0.010, 0.030, 0.010, 0.011])
    result = _run([steady, noisy], _cfg(), fake_clock)
    by = {m.label: m for m in result.measurements}
    assert by["steady"].warnings == []
    assert any("coefficient of variation" in w for w in by["noisy"].warnings)
    assert result.warnings and all(w.startswith("noisy") for w in result.warnings)


def test_a_target_that_cannot_load_is_skipped_with_a_note(fake_clock, make_target):
    good, _ = make_target("good", 0.001)

    def missing():
        raise MissingDependencyError("openvino", "the OpenVINO backend", "openvino")

    def broken():
        raise RuntimeError("inductor needs a C++ compiler\nmore detail")

    result = _run([good, Target("ov", "openvino", "fp32", missing), Target("tc", "torch-compile", "fp32", broken)],
                  _cfg(iterations=2), fake_clock)
    assert [m.label for m in result.measurements] == ["good"]
    assert any(n.startswith("ov: skipped") and "openvino" in n for n in result.notes)
    assert any(n.startswith("tc: skipped: RuntimeError: inductor needs a C++ compiler") for n in result.notes)


def test_shapes_a_runner_does_not_accept_are_skipped(fake_clock, make_target):
    fixed, _ = make_target("fixed", 0.001, shape=("batch", 3, 64, 64))
    result = _run([fixed], _cfg(shapes=((64, 64), (96, 96)), iterations=2), fake_clock)
    assert [(m.height, m.width) for m in result.measurements] == [(64, 64)]
    assert any("fixed b1 96x96: skipped" in n for n in result.notes)


def test_a_failing_warmup_skips_that_configuration_only(fake_clock, make_target):
    good, _ = make_target("a", 0.001, fail_batch=2)
    result = _run([good], _cfg(batch_sizes=(1, 2), iterations=2), fake_clock)
    assert [m.batch for m in result.measurements] == [1]
    assert any("a b2 64x64: skipped: warmup failed: RuntimeError: out of memory" in n for n in result.notes)


def test_nothing_measured_is_an_error(fake_clock):
    def missing():
        raise MissingDependencyError("x", "X")

    with pytest.raises(UsageError, match="nothing was measured"):
        _run([Target("x", "x", "fp32", missing)], _cfg(), fake_clock)
    with pytest.raises(UsageError, match="no targets"):
        _run([], _cfg(), fake_clock)


def test_duplicate_labels_are_rejected(fake_clock, make_target):
    a, _ = make_target("a", 0.001)
    b, _ = make_target("a", 0.001)
    with pytest.raises(UsageError, match="duplicate"):
        _run([a, b], _cfg(), fake_clock)


def test_peak_memory_is_recorded(fake_clock, make_target):
    target, _ = make_target("a", 0.001)
    m = _run([target], _cfg(iterations=1), fake_clock).measurements[0]
    assert m.peak_rss_mb is not None and m.peak_rss_mb > 1
    assert m.rss_scope == HostMemory().scope


@pytest.mark.parametrize("text, iterations, seconds", [("10", 10, 0.0), ("200ms", 0, 0.2), ("2s", 0, 2.0),
                                                        ("0.5s", 0, 0.5), (" 3 ", 3, 0.0)])
def test_warmup_parses_iterations_or_time(text, iterations, seconds):
    w = Warmup.parse(text)
    assert w.iterations == iterations
    assert w.seconds == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "-1", "2m", "1.5"])
def test_bad_warmup_is_a_usage_error(text):
    with pytest.raises(UsageError, match="warmup"):
        Warmup.parse(text)


@pytest.mark.parametrize("kw, match", [(dict(batch_sizes=(0,)), "batch"), (dict(shapes=((16, 224),)), "too small"),
                                       (dict(iterations=0, duration_s=0.0), "nothing to time"),
                                       (dict(rounds=0), "rounds"), (dict(cv_warn=0), "coefficient"),
                                       (dict(threads=0), "threads")])
def test_bad_configs_are_usage_errors(kw, match):
    with pytest.raises(UsageError, match=match):
        _cfg(**kw)


def test_round_plan_splits_iterations_exactly():
    assert _cfg(iterations=2, rounds=3).round_plan() == [(1, 0.0), (1, 0.0)]
    assert _cfg(iterations=7, rounds=3).round_plan() == [(3, 0.0), (2, 0.0), (2, 0.0)]
    assert _cfg(iterations=1, duration_s=3.0, rounds=3).round_plan() == [(1, 1.0), (0, 1.0), (0, 1.0)]


def test_inputs_follow_the_runner_dtype_and_layout(fake_clock, make_target):
    target, _ = make_target("a", 0.001)
    runner = target.make()
    x = make_input(runner, 2, 64, 96, seed=1)
    assert x.shape == (2, 3, 64, 96) and x.dtype == np.float32
    assert np.array_equal(x, make_input(runner, 2, 64, 96, seed=1))
    assert not np.array_equal(x, make_input(runner, 2, 64, 96, seed=2))
    runner.inputs = [type(runner.inputs[0])("input", np.dtype(np.uint8), ("batch", "height", "width", 3))]
    u8 = make_input(runner, 1, 64, 96)
    assert u8.shape == (1, 64, 96, 3) and u8.dtype == np.uint8


def test_cpu_meter_subtracts_this_process():
    from resnet_deploy.bench.harness import CpuMeter

    # (monotonic s, machine busy CPU s, own CPU s)
    assert CpuMeter.others((0.0, 10.0, 1.0), (2.0, 13.0, 2.5)) == (1.5, 2.0)
    assert CpuMeter.others((0.0, 10.0, 1.0), (1.0, 10.0, 2.0)) == (0.0, 1.0)  # never negative
    assert CpuMeter.others(None, (1.0, 1.0, 1.0)) == (0.0, 0.0)


def test_cpu_meter_sees_another_busy_process():
    import subprocess
    import sys

    from resnet_deploy.bench.harness import CpuMeter

    meter = CpuMeter()
    if not meter.available:
        pytest.skip("no /proc/stat on this system")
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.8: pass"])
    try:
        import time

        time.sleep(0.1)
        a = meter.sample()
        time.sleep(0.5)
        b = meter.sample()
    finally:
        child.wait()
    cpu_s, wall_s = CpuMeter.others(a, b)
    assert wall_s == pytest.approx(0.5, abs=0.2)
    assert cpu_s / wall_s > 0.5  # the spinning child took (at least most of) a core


def test_device_compute_time_from_a_runner_that_measures_it(fake_clock, make_target):
    """The CUDA path without a GPU: a runner exposing ``last_compute_ms`` (as a TensorRT runner may)."""
    target, _ = make_target("dev", [0.004] * 5)
    make = target.make

    def with_compute_time():
        runner = make()
        original = runner._infer

        def _infer(feeds):
            out = original(feeds)
            runner.last_compute_ms = 1.5
            return out

        runner._infer = _infer
        runner.last_compute_ms = None
        return runner

    target.make, target.device = with_compute_time, "cuda:0"
    (m,) = _run([target], _cfg(iterations=4), fake_clock).measurements
    assert m.stats.median_ms == pytest.approx(4.0)
    assert m.device_stats is not None and m.device_stats.n == 4
    assert m.device_stats.median_ms == pytest.approx(1.5)
    assert "CUDA events" in m.timed
    assert m.to_dict()["device_latency_ms"]["median_ms"] == pytest.approx(1.5)


def test_cuda_target_without_device_timing_says_so(fake_clock, make_target):
    target, _ = make_target("dev", 0.001)
    target.device = "cuda:0"  # a fake runner that is neither torch nor measures itself
    (m,) = _run([target], _cfg(iterations=2), fake_clock).measurements
    assert m.device_stats is None
    assert any("no device compute time" in w for w in m.warnings)
