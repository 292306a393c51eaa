"""FP32 ONNX -> FP16 ONNX with FP32 inputs and outputs, for strongly typed TensorRT builds.

TensorRT 11 takes the precision from the ONNX (every network is strongly typed): an FP16 engine is
built from an FP16 graph. The conversion is onnxconverter-common's ``float16`` (maintained by the
ONNX project), or NVIDIA ModelOpt AutoCast when ``use_modelopt=True`` and it is installed.

What stays FP32, and why:

* the inputs and outputs (``keep_io_types``): callers keep feeding float32 batches;
* an L2 normalization (``ReduceL2``/``LpNormalization``/``ReduceSumSquare``) and every node after
  it: the sum of squares of a 2048-wide embedding overflows FP16's 65504 as soon as the features
  average ~5.7 in magnitude (ResNet-50, random weights, the check inputs: sums up to 2.8e6), and the tail after
  it is a handful of tiny ops;
* ``Softmax``/``LogSoftmax`` (exponentials overflow), plus onnxconverter-common's own block list.

Pooling (``GlobalAveragePool``, or ``ReduceMean`` from the dynamo exporter) stays FP16: keeping it
FP32 changed nothing measurable on ResNet-50 (benchmarks/results/fp16.md).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable

from .. import _io
from .._io import save_onnx
from ..artifacts import metadata_props, read_metadata
from ..errors import MissingDependencyError, UsageError

log = logging.getLogger(__name__)

#: Ops whose output and every op downstream of it stay FP32 (normalization tails).
NORMALIZATION_OPS = ("ReduceL2", "LpNormalization", "ReduceSumSquare")
#: Ops kept FP32 wherever they are (overflow-prone).
FP32_OPS = ("Softmax", "LogSoftmax", *NORMALIZATION_OPS)
#: FP16's largest finite value: weights are clamped here, not at onnxconverter-common's default 1e4.
FP16_MAX = 65504.0


def convert_to_fp16(src_onnx: str | os.PathLike[str], dst_onnx: str | os.PathLike[str], *, keep_io_types: bool = True,
                    op_block_list: Iterable[str] | None = None, use_modelopt: bool = False) -> Path:
    """Write an FP16 copy of ``src_onnx`` to ``dst_onnx`` (atomically) and return its path.

    ``op_block_list`` adds op types to keep in FP32 on top of ``FP32_OPS``. The toolkit metadata
    (``metadata_props``: preprocessing, variant, ...) is copied and ``precision`` set to ``fp16``.
    """
    import onnx

    src, dst = Path(src_onnx), Path(dst_onnx)
    if not src.is_file():
        raise UsageError(f"ONNX file '{src}' does not exist")
    if src.resolve() == dst.resolve():
        raise UsageError(f"the FP16 ONNX must not overwrite its source '{src}'; choose another output path")
    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise UsageError(f"'{src}' is not a readable ONNX file: {_first_line(exc)}") from exc
    if _has_fp16(model):
        raise UsageError(f"'{src}' already holds FP16 tensors; convert_to_fp16 takes an FP32 model")
    _name_nodes(model)
    blocked_ops = sorted(set(FP32_OPS) | set(op_block_list or ()))
    blocked_nodes = normalization_tail(model, NORMALIZATION_OPS)
    meta = read_metadata(src)
    io_types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    if use_modelopt:
        converted, tool = _convert_modelopt(src, keep_io_types, blocked_ops, blocked_nodes)
    else:
        converted, tool = _convert_onnxconverter(model, blocked_ops, blocked_nodes)
    if keep_io_types:
        _restore_io_types(io_types, converted)
    meta.update(precision="fp16", fp16_converter=tool, fp16_keep_io_types=str(keep_io_types).lower(),
                fp16_fp32_ops=",".join(blocked_ops), fp16_fp32_nodes=",".join(blocked_nodes))
    del converted.metadata_props[:]
    for key, value in metadata_props(meta).items():
        entry = converted.metadata_props.add()
        entry.key, entry.value = key, value
    converted.producer_name = model.producer_name or "resnet-deploy"
    # The converter leaves stale FP32 entries beside new ones in value_info (ONNX Runtime then refuses the
    # graph when a node is kept in FP32): drop them all and infer them again from the converted graph.
    del converted.graph.value_info[:]
    big = converted.ByteSize() > _io.EXTERNAL_DATA_THRESHOLD
    try:
        if not big:
            converted = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
            onnx.checker.check_model(converted)
    except Exception as exc:
        raise UsageError(f"the FP16 graph of '{src}' is not valid ONNX: {_first_line(exc)}") from exc
    save_onnx(converted, dst)
    log.info("FP16 ONNX written: %s (%s; FP32 kept for ops %s%s)", dst, tool, ", ".join(blocked_ops),
             f" and nodes {', '.join(blocked_nodes)}" if blocked_nodes else "")
    return dst


def normalization_tail(model: Any, ops: Iterable[str] = NORMALIZATION_OPS) -> list[str]:
    """Names of the nodes of type ``ops`` and of every node that consumes their results, transitively."""
    ops = set(ops)
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tail: list[str] = []
    seen: set[int] = set()
    stack = [n for n in model.graph.node if n.op_type in ops]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        tail.append(node.name)
        for out in node.output:
            stack.extend(consumers.get(out, ()))
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return sorted(tail, key=order.__getitem__)


def _convert_onnxconverter(model: Any, ops: list[str], nodes: list[str]) -> tuple[Any, str]:
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise MissingDependencyError("onnxconverter-common", "FP16 conversion", extra="export") from exc
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(ops))
    try:
        with warnings.catch_warnings(record=True) as caught:  # one warning per clamped weight otherwise
            warnings.simplefilter("always")
            converted = float16.convert_float_to_float16(model, keep_io_types=False, op_block_list=block,
                                                         node_block_list=nodes, max_finite_val=FP16_MAX)
    except Exception as exc:
        raise UsageError(f"onnxconverter-common could not convert the graph to FP16: {_first_line(exc)}") from exc
    clamped = sum("truncated" in str(w.message) for w in caught)
    if clamped:
        log.info("FP16: %d weights below FP16's resolution were clamped to +-1e-7", clamped)
    return converted, f"onnxconverter-common {_version('onnxconverter-common')}"


def _convert_modelopt(src: Path, keep_io_types: bool, ops: list[str], nodes: list[str]) -> tuple[Any, str]:
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as exc:
        raise MissingDependencyError("nvidia-modelopt", "FP16 conversion with ModelOpt AutoCast") from exc
    try:
        converted = convert_to_mixed_precision(
            onnx_path=str(src), low_precision_type="fp16", keep_io_types=keep_io_types,
            op_types_to_exclude=ops, nodes_to_exclude=[f"^{re.escape(n)}$" for n in nodes])
    except Exception as exc:
        raise UsageError(f"ModelOpt AutoCast could not convert '{src}' to FP16: {_first_line(exc)}") from exc
    return converted, f"nvidia-modelopt {_version('nvidia-modelopt')} autocast"


def _restore_io_types(was: dict[str, int], converted: Any) -> None:
    """Give every input and output that was FP32 its FP32 type back, with one Cast at the boundary.

    onnxconverter-common converts with ``keep_io_types=False`` here: its own ``keep_io_types`` raises
    ("The downstream node of the second cast node should be graph output") when the node producing an
    output is kept in FP32, which is what an L2-normalized embedding needs.
    """
    from onnx import TensorProto, helper

    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    graph = converted.graph
    for value in graph.input:
        tt = value.type.tensor_type
        if was.get(value.name) != TensorProto.FLOAT or tt.elem_type != TensorProto.FLOAT16:
            continue
        inner = value.name + "_fp16"
        for node in graph.node:  # FP16 consumers read the cast; a Cast to FP32 reads the input itself
            if cast_to(node) != TensorProto.FLOAT:
                node.input[:] = [inner if i == value.name else i for i in node.input]
        graph.node.insert(0, helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT16,
                                              name=value.name + "_cast_to_fp16"))
        tt.elem_type = TensorProto.FLOAT
    producers = {out: node for node in graph.node for out in node.output}
    for value in graph.output:
        tt = value.type.tensor_type
        if was.get(value.name) != TensorProto.FLOAT or tt.elem_type != TensorProto.FLOAT16:
            continue
        node = producers.get(value.name)
        if node is not None and cast_to(node) is not None:  # a Cast after an FP32 node: make it cast to FP32
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = TensorProto.FLOAT
        else:
            inner = value.name + "_fp16"
            for n in graph.node:
                n.output[:] = [inner if o == value.name else o for o in n.output]
                n.input[:] = [inner if i == value.name else i for i in n.input]
            graph.node.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT,
                                               name=value.name + "_cast_to_fp32"))
        tt.elem_type = TensorProto.FLOAT


def _name_nodes(model: Any) -> None:
    """Give unnamed nodes a unique name: both converters select nodes to keep in FP32 by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _has_fp16(model: Any) -> bool:
    from onnx import TensorProto

    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return True
    values = list(model.graph.input) + list(model.graph.output)
    return any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in values)


def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
