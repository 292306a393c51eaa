"""Activation ranges: run the FP32 graph on ONNX Runtime with every activation exposed, keep each
tensor's min, max and a histogram of ``|x|``, then turn them into a clipping threshold ``amax``.

Methods (``amax`` is the magnitude beyond which values are clipped):

* ``minmax``: the largest magnitude seen. Nothing is clipped; rare outliers stretch the scale.
* ``entropy``: TensorRT's entropy calibration (``EntropyCalibration2``): among thresholds
  ``i * bin_width`` for ``i`` in ``[num_quantized_bins, num_bins]``, the one whose 128-level
  quantization of the ``|x|`` histogram loses the least information (smallest KL divergence).
  Needs a fine histogram: ``num_bins >= 2048`` (with 128 bins and 128 levels every candidate is the
  max, which is why ``quantize_static(calibrate_method=Entropy)`` with ONNX Runtime's defaults
  gives the MinMax ranges). As in NVIDIA's pytorch-quantization, the first bin (exact zeros after
  ReLU) is replaced by its neighbour so the zeros do not dominate the divergence.
* ``percentile``: the ``percentile``-th percentile of ``|x|`` (default 99.99).
* ``mse``: the threshold that minimizes the mean squared quantization error of the observed ``|x|``
  histogram with 127 levels: rounding (``step^2 / 12`` inside the range, ``x^2`` for values that
  round to zero) plus clipping (``(x - amax)^2`` beyond it), evaluated for every candidate bin edge.

``auto`` (the stage's default, :mod:`.select`) derives all four from one collection of histograms
and keeps the one whose Q/DQ model comes closest to FP32 on held-out images.

The histogram keeps a fixed number of bins over ``[0, hist_max]``; when a batch exceeds
``hist_max`` the range doubles and pairs of bins merge, so re-binning is exact (no interpolation)
and the result does not depend on the batch order more than one halving of resolution.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import UsageError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile", "mse")
#: ``--calib-method`` choices: a method, or ``auto`` (every method scored on held-out images).
METHOD_CHOICES = ("auto",) + METHODS
DEFAULT_PERCENTILE = 99.99
DEFAULT_NUM_BINS = 2048
MIN_NUM_BINS = 2048
#: int8 has 128 levels per sign (0..127), the quantized histogram TensorRT compares against.
NUM_QUANTIZED_BINS = 128


@dataclass
class TensorStats:
    """Running statistics of one tensor over the calibration batches."""

    name: str
    num_bins: int = DEFAULT_NUM_BINS
    min: float = math.inf
    max: float = -math.inf
    hist_max: float = 0.0
    hist: np.ndarray | None = None
    count: int = 0

    def update(self, x: np.ndarray, histogram: bool = True) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)):
            raise UsageError(f"tensor '{self.name}' has NaN or infinite values during calibration: is the input "
                             "prepared correctly (float32, normalized)?")
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += int(x.size)
        if not histogram:
            return
        amax = max(abs(lo), abs(hi))
        if self.hist is None:
            self.hist = np.zeros(self.num_bins, dtype=np.int64)
            self.hist_max = amax if amax > 0 else 1e-8
        while amax > self.hist_max:
            self._double()
        a = np.abs(x, dtype=np.float32).ravel()
        idx = (a * np.float32(self.num_bins / self.hist_max)).astype(np.int64)
        np.minimum(idx, self.num_bins - 1, out=idx)
        self.hist += np.bincount(idx, minlength=self.num_bins)

    def _double(self) -> None:
        """Double the histogram range: bins 2k and 2k+1 merge into bin k (exact)."""
        h = self.hist
        merged = h.reshape(-1, 2).sum(axis=1)
        self.hist = np.concatenate([merged, np.zeros(self.num_bins - len(merged), dtype=np.int64)])
        self.hist_max *= 2.0

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))


def entropy_amax(hist: np.ndarray, hist_max: float, num_quantized_bins: int = NUM_QUANTIZED_BINS,
                 zero_bin_fix: bool = True) -> float:
    """TensorRT's entropy calibration on a histogram of ``|x|`` over ``[0, hist_max]``.

    For each candidate ``i`` (bins kept), P is the first ``i`` bins with the tail folded into the
    last one; Q quantizes the first ``i`` bins into ``num_quantized_bins`` groups and spreads each
    group's mass evenly over its non-empty bins. The threshold is the upper edge of the bin ``i``
    with the smallest KL(P || Q) (the last one on ties).

    All candidates are evaluated at once from prefix sums: with ``h`` the histogram, ``T`` its total,
    ``c_i`` the mass of the first ``i`` bins and ``S_k``/``n_k`` the mass and non-empty bins of group
    ``k``, ``T * KL_i = sum h log h - c_i log T - sum_k S_k log(S_k / n_k) + c_i log c_i``, plus the
    correction of the last bin, which also holds the tail.
    """
    h = np.asarray(hist, dtype=np.float64).copy()
    n, k_bins = len(h), int(num_quantized_bins)
    if n < k_bins:
        raise UsageError(f"entropy calibration needs at least {k_bins} histogram bins, got {n}")
    if zero_bin_fix and n > 1:
        h[0] = h[1]
    total = h.sum()
    if total <= 0:
        return float(hist_max)
    nz = h > 0
    hlogh = np.where(nz, h * np.log(np.where(nz, h, 1.0)), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(h)])  # cum[i] = sum(h[:i])
    cnz = np.concatenate([[0], np.cumsum(nz)])
    chl = np.concatenate([[0.0], np.cumsum(hlogh)])
    cand = np.arange(k_bins, n + 1)  # bins kept
    starts = (np.arange(k_bins + 1)[None, :] * cand[:, None] + k_bins - 1) // k_bins  # group k: [start_k, start_k+1)
    sums = cum[starts[:, 1:]] - cum[starts[:, :-1]]
    counts = cnz[starts[:, 1:]] - cnz[starts[:, :-1]]
    ok = sums > 0
    group_term = np.where(ok, sums * np.log(np.where(ok, sums, 1.0) / np.maximum(counts, 1)), 0.0).sum(axis=1)
    ci = cum[cand]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ci = np.log(np.where(ci > 0, ci, 1.0))
        kl = chl[cand] - ci * math.log(total) - group_term + ci * log_ci
        # the last kept bin also holds the tail: replace its term
        last = h[cand - 1]
        tail = total - ci
        q_last = np.where(counts[:, -1] > 0, sums[:, -1] / np.maximum(counts[:, -1], 1), 0.0)
        log_q = np.log(np.where(q_last > 0, q_last, 1.0)) - log_ci  # log of the normalised q of the last bin
        old = np.where(last > 0, last * (np.log(np.where(last > 0, last, 1.0)) - math.log(total) - log_q), 0.0)
        p_new = last + tail
        new = np.where(p_new > 0, p_new * (np.log(np.where(p_new > 0, p_new, 1.0)) - math.log(total) - log_q), 0.0)
        kl = (kl - old + new) / total
        kl = np.where((last <= 0) & (tail > 0), np.inf, kl)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(cand[best] * hist_max / n)


def mse_amax(hist: np.ndarray, hist_max: float, levels: int = NUM_QUANTIZED_BINS - 1,
             min_bins: int = NUM_QUANTIZED_BINS) -> float:
    """The clipping threshold with the smallest mean squared quantization error of ``|x|``.

    Candidates are the bin edges ``i * bin_width`` for ``i`` in ``[min_bins, num_bins]``. With step
    ``s = t / levels``, a value ``x`` (taken at its bin centre) costs ``x^2`` when it rounds to zero
    (``x < s / 2``), ``s^2 / 12`` (uniform rounding noise) up to ``t``, and ``(x - t)^2`` beyond it.
    """
    h = np.asarray(hist, dtype=np.float64)
    n = len(h)
    total = h.sum()
    if total <= 0 or n < 2:
        return float(hist_max)
    width = hist_max / n
    centers = (np.arange(n) + 0.5) * width
    cand = np.arange(min(int(min_bins), n), n + 1)
    t = cand * width
    step = t / float(levels)
    # per candidate: split the bins into "rounds to zero", "in range" and "clipped" with prefix sums
    cum = np.concatenate([[0.0], np.cumsum(h)])
    cum_x2 = np.concatenate([[0.0], np.cumsum(h * centers ** 2)])
    cum_x = np.concatenate([[0.0], np.cumsum(h * centers)])
    zero_end = np.clip(np.searchsorted(centers, step / 2.0, side="left"), 0, n)  # bins [0, zero_end) round to 0
    clip_start = np.minimum(cand, n)  # bins [cand, n) are clipped
    zero_err = cum_x2[zero_end]
    in_count = cum[clip_start] - cum[np.minimum(zero_end, clip_start)]
    in_err = in_count * step ** 2 / 12.0
    c_n, c_x, c_x2 = cum[n] - cum[clip_start], cum_x[n] - cum_x[clip_start], cum_x2[n] - cum_x2[clip_start]
    clip_err = c_x2 - 2.0 * t * c_x + t ** 2 * c_n
    err = (zero_err + in_err + clip_err) / total
    return float(t[int(np.argmin(err))])


def percentile_amax(hist: np.ndarray, hist_max: float, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The upper edge of the bin where the cumulative share of ``|x|`` reaches ``percentile``."""
    if not 0 < percentile <= 100:
        raise UsageError(f"percentile must be in (0, 100], got {percentile}")
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return float(hist_max)
    cdf = np.cumsum(hist) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12, side="left"))
    idx = min(idx, len(hist) - 1)
    return float((idx + 1) * hist_max / len(hist))


@dataclass(frozen=True)
class TensorRange:
    """The calibrated range of one tensor: observed ``min``/``max`` and the clipping ``amax``."""

    min: float
    max: float
    amax: float

    @property
    def rmin(self) -> float:
        """The asymmetric lower bound after clipping (for uint8 activations)."""
        return max(self.min, -self.amax)

    @property
    def rmax(self) -> float:
        return min(self.max, self.amax)

    @property
    def int8_scale(self) -> float:
        """Symmetric int8 scale (zero point 0), what TensorRT uses: ``amax / 127``."""
        return max(self.amax, 1e-12) / 127.0

    def uint8_params(self) -> tuple[float, int]:
        """Asymmetric uint8 (scale, zero point) as ONNX Runtime computes them: the range is widened
        to include 0, then mapped onto 0..255."""
        lo, hi = min(self.rmin, 0.0), max(self.rmax, 0.0)
        if hi - lo <= 0:
            return 1.0, 0
        scale = (hi - lo) / 255.0
        zp = int(round(-lo / scale))
        return float(scale), int(min(max(zp, 0), 255))

    def to_dict(self) -> dict[str, Any]:
        scale, zp = self.uint8_params()
        return {"min": self.min, "max": self.max, "amax": self.amax,
                "int8": {"scale": self.int8_scale, "zero_point": 0},
                "uint8": {"scale": scale, "zero_point": zp, "rmin": self.rmin, "rmax": self.rmax}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorRange":
        return cls(min=float(d["min"]), max=float(d["max"]), amax=float(d["amax"]))


@dataclass(frozen=True)
class MethodConfig:
    """How stats turn into ranges."""

    method: str = "entropy"
    percentile: float = DEFAULT_PERCENTILE
    num_bins: int = DEFAULT_NUM_BINS
    num_quantized_bins: int = NUM_QUANTIZED_BINS

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method '{self.method}'; choose one of: {', '.join(METHODS)}")
        if not 0 < self.percentile <= 100:
            raise UsageError(f"--percentile must be in (0, 100], got {self.percentile}")
        if self.method == "entropy" and self.num_bins < MIN_NUM_BINS:
            raise UsageError(f"entropy calibration needs a histogram of at least {MIN_NUM_BINS} bins, got "
                             f"{self.num_bins}: with fewer, every threshold is the max and it equals minmax")
        if self.num_bins < 2 or self.num_bins & (self.num_bins - 1):
            raise UsageError(f"num_bins must be a power of two >= 2, got {self.num_bins}")

    @property
    def needs_histogram(self) -> bool:
        return self.method != "minmax"

    def with_method(self, method: str) -> "MethodConfig":
        return MethodConfig(method=method, percentile=self.percentile, num_bins=self.num_bins,
                            num_quantized_bins=self.num_quantized_bins)

    def params(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("method")
        if self.method != "percentile":
            d.pop("percentile")
        if self.method == "minmax":
            d.pop("num_bins")
            d.pop("num_quantized_bins")
        return d


def amax_of(stats: TensorStats, cfg: MethodConfig) -> float:
    if cfg.method == "minmax" or stats.hist is None:
        return stats.absmax
    if cfg.method == "percentile":
        return min(percentile_amax(stats.hist, stats.hist_max, cfg.percentile), stats.absmax)
    if cfg.method == "mse":
        return min(mse_amax(stats.hist, stats.hist_max, cfg.num_quantized_bins - 1, cfg.num_quantized_bins),
                   stats.absmax)
    return min(entropy_amax(stats.hist, stats.hist_max, cfg.num_quantized_bins), stats.absmax)


def compute_ranges(stats: dict[str, TensorStats], cfg: MethodConfig,
                   full_range: Sequence[str] = ()) -> dict[str, TensorRange]:
    """Ranges of every tensor with statistics; tensors in ``full_range`` keep their observed range
    whatever the method (the network input: bounded by the preprocessing, and its histogram is not
    bell-shaped, so clipping it only cuts off the brightest pixels)."""
    cfg.validate()
    keep = set(full_range)
    out = {}
    for name, s in stats.items():
        if s.count == 0:
            continue
        amax = s.absmax if name in keep else amax_of(s, cfg)
        out[name] = TensorRange(min=float(s.min), max=float(s.max), amax=float(amax))
    return out


# -- collection on ONNX Runtime -----------------------------------------------------------------

_FLOAT_TYPES = (1,)  # onnx.TensorProto.FLOAT


def activation_tensors(model: Any) -> list[str]:
    """Names of the float activations of ``model`` (graph inputs and node outputs, not weights)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        types[v.name] = v.type.tensor_type.elem_type
    initializers = {i.name for i in model.graph.initializer}
    names: list[str] = []
    for v in model.graph.input:
        if v.name not in initializers and types.get(v.name) in _FLOAT_TYPES:
            names.append(v.name)
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        for out in node.output:
            if out and types.get(out) in _FLOAT_TYPES and out not in names:
                names.append(out)
    return names


def augmented_model(model: Any, tensors: Sequence[str]) -> Any:
    """A copy of ``model`` with every tensor in ``tensors`` added as a graph output."""
    import onnx

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    for name in tensors:
        if name not in existing:
            aug.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return aug


class RangeCollector:
    """Runs batches through an augmented copy of an ONNX model and keeps per-tensor statistics."""

    def __init__(self, onnx_path: str | os.PathLike[str], *, tensors: Sequence[str] | None = None,
                 histogram: bool = True, num_bins: int = DEFAULT_NUM_BINS, threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(os.fspath(onnx_path))
        self.tensors = list(tensors) if tensors is not None else activation_tensors(model)
        self.input_name = next(i.name for i in model.graph.input
                               if i.name not in {t.name for t in model.graph.initializer})
        self.histogram = histogram
        self.stats = {name: TensorStats(name, num_bins=num_bins) for name in self.tensors}
        aug = augmented_model(model, self.tensors)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        with tempfile.TemporaryDirectory(prefix="resnet-deploy-calib.") as tmp:
            path = Path(tmp) / "augmented.onnx"
            onnx.save_model(aug, str(path))
            try:
                self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UsageError(f"onnxruntime cannot run '{onnx_path}' for calibration: {first}") from exc
        self._outputs = [o.name for o in self.session.get_outputs() if o.name in self.stats]
        self.batches = 0
        self.images = 0

    def update(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            outs = self.session.run(self._outputs, {self.input_name: batch})
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"calibration batch of shape {'x'.join(map(str, batch.shape))} failed: {first}") from exc
        for name, value in zip(self._outputs, outs):
            self.stats[name].update(value, histogram=self.histogram)
        self.batches += 1
        self.images += int(batch.shape[0])


@dataclass
class Calibration:
    """The result of one calibration: ranges per tensor and what produced them."""

    ranges: dict[str, TensorRange]
    method: MethodConfig
    num_images: int
    num_batches: int
    batch_shape: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Statistics:
    """What one pass over the calibration batches collected: per-tensor stats, from which every
    method's ranges follow without running the model again."""

    stats: dict[str, TensorStats]
    input_name: str
    num_images: int
    num_batches: int
    batch_shape: list[int]

    def ranges(self, method: MethodConfig) -> dict[str, TensorRange]:
        return compute_ranges(self.stats, method, full_range=[self.input_name])


def collect(onnx_path: str | os.PathLike[str], batches: Iterable[np.ndarray], *, histogram: bool = True,
            num_bins: int = DEFAULT_NUM_BINS, total: int | None = None, tensors: Sequence[str] | None = None,
            threads: int | None = None, desc: str = "calibrating") -> Statistics:
    """One pass of ``batches`` through ``onnx_path`` (a pre-processed FP32 model): min, max and, with
    ``histogram``, a histogram of ``|x|`` for every float activation."""
    from ..progress import track

    collector = RangeCollector(onnx_path, tensors=tensors, histogram=histogram, num_bins=num_bins, threads=threads)
    shape: list[int] = []
    for batch in track(batches, total=total, desc=desc, unit="batch"):
        if not shape:
            shape = [int(d) for d in np.shape(batch)]
        collector.update(batch)
    if collector.batches == 0:
        raise UsageError("calibration got no batches")
    return Statistics(stats=collector.stats, input_name=collector.input_name, num_images=collector.images,
                      num_batches=collector.batches, batch_shape=shape)


def calibrate(onnx_path: str | os.PathLike[str], batches: Iterable[np.ndarray], method: MethodConfig, *,
              total: int | None = None, tensors: Sequence[str] | None = None,
              threads: int | None = None) -> Calibration:
    """Collect statistics of ``onnx_path`` (a pre-processed FP32 model) over ``batches`` and compute the
    ranges with ``method``."""
    method.validate()
    st = collect(onnx_path, batches, histogram=method.needs_histogram, num_bins=method.num_bins, total=total,
                 tensors=tensors, threads=threads, desc=f"calibrating ({method.method})")
    ranges = st.ranges(method)
    log.info("calibrated %d tensors on %d images (%d batches of %s)", len(ranges), st.num_images,
             st.num_batches, "x".join(map(str, st.batch_shape)))
    return Calibration(ranges=ranges, method=method, num_images=st.num_images, num_batches=st.num_batches,
                       batch_shape=st.batch_shape)
