from __future__ import annotations

import csv
import json

import pytest

from resnet_deploy.bench.harness import BenchConfig, Warmup, run_benchmark
from resnet_deploy.bench.limits import detect_cpu, variant_macs
from resnet_deploy.bench.plot import plot_results
from resnet_deploy.bench.report import (CSV_COLUMNS, SCHEMA, finalize, format_table, save_csv, save_json, saturation,
                                        speedup_checks, to_dict)

ZEN4 = """vendor_id : AuthenticAMD
cpu family : 25
model : 17
model name : AMD EPYC
cpu MHz : 2500.0
siblings : 2
cpu cores : 2
flags : avx fma avx2 avx512f avx512_bf16 avx512_vnni
"""


@pytest.fixture()
def result(fake_clock, make_target):
    """torch:fp32 at 4 ms per image, onnxruntime:fp32 at 2 ms per image plus 1 ms per batch."""
    slow, _ = make_target("torch:fp32", 0.004)
    fast, _ = make_target("onnxruntime:fp32", [0.002 * b + 0.001 for b in [1] + [1] * 3 + [4] + [4] * 3])
    cfg = BenchConfig(batch_sizes=(1, 4), shapes=((64, 64),), warmup=Warmup(iterations=1), iterations=3,
                      duration_s=0, rounds=1, round_warmup=0, pause_s=0)
    raw = run_benchmark([slow, fast], cfg, clock=fake_clock, sleep=lambda s: None)
    return finalize(raw, cpu=detect_cpu(cpuinfo_text=ZEN4))


def test_speedups_are_ratios_of_medians_over_the_baseline(result):
    assert result.baseline == "torch:fp32"
    by = {(m.label, m.batch): m for m in result.measurements}
    assert by[("torch:fp32", 1)].speedup == pytest.approx(1.0)
    assert by[("onnxruntime:fp32", 1)].speedup == pytest.approx(4 / 3)
    assert by[("onnxruntime:fp32", 4)].speedup == pytest.approx(16 / 9)


def test_speedup_checks_judge_each_target(result):
    targets = {("onnxruntime:fp32", "torch:fp32"): {1: 1.5, 4: 1.5}}
    table, ratios, ok = speedup_checks(result, targets, [1, 4])
    assert ratios == {"onnxruntime:fp32 vs torch:fp32 @ batch 1": pytest.approx(4 / 3),
                      "onnxruntime:fp32 vs torch:fp32 @ batch 4": pytest.approx(16 / 9)}
    assert not ok  # 1.33x misses 1.5x at batch 1
    assert "| 1 | 1.33x | >= 1.5x | FAIL |" in table and "| 4 | 1.78x | >= 1.5x | PASS |" in table
    assert speedup_checks(result, {("onnxruntime:fp32", "torch:fp32"): {4: 1.5}}, [1, 4])[2]


def test_fraction_of_peak_uses_the_work_and_this_cpus_peak(result):
    m = next(m for m in result.measurements if m.label == "torch:fp32" and m.batch == 1)
    macs = variant_macs("18", 64, 64)
    assert m.gmacs_per_image == pytest.approx(macs / 1e9)
    assert m.stats.throughput == pytest.approx(250.0)
    peak_gmacs = 16 * 2 * 2.5  # Zen 4: 16 fp32 MACs/cycle/core, 2 cores, 2.5 GHz
    assert m.peak["gmacs_per_s"] == pytest.approx(peak_gmacs)
    assert m.fraction_of_peak == pytest.approx(macs * 250.0 / (peak_gmacs * 1e9))
    assert result.environment["peaks"]["int8"]["macs_per_cycle"] == 64


def test_saturation_finds_where_throughput_stops_improving(result):
    sat = saturation(result)
    # torch: 250 img/s at both batches -> stops at batch 1; onnxruntime: 333 -> 444 img/s keeps improving
    assert sat["torch:fp32 64x64"]["saturates_at_batch"] == 1
    assert sat["onnxruntime:fp32 64x64"]["saturates_at_batch"] == 4


def test_json_has_the_documented_schema(result, tmp_path):
    path = save_json(result, tmp_path / "out" / "bench.json")
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert {"environment", "config", "baseline", "notes", "warnings", "saturation", "results"} <= set(data)
    assert data["config"]["batch_sizes"] == [1, 4] and data["config"]["shapes"] == ["64x64"]
    env = data["environment"]
    assert {"date", "versions", "cpu", "peaks", "cores_used_for_peak"} <= set(env)
    assert "torch" in env["versions"]
    r = data["results"][0]
    assert {"label", "backend", "precision", "precision_used", "device", "batch", "height", "width", "iterations",
            "latency_ms", "throughput_ips", "timed", "round_medians_ms", "peak_rss_mb", "speedup", "gmacs_per_image",
            "fraction_of_peak", "runner", "warnings"} <= set(r)
    assert set(r["latency_ms"]) == {"min_ms", "max_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms",
                                    "std_ms", "cv"}
    assert r["iterations"] == 3
    assert to_dict(result)["results"] == data["results"]


def test_csv_has_one_row_per_configuration(result, tmp_path):
    path = save_csv(result, tmp_path / "bench.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(result.measurements) == 4
    assert tuple(rows[0]) == CSV_COLUMNS
    assert float(rows[0]["median_ms"]) == pytest.approx(result.measurements[0].stats.median_ms)


def test_table_lists_every_configuration_and_the_peaks(result):
    text = format_table(result)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["target", "batch", "size"]
    assert sum(line.startswith("torch:fp32") for line in lines) == 2
    assert sum(line.startswith("onnxruntime:fp32") for line in lines) == 2
    assert "AMD Zen 4" in text and "fp32 160 GFLOP/s" in text
    assert "timed: end to end" in text


def test_plot_is_a_png(result, tmp_path):
    path = plot_results(result, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_plot_with_several_resolutions(fake_clock, make_target, tmp_path):
    t, _ = make_target("onnxruntime:fp32", 0.001)
    cfg = BenchConfig(batch_sizes=(1, 2), shapes=((64, 64), (128, 128)), warmup=Warmup(iterations=1), iterations=2,
                      duration_s=0, rounds=1, round_warmup=0, pause_s=0)
    res = finalize(run_benchmark([t], cfg, clock=fake_clock, sleep=lambda s: None), cpu=detect_cpu(cpuinfo_text=ZEN4))
    path = plot_results(res, tmp_path / "res.png")
    assert path.stat().st_size > 10_000
