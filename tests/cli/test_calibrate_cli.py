"""``resnet-deploy calibrate``: end to end on a small ResNet-18, and bad calibration inputs exit 2
with a message that says what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resnet_deploy.cli.main import main


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """ResNet-18 (random weights) exported at 64 px with a 64 px preprocessing record."""
    from resnet_deploy.export import export_onnx, make_dynamic
    from resnet_deploy.models import Preprocessing, create_model

    model, _ = create_model("18")
    path = tmp_path_factory.mktemp("cli_r18") / "resnet18.onnx"
    export_onnx(make_dynamic(model), path, exporter="torchscript", sample_shape=(2, 3, 64, 64),
                metadata={"preprocessing": Preprocessing(resize_size=73, crop_size=64).to_dict(),
                          "precision": "fp32", "input_layout": "NCHW"})
    return path


def _images(folder, count, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sub = folder / f"class_{i % 3}"
        sub.mkdir(exist_ok=True)
        img = np.clip(rng.uniform(0, 255, 3) + rng.normal(0, 40, (70, 90, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(sub / f"{i:03d}.jpg", quality=90)
    return folder


def test_calibrate_end_to_end(r18, tmp_path, capsys):
    images = _images(tmp_path / "calib", 24)
    out = tmp_path / "out" / "r18.int8.onnx"
    argv = ["calibrate", str(r18), "--calib-data", str(images), "--output", str(out), "--int8-target", "both",
            "--calib-size", "16", "--holdout", "8", "--batch-size", "8", "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    ort, trt = out.with_name("r18.int8.onnxruntime.onnx"), out.with_name("r18.int8.tensorrt.onnx")
    assert ort.is_file() and trt.is_file()
    assert "int8.onnxruntime" in text and "parity ok" in text and "(reused)" not in text
    manifest = json.loads((out.parent / "manifest.json").read_text())
    roles = sorted((a["role"], a["backend"]) for a in manifest["artifacts"])
    assert roles == sorted([("model", "onnxruntime"), ("model", "tensorrt"), ("calibration-cache", "any"),
                            ("calibration-table", "tensorrt"), ("parity-report", "onnxruntime"),
                            ("parity-report", "tensorrt")])
    assert manifest["parity"]["int8.onnxruntime"]["passed"] and manifest["parity"]["int8.tensorrt"]["passed"]
    assert manifest["int8"]["calibration"]["num_images"] == 16
    assert manifest["int8"]["calibration"]["batch_shape"] == [8, 3, 64, 64]
    cache = out.parent / "resnet18.int8.calib.json"
    assert json.loads(cache.read_text())["data"]["kind"] == "images"
    # the same request again: the cache is reused
    assert main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cache_reused"] is True and result["parity_passed"] == {"onnxruntime": True, "tensorrt": True}


@pytest.mark.parametrize("case", ["empty", "unreadable", "too_few", "channels", "foreign_cache"])
def test_bad_calibration_inputs_exit_2(r18, tmp_path, capsys, case):
    extra: list[str] = []
    if case == "empty":
        data, match = tmp_path / "empty", "no images found"
        (data / "nested").mkdir(parents=True)
    elif case == "unreadable":
        data, match = tmp_path / "broken", "cannot decode image"
        data.mkdir()
        for i in range(12):
            (data / f"{i}.jpg").write_bytes(b"not really a jpeg " * 10)
        extra = ["--holdout", "2"]
    elif case == "too_few":
        data, match = _images(tmp_path / "few", 3), "fewer than one batch of 8"
        extra = ["--holdout", "2"]
    elif case == "channels":
        data, match = tmp_path / "gray.npy", "1 channel(s); the model takes 3"
        np.save(data, np.zeros((16, 1, 64, 64), np.float32))
    else:
        data, match = "synthetic", "made for another model"
        cache = tmp_path / "foreign.calib.json"
        cache.write_text(json.dumps({"format": "resnet-deploy-calibration/1", "model": {"sha256": "0" * 64,
                                     "path": "elsewhere.onnx"}, "method": "entropy", "params": {}, "num_images": 1,
                                     "tensors": {}}))
        extra = ["--cache", str(cache), "--calib-size", "8", "--holdout", "2"]
    code = main(["calibrate", str(r18), "--calib-data", str(data), "--batch-size", "8", "-q",
                 "--output", str(tmp_path / "o.onnx"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and match in last
    assert not (tmp_path / "o.onnx").exists()


def test_missing_model_and_bad_shape_exit_2(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "none.onnx"), "--calib-data", "synthetic", "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["calibrate", str(tmp_path / "m.onnx"), "--calib-data", "synthetic", "--shape", "8x1x64x64",
                 "-q"]) == 2
    assert "must be Nx3xHxW" in capsys.readouterr().err


def test_export_and_calibrate_take_the_accuracy_options(capsys):
    from resnet_deploy.cli.export import config_from_args
    from resnet_deploy.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["export", "--int8", "--calib-data", "synthetic", "--sensitivity", "--quantize-fc",
                              "--target-error", "0.02", "--calib-method", "mse"])
    opts = config_from_args(args).int8_options
    assert opts["sensitivity"] is True and opts["quantize_fc"] is True and opts["target_error"] == 0.02
    assert opts["method"] == "mse" and "keep_float" not in opts
    plain = config_from_args(parser.parse_args(["export", "--int8", "--calib-data", "synthetic"])).int8_options
    assert not {"sensitivity", "quantize_fc", "target_error", "keep_float", "method"} & set(plain)  # defaults apply
    assert parser.parse_args(["calibrate", "m.onnx", "--calib-data", "x"]).calib_method == "auto"
    for argv in (["export", "--target-error", "0.1", "--keep-float", "2"],
                 ["calibrate", "m.onnx", "--calib-data", "x", "--target-error", "0.1", "--keep-float", "2"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
