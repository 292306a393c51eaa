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


def _load_onnx(path: Path) -> tuple[Any, str | None]:
    """(the ModelProto without external data, None), or (None, why it is not an ONNX model)."""
    import onnx

    if path.stat().st_size == 0:
        return None, "an empty file"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, or onnx's own
        text = str(exc).strip()
        return None, (text.splitlines()[0] if text else type(exc).__name__)
    # protobuf parses many byte strings (text, a truncated file) into a message with no graph
    if not model.HasField("graph") or not model.graph.output or not (model.graph.input or model.graph.node):
        return None, "no graph with inputs and outputs"
    return model, None


def onnx_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not an ONNX model (``an empty file``, a parse error...), or None. Runners ask
    when their backend failed to load a file, so the user reads this, not the backend's internals."""
    from ._io import file_problem

    problem = file_problem(path)
    if problem is not None:
        return f"it {problem}"
    try:
        import onnx  # noqa: F401  (the thin runtime may not have it: then only the backend can tell)
    except ImportError:
        return None
    return _load_onnx(Path(path))[1]


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The toolkit metadata of an ONNX file or an engine ({} for a foreign file without any)."""
    from ._io import require_file

    p = require_file(path, "artifact")
    if p.suffix.lower() == ".onnx":
        return parse_props(_onnx_props(p))
    manifest = engine_manifest_path(p)
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except ValueError as exc:
            raise UsageError(f"engine manifest '{manifest}' is not valid JSON: {exc}") from exc
        meta = data.get("metadata", {}) if isinstance(data, dict) else None
        if not isinstance(meta, dict):
            raise UsageError(f"engine manifest '{manifest}' is not an object with a 'metadata' object")
        return dict(meta)
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
        model, problem = _load_onnx(p)
        if problem is not None:
            raise UsageError(f"'{p}' is not an ONNX model ({problem})")
        return [(prop.key, prop.value) for prop in model.metadata_props]
    return modelmeta_props(inspection_session(p, "reading the metadata of"))


def inspection_session(path: str | os.PathLike[str], purpose: str) -> Any:
    """An unoptimized ONNX Runtime CPU session over ``path``, to read its metadata and I/O where the
    onnx package is absent (the thin runtime). ``purpose`` completes "... needs onnxruntime"."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", f"{purpose} '{path}'", "onnxruntime") from exc
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UsageError(f"'{path}' is not an ONNX model ({_first_line(exc)})") from exc


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


# --------------------------------------------------------------------------------------------------
# The export manifest (``manifest.json``) as its readers see it: one schema check, one sha256 check.
# The export stage writes it (``resnet_deploy.export.manifest``); everything downstream reads it here.

MANIFEST_NAME = "manifest.json"
#: The largest manifest a reader accepts (a real one is a few KB).
MAX_MANIFEST_BYTES = 8 << 20
_HEX = set("0123456789abcdef")


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def resolve_inside(directory: str | os.PathLike[str], relative: Any, *, what: str = "path") -> Path:
    """``directory / relative``, refused (UsageError) unless it is a relative path that resolves inside
    ``directory`` (no ``..`` escape, no absolute path, no symlink pointing out)."""
    root = Path(directory).resolve()
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UsageError(f"{what} {relative!r} is not a file name")
    if os.path.isabs(relative):
        raise UsageError(f"{what} '{relative}' is absolute; a manifest lists paths relative to its directory")
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise UsageError(f"{what} '{relative}' resolves outside '{root}'; refused")
    return target


def validate_manifest(data: Any, source: str | os.PathLike[str] = MANIFEST_NAME) -> dict[str, Any]:
    """Check the shape of an export manifest: an object whose ``artifacts`` is a list of objects, each
    with a relative ``path`` inside the directory and a hex ``sha256``. Returns ``data``."""
    where = f"manifest '{source}'"
    if not isinstance(data, dict):
        raise UsageError(f"{where} is not a JSON object (got {type(data).__name__})")
    artifacts = data.get("artifacts", [])
    if not isinstance(artifacts, list):
        raise UsageError(f"{where}: 'artifacts' must be a list (got {type(artifacts).__name__})")
    directory = Path(source).parent
    for i, entry in enumerate(artifacts):
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: artifacts[{i}] must be an object (got {type(entry).__name__})")
        resolve_inside(directory, entry.get("path"), what=f"{where}: artifacts[{i}].path")
        if "sha256" in entry and not _is_sha256(entry["sha256"]):
            raise UsageError(f"{where}: artifacts[{i}].sha256 is not a sha256 hex digest")
    for key in ("parity", "timings_s"):
        if key in data and not isinstance(data[key], dict):
            raise UsageError(f"{where}: '{key}' must be an object (got {type(data[key]).__name__})")
    return data


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The validated ``manifest.json`` of ``directory``, or None when it has none."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        return None
    if not path.is_file():
        raise UsageError(f"'{path}' is not a regular file")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UsageError(f"'{path}' is larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a manifest")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"'{path}' is not valid JSON: {exc}") from exc
    return validate_manifest(data, path)


def manifest_entry(artifact: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The entry of the manifest beside ``artifact`` that lists it (None: no manifest, or not listed)."""
    p = Path(artifact)
    manifest = read_manifest(p.parent)
    if manifest is None:
        return None
    target = p.resolve()
    for entry in manifest.get("artifacts", []):
        if resolve_inside(p.parent, entry["path"]) == target:
            return entry
    return None


def verify_artifact(artifact: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Check ``artifact`` against the sha256 its directory's manifest records for it.

    Returns the manifest entry (None when there is no manifest or it does not list the file). A
    mismatch raises UsageError naming both hashes: the file is not the one that was exported and
    verified (a re-export was interrupted, or the file was replaced)."""
    from ._io import sha256_file

    entry = manifest_entry(artifact)
    if entry is None or "sha256" not in entry:
        return entry
    actual = sha256_file(artifact)
    if actual != entry["sha256"]:
        raise UsageError(f"'{artifact}' does not match its manifest: sha256 {actual}, manifest "
                         f"'{Path(artifact).parent / MANIFEST_NAME}' records {entry['sha256']}; re-export it")
    return entry
