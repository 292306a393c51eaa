"""ONNX export: dynamic N/H/W, metadata, opsets, verification, the CLI, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from resnet_deploy import parity
from resnet_deploy.cli.main import main
from resnet_deploy.errors import UsageError
from resnet_deploy.export import ExportConfig, Manifest, export_model, parse_shape
from resnet_deploy import _io
from resnet_deploy.runtime import load_runner
from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_dynamic_dims_and_metadata(resnet18_onnx):
    model = onnx.load(str(resnet18_onnx))
    assert _dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert _dims(model.graph.output[0])[0] == "batch"
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["variant"] == "resnet18" and meta["weights"] == "random" and meta["num_classes"] == "1000"
    prep = json.loads(meta["preprocessing"])
    assert prep["mean"] == [0.485, 0.456, 0.406] and prep["resize_size"] == 256 and prep["crop_size"] == 224
    assert meta["input_layout"] == "NCHW" and meta["opset"] == "18"
    assert "torch" in json.loads(meta["producer_versions"])


def test_odd_sizes_match_pytorch(resnet18_onnx):
    """Any batch and resolution through one ONNX, including 97x131 (not a multiple of 32)."""
    from resnet_deploy.models import create_model
    from resnet_deploy.runtime.torch_runner import TorchRunner

    model, _ = create_model("18")
    shapes = [(1, 3, 224, 224), (3, 3, 160, 288), (2, 3, 320, 320), (2, 3, 97, 131), (5, 3, 33, 47)]
    with TorchRunner(model) as ref, OnnxRuntimeRunner(resnet18_onnx) as cand:
        report = parity.compare(ref, cand, parity.seeded_inputs(shapes))
    assert report.passed, report.table()
    assert [tuple(m.shape) for m in report.results] == shapes


def test_manifest_lists_the_artifact_and_parity(resnet18_onnx):
    m = Manifest.load(resnet18_onnx.parent)
    (entry,) = m.artifacts()
    assert entry["path"] == "resnet18.onnx" and entry["precision"] == "fp32" and entry["opset"] == 18
    assert entry["size_bytes"] == resnet18_onnx.stat().st_size and len(entry["sha256"]) == 64
    assert m.data["parity"]["fp32"]["passed"] is True
    assert m.data["input"]["dynamic_dims"] == ["batch", "height", "width"]
    assert {"load model", "verify FP32 ONNX against PyTorch"} <= set(m.data["timings_s"])
    assert "torch" in m.data["versions"] and "onnxruntime" in m.data["versions"]


def test_dynamo_export_of_resnet50_at_three_shapes(tmp_path):
    """The default exporter (dynamo, opset 18) on ResNet-50, checked at the issue's three shapes."""
    result = export_model(ExportConfig(variant="50", output_dir=tmp_path))
    report = result.parity["fp32"]
    assert report.passed, report.table()
    assert [tuple(m.shape) for m in report.results] == [(1, 3, 224, 224), (3, 3, 160, 288), (2, 3, 320, 320)]
    worst = report.worst()
    assert worst["max_abs"] < 1e-3 and worst["min_centered_cosine"] > 0.9999
    assert onnx.load(str(result.onnx_path)).metadata_props  # metadata survives simplification


def test_embedding_head_normalized(tmp_path):
    result = export_model(ExportConfig(variant="18", head="embedding", normalize=True, output_dir=tmp_path,
                                       check_shapes=((2, 3, 64, 64),), exporter="torchscript"))
    assert result.onnx_path.name == "resnet18-embedding.onnx"
    with load_runner(result.onnx_path, backend="onnxruntime") as r:
        assert r.outputs[0].name == "embedding"
        emb = r.infer(parity.seeded_inputs([(3, 3, 96, 80)])[0])
    assert emb.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_opset_17_needs_the_torchscript_exporter(tmp_path):
    with pytest.raises(UsageError, match="writes opset >= 18 only"):
        export_model(ExportConfig(variant="18", opset=17, output_dir=tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    result = export_model(ExportConfig(variant="18", opset=17, exporter="torchscript", output_dir=tmp_path / "b",
                                       check_shapes=((1, 3, 64, 64),)))
    assert [o.version for o in onnx.load(str(result.onnx_path)).opset_import if o.domain == ""] == [17]


def test_external_data_above_the_threshold(tmp_path, monkeypatch):
    """Models near protobuf's 2 GB limit get their weights in a .data file (threshold lowered here)."""
    monkeypatch.setattr(_io, "EXTERNAL_DATA_THRESHOLD", 1_000_000)
    result = export_model(ExportConfig(variant="18", output_dir=tmp_path, check_shapes=((1, 3, 64, 64),),
                                       exporter="torchscript"))
    data = tmp_path / "resnet18.onnx.data"
    assert data.is_file() and data.stat().st_size > 40_000_000
    assert result.onnx_path.stat().st_size < 1_000_000
    assert result.parity["fp32"].passed


def test_parse_shape():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(UsageError, match="bad shape '1x3x224'"):
        parse_shape("1x3x224")
    with pytest.raises(UsageError, match="bad shape"):
        parse_shape("axbxcxd")


# -- the CLI ----------------------------------------------------------------------------------------

def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "exp"
    rc = main(["export", "--variant", "18", "--output", str(out), "--check-shapes", "1x3x64x64,2x3x97x131",
               "--exporter", "torchscript"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "resnet18.onnx" in text and "ok (max abs" in text and "manifest:" in text
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "resnet18.onnx"]


def test_resnet_export_entry_point_is_export(tmp_path):
    from resnet_deploy.cli.main import export_main

    assert export_main(["--variant", "18", "--output", str(tmp_path), "--check-shapes", "1x3x64x64",
                        "--exporter", "torchscript"]) == 0
    assert (tmp_path / "resnet18.onnx").is_file()


@pytest.mark.parametrize("argv,message", [
    (["--variant", "resnet51"], "unknown variant 'resnet51'; choose one of"),
    (["--variant", "18", "--weights", "/nonexistent.pth"], "does not exist"),
    (["--variant", "18", "--check-shapes", "1x3x16x16"], "too small for the network"),
    (["--variant", "18", "--opset", "17"], "--exporter torchscript"),
    (["--variant", "18", "--int8"], "--int8 needs a calibration set"),
    (["--variant", "18", "--engine", "always"], "add --fp16 or --int8"),
])
def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys, argv, message):
    out = tmp_path / "exp"
    assert main(["export", "--output", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_cli_corrupt_weights_exits_2(tmp_path, capsys):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"garbage")
    assert main(["export", "--variant", "18", "--weights", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "cannot read weights file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_unwritable_output_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", "--variant", "18", "--output", str(blocker / "sub")]) == 2
    assert "cannot create output directory" in capsys.readouterr().err


def test_cli_failed_parity_exits_1_and_keeps_artifacts(tmp_path, capsys, monkeypatch):
    impossible = parity.Tolerances(max_abs_rel=0.0, min_cosine=1.1, min_centered_cosine=1.1, min_top1=1.0,
                                   min_top5=1.0)
    monkeypatch.setitem(parity.DEFAULT_TOLERANCES, "fp32", impossible)
    out = tmp_path / "exp"
    assert main(["export", "--variant", "18", "--output", str(out), "--check-shapes", "1x3x64x64",
                 "--exporter", "torchscript"]) == 1
    assert "parity check failed for fp32" in capsys.readouterr().err
    assert (out / "resnet18.onnx").is_file()
    assert json.loads((out / "manifest.json").read_text())["parity"]["fp32"]["passed"] is False


def test_no_temporary_files_left_behind(resnet18_onnx):
    assert not [p for p in resnet18_onnx.parent.iterdir() if p.name.endswith(".tmp")]


def test_fuse_preprocess_takes_uint8_nhwc(tmp_path):
    """The fused graph on uint8 crops equals the plain graph on normalized float input."""
    from resnet_deploy.models.transforms import IMAGENET_V1

    fused = export_model(ExportConfig(variant="18", fuse_preprocess=True, output_dir=tmp_path / "f",
                                      check_shapes=((2, 3, 64, 64),), exporter="torchscript"))
    plain = export_model(ExportConfig(variant="18", output_dir=tmp_path / "p", check_shapes=((1, 3, 64, 64),),
                                      exporter="torchscript"))
    images = np.random.default_rng(0).integers(0, 256, (2, 72, 56, 3), dtype=np.uint8)
    mean, std = np.array(IMAGENET_V1.mean, np.float32), np.array(IMAGENET_V1.std, np.float32)
    normalized = ((images.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy()
    with load_runner(fused.onnx_path, backend="onnxruntime") as f, load_runner(plain.onnx_path,
                                                                               backend="onnxruntime") as p:
        assert f.input.dtype == np.uint8 and f.input.shape == ("batch", "height", "width", 3)
        np.testing.assert_allclose(f.infer(images), p.infer(normalized), rtol=1e-4, atol=1e-4)
        with pytest.raises(UsageError, match="got dtype float32, expected uint8"):
            f.infer(normalized.transpose(0, 2, 3, 1).copy())


@pytest.mark.parametrize("variant", ["152", "resnext101_64x4d"])
def test_the_largest_variants_export(tmp_path, variant):
    """ResNet-152 (240 MB) and ResNeXt-101 64x4d (333 MB) stay under protobuf's 2 GB limit and verify.
    (The dynamo exporter takes ~45 s each here; the exporter choice is tested on ResNet-50 above.)"""
    result = export_model(ExportConfig(variant=variant, output_dir=tmp_path, check_shapes=((2, 3, 64, 64),),
                                       exporter="torchscript", simplify=False))
    assert result.parity["fp32"].passed
    assert not (tmp_path / f"{result.onnx_path.name}.data").exists()


def test_int8_parity_gates_real_weights_and_informs_for_random_ones(tmp_path, capsys, monkeypatch):
    """INT8 of random weights is reported, not gating (their per-image signal is below INT8's
    resolution); with a real checkpoint the same failure exits 1."""
    import torch

    from resnet_deploy.models import create_model

    impossible = parity.Tolerances(max_abs_rel=0.0, min_cosine=1.1, min_centered_cosine=1.1, min_top1=1.0,
                                   min_top5=1.0)
    monkeypatch.setitem(parity.DEFAULT_TOLERANCES, "int8", impossible)
    common = ["--variant", "18", "--check-shapes", "2x3x64x64", "--exporter", "torchscript", "--int8",
              "--calib-data", "synthetic", "--calib-size", "24", "--calib-shape", "8x3x64x64",
              "--int8-target", "onnxruntime"]
    assert main(["export", "--output", str(tmp_path / "r"), *common]) == 0
    out = capsys.readouterr().out
    assert "informational" in out and "INT8 parity with RANDOM weights is informational" in out
    ckpt = tmp_path / "w.pth"
    torch.save(create_model("18", seed=5)[0].state_dict(), ckpt)
    assert main(["export", "--output", str(tmp_path / "w"), "--weights", str(ckpt), *common]) == 1
    assert "parity check failed for int8.onnxruntime" in capsys.readouterr().err
