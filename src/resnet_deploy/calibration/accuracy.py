"""Choices made by measurement on the held-out images: which calibration method (``auto``), which
layers hurt most when quantized (sensitivity), and which to keep out of INT8 (mixed precision).

Every choice scores a Q/DQ model by its **logit error** against the FP32 model on the held-out
images (never calibrated on): the mean absolute difference of the logits, with the centered cosine
(rows minus the mean FP32 row, averaged over the images) beside it. Lower error wins; the centered
cosine breaks ties.

    scorer = HeldoutScorer(fp32_onnx, heldout_batches)
    choice = choose_method(prepared, stats, MethodConfig(), ["tensorrt"], scorer)
    choice.chosen, choice.scores["mse"]["mean_abs"]
    sens = sensitivity(onnx.load("m.int8.tensorrt.onnx"), scorer)      # most sensitive first
    kept, model = mixed_precision(int8_model, sens, scorer, target_error=0.01, dtype="float16")
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UsageError
from .qdq import WEIGHTED_OPS, float_layers, quantize, quantized_layers
from .ranges import METHODS, MethodConfig, Statistics, TensorRange

log = logging.getLogger(__name__)

#: What the scores rank by.
METRIC = "mean |logit - FP32 logit| on the held-out images (lower is better); centered cosine breaks ties"


def _session(model: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return ort.InferenceSession(os.fspath(data) if isinstance(data, os.PathLike) else data, sess_options=so,
                                providers=["CPUExecutionProvider"])


def _run(model: Any, batches: Sequence[np.ndarray]) -> np.ndarray:
    sess = _session(model)
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: np.ascontiguousarray(b, dtype=np.float32)})[0] for b in batches]
    return np.concatenate(out).reshape(sum(len(b) for b in batches), -1).astype(np.float64)


def logit_error(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """``mean_abs`` (mean |cand - ref|), ``centered_cosine`` (mean over rows of the cosine of the rows
    minus the mean reference row), ``top1`` agreement."""
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    cand = np.asarray(cand, dtype=np.float64).reshape(len(cand), -1)
    center = ref.mean(axis=0, keepdims=True)
    a, b = ref - center, cand - center
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, (a * b).sum(axis=1) / np.maximum(den, 1e-30), 1.0)
    return {"mean_abs": float(np.abs(cand - ref).mean()), "centered_cosine": float(cos.mean()),
            "top1": float(np.mean(ref.argmax(1) == cand.argmax(1)))}


class HeldoutScorer:
    """The FP32 logits of the held-out images, computed once; ``score(model)`` compares a candidate."""

    def __init__(self, fp32_onnx: str | os.PathLike[str] | Any, batches: Sequence[np.ndarray]) -> None:
        self.batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
        if sum(len(b) for b in self.batches) < 2:
            raise UsageError("scoring INT8 choices needs at least 2 held-out images (--holdout)")
        self.reference = _run(fp32_onnx, self.batches)
        self.evaluations = 0

    @property
    def num_images(self) -> int:
        return len(self.reference)

    def score(self, model: Any) -> dict[str, float]:
        """Logit error of ``model`` (a path or an ``onnx.ModelProto``) on the held-out images."""
        self.evaluations += 1
        return logit_error(self.reference, _run(model, self.batches))


def _rank_key(score: dict[str, float]) -> tuple[float, float]:
    return (round(score["mean_abs"], 12), -score["centered_cosine"])


# -- auto: the calibration method by measurement --------------------------------------------------

@dataclass
class MethodChoice:
    """The outcome of ``--calib-method auto``: every candidate's score and the one kept."""

    chosen: str  # the method of ``ranges``: the tensorrt flavour's choice when it was scored (the TensorRT table)
    ranges: dict[str, TensorRange]
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> {mean_abs, centered_cosine, ...}
    targets: list[str] = field(default_factory=list)
    scored_images: int = 0
    per_target: dict[str, str] = field(default_factory=dict)  # flavour -> the method best for it
    target_ranges: dict[str, dict[str, TensorRange]] = field(default_factory=dict)  # flavour -> its ranges

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "per_target": self.per_target, "metric": METRIC, "targets": self.targets,
                "scored_images": self.scored_images, "scores": self.scores}


def choose_method(prepared: str | os.PathLike[str], stats: Statistics, method: MethodConfig, targets: Sequence[str],
                  scorer: HeldoutScorer, *, candidates: Sequence[str] = METHODS, quantize_fc: bool = False,
                  quantizer: Callable[..., Any] = quantize) -> MethodChoice:
    """Ranges of every method in ``candidates`` from the one collection ``stats``; each set is
    quantized for every target and scored on the held-out images; for each target the lowest error
    wins (``per_target``). ``chosen``/``ranges`` are the tensorrt flavour's choice when it is among
    the targets (they make the TensorRT calibration table), else the first target's."""
    if not candidates:
        raise UsageError("auto calibration needs at least one candidate method")
    scores: dict[str, dict[str, Any]] = {}
    all_ranges: dict[str, dict[str, TensorRange]] = {}
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-auto.") as tmp:
        for m in candidates:
            ranges = stats.ranges(method.with_method(m))
            all_ranges[m] = ranges
            per_target = {}
            for t in targets:
                path = Path(tmp) / f"{m}.{t}.onnx"
                quantizer(prepared, path, t, ranges, quantize_fc=quantize_fc)
                per_target[t] = scorer.score(path)
            scores[m] = {"mean_abs": float(np.mean([s["mean_abs"] for s in per_target.values()])),
                         "centered_cosine": float(np.mean([s["centered_cosine"] for s in per_target.values()])),
                         "top1": float(np.mean([s["top1"] for s in per_target.values()])),
                         "per_target": per_target}
            log.info("auto calibration: %s scores %.5f (centered cosine %.5f)", m, scores[m]["mean_abs"],
                     scores[m]["centered_cosine"])
    # each flavour is its own file: it gets the method best for it
    per_target = {t: min(candidates, key=lambda m: _rank_key(scores[m]["per_target"][t])) for t in targets}
    chosen = per_target["tensorrt"] if "tensorrt" in per_target else per_target[targets[0]]
    return MethodChoice(chosen=chosen, ranges=all_ranges[chosen], scores=scores, targets=list(targets),
                        scored_images=scorer.num_images, per_target=per_target,
                        target_ranges={t: all_ranges[m] for t, m in per_target.items()})


# -- sensitivity and mixed precision --------------------------------------------------------------

@dataclass
class Sensitivity:
    """Per quantized layer: the held-out error with only that layer unquantized."""

    int8_error: dict[str, float]  # the full INT8 model
    layers: list[dict[str, Any]]  # most sensitive first: {layer, module, op, mean_abs, centered_cosine, gain}
    dtype: str = "float32"
    num_images: int = 0
    quantized_inputs: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"metric": METRIC, "int8_error": self.int8_error, "float_dtype": self.dtype,
                "inputs": "quantized (the producer's Q/DQ)" if self.quantized_inputs else "float",
                "scored_images": self.num_images, "layers": self.layers}

    def order(self) -> list[str]:
        return [r["layer"] for r in self.layers]

    def table(self, limit: int | None = None) -> str:
        rows = self.layers if limit is None else self.layers[:limit]
        width = max([len("layer")] + [len(_label(r)) for r in rows])
        lines = [f"INT8 error {self.int8_error['mean_abs']:.5f} (centered cosine "
                 f"{self.int8_error['centered_cosine']:.5f}); with one layer in {self.dtype}, most sensitive first:",
                 f"{'#':>3}  {'layer':<{width}}  {'op':<6} {'error':>9} {'gain':>9} {'cent.cos':>9}"]
        for i, r in enumerate(rows, 1):
            lines.append(f"{i:>3}  {_label(r):<{width}}  {r['op']:<6} {r['mean_abs']:>9.5f} {r['gain']:>9.5f} "
                         f"{r['centered_cosine']:>9.5f}")
        if limit is not None and len(self.layers) > limit:
            lines.append(f"     ... {len(self.layers) - limit} more in the JSON")
        return "\n".join(lines)


def module_names(model: Any) -> dict[str, str]:
    """Node name -> the PyTorch module its weight came from (``layer4.0.conv1``), read from the weight
    initializer's name (``layer4.0.conv1.weight_quantized``); empty when the export kept no names."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2:
            continue
        w = n.input[1]
        if w in producers and producers[w].op_type == "DequantizeLinear":
            w = producers[w].input[0]
        if w not in inits:
            continue
        for suffix in ("_quantized", ".weight"):
            w = w[:-len(suffix)] if w.endswith(suffix) else w
        if not w.startswith(("onnx::", "val_", "_")):
            out[n.name] = w
    return out


def sensitivity(int8_model: Any, scorer: HeldoutScorer, *, dtype: str = "float32", quantized_inputs: bool = False,
                progress: bool = True) -> Sensitivity:
    """For each quantized layer of ``int8_model`` (an ``onnx.ModelProto``), the held-out logit error
    with only that layer unquantized (``qdq.float_layers``); sorted most sensitive (largest gain)
    first."""
    from ..progress import track

    ops = {n.name: n.op_type for n in int8_model.graph.node}
    modules = module_names(int8_model)
    layers = quantized_layers(int8_model)
    base = scorer.score(int8_model)
    rows = []
    it = track(layers, total=len(layers), desc="sensitivity", unit="layer") if progress else layers
    for name in it:
        s = scorer.score(float_layers(int8_model, [name], dtype=dtype, quantized_inputs=quantized_inputs))
        rows.append({"layer": name, "module": modules.get(name, ""), "op": ops[name], "mean_abs": s["mean_abs"],
                     "centered_cosine": s["centered_cosine"], "top1": s["top1"],
                     "gain": base["mean_abs"] - s["mean_abs"]})
    rows.sort(key=lambda r: (-r["gain"], r["layer"]))
    return Sensitivity(int8_error=base, layers=rows, dtype=dtype, num_images=scorer.num_images,
                       quantized_inputs=quantized_inputs)


@dataclass
class MixedPrecision:
    """The layers kept out of INT8 and the held-out error after each one was added."""

    kept: list[str]
    dtype: str
    error: dict[str, float]
    steps: list[dict[str, Any]]  # [{kept: k, layer, mean_abs, centered_cosine}]
    target_error: float | None = None
    keep_float: int | None = None
    met: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "num_kept": len(self.kept), "dtype": self.dtype, "error": self.error,
                "steps": self.steps, "target_error": self.target_error, "keep_float": self.keep_float,
                "target_met": self.met}


def mixed_precision(int8_model: Any, sens: Sensitivity, scorer: HeldoutScorer, *, target_error: float | None = None,
                    keep_float: int | None = None, dtype: str = "float32") -> tuple[MixedPrecision, Any]:
    """Keep the most sensitive layers unquantized: the first ``keep_float`` of them, or one more at a
    time until the held-out error is at most ``target_error``. Returns the record and the model."""
    if (target_error is None) == (keep_float is None):
        raise UsageError("mixed precision takes one of --target-error E or --keep-float K")
    order = sens.order()
    qi = sens.quantized_inputs
    if keep_float is not None:
        if keep_float < 0:
            raise UsageError(f"--keep-float must be >= 0, got {keep_float}")
        kept = order[:keep_float]
        model = float_layers(int8_model, kept, dtype=dtype, quantized_inputs=qi) if kept else int8_model
        err = scorer.score(model)
        return MixedPrecision(kept=kept, dtype=dtype, error=err, keep_float=keep_float,
                              steps=[{"kept": len(kept), "mean_abs": err["mean_abs"],
                                      "centered_cosine": err["centered_cosine"]}]), model
    if target_error is None or target_error < 0:
        raise UsageError(f"--target-error must be >= 0, got {target_error}")
    err = sens.int8_error
    steps = [{"kept": 0, "layer": None, "mean_abs": err["mean_abs"], "centered_cosine": err["centered_cosine"]}]
    kept: list[str] = []
    model = int8_model
    for name in order:
        if err["mean_abs"] <= target_error:
            break
        kept.append(name)
        model = float_layers(int8_model, kept, dtype=dtype, quantized_inputs=qi)
        err = scorer.score(model)
        steps.append({"kept": len(kept), "layer": name, "mean_abs": err["mean_abs"],
                      "centered_cosine": err["centered_cosine"]})
    return MixedPrecision(kept=kept, dtype=dtype, error=err, steps=steps, target_error=target_error,
                          met=err["mean_abs"] <= target_error), model


def _label(row: dict[str, Any]) -> str:
    return f"{row['module']} [{row['layer']}]" if row.get("module") else row["layer"]


def plot_sensitivity(sens: Sensitivity, path: str | os.PathLike[str], *, title: str = "") -> Path | None:
    """A horizontal bar chart (PNG) of the drop in error with each layer unquantized, most sensitive
    on top.
    Returns None (and logs) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no sensitivity chart (pip install matplotlib)")
        return None
    from .._io import atomic_path

    rows = sens.layers
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(rows) + 1.2)))
    y = np.arange(len(rows))
    gains = [r["gain"] for r in rows]
    ax.barh(y, gains, color=["#4c72b0" if g > 0 else "#c44e52" for g in gains])
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{_label(r)} ({r['op']})" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"drop in held-out mean |logit error| with only this layer in {sens.dtype} "
                  f"(all INT8: {sens.int8_error['mean_abs']:.4g})", fontsize=8)
    ax.set_title(title or "INT8 per-layer sensitivity (most sensitive first)", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


__all__ = ["HeldoutScorer", "METRIC", "MethodChoice", "MixedPrecision", "Sensitivity", "choose_method",
           "logit_error", "mixed_precision", "module_names", "plot_sensitivity", "sensitivity"]
