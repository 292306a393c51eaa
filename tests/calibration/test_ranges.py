"""Activation ranges: the histogram, TensorRT's entropy (KL) threshold, percentile, and collection
through a real ONNX graph, where entropy and percentile must clip a skewed distribution that
minmax does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resnet_deploy.calibration.ranges import (MethodConfig, TensorStats, activation_tensors, calibrate,
                                              compute_ranges, entropy_amax, percentile_amax)
from resnet_deploy.errors import UsageError


def reference_entropy_amax(hist, hist_max, k=128):
    """The textbook loop (TensorRT's algorithm as in NVIDIA's pytorch-quantization), one candidate
    at a time; the library evaluates all candidates at once from prefix sums."""
    hist = np.asarray(hist, dtype=np.float64).copy()
    n = len(hist)
    hist[0] = hist[1]
    best_i, best_kl = n, math.inf
    for i in range(k, n + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        groups = (np.arange(i) * k) // i
        nz = hist[:i] > 0
        sums = np.bincount(groups, weights=hist[:i], minlength=k)
        counts = np.bincount(groups[nz], minlength=k)
        q = np.where(nz, sums[groups] / np.maximum(counts[groups], 1), 0.0)
        pos = p > 0
        if np.any(pos & (q <= 0)):
            kl = math.inf
        else:
            ps, qs = p[pos] / p.sum(), q[pos] / q.sum()
            kl = float(np.sum(ps * np.log(ps / qs)))
        if kl <= best_kl:
            best_kl, best_i = kl, i
    return best_i * hist_max / n


def skewed(rng, n=400_000, outliers=25):
    """ReLU-like activations: mostly small, a long exponential tail and ``outliers`` values of 60."""
    x = np.maximum(rng.standard_normal(n), 0) + rng.exponential(0.3, n) * (rng.random(n) < 0.2)
    x[:outliers] = 60.0
    return x.astype(np.float32)


@pytest.mark.parametrize("dist", ["skewed", "gauss", "lognormal", "sparse"])
def test_entropy_matches_the_reference_loop(dist):
    rng = np.random.default_rng(1)
    x = {"skewed": lambda: skewed(rng, 100_000), "gauss": lambda: rng.standard_normal(100_000),
         "lognormal": lambda: rng.lognormal(0, 1, 100_000),
         "sparse": lambda: np.concatenate([rng.standard_normal(500) * 0.1, [5.0]])}[dist]()
    s = TensorStats("t")
    s.update(np.asarray(x, np.float32))
    assert entropy_amax(s.hist, s.hist_max) == pytest.approx(reference_entropy_amax(s.hist, s.hist_max), rel=1e-9)


def test_entropy_and_percentile_clip_a_skewed_distribution_that_minmax_keeps():
    rng = np.random.default_rng(0)
    s = TensorStats("relu_out")
    for chunk in np.array_split(skewed(rng), 8):
        s.update(chunk)
    r = {m: compute_ranges({"t": s}, MethodConfig(method=m))["t"] for m in ("minmax", "entropy", "percentile")}
    assert r["minmax"].amax == pytest.approx(60.0)
    # the outliers are 25 of 400k values: entropy and percentile both clip them away
    assert r["entropy"].amax < 0.2 * r["minmax"].amax
    assert r["percentile"].amax < 0.2 * r["minmax"].amax
    assert r["entropy"].amax != pytest.approx(r["percentile"].amax, rel=1e-3)
    # percentile 99.99 of |x| is the value 40 samples from the top: within one bin width of it
    width = s.hist_max / s.num_bins
    exact = np.quantile(np.abs(skewed(np.random.default_rng(0))), 0.9999)
    assert abs(r["percentile"].amax - exact) <= 2 * width
    # symmetric int8 scale and asymmetric uint8 parameters follow from the clipped range
    assert r["entropy"].int8_scale == pytest.approx(r["entropy"].amax / 127)
    scale, zp = r["entropy"].uint8_params()
    assert zp == 0 and scale == pytest.approx(r["entropy"].amax / 255)


def test_percentile_on_a_known_histogram():
    hist = np.zeros(2048, np.int64)
    hist[:1000] = 10  # 10_000 values spread uniformly over the first 1000 bins
    hist[2047] = 1
    assert percentile_amax(hist, 2048.0, 99.99) == 1000.0
    assert percentile_amax(hist, 2048.0, 100.0) == 2048.0
    with pytest.raises(UsageError, match="percentile"):
        percentile_amax(hist, 2048.0, 0)


def test_histogram_range_doubling_is_exact():
    rng = np.random.default_rng(3)
    parts = [rng.uniform(0, 1, 5000), rng.uniform(0, 3, 5000), rng.uniform(-7.5, 7.5, 5000)]
    s = TensorStats("t", num_bins=256)
    for p in parts:
        s.update(p.astype(np.float32))
    assert s.hist_max >= 7.5 and s.count == 15000 and s.hist.sum() == 15000
    allx = np.abs(np.concatenate(parts)).astype(np.float32)
    expected, _ = np.histogram(allx, bins=256, range=(0, s.hist_max))
    assert np.abs(s.hist - expected).sum() <= 4  # only float rounding at bin edges may differ
    assert s.min == pytest.approx(-7.5, abs=0.01) and s.max == pytest.approx(7.5, abs=0.01)


def test_method_validation():
    with pytest.raises(UsageError, match="at least 2048 bins"):
        MethodConfig(method="entropy", num_bins=128).validate()
    with pytest.raises(UsageError, match="choose one of: minmax, entropy, percentile"):
        MethodConfig(method="kl").validate()
    MethodConfig(method="minmax", num_bins=128).validate()


def _skew_graph(path):
    """input -> Relu -> Mul(0.5) -> output: two activations besides the input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"]), helper.make_node("Mul", ["r", "half"], ["out"])], "skew",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_collection_through_onnxruntime(tmp_path):
    import onnx

    path = _skew_graph(tmp_path / "skew.onnx")
    assert activation_tensors(onnx.load(str(path))) == ["input", "r", "out"]
    rng = np.random.default_rng(0)
    # 25 outliers among 393k values (0.006%): beyond the 99.99th percentile
    batches = [skewed(rng, 8 * 3 * 64 * 64, outliers=25 if i == 1 else 0).reshape(8, 3, 64, 64) - 0.1
               for i in range(4)]
    got = {m: calibrate(path, batches, MethodConfig(method=m)) for m in ("minmax", "entropy", "percentile")}
    mm = got["minmax"]
    assert mm.num_images == 32 and mm.num_batches == 4 and mm.batch_shape == [8, 3, 64, 64]
    assert mm.ranges["r"].min == 0.0 and mm.ranges["r"].amax == pytest.approx(59.9)
    assert mm.ranges["out"].amax == pytest.approx(0.5 * 59.9)
    assert mm.ranges["input"].min == pytest.approx(-0.1)
    for m in ("entropy", "percentile"):
        assert got[m].ranges["r"].amax < 0.2 * mm.ranges["r"].amax
        # ranges scale with the tensor: out = 0.5 * r, so its threshold is half (to a bin)
        assert got[m].ranges["out"].amax == pytest.approx(0.5 * got[m].ranges["r"].amax, rel=0.02)
        # the network input keeps its full range whatever the method (clipping it cuts real pixels)
        assert got[m].ranges["input"].amax == mm.ranges["input"].amax
