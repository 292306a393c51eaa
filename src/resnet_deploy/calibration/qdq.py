"""FP32 ONNX + activation ranges -> explicit INT8 (Q/DQ) ONNX, for two consumers.

``onnxruntime`` (CPU): ONNX Runtime's own ``quantize_static`` in QDQ format with uint8 activations
(asymmetric, zero point from the range) and per-channel symmetric int8 weights: the u8s8 layout its
CPU kernels run with VNNI/AMX. Measured for issue 5 on a 2-core AVX-512 VNNI machine, ResNet-50 at
224: ~12 ms vs ~42 ms FP32 at batch 1; int8 activations (s8s8) ran at ~33 ms and symmetric s8s8 at
~47 ms, which is why the CPU flavour differs from the TensorRT one. Our ranges are handed over
through ONNX Runtime's calibration cache (``calibration_cache_path``), so its calibrator does not
run again, and the Q/DQ pair it leaves on the graph output is removed (the logits stay float).

``tensorrt``: our own graph pass, placed as TensorRT's Q/DQ guidance asks:

* a Q/DQ pair (symmetric int8, zero point 0, scale ``amax / 127``) on the activation input of every
  Conv, Gemm and MatMul;
* weights stored as int8 initializers with a per-output-channel DequantizeLinear (what ModelOpt
  writes with ``dq_only``, accepted by TensorRT 10 and 11);
* a Q/DQ pair on the *residual* input of each residual Add (the shorter branch from the block's
  fork: the identity, or the downsample conv), so TensorRT fuses the Add into the INT8 Conv of the
  other branch and the add runs in INT8;
* nothing else: TensorRT propagates Q/DQ through ReLU, MaxPool and the reshapes itself.

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



def quantize_onnxruntime(prepared: str | os.PathLike[str], out: str | os.PathLike[str],
                         ranges: dict[str, TensorRange], *, metadata: dict[str, Any] | None = None) -> Path:
    """u8s8 QDQ with ONNX Runtime's quantizer, using ``ranges`` (no calibration run of its own)."""
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


def quantize_tensorrt(prepared: str | os.PathLike[str], out: str | os.PathLike[str],
                      ranges: dict[str, TensorRange], *, metadata: dict[str, Any] | None = None,
                      residual_add: bool = True) -> Path:
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
    for node in g.node:
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

    missing = [t for t in act_sites if t not in ranges]
    if missing:
        raise UsageError(f"no calibrated range for {len(missing)} tensor(s) the tensorrt flavour quantizes "
                         f"({', '.join(missing[:5])}); the ranges were made for another graph")

    new_inits = []
    zp8 = "qdq_zero_point_int8"
    new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zp8))
    qdq_out: dict[str, str] = {}
    qdq_nodes: dict[str, list[Any]] = {}
    for t in act_sites:
        scale_name = f"{t}_scale"
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
    return out


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
             ranges: dict[str, TensorRange], *, metadata: dict[str, Any] | None = None) -> Path:
    """One INT8 flavour of a prepared FP32 model: ``target`` is ``onnxruntime`` or ``tensorrt``."""
    if target == "onnxruntime":
        return quantize_onnxruntime(prepared, out, ranges, metadata=metadata)
    if target == "tensorrt":
        return quantize_tensorrt(prepared, out, ranges, metadata=metadata)
    raise UsageError(f"unknown INT8 target '{target}'; choose one of: {', '.join(TARGETS)}")


__all__ = ["TARGETS", "TARGET_CHOICES", "WEIGHTED_OPS", "drop_output_qdq", "infer_metadata", "prepare", "qdq_summary",
           "quantize", "quantize_modelopt", "quantize_onnxruntime", "quantize_tensorrt", "residual_input",
           "targets_for"]
