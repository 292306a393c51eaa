"""Benchmark results for people (a terminal table) and machines (JSON, CSV).

``finalize`` completes a raw ``BenchResult``: the environment (CPU, cores, clock, package
versions, date), the speedup of every configuration over the baseline at the same batch size and
input size (ratios of medians: they hold on a noisy machine where absolute times do not), and the
work per image and the fraction of this CPU's peak (``bench.limits``).
"""

from __future__ import annotations

import csv
import io
import logging
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import atomic_path, write_json
from ..artifacts import read_metadata
from ..errors import UsageError
from .harness import BenchResult, Measurement
from .limits import CpuInfo, cpu_peak, cpu_peaks, detect_cpu, fraction_of_peak, onnx_macs, variant_macs

log = logging.getLogger(__name__)

SCHEMA = "resnet-deploy.bench/1"
_PACKAGES = ("resnet-deploy", "torch", "onnx", "onnxruntime", "openvino", "numpy", "tensorrt", "matplotlib")
#: A batch size "stops paying" when doubling-or-more the batch adds less than this to images/s.
SATURATION_GAIN = 0.05


def environment(cpu: CpuInfo, threads: int | None = None) -> dict[str, Any]:
    from ..versions import package_versions

    cores = min(threads, cpu.physical_cores) if threads else cpu.physical_cores
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "versions": package_versions(_PACKAGES),
        "cpu": cpu.to_dict(), "threads": threads or "backend default (all cores)", "cores_used_for_peak": cores,
        "peaks": {p: peak.to_dict() for p, peak in cpu_peaks(cpu, cores).items()},
    }


def choose_baseline(result: BenchResult, baseline: str | None = None) -> str:
    """``baseline`` when it was measured, else PyTorch eager FP32, else the first target."""
    labels = list(dict.fromkeys(m.label for m in result.measurements))
    if not labels:
        raise UsageError("no measurements")
    if baseline is not None:
        if baseline in labels:
            return baseline
        result.notes.append(f"baseline '{baseline}' was not measured; ratios are over the default instead")
    return next((x for x in labels if x == "torch:fp32"), labels[0])


def add_ratios(result: BenchResult, baseline: str | None = None) -> None:
    """``speedup`` = baseline median / median, per (batch, input size)."""
    result.baseline = choose_baseline(result, baseline)
    base = {(m.batch, m.height, m.width): m.stats.median_ms for m in result.measurements
            if m.label == result.baseline}
    for m in result.measurements:
        ref = base.get((m.batch, m.height, m.width))
        m.speedup = ref / m.stats.median_ms if ref and m.stats.median_ms > 0 else None


def _macs(m: Measurement) -> int | None:
    """MACs per image (counted with torch from the variant, else with onnx from the graph); None when
    unknown, or when neither package is installed (a thin runtime: no work and peak columns)."""
    try:
        return _count_macs(m)
    except ImportError as exc:
        log.info("no work-per-image figures: %s is not installed (pip install 'resnet-deploy[export]')", exc.name)
        return None


def _count_macs(m: Measurement) -> int | None:
    if m.variant:
        try:
            return variant_macs(m.variant, m.height, m.width)
        except UsageError:
            return None
    if m.artifact and str(m.artifact).endswith(".onnx"):
        variant = read_metadata(m.artifact).get("variant")
        if variant:
            try:
                return variant_macs(str(variant), m.height, m.width)
            except ImportError:  # no torch here: count on the graph
                pass
        return onnx_macs(str(m.artifact), m.height, m.width)
    return None


def add_limits(result: BenchResult, cpu: CpuInfo, threads: int | None = None) -> None:
    """Work per image, achieved GMAC/s and the fraction of the peak of the precision actually run."""
    cores = min(threads, cpu.physical_cores) if threads else cpu.physical_cores
    for m in result.measurements:
        macs = _macs(m)
        if macs is None:
            continue
        m.gmacs_per_image = macs / 1e9
        m.achieved_gmacs_per_s = m.gmacs_per_image * m.stats.throughput
        if m.device.startswith("cuda"):
            continue  # no GPU peak table
        peak = cpu_peak(cpu, m.precision_used if m.precision_used in ("fp32", "bf16", "fp16", "int8") else "fp32",
                        cores)
        if peak is None:
            continue
        m.peak = peak.to_dict()
        m.fraction_of_peak = fraction_of_peak(macs, m.stats.throughput, peak)


def finalize(result: BenchResult, *, cpu: CpuInfo | None = None, threads: int | None = None,
             baseline: str | None = None) -> BenchResult:
    cpu = cpu or detect_cpu()
    result.environment = environment(cpu, threads)
    add_ratios(result, baseline)
    add_limits(result, cpu, threads)
    return result


# -- machines --------------------------------------------------------------------------------------
def to_dict(result: BenchResult) -> dict[str, Any]:
    return {"schema": SCHEMA, "resnet_deploy": __version__, "environment": result.environment,
            "config": result.config.to_dict(), "baseline": result.baseline, "notes": list(result.notes),
            "warnings": result.warnings, "saturation": saturation(result),
            "results": [m.to_dict() for m in result.measurements]}


def save_json(result: BenchResult, path: str | Path) -> Path:
    return write_json(path, to_dict(result))


CSV_COLUMNS = ("label", "backend", "precision", "precision_used", "device", "batch", "height", "width", "iterations",
               "min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "std_ms", "cv",
               "throughput_ips", "speedup", "device_median_ms", "peak_rss_mb", "gpu_mem_mb", "other_cpu_cores", "gmacs_per_image",
               "achieved_gmacs_per_s", "peak_gmacs_per_s", "fraction_of_peak", "artifact")


def csv_rows(result: BenchResult) -> list[dict[str, Any]]:
    rows = []
    for m in result.measurements:
        s = m.stats
        rows.append({"label": m.label, "backend": m.backend, "precision": m.precision,
                     "precision_used": m.precision_used, "device": m.device, "batch": m.batch, "height": m.height,
                     "width": m.width, "iterations": s.n, "min_ms": s.min_ms, "mean_ms": s.mean_ms,
                     "median_ms": s.median_ms, "p90_ms": s.p90_ms, "p95_ms": s.p95_ms, "p99_ms": s.p99_ms,
                     "max_ms": s.max_ms, "std_ms": s.std_ms, "cv": s.cv, "throughput_ips": s.throughput,
                     "speedup": m.speedup,
                     "device_median_ms": m.device_stats.median_ms if m.device_stats else None,
                     "peak_rss_mb": m.peak_rss_mb, "gpu_mem_mb": m.gpu_mem_mb, "other_cpu_cores": m.other_cpu_cores,
                     "gmacs_per_image": m.gmacs_per_image,
                     "achieved_gmacs_per_s": m.achieved_gmacs_per_s,
                     "peak_gmacs_per_s": m.peak["gmacs_per_s"] if m.peak else None,
                     "fraction_of_peak": m.fraction_of_peak, "artifact": m.artifact})
    return rows


def save_csv(result: BenchResult, path: str | Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in csv_rows(result):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(path)


# -- people ----------------------------------------------------------------------------------------
def saturation(result: BenchResult) -> dict[str, dict[str, Any]]:
    """Per target and input size: images/s by batch, and the batch past which it stops improving
    (the next measured batch adds less than ``SATURATION_GAIN``)."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in result.measurements:
        groups.setdefault((m.label, m.shape), []).append(m)
    out: dict[str, dict[str, Any]] = {}
    for (label, shape), ms in groups.items():
        ms = sorted(ms, key=lambda m: m.batch)
        if len(ms) < 2:
            continue
        stop = ms[-1].batch
        for a, b in zip(ms, ms[1:]):
            if b.stats.throughput < a.stats.throughput * (1 + SATURATION_GAIN):
                stop = a.batch
                break
        out[f"{label} {shape}"] = {"throughput_by_batch": {str(m.batch): round(m.stats.throughput, 2) for m in ms},
                                   "saturates_at_batch": stop}
    return out


def speedup_checks(result: BenchResult, targets: dict[tuple[str, str], dict[int, float]],
                   batches: list[int]) -> tuple[str, dict[str, float], bool]:
    """Median-latency ratios ``baseline / candidate`` for each ``(candidate, baseline)`` pair and batch,
    judged against ``targets[(candidate, baseline)][batch]`` (no target: reported, not judged).
    Returns a markdown table, the ratios by ``"candidate vs baseline @ batch B"``, and whether every
    judged target was met."""
    by = {(m.label, m.batch): m for m in result.measurements}
    lines = ["| speedup (median latency ratio) | batch | ratio | target | |", "|---|---:|---:|---:|---|"]
    ratios: dict[str, float] = {}
    ok = True
    for (cand, base), need in targets.items():
        for b in batches:
            c, r = by.get((cand, b)), by.get((base, b))
            if c is None or r is None:
                continue
            ratio = r.stats.median_ms / c.stats.median_ms
            want = need.get(b)
            verdict = "" if want is None else ("PASS" if ratio >= want else "FAIL")
            ok &= verdict != "FAIL"
            ratios[f"{cand} vs {base} @ batch {b}"] = ratio
            lines.append(f"| {cand} vs {base} | {b} | {ratio:.2f}x | {'' if want is None else f'>= {want:g}x'} "
                         f"| {verdict} |")
    return "\n".join(lines), ratios, ok


def _fmt(v: float | None, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def format_table(result: BenchResult) -> str:
    head = ("target", "batch", "size", "n", "median ms", "mean", "p90", "p99", "min", "cv", "img/s",
            f"x {result.baseline or 'base'}", "% peak", "RSS MB", "busy")
    rows = []
    for m in sorted(result.measurements, key=lambda m: (m.height * m.width, m.batch)):
        s = m.stats
        label = m.label if m.precision_used in (m.precision, None) else f"{m.label} (runs {m.precision_used})"
        rows.append((label, str(m.batch), m.shape, str(s.n), f"{s.median_ms:.2f}", f"{s.mean_ms:.2f}",
                     f"{s.p90_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.min_ms:.2f}", f"{s.cv:.1%}", f"{s.throughput:.1f}",
                     _fmt(m.speedup, ".2f"), _fmt(None if m.fraction_of_peak is None else 100 * m.fraction_of_peak,
                                                  ".1f"), _fmt(m.peak_rss_mb, ".0f"), _fmt(m.other_cpu_cores, ".2f")))
        if m.device_stats is not None:
            d = m.device_stats
            rows.append(("  device compute", "", "", str(d.n), f"{d.median_ms:.2f}", f"{d.mean_ms:.2f}",
                         f"{d.p90_ms:.2f}", f"{d.p99_ms:.2f}", f"{d.min_ms:.2f}", f"{d.cv:.1%}",
                         f"{d.throughput:.1f}", "", "", "", ""))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in (head, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    env = result.environment
    cpu = env.get("cpu", {})
    if cpu:
        lines.append("")
        lines.append(f"CPU: {cpu.get('model_name')} ({cpu.get('microarchitecture')}), "
                     f"{env.get('cores_used_for_peak')} core(s) for the peak at {_fmt(cpu.get('ghz'), '.2f', '?')} GHz "
                     f"[{cpu.get('ghz_source')}]; peaks: " + ", ".join(
                         f"{p} {v['gflops']:.0f} GFLOP/s ({v['isa']})" for p, v in env.get("peaks", {}).items()))
    if result.measurements:
        lines.append("timed: " + result.measurements[0].timed)
        lines.append("busy: CPUs' worth of time other processes took while each configuration was timed "
                     "(0 on a quiet machine)")
    for note in result.notes:
        lines.append(f"note: {note}")
    for w in result.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
