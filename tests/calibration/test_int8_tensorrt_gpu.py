"""On a GPU with TensorRT: the tensorrt-flavoured Q/DQ ONNX builds into an INT8 engine (strongly
typed, TensorRT 10 and 11) whose outputs match FP32 PyTorch within the INT8 tolerances."""

from __future__ import annotations

import pytest

from resnet_deploy.calibration import CalibrationConfig, run_int8_stage
from resnet_deploy.parity import compare, seeded_inputs, tolerances_for


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
    inputs = seeded_inputs([(8, 3, 64, 64), (3, 3, 96, 64)], seed=5)
    with TorchRunner(module) as ref, TensorRTRunner(built.engine) as trt:
        report = compare(ref, trt, inputs, precision="int8", tolerances=tolerances_for("int8"))
    assert report.passed, report.table()
