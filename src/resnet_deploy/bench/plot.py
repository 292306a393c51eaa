"""The benchmark figure (matplotlib, Agg, no display needed).

Panels: median latency against batch size (one colour per target, one line style per input
size, bars from min to p90) and throughput (images/s) against batch size, or, with a single batch
size, one horizontal bar per target; when several input sizes were measured, also latency per
image against megapixels at the smallest batch (cost grows with the pixels: 448x448 is 4x 224x224).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import atomic_path
from ..errors import require
from .harness import BenchResult, Measurement

_STYLES = ("-", "--", ":", "-.")


def _groups(result: BenchResult) -> dict[tuple[str, str], list[Measurement]]:
    out: dict[tuple[str, str], list[Measurement]] = {}
    for m in result.measurements:
        out.setdefault((m.label, m.shape), []).append(m)
    return {k: sorted(v, key=lambda m: m.batch) for k, v in out.items()}


def _batch_lines(result: BenchResult, lat_ax: Any, thr_ax: Any, colors: dict[str, str], shapes: list[str],
                 by_res: bool) -> None:
    """Latency and throughput against batch size: one colour per target, one line style per size."""
    from matplotlib.ticker import ScalarFormatter

    styles = {shape: _STYLES[i % len(_STYLES)] for i, shape in enumerate(shapes)}
    for (label, shape), ms in _groups(result).items():
        xs = [m.batch for m in ms]
        med = [m.stats.median_ms for m in ms]
        yerr = [[m.stats.median_ms - m.stats.min_ms for m in ms], [m.stats.p90_ms - m.stats.median_ms for m in ms]]
        name = f"{label} {shape}" if by_res else label
        lat_ax.errorbar(xs, med, yerr=yerr, color=colors[label], linestyle=styles[shape], marker="o", capsize=3,
                        label=name)
        thr_ax.plot(xs, [m.stats.throughput for m in ms], color=colors[label], linestyle=styles[shape], marker="o",
                    label=name)
    batches = sorted({m.batch for m in result.measurements})
    for ax in (lat_ax, thr_ax):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(batches, [str(b) for b in batches])
    lat_ax.set_yscale("log")
    lat_ax.yaxis.set_major_formatter(ScalarFormatter())
    lat_ax.set_ylabel("latency per batch, ms (median; bars min..p90)")
    lat_ax.set_title("latency vs batch size")
    thr_ax.set_ylabel("images / s")
    thr_ax.set_title("throughput vs batch size")
    thr_ax.legend(fontsize="small")


def _bars(result: BenchResult, lat_ax: Any, thr_ax: Any, colors: dict[str, str], shapes: list[str]) -> None:
    """One batch size: horizontal bars per target (and size), fastest at the top."""
    ms = sorted(result.measurements, key=lambda m: (m.height * m.width, -m.stats.median_ms))
    names = [m.label if len(shapes) == 1 else f"{m.label} {m.shape}" for m in ms]
    ys = list(range(len(ms)))
    lat_ax.barh(ys, [m.stats.median_ms for m in ms], color=[colors[m.label] for m in ms],
                xerr=[[m.stats.median_ms - m.stats.min_ms for m in ms], [m.stats.p90_ms - m.stats.median_ms for m in ms]],
                capsize=3)
    thr_ax.barh(ys, [m.stats.throughput for m in ms], color=[colors[m.label] for m in ms])
    for ax in (lat_ax, thr_ax):
        ax.set_yticks(ys, names, fontsize="small")
        ax.grid(True, axis="x", alpha=0.3)
    thr_ax.set_yticks(ys, [""] * len(ys))
    batch = ms[0].batch if ms else 1
    lat_ax.set_xlabel("latency per batch, ms (median; bars min..p90)")
    lat_ax.set_title(f"latency, batch {batch}")
    thr_ax.set_xlabel("images / s")
    thr_ax.set_title(f"throughput, batch {batch}")


def plot_results(result: BenchResult, path: str | Path, *, title: str | None = None) -> Path:
    """Write the PNG figure of ``result`` to ``path`` (atomically)."""
    require("matplotlib", "the benchmark plot", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(m.label for m in result.measurements))
    shapes = list(dict.fromkeys(m.shape for m in sorted(result.measurements, key=lambda m: m.height * m.width)))
    batches = sorted({m.batch for m in result.measurements})
    by_res = len(shapes) > 1
    fig = Figure(figsize=(15 if by_res else 11, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if by_res else 2)
    lat_ax, thr_ax = axes[0], axes[1]
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    if len(batches) > 1:
        _batch_lines(result, lat_ax, thr_ax, colors, shapes, by_res)
    else:
        _bars(result, lat_ax, thr_ax, colors, shapes)
    if by_res:
        res_ax = axes[2]
        b0 = min(m.batch for m in result.measurements)
        for label in labels:
            ms = sorted((m for m in result.measurements if m.label == label and m.batch == b0),
                        key=lambda m: m.height * m.width)
            if ms:
                res_ax.plot([m.height * m.width / 1e6 for m in ms], [m.stats.median_ms / m.batch for m in ms],
                            color=colors[label], marker="o", label=label)
        res_ax.set_xlabel("megapixels per image")
        res_ax.set_ylabel("ms per image (median)")
        res_ax.set_title(f"latency vs resolution (batch {b0})")
        res_ax.grid(True, alpha=0.3)
    cpu = result.environment.get("cpu", {})
    fig.suptitle(title or f"resnet-deploy bench: {cpu.get('model_name', '')} "
                          f"({result.environment.get('cores_used_for_peak', '?')} cores)".strip())
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)
