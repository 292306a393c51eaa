"""FP32 ONNX -> FP16 ONNX: FP32 inputs and outputs, FP32 normalization tails, metadata, parity."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from resnet_deploy.artifacts import read_metadata
from resnet_deploy.errors import MissingDependencyError, UsageError
from resnet_deploy.export.fp16 import convert_to_fp16
from resnet_deploy.parity import compare, seeded_inputs
from resnet_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

SHAPES = [(2, 3, 64, 64), (1, 3, 96, 128)]


def elem_types(model) -> dict[str, int]:
    """Tensor name -> element type, after shape inference."""
    model = onnx.shape_inference.infer_shapes(model)
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def parity(fp32, fp16):
    with OnnxRuntimeRunner(fp32) as ref, OnnxRuntimeRunner(fp16) as cand:
        return compare(ref, cand, seeded_inputs(SHAPES, seed=0), precision="fp16")


@pytest.fixture(scope="module")
def normalized_embedding_onnx(tmp_path_factory):
    """ResNet-18 up to pooling, L2-normalized: ReduceL2 -> Clip -> Expand -> Div at the end (the dynamo
    exporter's graph, where onnxconverter-common's own keep_io_types fails)."""
    from resnet_deploy.export import export_onnx
    from resnet_deploy.models import create_model
    from resnet_deploy.models.heads import wrap_head

    model, _ = create_model("18")
    path = tmp_path_factory.mktemp("emb") / "resnet18-embedding.onnx"
    export_onnx(wrap_head(model, "embedding", normalize=True), path, output_name="embedding",
                sample_shape=(1, 3, 64, 64), metadata={"precision": "fp32", "head": "embedding"})
    return path


def test_fp16_keeps_fp32_io_copies_metadata_and_matches(resnet18_onnx, tmp_path):
    dst = convert_to_fp16(resnet18_onnx, tmp_path / "resnet18.fp16.onnx")
    model = onnx.load(str(dst))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    meta, src_meta = read_metadata(dst), read_metadata(resnet18_onnx)
    assert meta["precision"] == "fp16" and src_meta["precision"] == "fp32"
    assert meta["preprocessing"] == src_meta["preprocessing"] and meta["variant"] == src_meta["variant"]
    assert meta["fp16_converter"].startswith("onnxconverter-common")
    report = parity(resnet18_onnx, dst)
    assert report.passed, report.table()
    assert report.worst()["max_abs"] > 0  # it really computes in FP16
    assert dst.stat().st_size < 0.6 * resnet18_onnx.stat().st_size


def test_l2_normalization_tail_stays_fp32(normalized_embedding_onnx, tmp_path):
    dst = convert_to_fp16(normalized_embedding_onnx, tmp_path / "emb.fp16.onnx")
    model = onnx.load(str(dst))
    types = elem_types(model)
    tail = [n for n in model.graph.node if n.op_type in ("ReduceL2", "Div")]
    assert {n.op_type for n in tail} == {"ReduceL2", "Div"}
    for node in tail:
        data = [types[i] for i in node.input if types.get(i) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        assert data and all(t == TensorProto.FLOAT for t in data), node.name
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)  # the body is FP16
    (reduce_l2,) = [n.name for n in tail if n.op_type == "ReduceL2"]
    assert read_metadata(dst)["fp16_fp32_nodes"].split(",")[0] == reduce_l2
    report = parity(normalized_embedding_onnx, dst)
    assert report.passed, report.table()
    with OnnxRuntimeRunner(dst) as runner:
        norms = np.linalg.norm(runner.infer(seeded_inputs([(2, 3, 64, 64)])[0]), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_extra_ops_can_be_kept_fp32(normalized_embedding_onnx, tmp_path):
    # the dynamo graph pools with ReduceMean; keeping a mid-graph node FP32 must still give a graph ONNX
    # Runtime loads (onnxconverter-common leaves contradicting value_info entries behind otherwise)
    pools = ["GlobalAveragePool", "ReduceMean"]
    dst = convert_to_fp16(normalized_embedding_onnx, tmp_path / "r.fp16.onnx", op_block_list=pools)
    model = onnx.load(str(dst))
    types = elem_types(model)
    (pool,) = [n for n in model.graph.node if n.op_type in pools]
    assert types[pool.input[0]] == TensorProto.FLOAT and types[pool.output[0]] == TensorProto.FLOAT
    assert set(pools) <= set(read_metadata(dst)["fp16_fp32_ops"].split(","))
    report = parity(normalized_embedding_onnx, dst)
    assert report.passed, report.table()


def test_bad_input_is_refused(resnet18_onnx, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        convert_to_fp16(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    with pytest.raises(UsageError, match="must not overwrite its source"):
        convert_to_fp16(resnet18_onnx, resnet18_onnx)
    fp16 = convert_to_fp16(resnet18_onnx, tmp_path / "r.fp16.onnx")
    with pytest.raises(UsageError, match="already holds FP16 tensors"):
        convert_to_fp16(fp16, tmp_path / "r.fp16.fp16.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UsageError, match="not a readable ONNX file"):
        convert_to_fp16(tmp_path / "junk.onnx", tmp_path / "y.onnx")
    assert not (tmp_path / "y.onnx").exists()


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is not None, reason="ModelOpt is installed here")
def test_modelopt_missing_names_the_package(resnet18_onnx, tmp_path):
    with pytest.raises(MissingDependencyError, match="nvidia-modelopt"):
        convert_to_fp16(resnet18_onnx, tmp_path / "m.fp16.onnx", use_modelopt=True)
