"""Parity metrics computed right, tolerances applied per precision, report serialization."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resnet_deploy.errors import UsageError
from resnet_deploy.parity import ParityReport, compare, metrics, seeded_inputs, tolerances_for
from resnet_deploy.runtime.base import Runner, RunnerInfo, TensorSpec


class ArrayRunner(Runner):
    """Returns ``fn(batch)``: a runner whose outputs the test controls exactly."""

    def __init__(self, fn, precision="fp32"):
        self.fn = fn
        self.inputs = [TensorSpec("input", np.dtype(np.float32), ("batch", 3, "h", "w"))]
        self.outputs = [TensorSpec("logits", np.dtype(np.float32), ("batch", 4))]
        self.info = RunnerInfo(backend="fake", precision=precision)

    def _infer(self, feeds):
        return {"logits": self.fn(feeds["input"])}


def logits(x):
    # 4 "classes" from per-image statistics: different images give different outputs
    m = x.mean(axis=(1, 2, 3))
    s = x.std(axis=(1, 2, 3))
    return np.stack([10 + m, 10 + 2 * s, 10 - m, 10 + m * s], axis=1).astype(np.float32)


def test_identical_runners_pass_with_exact_metrics():
    inputs = seeded_inputs([(2, 3, 8, 8), (3, 3, 9, 7)])
    report = compare(ArrayRunner(logits), ArrayRunner(logits), inputs)
    assert report.passed
    for m in report.results:
        assert m.max_abs == 0 and m.top1 == 1 and m.top5 == 1
        assert m.cosine == pytest.approx(1.0) and m.centered_cosine == pytest.approx(1.0)


def test_known_error_is_measured_exactly():
    ref = np.array([[1.0, 2.0, -4.0], [0.5, 0.0, 3.0]])
    cand = ref + np.array([[0.1, 0.0, 0.0], [0.0, 0.002, -0.3]])
    m = metrics(ref, cand, ref.mean(axis=0), tolerances_for("fp32"), shape=(2, 3), output="y")
    assert m.max_abs == pytest.approx(0.3)
    assert m.mean_abs == pytest.approx((0.1 + 0.002 + 0.3) / 6)
    assert m.max_abs_rel == pytest.approx(0.3 / 4.0)
    # rel floor = 1e-3 * 4 = 0.004: the zero reference entry divides by 0.004, not 0
    assert m.max_rel == pytest.approx(max(0.1 / 1.0, 0.002 / 0.004, 0.3 / 3.0))
    cos0 = np.dot(ref[0], cand[0]) / np.linalg.norm(ref[0]) / np.linalg.norm(cand[0])
    cos1 = np.dot(ref[1], cand[1]) / np.linalg.norm(ref[1]) / np.linalg.norm(cand[1])
    assert m.cosine == pytest.approx(min(cos0, cos1))
    assert not m.passed and any("max abs" in f for f in m.failures)


def test_centering_exposes_what_raw_cosine_hides():
    """Outputs dominated by a shared offset: raw cosine ~1 even when per-image differences are wrong."""
    rng = np.random.default_rng(0)
    offset = np.full(100, 50.0)
    ref = offset + rng.standard_normal((8, 100))
    cand = offset + rng.standard_normal((8, 100))  # the per-image part is unrelated noise
    m = metrics(ref, cand, ref.mean(axis=0), tolerances_for("int8"), shape=(8, 100), output="y")
    assert m.cosine > 0.99
    assert m.centered_cosine < 0.5
    assert not m.passed and any("centered cosine" in f for f in m.failures)


def test_top1_and_top5_agreement():
    ref = np.array([[9.0, 1, 2, 3, 4, 5, 6], [1.0, 9, 2, 3, 4, 5, 6]])
    cand = np.array([[1.0, 9, 2, 3, 4, 5, 6], [1.0, 9, 2, 3, 4, 5, 6]])
    m = metrics(ref, cand, None, tolerances_for("fp32"), shape=(2, 7), output="y")
    assert m.top1 == 0.5  # second row agrees
    assert m.top5 == 0.5  # ref's top-1 (index 0) is last in cand's first row, outside its top 5
    assert m.centered_cosine is None


def test_tolerances_depend_on_precision():
    inputs = seeded_inputs([(4, 3, 8, 8)])
    noisy = ArrayRunner(lambda x: logits(x) + np.float32(5e-3), precision="fp16")  # 4.5e-4 of the max
    assert compare(ArrayRunner(logits), noisy, inputs).passed  # within FP16 tolerances
    assert not compare(ArrayRunner(logits), noisy, inputs, precision="fp32").passed
    with pytest.raises(UsageError, match="no tolerances for precision 'fp8'"):
        tolerances_for("fp8")
    assert tolerances_for("int8", min_top1=0.1).min_top1 == 0.1


def test_report_serializes_and_renders():
    report = compare(ArrayRunner(logits), ArrayRunner(logits), seeded_inputs([(2, 3, 8, 8)]))
    d = json.loads(report.to_json())
    assert d["passed"] is True and d["precision"] == "fp32" and d["results"][0]["shape"] == [2, 3, 8, 8]
    assert d["candidate"]["backend"] == "fake"
    assert "PASSED" in report.table() and "2x3x8x8" in report.table()
    assert isinstance(report, ParityReport)


def test_seeded_inputs_are_varied_and_reproducible():
    a, = seeded_inputs([(4, 3, 16, 16)], seed=1)
    b, = seeded_inputs([(4, 3, 16, 16)], seed=1)
    assert np.array_equal(a, b) and a.dtype == np.float32
    means = a.mean(axis=(1, 2, 3))
    assert np.ptp(means) > 0.1  # images differ from one another
