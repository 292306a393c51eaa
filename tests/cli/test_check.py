"""``resnet-deploy check``: every backend available here against PyTorch, exit codes, clear errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_deploy.cli.main import main
from resnet_deploy.errors import UsageError
from resnet_deploy.runtime import InputError, load_runner, openvino_available

skdata = pytest.importorskip("skimage.data")

BACKENDS = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(not openvino_available(),
                                                                              reason="needs openvino"))]
SMALL = "1x3x64x64,3x3x64x96,2x3x96x96"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.chelsea()).save(d / "chelsea.jpg", quality=90)
    Image.fromarray(skdata.coffee()).save(d / "coffee.png")
    (d / "unreadable.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return d


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_pytorch_at_several_shapes(resnet18_onnx, capsys, tmp_path, backend):
    report = tmp_path / "parity.json"
    code, out, _ = run(capsys, resnet18_onnx, "--backend", backend, "--shapes", SMALL, "--json", report)
    assert code == 0, out
    assert f"backend: {backend}" in out and "PASSED" in out
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["candidate"]["backend"] == backend
    assert data["reference"]["backend"] == "torch"
    assert [r["shape"] for r in data["results"]] == [[1, 3, 64, 64], [3, 3, 64, 96], [2, 3, 96, 96]]
    worst = data["worst"]
    assert worst["max_abs"] < 1e-3 and worst["min_centered_cosine"] > 0.9999


def test_real_images_and_saved_batches(resnet18_onnx, photos, capsys, tmp_path):
    batches = tmp_path / "inputs.npz"
    rng = np.random.default_rng(0)
    np.savez(batches, a=rng.standard_normal((2, 3, 64, 64)).astype(np.float32),
             b=rng.standard_normal((3, 80, 72)))  # one image, float64: batched and cast
    code, out, err = run(capsys, resnet18_onnx, "--backend", "onnxruntime", "--images", photos, "--inputs", batches,
                         "--json", "-")
    assert code == 0
    data = json.loads(out)
    shapes = [r["shape"] for r in data["results"]]
    assert shapes == [[2, 3, 224, 224], [2, 3, 64, 64], [1, 3, 80, 72]]  # the 2 readable photos, then the npz
    assert "unreadable.jpg" in err


def test_mismatch_exits_1(resnet18_onnx, capsys):
    # other random weights than the artifact's: outputs disagree
    code, out, _ = run(capsys, resnet18_onnx, "--backend", "onnxruntime", "--shapes", "2x3x64x64", "--seed", "1")
    assert code == 1
    assert "FAILED" in out and "FAIL:" in out


def test_tolerance_overrides(resnet18_onnx, capsys):
    code, out, _ = run(capsys, resnet18_onnx, "--backend", "onnxruntime", "--shapes", "2x3x64x64",
                       "--max-abs-rel", "1e-15")
    assert code == 1 and "max abs / max|ref|" in out
    code, _, _ = run(capsys, resnet18_onnx, "--backend", "onnxruntime", "--shapes", "2x3x64x64",
                     "--precision", "fp16")
    assert code == 0


@pytest.mark.skipif(not openvino_available(), reason="needs openvino")
def test_reference_other_artifact(resnet18_onnx, capsys):
    code, out, _ = run(capsys, resnet18_onnx, "--backend", "openvino", "--reference", resnet18_onnx,
                       "--reference-backend", "onnxruntime", "--shapes", "1x3x64x64,2x3x64x96")
    assert code == 0
    assert "reference: onnxruntime" in out and "openvino:fp32 vs onnxruntime" in out


def test_foreign_onnx_needs_a_variant(tmp_path, capsys):
    path = tmp_path / "foreign.onnx"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose: a plain ONNX
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}})
    code, _, err = run(capsys, path, "--backend", "onnxruntime", "--shapes", "1x3x64x64")
    assert code == 2 and "carries no 'variant' metadata" in err


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "does not exist"),
    (["{corrupt_onnx}", "--backend", "onnxruntime"], "corrupt.onnx"),
    (["{corrupt_onnx}", "--backend", "torch"], ""),  # a file is not a variant name: still a clean exit 2
    (["{onnx}", "--shapes", "1x3x64"], "bad shape"),
    (["{onnx}", "--backend", "onnxruntime", "--shapes", "1x4x64x64"], "must be Nx3xHxW"),
    (["{onnx}", "--inputs", "{missing}"], "does not exist"),
    (["{corrupt_engine}", "--device", "cuda"], ""),
])
def test_usage_errors_exit_2(resnet18_onnx, tmp_path, capsys, argv, message):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 definitely not a protobuf" * 4)
    engine = tmp_path / "corrupt.engine"
    engine.write_bytes(b"not an engine" * 8)
    names = {"missing": tmp_path / "nope.onnx", "corrupt_onnx": corrupt, "corrupt_engine": engine,
             "onnx": resnet18_onnx}
    code, _, err = run(capsys, *[a.format(**names) for a in argv])
    assert code == 2
    assert err.startswith("error: ") or "error:" in err
    assert message in err


# -- the runner validation and load errors every check relies on --------------------------------

@pytest.mark.parametrize("backend", ["torch", *BACKENDS])
@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 64, 64), np.float32), "rank 3"),
    (np.zeros((1, 1, 64, 64), np.float32), "channels must be 3"),
    (np.zeros((1, 3, 64, 64), np.float64), "got dtype float64"),
    (np.zeros((1, 3, 64, 64), np.uint8), "got dtype uint8"),
])
def test_runner_validation(resnet18_onnx, backend, array, message):
    artifact = "resnet18" if backend == "torch" else resnet18_onnx
    with load_runner(artifact, backend=backend) as runner:
        with pytest.raises(InputError, match=message):
            runner.infer(array)


def test_corrupt_engine_is_a_clear_error(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00garbage" * 16)
    for device in ("cpu", "cuda"):
        with pytest.raises(UsageError) as info:
            load_runner(engine, device=device)
        assert str(info.value)  # TensorRT missing, no CUDA device, or not a valid engine: said in words


@pytest.mark.skipif(not openvino_available(), reason="needs openvino")
def test_corrupt_onnx_in_openvino(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage-not-onnx" * 10)
    with pytest.raises(UsageError, match="bad.onnx"):
        load_runner(bad, backend="openvino")


# -- fused preprocessing and engine profiles -----------------------------------------------------

@pytest.fixture(scope="module")
def fused_onnx(tmp_path_factory):
    """ResNet-18 (random weights, seed 0) taking uint8 NHWC pictures (``export --fuse-preprocess``)."""
    from resnet_deploy.export import ExportConfig, export_model

    cfg = ExportConfig(variant="18", fuse_preprocess=True, output_dir=tmp_path_factory.mktemp("fused"),
                       exporter="torchscript", simplify=False, check_shapes=((1, 3, 64, 64), (2, 3, 64, 96)))
    return export_model(cfg).onnx_path


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_preprocess_artifact(fused_onnx, photos, capsys, backend):
    code, out, _ = run(capsys, fused_onnx, "--backend", backend, "--shapes", "1x3x64x64,2x3x96x64",
                       "--images", photos, "--json", "-")
    assert code == 0
    data = json.loads(out)
    # NxCxHxW as typed -> NHWC uint8 for the runner; the photos are resized and cropped, not normalized
    assert [r["shape"] for r in data["results"]] == [[1, 64, 64, 3], [2, 96, 64, 3], [2, 224, 224, 3]]


class _ProfileRunner:
    """Only what check_inputs reads: an input spec with an engine profile."""

    def __init__(self) -> None:
        from resnet_deploy.runtime.base import TensorSpec

        self.inputs = [TensorSpec("input", np.dtype(np.float32), (-1, 3, -1, -1), min_shape=(1, 3, 64, 64),
                                  opt_shape=(4, 3, 224, 224), max_shape=(8, 3, 256, 256))]

    @property
    def input(self):
        return self.inputs[0]


def test_profile_shapes_are_always_checked():
    from resnet_deploy.check import CheckConfig, check_inputs
    from resnet_deploy.models.transforms import Preprocessing

    runner = _ProfileRunner()
    batches = check_inputs(CheckConfig(artifact="x.engine"), runner, Preprocessing(), seed=0)
    # 3x3x160x288 and 2x3x320x320 are outside the profile and dropped from the defaults; min, opt, max added
    assert [b.shape for b in batches] == [(1, 3, 224, 224), (1, 3, 64, 64), (4, 3, 224, 224), (8, 3, 256, 256)]
    assert not np.allclose(batches[2][0], batches[2][1], atol=0.1)  # inputs are not all alike
    explicit = check_inputs(CheckConfig(artifact="x.engine", shapes=((2, 3, 96, 96),)), runner, Preprocessing(), 0)
    assert [b.shape for b in explicit] == [(2, 3, 96, 96), (1, 3, 64, 64), (4, 3, 224, 224), (8, 3, 256, 256)]
