"""Compare any two runners (after Polygraphy's comparator).

``compare(reference, candidate, inputs) -> ParityReport``: per output and per input shape, max abs
error, max relative error (with a floor, so near-zero references don't explode it), mean abs
error, cosine similarity, cosine after centering, top-1 and top-5 agreement, and pass/fail against
tolerances that depend on the candidate's precision.

Why centering: with random weights every image lands in the same class and every output vector
points the same way, so raw cosine and top-1 say little. Subtracting the mean output over all
checked inputs leaves what distinguishes one image from another; that is what must agree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import UsageError


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail bars. ``max_abs_rel`` is max abs error divided by the reference's largest magnitude.

    Defaults per precision (see ``DEFAULT_TOLERANCES``) were set just above measured errors:
    FP32 ONNX Runtime vs PyTorch on ResNet-50 logits: max abs ~5e-5, i.e. ~2e-6 of the largest
    logit; FP16: max abs ~0.05 on logits of ~120 (~5e-4 relative); INT8: a few percent.
    """

    max_abs_rel: float
    min_cosine: float
    min_centered_cosine: float
    min_top1: float
    min_top5: float
    rel_floor: float = 1e-3  # max-rel error divides by max(|ref|, rel_floor * max|ref|)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(max_abs_rel=1e-4, min_cosine=0.99999, min_centered_cosine=0.9999, min_top1=1.0,
                       min_top5=1.0),
    "fp16": Tolerances(max_abs_rel=5e-3, min_cosine=0.9999, min_centered_cosine=0.999, min_top1=0.9,
                       min_top5=0.95),
    "bf16": Tolerances(max_abs_rel=5e-2, min_cosine=0.999, min_centered_cosine=0.98, min_top1=0.8,
                       min_top5=0.9),
    "int8": Tolerances(max_abs_rel=0.25, min_cosine=0.98, min_centered_cosine=0.9, min_top1=0.6,
                       min_top5=0.8),
}


def tolerances_for(precision: str, **overrides: float) -> Tolerances:
    if precision not in DEFAULT_TOLERANCES:
        raise UsageError(f"no tolerances for precision '{precision}'; choose one of: "
                         + ", ".join(DEFAULT_TOLERANCES))
    return replace(DEFAULT_TOLERANCES[precision], **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Metrics:
    shape: tuple[int, ...]
    output: str
    max_abs: float
    mean_abs: float
    max_rel: float
    max_abs_rel: float
    ref_max: float
    cosine: float
    centered_cosine: float | None  # None when only one row was checked (nothing to center on)
    top1: float
    top5: float
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class ParityReport:
    reference: dict[str, Any]
    candidate: dict[str, Any]
    precision: str
    tolerances: Tolerances
    results: list[Metrics]

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.results)

    def worst(self) -> dict[str, float]:
        if not self.results:
            return {}
        return {"max_abs": max(m.max_abs for m in self.results),
                "max_rel": max(m.max_rel for m in self.results),
                "min_cosine": min(m.cosine for m in self.results),
                "min_centered_cosine": min((m.centered_cosine for m in self.results if m.centered_cosine is not None),
                                           default=None),
                "min_top1": min(m.top1 for m in self.results),
                "min_top5": min(m.top5 for m in self.results)}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "precision": self.precision, "reference": self.reference,
                "candidate": self.candidate, "tolerances": self.tolerances.to_dict(), "worst": self.worst(),
                "results": [m.to_dict() for m in self.results]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def table(self) -> str:
        head = f"{'shape':<16}{'output':<11}{'max abs':>10}{'max rel':>10}{'cos':>10}{'cent.cos':>10}" \
               f"{'top1':>7}{'top5':>7}  result"
        lines = [f"parity: {self.candidate.get('backend')}:{self.precision} vs "
                 f"{self.reference.get('backend')}:{self.reference.get('precision', 'fp32')}", head]
        for m in self.results:
            lines.append(f"{'x'.join(map(str, m.shape)):<16}{m.output[:10]:<11}{m.max_abs:>10.2e}{m.max_rel:>10.2e}"
                         f"{m.cosine:>10.6f}{_fmt(m.centered_cosine):>10}{m.top1:>7.2f}{m.top5:>7.2f}  "
                         + ("ok" if m.passed else "FAIL: " + "; ".join(m.failures)))
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    denom = np.maximum(na * nb, 1e-30)
    cos = np.sum(a * b, axis=1) / denom
    both_zero = (na < 1e-30) & (nb < 1e-30)
    return np.where(both_zero, 1.0, cos)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    k = min(k, x.shape[1])
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def metrics(ref: np.ndarray, cand: np.ndarray, center: np.ndarray | None, tol: Tolerances, *, shape: tuple[int, ...],
            output: str) -> Metrics:
    """Metrics of one output for one input batch. ``center`` is the mean reference row over every
    checked input (None when there was only one row: centered cosine is then not defined)."""
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    cand = np.asarray(cand, dtype=np.float64).reshape(len(cand), -1)
    if ref.shape != cand.shape:
        raise UsageError(f"output '{output}': reference shape {ref.shape} differs from candidate {cand.shape}")
    diff = np.abs(ref - cand)
    ref_max = float(np.max(np.abs(ref))) if ref.size else 0.0
    floor = max(tol.rel_floor * ref_max, 1e-12)
    top1_ref, top1_cand = _topk(ref, 1)[:, 0], _topk(cand, 1)[:, 0]
    top5_cand = _topk(cand, 5)
    m = Metrics(
        shape=shape, output=output,
        max_abs=float(diff.max()), mean_abs=float(diff.mean()),
        max_rel=float(np.max(diff / np.maximum(np.abs(ref), floor))),
        max_abs_rel=float(diff.max() / max(ref_max, 1e-12)), ref_max=ref_max,
        cosine=float(np.min(_cos_rows(ref, cand))),
        centered_cosine=None if center is None else float(np.min(_cos_rows(ref - center, cand - center))),
        top1=float(np.mean(top1_ref == top1_cand)),
        top5=float(np.mean([r in row for r, row in zip(top1_ref, top5_cand)])),
    )
    checks = [("max abs / max|ref|", m.max_abs_rel, tol.max_abs_rel, "<="),
              ("cosine", m.cosine, tol.min_cosine, ">="),
              ("centered cosine", m.centered_cosine, tol.min_centered_cosine, ">="),
              ("top-1 agreement", m.top1, tol.min_top1, ">="),
              ("top-5 agreement", m.top5, tol.min_top5, ">=")]
    for name, value, bar, op in checks:
        if value is None:
            continue
        ok = value <= bar if op == "<=" else value >= bar
        if not ok or not np.isfinite(value):
            m.failures.append(f"{name} {value:.3g} (need {op} {bar:g})")
    m.passed = not m.failures
    return m


def seeded_inputs(shapes: Iterable[Sequence[int]], seed: int = 0, dtype: Any = np.float32) -> list[np.ndarray]:
    """Inputs that are not all alike: each image gets its own brightness, contrast and a smooth
    pattern plus noise, in the range a normalized photo has (about -2..2.5)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        n, c, h, w = (int(d) for d in shape)
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        batch = np.empty((n, c, h, w), dtype=np.float32)
        for i in range(n):
            fx, fy, ph = rng.uniform(0.5, 6, size=3)
            pattern = np.sin(2 * np.pi * (fx * xx + ph)) * np.cos(2 * np.pi * fy * yy)
            for ch in range(c):
                gain, bias = rng.uniform(0.3, 1.5), rng.uniform(-1, 1)
                batch[i, ch] = gain * pattern * rng.uniform(0.5, 1.5) + bias + 0.5 * rng.standard_normal((h, w))
        out.append(np.clip(batch, -2.2, 2.7).astype(dtype))
    return out


def compare(reference: Any, candidate: Any, inputs: Sequence[np.ndarray | Mapping[str, np.ndarray]], *,
            precision: str | None = None, tolerances: Tolerances | None = None) -> ParityReport:
    """Run both runners on each input batch and compare every output they share by position."""
    precision = precision or getattr(getattr(candidate, "info", None), "precision", "fp32")
    tol = tolerances or tolerances_for(precision if precision in DEFAULT_TOLERANCES else "fp32")
    runs = []
    for batch in inputs:
        if isinstance(batch, Mapping):
            ref_out = reference.infer_dict(batch)
            cand_out = candidate.infer_dict(batch)
            shape = tuple(next(iter(batch.values())).shape)
        else:
            key = candidate.outputs[0].name if getattr(candidate, "outputs", None) else "output"
            ref_out = {key: reference.infer(batch)}
            cand_out = {key: candidate.infer(batch)}
            shape = tuple(batch.shape)
        runs.append((shape, ref_out, cand_out))
    # One center per output over every checked input, so centering works for batch 1 too.
    centers = {}
    for key in runs[0][1] if runs else []:
        rows = np.concatenate([np.asarray(r[1][key], np.float64).reshape(len(r[1][key]), -1) for r in runs])
        centers[key] = rows.mean(axis=0) if len(rows) > 1 else None
    results = []
    for shape, ref_out, cand_out in runs:
        for (key, r), c in zip(ref_out.items(), cand_out.values()):
            results.append(metrics(r, c, centers.get(key), tol, shape=shape, output=key))
    info = lambda x: x.info.to_dict() if hasattr(x, "info") else {"backend": type(x).__name__}  # noqa: E731
    return ParityReport(reference=info(reference), candidate=info(candidate), precision=precision,
                        tolerances=tol, results=results)
