"""Choices by measurement on held-out images: the MSE-optimal range, ``--calib-method auto`` (every
candidate scored, the best kept and recorded), per-layer sensitivity and mixed precision, end to end
on a ResNet-18 at 64 px with a few images."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest

from resnet_deploy.calibration import (CalibrationCache, CalibrationConfig, HeldoutScorer, MethodConfig, TensorStats,
                                       collect, float_layers, logit_error, make_source, mse_amax, quantized_layers,
                                       run_int8_stage)
from resnet_deploy.calibration.qdq import prepare, quantize
from resnet_deploy.calibration.ranges import METHODS


def reference_mse_amax(hist, hist_max, levels=127, min_bins=128):
    """The textbook loop: for each candidate threshold, the expected squared error of every bin."""
    n = len(hist)
    width = hist_max / n
    centers = (np.arange(n) + 0.5) * width
    best, best_t = np.inf, hist_max
    for i in range(min_bins, n + 1):
        t = i * width
        step = t / levels
        err = 0.0
        for c, h in zip(centers, hist):
            if c < step / 2:
                err += h * c * c
            elif c <= t:
                err += h * step * step / 12
            else:
                err += h * (c - t) ** 2
        if err < best:
            best, best_t = err, t
    return best_t


@pytest.mark.parametrize("dist", ["gauss", "relu", "outliers"])
def test_mse_matches_the_reference_loop(dist):
    rng = np.random.default_rng(2)
    x = {"gauss": lambda: rng.standard_normal(50_000),
         "relu": lambda: np.maximum(rng.standard_normal(50_000), 0),
         "outliers": lambda: np.concatenate([rng.exponential(0.5, 50_000), [40.0] * 5])}[dist]()
    s = TensorStats("t", num_bins=256)
    s.update(np.asarray(x, np.float32))
    got = mse_amax(s.hist, s.hist_max, 127, 128)
    assert got == pytest.approx(reference_mse_amax(s.hist, s.hist_max), rel=1e-9)


def test_mse_clips_a_gaussian_near_four_sigma():
    s = TensorStats("g")
    s.update(np.random.default_rng(0).standard_normal(400_000).astype(np.float32))
    amax = mse_amax(s.hist, s.hist_max)
    assert 3.3 < amax < 4.5 < s.absmax  # the known 8-bit optimum is ~3.9 sigma; minmax would keep ~5


def test_logit_error_metrics():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    e = logit_error(ref, ref)
    assert e == {"mean_abs": 0.0, "centered_cosine": pytest.approx(1.0), "top1": 1.0}
    e = logit_error(ref, ref[::-1])
    assert e["mean_abs"] == pytest.approx(4 / 3) and e["centered_cosine"] == pytest.approx(-1.0) and e["top1"] == 0


@pytest.fixture(scope="module")
def auto_run(resnet18_fp32, tmp_path_factory):
    fp32, _ = resnet18_fp32
    out = tmp_path_factory.mktemp("auto")
    cfg = CalibrationConfig(calib_data="synthetic", calib_size=16, shape=(8, 3, 64, 64), target="both", holdout=8)
    return fp32, out, cfg, run_int8_stage(fp32, None, out, "resnet18", cfg)


def test_auto_is_the_default_and_keeps_the_best_scored_method(auto_run):
    fp32, out, cfg, res = auto_run
    assert CalibrationConfig().method == "auto"
    sel = res.calibration["selection"]
    assert res.calibration["method"] == "auto" and sel["targets"] == ["onnxruntime", "tensorrt"]
    assert set(sel["scores"]) == set(METHODS)
    # each flavour gets the method with the lowest error for it; the TensorRT table carries the tensorrt flavour's
    best = {t: min(sel["scores"], key=lambda m: sel["scores"][m]["per_target"][t]["mean_abs"])
            for t in ("onnxruntime", "tensorrt")}
    assert sel["per_target"] == best == res.calibration["chosen_per_target"]
    assert sel["chosen"] == res.calibration["chosen"] == best["tensorrt"]
    for m, score in sel["scores"].items():
        assert set(score["per_target"]) == {"onnxruntime", "tensorrt"}
        assert score["mean_abs"] == pytest.approx(np.mean([t["mean_abs"] for t in score["per_target"].values()]))
    # the ranges written are the chosen methods', derived from one collection of statistics
    cache = CalibrationCache.load(res.cache)
    assert cache.method == "auto" and cache.chosen_method == best["tensorrt"]
    prepared = prepare(fp32, out / "check.prep.onnx")
    src = make_source("synthetic", _prep(fp32), batch_size=8, size=16, shape=(8, 3, 64, 64), holdout=8)
    stats = collect(prepared, src)
    for target, method in best.items():
        expected = stats.ranges(MethodConfig(method))
        got = cache.ranges_for(target)
        assert {k: r.amax for k, r in got.items()} == pytest.approx({k: r.amax for k, r in expected.items()})
        assert cache.method_for(target) == method
        # the INT8 files say which method was used and that auto chose it
        props = {p.key: p.value for p in onnx.load(str(res.artifacts[target])).metadata_props}
        assert props["calibration_method"] == method and props["calibration_choice"] == "auto"
        assert any(f"{method} for the {target} flavour" in n for n in res.notes)
    reloaded = CalibrationCache.load(res.cache)
    assert {t: reloaded.method_for(t) for t in best} == best


def test_auto_scores_are_real_held_out_errors(auto_run):
    """Re-scoring the chosen INT8 file independently gives the recorded error for its target."""
    fp32, out, cfg, res = auto_run
    src = make_source("synthetic", _prep(fp32), batch_size=8, size=16, shape=(8, 3, 64, 64), holdout=8)
    scorer = HeldoutScorer(fp32, list(src.heldout))
    sel = res.calibration["selection"]
    for target in ("onnxruntime", "tensorrt"):
        got = scorer.score(res.artifacts[target])["mean_abs"]
        method = sel["per_target"][target]
        assert got == pytest.approx(sel["scores"][method]["per_target"][target]["mean_abs"], rel=1e-5)


def test_auto_cache_is_reused_and_an_explicit_method_forces(auto_run, caplog):
    fp32, out, cfg, res = auto_run
    again = run_int8_stage(fp32, None, out, "resnet18", cfg)
    assert again.cache_reused and again.calibration["selection"] == res.calibration["selection"]
    forced = run_int8_stage(fp32, None, out, "resnet18",
                            CalibrationConfig(**{**cfg.__dict__, "method": "mse", "target": "tensorrt"}))
    assert not forced.cache_reused and forced.calibration["method"] == "mse" == forced.calibration["chosen"]
    assert "selection" not in forced.calibration
    assert CalibrationCache.load(forced.cache).selection is None


def _prep(fp32):
    from resnet_deploy.artifacts import preprocessing_of

    return preprocessing_of(fp32)


def test_calib_size_counts_calibrated_images_and_the_warning_says_so(resnet18_fp32, tmp_path, make_images, caplog):
    fp32, _ = resnet18_fp32
    make_images(tmp_path / "imgs", 20)
    with caplog.at_level(logging.WARNING, logger="resnet_deploy.calibration.sources"):
        src = make_source(tmp_path / "imgs", _prep(fp32), batch_size=4, size=8, holdout=6)
    assert src.num_images == 8 and src.heldout.num_images == 6  # held-out images come on top
    assert "calibrating on 8 images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnet_deploy.calibration.sources"):
        src = make_source(tmp_path / "imgs", _prep(fp32), batch_size=4, size=500, holdout=6)
    assert src.num_images == 14 and "calibrating on 14 images" in caplog.text  # what was actually used


# -- sensitivity and mixed precision ------------------------------------------------------------

@pytest.fixture(scope="module")
def r18_qdq(resnet18_fp32, tmp_path_factory):
    fp32, _ = resnet18_fp32
    tmp = tmp_path_factory.mktemp("sens")
    prepared = prepare(fp32, tmp / "prep.onnx")
    src = make_source("synthetic", _prep(fp32), batch_size=8, size=16, shape=(8, 3, 64, 64), holdout=8)
    ranges = collect(prepared, src).ranges(MethodConfig("entropy"))
    paths = {t: quantize(prepared, tmp / f"{t}.onnx", t, ranges) for t in ("onnxruntime", "tensorrt")}
    return fp32, paths, HeldoutScorer(fp32, list(src.heldout))


@pytest.mark.parametrize("target,dtype", [("onnxruntime", "float32"), ("tensorrt", "float16")])
def test_float_layers_takes_a_layer_out_of_int8(r18_qdq, target, dtype):
    fp32, paths, scorer = r18_qdq
    model = onnx.load(str(paths[target]))
    layers = quantized_layers(model)
    assert len(layers) == (21 if target == "onnxruntime" else 20)  # the tensorrt flavour's fc is float already
    name = layers[-1]
    mixed = float_layers(model, [name], dtype=dtype)
    onnx.checker.check_model(mixed)
    assert name not in quantized_layers(mixed) and len(quantized_layers(mixed)) == len(layers) - 1
    node = next(n for n in mixed.graph.node if n.name == name)
    inits = {i.name: i for i in mixed.graph.initializer}
    weight = onnx.numpy_helper.to_array(inits[node.input[1]])
    assert weight.dtype == np.dtype(dtype)
    if dtype == "float16":
        producers = {o: n for n in mixed.graph.node for o in n.output}
        assert producers[node.input[0]].op_type == "Cast"
    # the onnxruntime flavour's way: the layer reads the dequantized input, so its producer still has
    # its output read by the Q alone (ONNX Runtime's INT8 fusion needs that)
    conv = next(n for n in layers if "Conv" in n)
    kept = float_layers(model, [conv], dtype=dtype, quantized_inputs=True)
    node = next(n for n in kept.graph.node if n.name == conv)
    producers = {o: n for n in kept.graph.node for o in n.output}
    first = producers[node.input[0]]
    assert (first.op_type == "DequantizeLinear") or (dtype == "float16" and first.op_type == "Cast" and
                                                     producers[first.input[0]].op_type == "DequantizeLinear")
    # every layer out of INT8: closer to FP32 (the Q/DQ pairs other ops read, on the residual adds and
    # pools, stay: in the onnxruntime flavour every Conv output is still quantized for its consumers)
    all_float = float_layers(model, layers, dtype=dtype)
    assert not quantized_layers(all_float)
    e_all, e_int8 = scorer.score(all_float)["mean_abs"], scorer.score(model)["mean_abs"]
    assert e_all < e_int8


def test_sensitivity_cli_writes_json_chart_and_table(resnet18_fp32, tmp_path, capsys):
    from resnet_deploy.cli.main import main

    fp32, _ = resnet18_fp32
    out = tmp_path / "r18.int8.onnx"
    argv = ["calibrate", str(fp32), "--calib-data", "synthetic", "--calib-size", "16", "--holdout", "8",
            "--shape", "8x3x64x64", "--int8-target", "tensorrt", "--calib-method", "entropy", "--output", str(out),
            "--sensitivity", "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    report = json.loads(out.with_name("r18.int8.sensitivity.json").read_text())
    png = out.with_name("r18.int8.sensitivity.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = report["layers"]
    assert len(rows) == 20 and report["float_dtype"] == "float16" and report["scored_images"] == 8
    gains = [r["gain"] for r in rows]
    assert gains == sorted(gains, reverse=True)  # most sensitive first
    assert all(r["gain"] == pytest.approx(report["int8_error"]["mean_abs"] - r["mean_abs"]) for r in rows)
    assert rows[0]["layer"] in text and "most sensitive first" in text
    assert all("module" in r for r in rows)  # this TorchScript export keeps no weight names: empty


def test_module_names_come_from_the_weight_initializers():
    from onnx import TensorProto, helper

    from resnet_deploy.calibration.accuracy import module_names

    w8 = numpy_helper_from(np.ones((2, 1, 1, 1), np.int8), "layer4.0.conv1.weight_quantized")
    scale = numpy_helper_from(np.ones(2, np.float32), "s")
    wf = numpy_helper_from(np.ones((2, 2, 1, 1), np.float32), "onnx::Conv_7")
    nodes = [helper.make_node("DequantizeLinear", ["layer4.0.conv1.weight_quantized", "s"], ["w"], axis=0,
                              name="dq"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="node_Conv_1"),
             helper.make_node("Conv", ["y", "onnx::Conv_7"], ["z"], name="node_Conv_2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w8, scale, wf])
    assert module_names(helper.make_model(g)) == {"node_Conv_1": "layer4.0.conv1"}


def numpy_helper_from(arr, name):
    return onnx.numpy_helper.from_array(arr, name)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    roles = {a["role"] for a in manifest["artifacts"]}
    assert {"sensitivity-report", "sensitivity-chart"} <= roles
    assert manifest["int8"]["sensitivity"]["tensorrt"]["most_sensitive"][0] == rows[0]["layer"]


def test_target_error_keeps_layers_until_the_error_is_met(resnet18_fp32, tmp_path):
    fp32, _ = resnet18_fp32
    base = dict(calib_data="synthetic", calib_size=16, shape=(8, 3, 64, 64), holdout=8, method="entropy",
                target="onnxruntime")
    full = run_int8_stage(fp32, None, tmp_path / "full", "r18", CalibrationConfig(**base, sensitivity=True))
    sens = full.sensitivity["onnxruntime"]
    # a target between the INT8 error and the error with the most sensitive layer in float
    target = 0.5 * (sens.int8_error["mean_abs"] + sens.layers[0]["mean_abs"])
    res = run_int8_stage(fp32, None, tmp_path / "mixed", "r18", CalibrationConfig(**base, target_error=target))
    mp = res.mixed["onnxruntime"]
    assert mp.met and 1 <= len(mp.kept) and mp.error["mean_abs"] <= target
    assert mp.steps[-2]["mean_abs"] > target >= mp.steps[-1]["mean_abs"]  # it stopped as soon as it was met
    model = onnx.load(str(res.artifacts["onnxruntime"]))
    assert not set(mp.kept) & set(quantized_layers(model))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["int8_float_layers"].split(",") == mp.kept
    src = make_source("synthetic", _prep(fp32), batch_size=8, size=16, shape=(8, 3, 64, 64), holdout=8)
    assert HeldoutScorer(fp32, list(src.heldout)).score(res.artifacts["onnxruntime"])["mean_abs"] == \
        pytest.approx(mp.error["mean_abs"], rel=1e-5)
    assert res.parity["onnxruntime"].passed
    assert any("kept in float32 for --target-error" in n for n in res.notes)


def test_export_keep_float_uses_fp16_in_the_tensorrt_flavour(tmp_path):
    from resnet_deploy.export import ExportConfig, export_model

    cfg = ExportConfig(variant="18", output_dir=tmp_path, check_shapes=((2, 3, 64, 64),), exporter="torchscript",
                       int8=True, engine="never",
                       int8_options={"calib_data": "synthetic", "calib_size": 16, "target": "tensorrt", "holdout": 8,
                                     "method": "minmax", "keep_float": 2, "shape": (8, 3, 64, 64)})
    result = export_model(cfg)
    mixed = result.manifest.data["int8"]["mixed_precision"]["tensorrt"]
    assert mixed["num_kept"] == 2 and mixed["dtype"] == "float16" and mixed["keep_float"] == 2
    model = onnx.load(str(result.artifacts["int8.tensorrt"]))
    kept = [n for n in model.graph.node if n.name in mixed["kept"]]
    assert len(kept) == 2 and all(n.op_type == "Conv" for n in kept)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 4  # into and out of FP16 around each kept layer


def test_auto_scores_on_held_out_plus_unused_images(tiny_resnet, tmp_path, make_images):
    fp32, _ = tiny_resnet
    make_images(tmp_path / "imgs", 30)
    src = make_source(tmp_path / "imgs", _prep(fp32), batch_size=4, size=8, holdout=4)
    assert src.num_images == 8 and src.heldout.num_images == 4 and src.spare.num_images == 18
    assert not set(src.spare.items) & (set(src.items) | set(src.heldout.items))  # never calibrated on
    res = run_int8_stage(fp32, None, tmp_path / "out", "tiny",
                         CalibrationConfig(calib_data=str(tmp_path / "imgs"), calib_size=8, holdout=4, batch_size=4,
                                           target="onnxruntime", score_images=12))
    assert res.calibration["selection"]["scored_images"] == 12
    assert any("scored on 12 images never calibrated on (4 held out + 8 unused" in n for n in res.notes)
    assert sum(m.shape[0] for m in res.parity["onnxruntime"].results) == 4  # parity stays on the held-out images
