"""What travels with an artifact: the metadata written into every ONNX (``metadata_props``) and
into the JSON manifest beside every engine. Runners, preprocessing and pipelines read it here.

No PyTorch: an ONNX's metadata is read with ``onnx`` when installed, else with ONNX Runtime's
``get_modelmeta()`` (a thin runtime has only ``onnxruntime``); an engine's from its JSON manifest.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import MissingDependencyError, UsageError
from .models.transforms import Preprocessing

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: ``metadata_props`` keys that hold JSON rather than plain strings.
JSON_KEYS = ("preprocessing", "mean", "std", "producer_versions", "dynamic_dims")


def engine_manifest_path(engine: str | os.PathLike[str]) -> Path:
    """``resnet50.fp16.engine`` -> ``resnet50.fp16.engine.json``."""
    p = Path(engine)
    return p.with_name(p.name + ".json")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The toolkit metadata of an ONNX file or an engine ({} for a foreign file without any)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"artifact '{p}' does not exist")
    if p.suffix.lower() == ".onnx":
        return parse_props(_onnx_props(p))
    manifest = engine_manifest_path(p)
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except ValueError as exc:
            raise UsageError(f"engine manifest '{manifest}' is not valid JSON: {exc}") from exc
        return dict(data.get("metadata", {}))
    return {}


def parse_props(props: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``metadata_props`` (key, value) strings -> metadata, JSON values decoded."""
    meta: dict[str, Any] = {}
    for key, raw in props:
        value: Any = raw
        if key in JSON_KEYS:
            try:
                value = json.loads(raw)
            except ValueError:
                pass
        meta[key] = value
    return meta


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _onnx_props(p: Path) -> list[tuple[str, str]]:
    """The ``metadata_props`` of an ONNX file: with ``onnx``, else with ONNX Runtime."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(str(p), load_external_data=False)
        except Exception as exc:
            raise UsageError(f"'{p}' is not a readable ONNX file: {_first_line(exc)}") from exc
        return [(prop.key, prop.value) for prop in model.metadata_props]
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", f"reading the metadata of '{p}'", "onnxruntime") from exc
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UsageError(f"'{p}' is not a readable ONNX file: {_first_line(exc)}") from exc
    return modelmeta_props(session)


def modelmeta_props(session: Any) -> list[tuple[str, str]]:
    """The ``metadata_props`` of the model an ONNX Runtime session runs (``get_modelmeta()``)."""
    return sorted(session.get_modelmeta().custom_metadata_map.items())


def preprocessing_of(path: str | os.PathLike[str], default: Preprocessing | None = None) -> Preprocessing:
    """The preprocessing record an artifact was exported with (ImageNet V1 for foreign files)."""
    meta = read_metadata(path)
    prep = meta.get("preprocessing")
    if isinstance(prep, dict):
        return Preprocessing.from_dict(prep)
    return default or Preprocessing()


def metadata_props(meta: dict[str, Any]) -> dict[str, str]:
    """Flatten metadata into ``metadata_props`` strings (JSON for structured values)."""
    out: dict[str, str] = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = json.dumps(v) if (k in JSON_KEYS or isinstance(v, (dict, list, tuple))) else str(v)
    return out


def onnx_precision(path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> str:
    """The precision an ONNX carries: its ``precision`` metadata, else Q/DQ nodes -> int8, FP16
    initializers -> fp16, BF16 -> bf16, otherwise fp32."""
    meta = metadata if metadata is not None else read_metadata(path)
    if meta.get("precision") in PRECISIONS:
        return str(meta["precision"])
    try:
        import onnx
    except ImportError:
        return _precision_without_onnx(path)

    model = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    types = {t.data_type for t in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in types:
        return "fp16"
    if onnx.TensorProto.BFLOAT16 in types:
        return "bf16"
    return "fp32"


def _precision_without_onnx(path: str | os.PathLike[str]) -> str:
    """A foreign ONNX without ``precision`` metadata, on a runtime without ``onnx``: Q/DQ node types
    are stored as plain strings in the file, so int8 is found by a byte search; FP16 and BF16
    initializers are not told apart from FP32 without parsing the graph (install onnx for that)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data.find(b"DequantizeLinear") >= 0 or data.find(b"QuantizeLinear") >= 0:
            return "int8"
    log.info("'%s' has no 'precision' metadata and onnx is not installed: reported as fp32", path)
    return "fp32"
