"""The INT8 stage as the export runs it (``resnet-export --int8``), its typed config, and the
choices it records (target, calibration shape)."""

from __future__ import annotations

import importlib.util

import onnx
import pytest

from resnet_deploy.calibration import CalibrationConfig, run_int8_stage
from resnet_deploy.calibration.qdq import targets_for
from resnet_deploy.errors import MissingDependencyError, UsageError


def test_export_with_int8_writes_both_flavours_cache_and_reports(tmp_path):
    from resnet_deploy.export import ExportConfig, export_model

    cfg = ExportConfig(variant="18", output_dir=tmp_path, check_shapes=((2, 3, 64, 64),), exporter="torchscript",
                       int8=True, engine="never",
                       int8_options={"calib_data": "synthetic", "calib_size": 16, "target": "both", "holdout": 8,
                                     "method": "percentile"},
                       engine_options={"opt_shapes": ["8x3x64x64"]})
    result = export_model(cfg)
    assert {"fp32", "int8.onnxruntime", "int8.tensorrt"} <= set(result.artifacts)
    assert result.parity["int8.onnxruntime"].passed and result.parity["int8.tensorrt"].passed
    data = result.manifest.data
    roles = {(a["role"], a["backend"]) for a in data["artifacts"]}
    assert {("model", "onnxruntime"), ("model", "tensorrt"), ("calibration-cache", "any"),
            ("calibration-table", "tensorrt"), ("parity-report", "onnxruntime")} <= roles
    assert data["int8"]["calibration"]["batch_shape"] == [8, 3, 64, 64]
    assert data["int8"]["calibration"]["shape_reason"] == "the engine profile's opt shape"
    assert data["parity"]["int8.tensorrt"]["passed"] is True
    assert any("calibration shape 8x3x64x64" in n for n in result.notes)


def test_config_from_options_is_typed():
    c = CalibrationConfig.from_options({"calib_data": "x", "shape": [4, 3, 64, 64]}, seed=3)
    assert c.shape == (4, 3, 64, 64) and c.seed == 3
    with pytest.raises(UsageError, match="unknown INT8 option"):
        CalibrationConfig.from_options({"calib_data": "x", "per_channel": "False"})


@pytest.mark.parametrize("kw,match", [
    ({"calib_data": None}, "needs calibration data"),
    ({"holdout": 1}, "--holdout must be >= 2"),
    ({"method": "kl"}, "choose one of: auto, minmax, entropy, percentile, mse"),
    ({"target_error": 0.1, "keep_float": 2}, "not both"),
    ({"keep_float": 0}, "--keep-float must be >= 1"),
    ({"target_error": -1.0}, "--target-error must be >= 0"),
    ({"modelopt": True, "target": "tensorrt", "sensitivity": True}, "drop --modelopt"),
    ({"target": "gpu"}, "choose one of: auto, onnxruntime, tensorrt, both"),
    ({"shape": (4, 3, 64, 64), "batch_size": 8}, "disagree on the batch size"),
    ({"modelopt": True, "target": "onnxruntime"}, "--modelopt makes the tensorrt flavour"),
    ({"method": "entropy", "num_bins": 256}, "at least 2048 bins"),
])
def test_config_validation(kw, match):
    with pytest.raises(UsageError, match=match):
        CalibrationConfig(**{"calib_data": "synthetic", **kw}).validate()


def test_calibration_shape_choice_is_explained():
    assert CalibrationConfig(shape=(4, 3, 96, 96)).calibration_shape(64) == ((4, 3, 96, 96), "--calib-shape")
    shape, why = CalibrationConfig(profile_opt_shape=(16, 3, 224, 224)).calibration_shape(64)
    assert shape == (16, 3, 224, 224) and "opt shape" in why
    shape, why = CalibrationConfig(batch_size=4).calibration_shape(64)
    assert shape == (4, 3, 64, 64) and "crop size" in why


def test_auto_target_falls_back_to_onnxruntime_without_tensorrt():
    targets, why = targets_for("auto")
    if targets == ["tensorrt"]:
        pytest.skip("TensorRT and a GPU are usable here")
    assert targets == ["onnxruntime"] and "not usable" in why
    assert targets_for("both")[0] == ["onnxruntime", "tensorrt"]


def test_fused_preprocessing_export_is_refused(tiny_resnet, tmp_path):
    fp32, module = tiny_resnet
    m = onnx.load(str(fp32))
    for p in m.metadata_props:
        if p.key == "input_layout":
            p.value = "NHWC-uint8"
    onnx.save_model(m, str(tmp_path / "fused.onnx"))
    with pytest.raises(UsageError, match="fused preprocessing"):
        run_int8_stage(tmp_path / "fused.onnx", None, tmp_path, "fused",
                       CalibrationConfig(calib_data="synthetic", calib_size=8, target="onnxruntime", holdout=2))


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is not None, reason="ModelOpt is installed here")
def test_modelopt_missing_names_the_package(tiny_resnet, tmp_path):
    fp32, module = tiny_resnet
    with pytest.raises(MissingDependencyError, match="nvidia-modelopt"):
        run_int8_stage(fp32, module, tmp_path, "tiny",
                       CalibrationConfig(calib_data="synthetic", calib_size=8, shape=(8, 3, 64, 64),
                                         target="tensorrt", holdout=2, modelopt=True, method="minmax"))
