"""Render ``resnet-deploy bench --json`` files into the markdown of benchmarks/results/bench.md.

    python benchmarks/render_bench_md.py --out benchmarks/results/bench.md \
        --commands benchmarks/results/bench_commands.txt \
        "Side by side=benchmarks/results/bench_side_by_side.json" "Batch scaling=benchmarks/results/bench_batch.json"

Every number comes from the JSON files; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from resnet_deploy.bench.limits import gmacs_table

VARIANTS = ("18", "34", "50", "101", "152", "resnext50_32x4d", "wide_resnet50_2")
SIZES = (224, 320, 448)


def _f(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def machine(data: dict[str, Any]) -> list[str]:
    env = data["environment"]
    cpu = env["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = ["## Machine", "",
             f"- CPU: {cpu['model_name']} ({cpu['microarchitecture']}, family {cpu['family']} model {cpu['model']}), "
             f"{cpu['logical_cpus']} logical CPUs usable, {cpu['threads_per_core']} thread(s) per core",
             f"- Clock used for the peak: {_f(cpu['ghz'], '.3f')} GHz ({cpu['ghz_source']})",
             f"- Relevant flags: {', '.join(cpu['flags'])}",
             f"- OS: {env['os']}; Python {env['python']}; {versions}",
             f"- Date: {env['date']}; threads: {env['threads']}", "",
             "### Peak of this CPU", "",
             "| precision | ISA | MACs/cycle/core | cores | GMAC/s | GFLOP/s | basis |",
             "|---|---|---:|---:|---:|---:|---|"]
    for p, v in env["peaks"].items():
        lines.append(f"| {p} | {v['isa']} | {v['macs_per_cycle']} | {v['cores']} | {v['gmacs_per_s']:.1f} | "
                     f"{v['gflops']:.1f} | {v['basis']} |")
    return lines + [""]


def work() -> list[str]:
    rows = gmacs_table(VARIANTS, SIZES)
    head = " | ".join(f"{s}x{s}" for s in SIZES)
    lines = ["## Work per image (GMACs; 1 MAC = 2 FLOP)", "", f"| variant | {head} |",
             "|---|" + "---:|" * len(SIZES)]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r[f'{s}x{s}']:.2f}" for s in SIZES) + " |")
    return lines + ["", "448x448 is 4x the pixels of 224x224 and ~4.0x the MACs (the classifier is constant).", ""]


def results(title: str, data: dict[str, Any]) -> list[str]:
    cfg = data["config"]
    lines = [f"## {title}", "",
             f"Batch sizes {cfg['batch_sizes']}, sizes {cfg['shapes']}, warmup {cfg['warmup']}, at least "
             f"{cfg['iterations']} iterations and {cfg['duration_s']} s per configuration over {cfg['rounds']} "
             f"interleaved rounds. Speedup = median of `{data['baseline']}` / median, same batch and size.", "",
             "| target | runs as | batch | size | median ms | p90 | p99 | min | cv | img/s | speedup | GMAC/s | % of peak "
             "| busy |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = sorted(data["results"], key=lambda r: (r["height"] * r["width"], r["batch"], -(r["speedup"] or 0)))
    for r in rows:
        lat = r["latency_ms"]
        frac = None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"]
        peak = f" ({r['peak']['precision']})" if r.get("peak") else ""
        lines.append(f"| {r['label']} | {r['precision_used']} | {r['batch']} | {r['height']}x{r['width']} | "
                     f"{lat['median_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['min_ms']:.2f} | "
                     f"{lat['cv']:.1%} | {r['throughput_ips']:.1f} | {_f(r['speedup'])} | "
                     f"{_f(r['achieved_gmacs_per_s'], '.1f')} | {_f(frac, '.1f')}{peak} | "
                     f"{_f(r.get('other_cpu_cores'))} |")
    lines += checks(data)
    if data.get("saturation"):
        lines += ["", "Throughput by batch (images/s) and the batch past which it stops improving (< 5 % more):", ""]
        for key, s in data["saturation"].items():
            by = ", ".join(f"b{b}: {v:.1f}" for b, v in s["throughput_by_batch"].items())
            lines.append(f"- {key}: {by}; saturates at batch {s['saturates_at_batch']}")
    sizes = sorted({(r["height"], r["width"]) for r in data["results"]}, key=lambda s: s[0] * s[1])
    if len(sizes) > 1:
        lines += ["", "Cost against resolution (median per image, relative to the smallest size):", ""]
        b0 = min(r["batch"] for r in data["results"])
        for label in dict.fromkeys(r["label"] for r in data["results"]):
            rs = sorted((r for r in data["results"] if r["label"] == label and r["batch"] == b0),
                        key=lambda r: r["height"] * r["width"])
            if len(rs) > 1:
                base = rs[0]["latency_ms"]["median_ms"]
                px0 = rs[0]["height"] * rs[0]["width"]
                cells = ", ".join(f"{r['height']}x{r['width']}: {r['latency_ms']['median_ms'] / base:.2f}x time for "
                                  f"{r['height'] * r['width'] / px0:.2f}x pixels" for r in rs[1:])
                lines.append(f"- {label} (batch {b0}): {cells}")
    if data.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in data["notes"]]
    if data.get("warnings"):
        lines += ["", f"Warnings ({len(data['warnings'])}), by kind:", ""] + warning_summary(data["warnings"])
    return lines + [""]


#: The issue's performance targets: ONNX Runtime FP32 over PyTorch eager FP32 at 224x224, by batch.
ORT_OVER_TORCH = {1: 1.7, 8: 1.4}


def checks(data: dict[str, Any]) -> list[str]:
    """The issue's targets, measured side by side: ORT over torch; the toolkit's best vs OpenVINO."""
    by = {(r["label"], r["batch"], r["height"], r["width"]): r for r in data["results"]}
    cpus = data["environment"]["cpu"]["logical_cpus"]

    def busy(*rows: dict[str, Any]) -> bool:
        return any((r.get("other_cpu_cores") or 0) > 0.1 * cpus for r in rows)

    lines = []
    for (label, batch, h, w), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        torch = by.get(("torch:fp32", batch, h, w))
        if label != "onnxruntime:fp32" or torch is None:
            continue
        ratio = torch["latency_ms"]["median_ms"] / r["latency_ms"]["median_ms"]
        ratio_min = torch["latency_ms"]["min_ms"] / r["latency_ms"]["min_ms"]
        want = ORT_OVER_TORCH.get(batch) if (h, w) == (224, 224) else None
        verdict = "" if want is None else (f"; target >= {want}x: " + ("met" if ratio >= want else "NOT met"))
        if want is not None and busy(r, torch):
            verdict = f"; target >= {want}x: not judged (other processes were using the CPUs)"
        lines.append(f"- onnxruntime:fp32 over torch:fp32, batch {batch}, {h}x{w}: {ratio:.2f}x on medians, "
                     f"{ratio_min:.2f}x on minimums{verdict}")
    for (label, batch, h, w), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if not label.startswith("openvino:"):
            continue
        prec = label.split(":")[1]
        ort = by.get((f"onnxruntime:{prec}", batch, h, w))
        if ort is None:
            continue
        ratio = r["latency_ms"]["median_ms"] / ort["latency_ms"]["median_ms"]
        lines.append(f"- onnxruntime:{prec} vs openvino:{prec}, batch {batch}, {h}x{w}: onnxruntime takes "
                     f"{1 / ratio:.2f}x the time of openvino (median)")
    return (["", "Side-by-side checks:", ""] + lines) if lines else []


WARNING_KINDS = (("coefficient of variation", "coefficient of variation above the threshold"),
                 ("round medians differ", "round medians differ (conditions changed during the run)"),
                 ("other processes used", "other processes were using the CPUs"))


def warning_summary(warnings: list[str]) -> list[str]:
    """One line per kind of warning, naming the configurations (the table has the figures)."""
    kinds: dict[str, list[str]] = {}
    for w in warnings:
        where, _, text = w.partition(": ")
        kind = next((title for key, title in WARNING_KINDS if key in text), text)
        kinds.setdefault(kind, []).append(where)
    return [f"- {kind}: {', '.join(where)}" for kind, where in kinds.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="TITLE=path.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--commands", type=Path, help="a text file with the exact commands that produced the JSON")
    ap.add_argument("--plot", action="append", default=[], help="a PNG to link (relative to --out)")
    args = ap.parse_args()
    runs = []
    for item in args.runs:
        title, _, path = item.partition("=")
        runs.append((title, json.loads(Path(path).read_text())))
    lines = ["# Latency benchmark results (resnet-deploy bench)", "",
             "Generated by `benchmarks/render_bench_md.py` from the JSON written by `resnet-deploy bench`.", ""]
    if args.commands and args.commands.is_file():
        lines += ["## Commands", "", "```bash", args.commands.read_text().strip(), "```", ""]
    lines += machine(runs[0][1]) + work()
    for title, data in runs:
        lines += results(title, data)
    for png in args.plot:
        lines += [f"![{png}]({png})", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
