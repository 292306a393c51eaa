"""``resnet-deploy bench`` end to end on ResNet-18 at 64x64 (a few iterations; no speed is asserted)."""

from __future__ import annotations

import json

import pytest

from resnet_deploy.bench.limits import variant_macs
from resnet_deploy.cli.main import main

FAST = ["--shapes", "64x64", "--iterations", "2", "--warmup", "1", "--rounds", "2", "--pause-ms", "0"]


def test_variant_end_to_end_writes_table_json_csv_and_plot(tmp_path, capsys):
    work, js, cs, png = tmp_path / "work", tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    rc = main(["bench", "--variant", "18", "--backends", "torch,onnxruntime", "--batch-sizes", "1,2", *FAST,
               "--workdir", str(work), "--json", str(js), "--csv", str(cs), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    table = [line for line in out.splitlines() if line.startswith(("torch:fp32", "onnxruntime:fp32"))]
    assert len(table) == 4
    assert f"wrote {js}" in out and f"wrote {png}" in out

    data = json.loads(js.read_text())
    assert data["schema"] == "resnet-deploy.bench/1"
    assert data["baseline"] == "torch:fp32"
    results = data["results"]
    assert sorted((r["label"], r["batch"]) for r in results) == [
        ("onnxruntime:fp32", 1), ("onnxruntime:fp32", 2), ("torch:fp32", 1), ("torch:fp32", 2)]
    for r in results:
        assert r["iterations"] == 2 and len(r["round_medians_ms"]) == 2
        lat = r["latency_ms"]
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert r["throughput_ips"] == pytest.approx(r["batch"] * 1e3 / lat["mean_ms"])
        assert r["gmacs_per_image"] == pytest.approx(variant_macs("18", 64, 64) / 1e9)
        assert r["peak_rss_mb"] > 0
    assert all(r["speedup"] == pytest.approx(1.0) for r in results if r["label"] == "torch:fp32")
    assert data["environment"]["cpu"]["logical_cpus"] >= 1
    assert len(cs.read_text().strip().splitlines()) == 1 + 4
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert (work / "resnet18.onnx").is_file() and (work / "manifest.json").is_file()

    # the same workdir again: the exported ONNX is reused, not exported a second time
    rc = main(["bench", "--variant", "18", "--backends", "onnxruntime", *FAST, "--workdir", str(work)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "reusing the artifacts" in captured.err and "export ONNX" not in captured.err


def test_artifacts_side_by_side_with_openvino(resnet18_onnx, tmp_path, capsys):
    js = tmp_path / "a.json"
    rc = main(["bench", str(resnet18_onnx), "--backends", "onnxruntime,openvino", *FAST, "--json", str(js)])
    assert rc == 0
    data = json.loads(js.read_text())
    by = {r["label"]: r for r in data["results"]}
    assert set(by) == {"onnxruntime:fp32", "openvino:fp32"}
    assert by["openvino:fp32"]["precision_used"] == "fp32"
    assert by["openvino:fp32"]["artifact"] == str(resnet18_onnx)
    # no torch target: the ratios are over the first target; the work comes from the ONNX metadata
    assert data["baseline"] == "onnxruntime:fp32"
    assert by["openvino:fp32"]["gmacs_per_image"] == pytest.approx(variant_macs("18", 64, 64) / 1e9)


@pytest.mark.parametrize("argv, message", [
    (["bench"], "--variant"),
    (["bench", "--variant", "18", "--backends", "tf"], "unknown backend 'tf'"),
    (["bench", "--variant", "18", "--shapes", "64y64"], "bad --shapes entry '64y64'"),
    (["bench", "--variant", "18", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["bench", "--variant", "18", "--warmup", "soon"], "bad warmup"),
    (["bench", "--variant", "18", "--plot", "out.jpg"], "PNG"),
    (["bench", "--variant", "18", "--baseline", "tensorrt:fp16"], "baseline 'tensorrt:fp16'"),
    (["bench", "--variant", "18", "--shapes", "16x16"], "too small"),
])
def test_bad_usage_exits_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
