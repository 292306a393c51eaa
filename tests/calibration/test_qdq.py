"""Q/DQ ONNX for both targets: the onnxruntime flavour runs on ONNX Runtime CPU within the INT8
tolerances of PyTorch FP32; the tensorrt flavour has a Q/DQ pair in front of every Conv, int8
per-channel weights, symmetric zero points, and Q/DQ on the residual input of every residual Add."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from resnet_deploy.artifacts import preprocessing_of, read_metadata
from resnet_deploy.calibration import CalibrationConfig, qdq_summary, run_int8_stage
from resnet_deploy.calibration.qdq import prepare, residual_input
from resnet_deploy.parity import tolerances_for


@pytest.fixture(scope="module")
def r18_int8(resnet18_fp32, tmp_path_factory):
    fp32, module = resnet18_fp32
    out = tmp_path_factory.mktemp("r18_int8")
    cfg = CalibrationConfig(calib_data="synthetic", calib_size=32, shape=(8, 3, 64, 64), target="both",
                            method="percentile")
    return fp32, run_int8_stage(fp32, module, out, "resnet18", cfg)


def _conv_count(path):
    return sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)


def test_both_flavours_pass_int8_parity_on_heldout_images(r18_int8):
    _, res = r18_int8
    assert set(res.artifacts) == {"onnxruntime", "tensorrt"}
    tol = tolerances_for("int8")
    for target, report in res.parity.items():
        assert report.passed, report.table()
        assert report.precision == "int8" and report.tolerances == tol
        assert report.reference["backend"] == "torch" and report.candidate["artifact"] == str(res.artifacts[target])
        shapes = {tuple(m.shape) for m in report.results}
        assert shapes == {(8, 3, 64, 64)}  # held-out images at the calibration shape
        assert sum(m.shape[0] for m in report.results) == res.calibration["heldout_images"] == 16
        w = report.worst()
        assert w["min_centered_cosine"] >= tol.min_centered_cosine and w["max_abs"] > 0  # INT8 is not FP32
        assert res.parity_files[target].is_file()


def test_tensorrt_flavour_has_qdq_in_front_of_every_conv(r18_int8):
    fp32, res = r18_int8
    s = qdq_summary(res.artifacts["tensorrt"])
    convs = _conv_count(fp32)
    assert convs == 20
    assert s["Conv"] == {"count": convs, "input_qdq": convs, "weight_dq": convs}
    assert s["Gemm"] == {"count": 1, "input_qdq": 0, "weight_dq": 0}  # the fc stays in float by default
    assert s["Add"]["count"] == 8 and s["Add"]["input_qdq"] == 8  # every residual add
    assert s["zero_points"] == [0] and s["zero_point_dtypes"] == ["int8"]  # symmetric int8 only
    # one Q/DQ pair per quantized activation tensor; weights are int8 initializers with a DQ only
    model = onnx.load(str(res.artifacts["tensorrt"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dq) == convs
    for n in weight_dq:
        w, scale = inits[n.input[0]], inits[n.input[1]]
        assert w.dtype == np.int8 and np.abs(w).max() <= 127
        axis = next(a.i for a in n.attribute if a.name == "axis")
        assert scale.shape == (w.shape[axis],)  # per output channel
    assert s["QuantizeLinear"] == s["DequantizeLinear"] - len(weight_dq)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_residual_input_is_the_skip_branch(r18_int8):
    fp32, res = r18_int8
    model = onnx.load(str(res.artifacts["tensorrt"]))
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq_in = []
    for n in model.graph.node:
        if n.op_type != "Add":
            continue
        quantized = [i for i in n.input if producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"]
        assert len(quantized) == 1  # only the residual input: the add fuses into the other branch's Conv
        t = producers[producers[quantized[0]].input[0]].input[0]  # DQ <- Q <- tensor
        qdq_in.append(producers[t].op_type if t in producers else "graph input")
    # ResNet-18: three downsample blocks (their residual is the 1x1 conv), five identity blocks
    assert sorted(qdq_in).count("Conv") == 3 and len(qdq_in) == 8
    assert all(op in ("Conv", "Relu", "MaxPool") for op in qdq_in)
    # and on the FP32 graph the rule says the same
    fp = onnx.load(str(fp32))
    prod = {o: n for n in fp.graph.node for o in n.output}
    consts = {i.name for i in fp.graph.initializer}
    picks = [residual_input(n, prod, consts) for n in fp.graph.node if n.op_type == "Add"]
    assert None not in picks and len(picks) == 8


def test_onnxruntime_flavour_is_u8s8_per_channel(r18_int8):
    _, res = r18_int8
    model = onnx.load(str(res.artifacts["onnxruntime"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q_types = {inits[n.input[2]].dtype.name for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert q_types == {"uint8"}  # activations: asymmetric uint8
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
               and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4]
    assert len(weights) == 20
    assert all(inits[n.input[1]].shape == (inits[n.input[0]].shape[0],) for n in weights)  # per channel
    assert all(not inits[n.input[2]].any() for n in weights)  # symmetric weights
    # the logits leave the graph in float: no Q/DQ rounding them to 256 levels at the very end
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer[model.graph.output[0].name].op_type == "Gemm"


def test_qdq_counts_per_op_type_in_each_flavour(r18_int8):
    """The placement, counted per op type on ResNet-18 (20 Conv, 8 residual Add, 1 MaxPool, 1 pool, 1 fc)."""
    _, res = r18_int8
    trt = res.qdq["tensorrt"]["by_op"]
    assert trt["Conv"] == {"nodes": 20, "dq_inputs": 40, "q_outputs": 3}  # activation + weight; 3 downsample residuals
    assert trt["Add"] == {"nodes": 8, "dq_inputs": 8, "q_outputs": 0}  # the residual input only
    assert trt["MaxPool"] == {"nodes": 1, "dq_inputs": 1, "q_outputs": 1}  # INT8 max pool
    assert trt["Gemm"] == {"nodes": 1, "dq_inputs": 0, "q_outputs": 0}  # fc in float
    pool = next(op for op in ("GlobalAveragePool", "ReduceMean") if op in trt)  # TorchScript / dynamo export
    shape_op = next(op for op in ("Flatten", "Reshape") if op in trt)
    assert trt[pool]["dq_inputs"] == 0 and trt[shape_op]["dq_inputs"] == 0  # TensorRT propagates through them
    ort = res.qdq["onnxruntime"]["by_op"]
    assert ort["Conv"] == {"nodes": 20, "dq_inputs": 60, "q_outputs": 20}  # activation, weight, int32 bias
    assert ort["GlobalAveragePool"] == {"nodes": 1, "dq_inputs": 1, "q_outputs": 1}  # the pool is quantized
    assert "ReduceMean" not in ort
    assert ort[shape_op] == {"nodes": 1, "dq_inputs": 0, "q_outputs": 0}  # runs on the uint8 tensor
    assert ort["Gemm"]["nodes"] == 1 and ort["Gemm"]["dq_inputs"] >= 2 and ort["Gemm"]["q_outputs"] == 0


def test_tensorrt_maxpool_input_shares_the_output_scale_and_scales_are_float32(r18_int8):
    _, res = r18_int8
    model = onnx.load(str(res.artifacts["tensorrt"]))
    assert {(o.domain or "", o.version) for o in model.opset_import} == {("", 18)}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    dq_in = producers[pool.input[0]]
    q_out = next(c for c in consumers[pool.output[0]] if c.op_type == "QuantizeLinear")
    assert dq_in.op_type == "DequantizeLinear" and dq_in.input[1] == q_out.input[1]  # one shared scale
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[n.input[1]].dtype == np.float32


def test_reshape_before_the_fc_runs_on_integers(r18_int8):
    """onnxruntime flavour: GlobalAveragePool -> Q -> Reshape -> DQ -> Gemm, no DQ -> Reshape -> Q -> DQ."""
    _, res = r18_int8
    model = onnx.load(str(res.artifacts["onnxruntime"]))
    producers = {o: n for n in model.graph.node for o in n.output}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    chain = [producers[gemm.input[0]]]
    while chain[-1].op_type != "GlobalAveragePool":
        chain.append(producers[chain[-1].input[0]])
    assert [n.op_type for n in chain][::2] == ["DequantizeLinear", "QuantizeLinear"]
    assert chain[1].op_type in ("Reshape", "Flatten") and chain[3].op_type == "GlobalAveragePool"


def test_reduce_mean_over_hw_becomes_global_average_pool():
    from onnx import TensorProto, helper

    from resnet_deploy.calibration.qdq import global_pool_as_gap

    def graph(axes, keepdims):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        ax = numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes")
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
        return helper.make_model(helper.make_graph([node], "g", [x], [y], [ax]),
                                 opset_imports=[helper.make_opsetid("", 18)])

    m = graph([-2, -1], 1)
    assert global_pool_as_gap(m) == 1 and m.graph.node[0].op_type == "GlobalAveragePool"
    assert list(m.graph.node[0].input) == ["x"]
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5)).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x.mean(axis=(2, 3), keepdims=True), rtol=1e-5)
    for axes, keep in (([1], 1), ([2, 3], 0)):  # not a global pool, or it drops the dims: left alone
        m = graph(axes, keep)
        assert global_pool_as_gap(m) == 0 and m.graph.node[0].op_type == "ReduceMean"


def test_quantize_fc_puts_the_fc_back_in_int8(resnet18_fp32, tmp_path):
    from resnet_deploy.calibration import MethodConfig, calibrate, make_source
    from resnet_deploy.calibration.qdq import qdq_by_op, quantize

    fp32, _ = resnet18_fp32
    prepared = prepare(fp32, tmp_path / "prep.onnx")
    src = make_source("synthetic", preprocessing_of(fp32), batch_size=4, size=8)
    ranges = calibrate(prepared, src, MethodConfig("minmax")).ranges
    on = qdq_by_op(quantize(prepared, tmp_path / "fc.onnx", "tensorrt", ranges, quantize_fc=True))
    off = qdq_by_op(quantize(prepared, tmp_path / "nofc.onnx", "tensorrt", ranges))
    assert on["Gemm"]["dq_inputs"] == 2 and off["Gemm"]["dq_inputs"] == 0
    assert on["Flatten"]["q_outputs"] == 1 and off["Flatten"]["q_outputs"] == 0  # the fc's input Q/DQ
    rest = {"Gemm", "Flatten"}
    assert {k: v for k, v in on.items() if k not in rest} == {k: v for k, v in off.items() if k not in rest}


def test_int8_files_carry_the_fp32_metadata(r18_int8):
    fp32, res = r18_int8
    for target, path in res.artifacts.items():
        meta = read_metadata(path)
        assert meta["precision"] == "int8" and meta["int8_target"] == target
        assert meta["calibration_method"] == "percentile" and int(meta["calibration_images"]) == 32
        assert preprocessing_of(path) == preprocessing_of(fp32)
        assert {o.domain for o in onnx.load(str(path)).opset_import} <= {"", "ai.onnx"}


def test_bn_folding_happens_inside(tiny_resnet, tmp_path):
    fp32, module = tiny_resnet
    before = onnx.load(str(fp32))
    assert any(n.op_type == "BatchNormalization" for n in before.graph.node)
    prepared = onnx.load(str(prepare(fp32, tmp_path / "prep.onnx")))
    assert not any(n.op_type == "BatchNormalization" for n in prepared.graph.node)
    res = run_int8_stage(fp32, module, tmp_path, "tiny",
                         CalibrationConfig(calib_data="synthetic", calib_size=16, shape=(8, 3, 64, 64),
                                           target="tensorrt", holdout=8))
    s = qdq_summary(res.artifacts["tensorrt"])
    # stem + 4 blocks x 2 + 3 downsample convs
    assert s["Conv"]["count"] == s["Conv"]["input_qdq"] == s["Conv"]["weight_dq"] == 12
    assert res.parity["tensorrt"].passed, res.parity["tensorrt"].table()
