"""What travels with an artifact: the metadata written into every ONNX (``metadata_props``) and
into the JSON manifest beside every engine. Runners, preprocessing and pipelines read it here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UsageError
from .models.transforms import Preprocessing

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
        import onnx

        try:
            model = onnx.load(str(p), load_external_data=False)
        except Exception as exc:
            raise UsageError(f"'{p}' is not a readable ONNX file: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
        meta: dict[str, Any] = {}
        for prop in model.metadata_props:
            value: Any = prop.value
            if prop.key in JSON_KEYS:
                try:
                    value = json.loads(prop.value)
                except ValueError:
                    pass
            meta[prop.key] = value
        return meta
    manifest = engine_manifest_path(p)
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except ValueError as exc:
            raise UsageError(f"engine manifest '{manifest}' is not valid JSON: {exc}") from exc
        return dict(data.get("metadata", {}))
    return {}


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
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    types = {t.data_type for t in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in types:
        return "fp16"
    if onnx.TensorProto.BFLOAT16 in types:
        return "bf16"
    return "fp32"
