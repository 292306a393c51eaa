"""FP32 ONNX + activation ranges -> explicit INT8 (Q/DQ) ONNX, for two consumers.

``onnxruntime`` (CPU): ONNX Runtime's own ``quantize_static`` in QDQ format with uint8 activations
(asymmetric, zero point from the range) and per-channel symmetric int8 weights: the u8s8 layout its
CPU kernels run with VNNI/AMX. Measured for issue 5 on a 2-core AVX-512 VNNI machine, ResNet-50 at
224: ~12 ms vs ~42 ms FP32 at batch 1; int8 activations (s8s8) ran at ~33 ms and symmetric s8s8 at
~47 ms, which is why the CPU flavour differs from the TensorRT one. Our ranges are handed over
through ONNX Runtime's calibration cache (``calibration_cache_path``), so its calibrator does not
run again, and the Q/DQ pair it leaves on the graph output is removed (the logits stay float).
The global average pool is quantized: a ``ReduceMean`` over H, W with ``keepdims`` (what the
dynamic export writes) becomes ``GlobalAveragePool`` first, so its output gets a Q/DQ, and the
reshape before the fc then runs on the uint8 tensor (``Q -> Reshape -> DQ``) instead of
``DQ -> Reshape -> Q -> DQ``, the extra float requantize OpenVINO otherwise shows before the fc.

``tensorrt``: our own graph pass, placed as TensorRT's Q/DQ guidance asks:

* a Q/DQ pair (symmetric int8, zero point 0, scale ``amax / 127``) on the activation input of every
  Conv, Gemm and MatMul;
* weights stored as int8 initializers with a per-output-channel DequantizeLinear (what ModelOpt
  writes with ``dq_only``, accepted by TensorRT 10 and 11);
* a Q/DQ pair on the *residual* input of each residual Add (the shorter branch from the block's
  fork: the identity, or the downsample conv), so TensorRT fuses the Add into the INT8 Conv of the
  other branch and the add runs in INT8;
* a Q/DQ pair on the input of each MaxPool whose output is quantized, sharing the output's scale
  (max pooling commutes with a monotonic quantizer, so TensorRT runs it in INT8);
* the final Gemm/MatMul (the fc, whose output is a graph output) stays in float unless
  ``quantize_fc``: quantizing it costs about a third of the logit error for no measurable speed;
* nothing else: TensorRT propagates Q/DQ through ReLU and the reshapes itself. Scales are float32
  and the opset stays the export's (18).

Both flavours first go through ``quant_pre_process`` (BN folding and the other basic fusions,
shape inference), done here rather than by the user; the FP32 metadata (preprocessing record
included) is copied onto the INT8 files with ``precision=int8``.

With ``use_modelopt=True`` the tensorrt flavour comes from NVIDIA ModelOpt
(``modelopt.onnx.quantization.quantize``) when it is installed, fed with our ranges as a TensorRT
calibration table.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, UsageError
from .ranges import TensorRange

log = logging.getLogger(__name__)

TARGETS = ("onnxruntime", "tensorrt")
TARGET_CHOICES = ("auto", "onnxruntime", "tensorrt", "both")
#: Ops whose activation input gets a Q/DQ pair and whose constant weight is stored in int8 (tensorrt flavour).
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


# -- pre-processing ---------------------------------------------------------------------------

def prepare(fp32_onnx: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """BN folding (ONNX Runtime's basic fusions) and shape inference: what quantization needs."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(os.fspath(fp32_onnx), os.fspath(out_path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot prepare '{fp32_onnx}' for quantization (shape inference / BN folding): "
                         f"{first}") from exc
    return Path(out_path)


def _clean_opsets(model: Any) -> None:
    """Drop opset imports of domains no node uses (``quant_pre_process`` adds a handful)."""
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _finish(model: Any, out: Path, metadata: dict[str, Any] | None) -> Path:
    """Metadata, opset clean-up, full check, atomic save."""
    import onnx

    from ..artifacts import metadata_props
    from .._io import save_onnx

    _clean_opsets(model)
    if metadata is not None:
        del model.metadata_props[:]
        for key, value in metadata_props(metadata).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    model.producer_name = "resnet-deploy"
    onnx.checker.check_model(model)
    return save_onnx(model, out)


# -- onnxruntime flavour -----------------------------------------------------------------------

def drop_output_qdq(model: Any) -> int:
    """Remove a Q -> DQ pair that ends at a graph output (ONNX Runtime's quantizer puts one after the
    final Gemm): the consumer wants float logits, and rounding them to 256 levels only adds error
    (on a ResNet-50 with random weights, +-0.2 on every logit). Returns the number removed."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, int] = defaultdict(int)
    for n in model.graph.node:
        for i in n.input:
            consumers[i] += 1
    drop, rename = [], {}
    for out in model.graph.output:
        dq = producers.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or consumers[q.output[0]] != 1:
            continue
        drop += [id(q), id(dq)]
        rename[q.input[0]] = out.name
    if not drop:
        return 0
    kept = [n for n in model.graph.node if id(n) not in drop]
    for n in kept:
        for seq in (n.input, n.output):
            for i, name in enumerate(seq):
                if name in rename:
                    seq[i] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(rename)



def global_pool_as_gap(model: Any) -> int:
    """Rewrite ``ReduceMean(x, axes=[2, 3] or [-2, -1], keepdims=1)`` of a 4-D ``x`` as
    ``GlobalAveragePool(x)`` (same output). Returns the number rewritten."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done = 0
    for n in model.graph.node:
        if n.op_type != "ReduceMean":
            continue
        attrs = {a.name: a for a in n.attribute}
        if "keepdims" in attrs and attrs["keepdims"].i == 0:
            continue
        if "axes" in attrs:
            axes = list(attrs["axes"].ints)
        elif len(n.input) > 1 and n.input[1] in inits:
            axes = [int(a) for a in numpy_helper.to_array(inits[n.input[1]]).ravel()]
        else:
            continue
        if sorted(a % 4 for a in axes) != [2, 3]:
            continue
        n.op_type = "GlobalAveragePool"
        del n.input[1:]
        del n.attribute[:]
        done += 1
    return done


_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _same_qparams(a: Any, b: Any, inits: dict[str, Any]) -> bool:
    from onnx import numpy_helper

    for i in (1, 2):
        x = a.input[i] if len(a.input) > i else ""
        y = b.input[i] if len(b.input) > i else ""
        if x == y:
            continue
        if x not in inits or y not in inits:
            return False
        if not np.array_equal(numpy_helper.to_array(inits[x]), numpy_helper.to_array(inits[y])):
            return False
    return True


def reshape_in_integer(model: Any) -> int:
    """``Q(a) -> DQ -> Reshape -> Q(b) -> DQ`` with equal parameters becomes ``Q(a) -> Reshape -> DQ``:
    the reshape runs on the integer tensor and the float requantize after it goes. Returns the number
    of requantizes removed."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in g.output}
    drop: set[int] = set()
    done = 0
    for op in list(g.node):
        if op.op_type not in _SHAPE_OPS or id(op) in drop:
            continue
        dq_a = producers.get(op.input[0])
        if dq_a is None or dq_a.op_type != "DequantizeLinear" or dq_a.input[0] not in producers:
            continue
        q_b = consumers[op.output[0]]
        if len(q_b) != 1 or q_b[0].op_type != "QuantizeLinear" or op.output[0] in outputs:
            continue
        q_b = q_b[0]
        dq_b = consumers[q_b.output[0]]
        if len(dq_b) != 1 or dq_b[0].op_type != "DequantizeLinear" or not _same_qparams(dq_a, q_b, inits):
            continue
        dq_b = dq_b[0]
        op.input[0] = dq_a.input[0]  # the integer tensor
        dq_b.input[0] = op.output[0]
        for i in (1, 2):
            if len(dq_b.input) > i and len(dq_a.input) > i:
                dq_b.input[i] = dq_a.input[i]
        drop.add(id(q_b))
        if len(consumers[dq_a.output[0]]) == 1:
            drop.add(id(dq_a))
        done += 1
    if drop:
        kept = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(kept)
        _drop_unused_initializers(model)
        retyped = {n.output[0] for n in kept if n.op_type in _SHAPE_OPS}
        infos = [v for v in g.value_info if v.name not in retyped]  # now integer: let shape inference retype
        del g.value_info[:]
        g.value_info.extend(infos)
    return done


def _drop_unused_initializers(model: Any) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def quantize_onnxruntime(prepared: str | os.PathLike[str], out: str | os.PathLike[str],
                         ranges: dict[str, TensorRange], *, metadata: dict[str, Any] | None = None,
                         quantize_pool: bool = True) -> Path:
    """u8s8 QDQ with ONNX Runtime's quantizer, using ``ranges`` (no calibration run of its own).
    With ``quantize_pool``, the global average pool is quantized and the reshape before the fc runs
    on integers (see the module doc)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = TensorsData(CalibrationMethod.MinMax,
                       {name: TensorData(lowest=np.array(r.rmin, dtype=np.float32),
                                         highest=np.array(r.rmax, dtype=np.float32))
                        for name, r in ranges.items()})
    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    kwargs = dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                  activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                  calibrate_method=CalibrationMethod.MinMax, extra_options=options)
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-qdq.") as tmp:
        tmp_out = Path(tmp) / "int8.onnx"
        if quantize_pool:
            src = onnx.load(os.fspath(prepared))
            if global_pool_as_gap(src):
                prepared = Path(tmp) / "gap.onnx"
                onnx.save_model(src, str(prepared))
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            from onnxruntime.quantization.calibrate import save_tensors_data

            cache = Path(tmp) / "ranges.json"
            save_tensors_data(data, cache)
            quantize_static(os.fspath(prepared), tmp_out, calibration_data_reader=None,
                            calibration_cache_path=cache, **kwargs)
        else:  # pragma: no cover - onnxruntime < 1.24 has no cache argument: the quantizer it wraps
            from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
            from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
            from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

            model = load_model_with_shape_infer(Path(prepared))
            quantizer = QDQQuantizer(model, True, False, QuantType.QInt8, QuantType.QUInt8, data, [], [],
                                     list(set(QLinearOpsRegistry) | set(QDQRegistry)), options)
            quantizer.quantize_model()
            quantizer.model.save_model_to_file(str(tmp_out))
        model = onnx.load(str(tmp_out))
    drop_output_qdq(model)
    if quantize_pool:
        reshape_in_integer(model)
    return _finish(model, Path(out), metadata)


# -- tensorrt flavour --------------------------------------------------------------------------

def _ancestor_distances(tensor: str, producers: dict[str, Any], constants: set[str]) -> dict[str, int]:
    """Every activation ``tensor`` depends on, with its distance in nodes (BFS)."""
    dist = {tensor: 0}
    queue = deque([tensor])
    while queue:
        t = queue.popleft()
        node = producers.get(t)
        if node is None:
            continue
        for inp in node.input:
            if inp and inp not in constants and inp not in dist:
                dist[inp] = dist[t] + 1
                queue.append(inp)
    return dist


def residual_input(node: Any, producers: dict[str, Any], constants: set[str]) -> int | None:
    """Index of the residual (skip) input of an Add, or None when it is not a residual join.

    Both inputs descend from a common tensor (the block input); the residual is the input with the
    shorter path from it: the block input itself (identity) or the downsample conv's output.
    """
    if node.op_type != "Add" or len(node.input) != 2 or any(i in constants for i in node.input):
        return None
    da = _ancestor_distances(node.input[0], producers, constants)
    db = _ancestor_distances(node.input[1], producers, constants)
    common = set(da) & set(db)
    if not common:
        return None
    fork = min(common, key=lambda t: (da[t] + db[t], t))
    if da[fork] == db[fork]:
        return None
    return 0 if da[fork] < db[fork] else 1


def _per_channel_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 of ``w`` along ``axis``: (int8 weights, float32 scales)."""
    moved = np.moveaxis(w.astype(np.float32), axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(moved / scale.reshape((-1,) + (1,) * (moved.ndim - 1))), -127, 127).astype(np.int8)
    return np.moveaxis(q, 0, axis), scale


def _weight_axis(node: Any, w: np.ndarray) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and w.ndim == 2:
        return 1
    return None


def final_layers(model: Any) -> set[str]:
    """Names of the Gemm/MatMul nodes whose output is a graph output (the classifier, the fc)."""
    outputs = {o.name for o in model.graph.output}
    return {n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and set(n.output) & outputs}


def quantize_tensorrt(prepared: str | os.PathLike[str], out: str | os.PathLike[str],
                      ranges: dict[str, TensorRange], *, metadata: dict[str, Any] | None = None,
                      residual_add: bool = True, quantize_fc: bool = False, maxpool_input: bool = True) -> Path:
    """Explicit symmetric INT8 for TensorRT (see the module doc for the placement)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(os.fspath(prepared))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    constants = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n for n in g.node for o in n.output}

    act_sites: dict[str, list[tuple[Any, int]]] = defaultdict(list)  # tensor -> [(consumer, input index)]
    weight_sites: list[tuple[Any, int, int]] = []  # (node, input index, axis)
    skip = set() if quantize_fc else final_layers(model)
    for node in g.node:
        if node.name in skip:
            continue
        if node.op_type in WEIGHTED_OPS and len(node.input) >= 2:
            x, w = node.input[0], node.input[1]
            if x not in constants:
                act_sites[x].append((node, 0))
            if w in inits:
                axis = _weight_axis(node, numpy_helper.to_array(inits[w]))
                if axis is not None:
                    weight_sites.append((node, 1, axis))
            elif w not in constants:  # MatMul of two activations: both inputs get Q/DQ
                act_sites[w].append((node, 1))
            else:
                log.warning("%s %s: weight '%s' is not an initializer; left in float", node.op_type, node.name, w)
        elif residual_add and node.op_type == "Add":
            idx = residual_input(node, producers, constants)
            if idx is not None:
                act_sites[node.input[idx]].append((node, idx))

    scale_of = {t: t for t in act_sites}  # tensor -> the tensor whose range gives its scale
    if maxpool_input:
        for node in g.node:
            if node.op_type == "MaxPool" and node.output[0] in act_sites and node.input[0] not in constants \
                    and node.input[0] not in act_sites:
                act_sites[node.input[0]].append((node, 0))
                scale_of[node.input[0]] = node.output[0]

    missing = [t for t in act_sites if scale_of[t] not in ranges]
    if missing:
        raise UsageError(f"no calibrated range for {len(missing)} tensor(s) the tensorrt flavour quantizes "
                         f"({', '.join(missing[:5])}); the ranges were made for another graph")

    new_inits = []
    zp8 = "qdq_zero_point_int8"
    new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zp8))
    qdq_out: dict[str, str] = {}
    qdq_nodes: dict[str, list[Any]] = {}
    for t in act_sites:
        scale_name = f"{scale_of[t]}_scale"
        if scale_of[t] == t:
            new_inits.append(numpy_helper.from_array(np.array(ranges[t].int8_scale, dtype=np.float32), scale_name))
        q, dq = f"{t}_QuantizeLinear_Output", f"{t}_DequantizeLinear_Output"
        qdq_nodes[t] = [helper.make_node("QuantizeLinear", [t, scale_name, zp8], [q], name=f"{t}_QuantizeLinear"),
                        helper.make_node("DequantizeLinear", [q, scale_name, zp8], [dq],
                                         name=f"{t}_DequantizeLinear")]
        qdq_out[t] = dq
        for consumer, idx in act_sites[t]:
            consumer.input[idx] = dq

    head_nodes = []
    replaced_weights = set()
    for node, idx, axis in weight_sites:
        w = node.input[idx]
        arr = numpy_helper.to_array(inits[w])
        q, scale = _per_channel_int8(arr, axis)
        qn, sn, zn = f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"
        new_inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(scale, sn),
                      numpy_helper.from_array(np.zeros(len(scale), dtype=np.int8), zn)]
        dq = f"{w}_DequantizeLinear_Output"
        head_nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dq], name=f"{w}_DequantizeLinear",
                                           axis=axis))
        node.input[idx] = dq
        replaced_weights.add(w)

    graph_inputs = {i.name for i in g.input}
    ordered = list(head_nodes)
    for t in act_sites:
        if t in graph_inputs:
            ordered += qdq_nodes[t]
    for node in g.node:
        ordered.append(node)
        for o in node.output:
            if o in qdq_nodes:
                ordered += qdq_nodes[o]
    still_used = {i for n in ordered for i in n.input}
    kept = [i for i in g.initializer if not (i.name in replaced_weights and i.name not in still_used)]
    del g.node[:]
    g.node.extend(ordered)
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    return _finish(model, Path(out), metadata)


# -- layers kept in higher precision ---------------------------------------------------------------

def quantized_layers(model: Any) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes of a Q/DQ model that run in INT8 (their weight comes
    through a DequantizeLinear), in graph order."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}

    def dq(tensor: str) -> bool:
        return producers.get(tensor) is not None and producers[tensor].op_type == "DequantizeLinear"

    names = []
    for n in model.graph.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2:
            continue
        # an int8 weight; or, for a product of two activations, a quantized first input
        if dq(n.input[1]) or (n.input[1] not in inits and dq(n.input[0])):
            names.append(n.name)
    return names


def _dequantize_initializer(dq: Any, inits: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] \
        else np.zeros_like(scale)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q - zp) * scale).astype(np.float32)


def float_layers(model: Any, names: set[str] | list[str], *, dtype: str = "float32",
                 quantized_inputs: bool = False) -> Any:
    """A copy of Q/DQ ``model`` where the layers ``names`` (node names) run unquantized: their
    dequantized weights become float initializers and their activation inputs skip the Q/DQ pair
    (which stays for its other consumers). ``dtype="float16"`` runs them in FP16 (Casts around the
    layer, FP16 weights), what the tensorrt flavour keeps. Q/DQ nodes left without consumers go.

    ``quantized_inputs``: the layers read the dequantized activation (the value their producer's
    Q/DQ writes) instead of the float tensor before the Q. The onnxruntime flavour uses it: ONNX
    Runtime fuses ``DQ -> Conv -> Q`` into an INT8 Conv only when the Conv's output feeds the Q
    alone, so a second, float reader of that output pushes the producer out of INT8 as well
    (ResNet-18 at 64 px, one layer kept that way: 7.7x slower)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if dtype not in ("float32", "float16"):
        raise UsageError(f"layers kept out of INT8 run in float32 or float16, not {dtype}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    wanted = set(names)
    nodes = {n.name: n for n in g.node}
    unknown = sorted(wanted - set(nodes))
    if unknown:
        raise UsageError(f"no layer named {', '.join(unknown[:5])} in the INT8 model")
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    new_inits, casts_before, casts_after = [], defaultdict(list), defaultdict(list)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    for name in sorted(wanted):
        node = nodes[name]
        for idx, inp in enumerate(node.input):
            src = producers.get(inp)
            if src is None or src.op_type != "DequantizeLinear":
                if dtype == "float16" and inp in inits:  # a float bias
                    arr = numpy_helper.to_array(inits[inp]).astype(np.float16)
                    new_name = f"{inp}_{name}_fp16"
                    new_inits.append(numpy_helper.from_array(arr, new_name))
                    node.input[idx] = new_name
                elif dtype == "float16" and inp:
                    cast_out = f"{inp}_{name}_fp16"
                    casts_before[name].append(helper.make_node("Cast", [inp], [cast_out], name=f"{cast_out}_Cast",
                                                               to=TensorProto.FLOAT16))
                    node.input[idx] = cast_out
                continue
            if src.input[0] in inits:  # a weight (or bias) stored as integers
                new_name = f"{src.input[0]}_{name}_float"
                new_inits.append(numpy_helper.from_array(_dequantize_initializer(src, inits).astype(np_dtype),
                                                         new_name))
                node.input[idx] = new_name
                continue
            q = producers.get(src.input[0])
            base = q.input[0] if q is not None and q.op_type == "QuantizeLinear" and not quantized_inputs \
                else src.output[0]
            if base != src.output[0] and _clamps_at_zero(q, inits):
                # ONNX Runtime's quantizer folds a ReLU into a uint8 Q with zero point 0 (the Q clamps
                # negatives): the float tensor before the Q is the pre-ReLU value, so put the ReLU back
                relu_out = f"{base}_{name}_relu"
                casts_before[name].append(helper.make_node("Relu", [base], [relu_out], name=f"{relu_out}_Relu"))
                base = relu_out
            if dtype == "float16":
                cast_out = f"{base}_{name}_fp16"
                casts_before[name].append(helper.make_node("Cast", [base], [cast_out], name=f"{cast_out}_Cast",
                                                           to=TensorProto.FLOAT16))
                base = cast_out
            node.input[idx] = base
        if dtype == "float16":
            for i, o in enumerate(node.output):
                half = f"{o}_fp16"
                casts_after[name].append(helper.make_node("Cast", [half], [o], name=f"{o}_Cast", to=TensorProto.FLOAT))
                node.output[i] = half
    ordered = []
    for n in g.node:
        ordered += casts_before.get(n.name, [])
        ordered.append(n)
        ordered += casts_after.get(n.name, [])
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(new_inits)
    _drop_dead_qdq(out)
    _drop_unused_initializers(out)
    return out


def _clamps_at_zero(q: Any, inits: dict[str, Any]) -> bool:
    """Whether QuantizeLinear ``q`` maps to uint8 with zero point 0 (it clamps negatives to zero)."""
    from onnx import numpy_helper

    if len(q.input) < 3 or q.input[2] not in inits:
        return False
    zp = numpy_helper.to_array(inits[q.input[2]])
    return zp.dtype == np.uint8 and not zp.any()


def _drop_dead_qdq(model: Any) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads (repeatedly: a Q whose DQs went goes too)."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return
        ids = {id(n) for n in dead}
        kept = [n for n in model.graph.node if id(n) not in ids]
        del model.graph.node[:]
        model.graph.node.extend(kept)


# -- ModelOpt ----------------------------------------------------------------------------------

def quantize_modelopt(fp32_onnx: str | os.PathLike[str], out: str | os.PathLike[str], *, method: str,
                      calibration_data: np.ndarray, input_name: str, batch_size: int,
                      table: str | os.PathLike[str] | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """The tensorrt flavour by NVIDIA ModelOpt (``modelopt.onnx.quantization.quantize``, INT8, weights
    stored as int8 + DQ). Our ranges are passed as a TensorRT calibration table when given."""
    try:
        from modelopt.onnx.quantization import quantize as moq_quantize
    except ImportError as exc:
        raise MissingDependencyError("nvidia-modelopt", "--modelopt (ModelOpt ONNX quantization)") from exc
    import onnx

    names = {"entropy": "entropy", "minmax": "max"}
    if method not in names:
        raise UsageError(f"ModelOpt calibrates with entropy or max only; choose --calib-method entropy or minmax, "
                         f"not {method}")
    shape = "x".join(str(d) for d in calibration_data.shape[1:])
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-modelopt.") as tmp:
        tmp_out = Path(tmp) / "int8.onnx"
        moq_quantize(onnx_path=os.fspath(fp32_onnx), quantize_mode="int8",
                     calibration_data={input_name: calibration_data}, calibration_method=names[method],
                     calibration_cache_path=os.fspath(table) if table else None,
                     calibration_shapes=f"{input_name}:{batch_size}x{shape}",
                     output_path=str(tmp_out), high_precision_dtype="fp32")
        model = onnx.load(str(tmp_out))
    return _finish(model, Path(out), metadata)


# -- inspection --------------------------------------------------------------------------------

def qdq_summary(model_or_path: Any) -> dict[str, Any]:
    """Counts that show where Q/DQ sit: per weighted op, whether its activation input comes through a
    Q -> DQ pair and its weight through a DQ; Adds with a Q/DQ'd input; zero points seen."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}

    def via_qdq(tensor: str) -> bool:
        dq = producers.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return False
        q = producers.get(dq.input[0])
        return q is not None and q.op_type == "QuantizeLinear"

    def via_dq_weight(tensor: str) -> bool:
        dq = producers.get(tensor)
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits

    out: dict[str, Any] = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for op in WEIGHTED_OPS + ("Add",):
        out[op] = {"count": 0, "input_qdq": 0, "weight_dq": 0}
    zero_points: set[int] = set()
    dtypes: set[str] = set()
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            out[n.op_type] += 1
            if len(n.input) > 2 and n.input[2] in inits:
                zp = numpy_helper.to_array(inits[n.input[2]])
                zero_points.update(int(v) for v in np.ravel(zp))
                dtypes.add(zp.dtype.name)
        if n.op_type in out and isinstance(out[n.op_type], dict):
            entry = out[n.op_type]
            entry["count"] += 1
            if n.op_type == "Add":
                entry["input_qdq"] += int(any(via_qdq(i) for i in n.input))
            else:
                entry["input_qdq"] += int(via_qdq(n.input[0]))
                entry["weight_dq"] += int(len(n.input) > 1 and via_dq_weight(n.input[1]))
    out["zero_points"] = sorted(zero_points)
    out["zero_point_dtypes"] = sorted(dtypes)
    out["by_op"] = qdq_by_op(model)
    return out


def qdq_by_op(model_or_path: Any) -> dict[str, dict[str, int]]:
    """Per op type (Q/DQ themselves excluded): ``nodes``, ``dq_inputs`` (inputs read from a
    DequantizeLinear: a quantized activation or an int8 weight) and ``q_outputs`` (outputs read by a
    QuantizeLinear). The placement tests compare these counts per flavour."""
    import onnx

    model = onnx.load(os.fspath(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    out: dict[str, dict[str, int]] = {}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        e = out.setdefault(n.op_type, {"nodes": 0, "dq_inputs": 0, "q_outputs": 0})
        e["nodes"] += 1
        e["dq_inputs"] += sum(1 for i in n.input if producers.get(i) is not None
                              and producers[i].op_type == "DequantizeLinear")
        e["q_outputs"] += sum(1 for o in n.output if any(c.op_type == "QuantizeLinear" for c in consumers[o]))
    return dict(sorted(out.items()))


def infer_metadata(fp32_meta: dict[str, Any], **updates: Any) -> dict[str, Any]:
    """The FP32 artifact's metadata with ``precision=int8`` and ``updates``."""
    meta = dict(fp32_meta)
    meta["precision"] = "int8"
    meta.update(updates)
    return meta


def targets_for(choice: str) -> tuple[list[str], str]:
    """The flavours ``--int8-target`` asks for, and why (``auto``: tensorrt when TensorRT and a GPU are
    usable here, else onnxruntime)."""
    if choice not in TARGET_CHOICES:
        raise UsageError(f"unknown --int8-target '{choice}'; choose one of: {', '.join(TARGET_CHOICES)}")
    if choice == "both":
        return list(TARGETS), "both flavours asked for"
    if choice != "auto":
        return [choice], f"--int8-target {choice}"
    usable, reason = _tensorrt_usable()
    if usable:
        return ["tensorrt"], "auto: TensorRT and a GPU are usable here"
    return ["onnxruntime"], f"auto: onnxruntime, since TensorRT is not usable here ({reason})"


def _tensorrt_usable() -> tuple[bool, str]:
    try:
        from ..runtime.tensorrt import tensorrt_usable
    except ImportError as exc:
        return False, f"TensorRT support not available: {exc}"
    try:
        return tensorrt_usable()
    except Exception as exc:  # a broken driver must not break the CPU path
        return False, f"TensorRT check failed: {exc}"


def quantize(prepared: str | os.PathLike[str], out: str | os.PathLike[str], target: str,
             ranges: dict[str, TensorRange], *, metadata: dict[str, Any] | None = None,
             quantize_fc: bool = False) -> Path:
    """One INT8 flavour of a prepared FP32 model: ``target`` is ``onnxruntime`` or ``tensorrt``.
    ``quantize_fc`` quantizes the final fc in the tensorrt flavour too (the onnxruntime flavour
    always does: its u8s8 Gemm is fast and its error is small with uint8 activations)."""
    if target == "onnxruntime":
        return quantize_onnxruntime(prepared, out, ranges, metadata=metadata)
    if target == "tensorrt":
        return quantize_tensorrt(prepared, out, ranges, metadata=metadata, quantize_fc=quantize_fc)
    raise UsageError(f"unknown INT8 target '{target}'; choose one of: {', '.join(TARGETS)}")


__all__ = ["TARGETS", "TARGET_CHOICES", "WEIGHTED_OPS", "drop_output_qdq", "final_layers", "float_layers",
           "global_pool_as_gap", "infer_metadata", "prepare", "qdq_by_op", "qdq_summary", "quantize",
           "quantize_modelopt", "quantize_onnxruntime", "quantize_tensorrt", "quantized_layers", "reshape_in_integer",
           "residual_input", "targets_for"]
