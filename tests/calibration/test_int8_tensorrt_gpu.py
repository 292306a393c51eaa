"""On a GPU with TensorRT: the tensorrt-flavoured Q/DQ ONNX builds into an INT8 engine (strongly
typed, TensorRT 10 and 11) whose outputs follow FP32 PyTorch.

The model has random weights (no download on a GPU host), whose logits are nearly the same for
every image, so top-1 agreement and raw cosine are coin flips (ResNet-18 at 1x3x128x128, seed 0,
flips top-1). INT8 is judged as the export judges random weights: on the centered cosine (logits
minus their per-class mean over the batch), over many images. Accuracy on trained weights is the
accuracy study's job (benchmarks/int8_accuracy.py)."""

from __future__ import annotations

import pytest

from resnet_deploy.calibration import CalibrationConfig, run_int8_stage
from dataclasses import replace

from resnet_deploy.parity import compare, seeded_inputs, tolerances_for

#: only the centered cosine gates (random weights: see the module docstring)
CENTERED = replace(tolerances_for("int8"), max_abs_rel=float("inf"), min_cosine=0.0, min_top1=0.0, min_top5=0.0)


@pytest.mark.gpu
def test_tensorrt_builds_an_int8_engine_from_the_qdq_onnx(resnet18_fp32, tmp_path):
    from resnet_deploy.runtime.tensorrt import BuildConfig, Profile, TensorRTRunner, build_engine
    from resnet_deploy.runtime.torch_runner import TorchRunner

    fp32, module = resnet18_fp32
    res = run_int8_stage(fp32, module, tmp_path, "resnet18",
                         CalibrationConfig(calib_data="synthetic", calib_size=32, shape=(8, 3, 64, 64),
                                           target="tensorrt"))
    cfg = BuildConfig(profiles=(Profile((1, 3, 64, 64), (8, 3, 64, 64), (16, 3, 96, 96)),))
    built = build_engine(res.artifacts["tensorrt"], tmp_path / "resnet18.int8.engine", cfg)
    assert built.precision == "int8"
    inputs = seeded_inputs([(16, 3, 64, 64), (16, 3, 96, 64), (16, 3, 96, 96)], seed=5)  # 48 images
    with TorchRunner(module) as ref, TensorRTRunner(built.engine) as trt:
        report = compare(ref, trt, inputs, precision="int8", tolerances=CENTERED)
    assert report.passed, report.table()
