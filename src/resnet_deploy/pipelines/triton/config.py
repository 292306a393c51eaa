"""``config.pbtxt`` for Triton: typed pieces rendered as protobuf text, checked against Triton's schema.

The text is written here without any dependency, and then (when ``tritonclient`` is installed)
parsed with Triton's own ``model_config_pb2.ModelConfig`` and protobuf's ``text_format``, so a
misspelt field or a wrong enum fails at generation time, not when the server loads the model.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ...errors import UsageError

log = logging.getLogger(__name__)

#: numpy dtype name -> Triton's ``DataType`` enum (model_config.proto).
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bytes": "TYPE_STRING", "object": "TYPE_STRING",
}

#: What Triton accepts as a model (directory) name here: it is a directory, a URL path segment
#: (``/v2/models/NAME``) and a Prometheus label, so keep to letters, digits, ``_``, ``-`` and ``.``.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
MAX_NAME_LENGTH = 128


class Enum(str):
    """A bare protobuf enum value (``KIND_CPU``), rendered without quotes."""


def triton_dtype(dtype: Any) -> str:
    """numpy dtype (or ``"bytes"``) -> ``TYPE_*``."""
    name = dtype if isinstance(dtype, str) and dtype in TRITON_DTYPES else np.dtype(dtype).name
    if name not in TRITON_DTYPES:
        raise UsageError(f"no Triton data type for {name}; supported: {', '.join(sorted(TRITON_DTYPES))}")
    return TRITON_DTYPES[name]


def validate_model_name(name: str) -> str:
    """Raise UsageError unless ``name`` is a model name Triton and its URLs accept."""
    if not isinstance(name, str) or not name:
        raise UsageError("the model name is empty; pass --name with letters, digits, '_', '-' or '.'")
    if name in (".", "..") or not NAME_PATTERN.fullmatch(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        why = f"it contains {', '.join(repr(c) for c in bad)}" if bad else "it must not start with '.' or '-'"
        raise UsageError(f"model name '{name}' is not valid for Triton ({why}); a model name is a directory and a "
                         "URL path segment (/v2/models/NAME): use letters, digits, '_', '-' and '.', starting with "
                         "a letter, digit or '_'")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(f"model name '{name[:40]}...' is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    return name


# -- typed pieces ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorConfig:
    """One input or output: ``dims`` exclude the batch dimension; -1 is a dynamic dimension."""

    name: str
    data_type: str  # TYPE_FP32, TYPE_STRING, ...
    dims: tuple[int, ...]

    def to_message(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": Enum(self.data_type), "dims": list(self.dims)}


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 500

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {}
        if self.preferred_batch_sizes:
            msg["preferred_batch_size"] = list(self.preferred_batch_sizes)
        msg["max_queue_delay_microseconds"] = int(self.max_queue_delay_us)
        return msg


@dataclass(frozen=True)
class Warmup:
    """One warmup request Triton runs before marking the model ready."""

    name: str
    batch_size: int
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, TYPE_*, dims)
    data: str = "random_data"  # random_data | zero_data | input_data_file
    data_file: str | None = None  # for input_data_file: a file name under <model>/warmup/

    def to_message(self) -> dict[str, Any]:
        entries = []
        for name, dtype, dims in self.inputs:
            value: dict[str, Any] = {"data_type": Enum(dtype), "dims": list(dims)}
            if self.data == "input_data_file":
                value["input_data_file"] = self.data_file or name
            else:
                value[self.data] = True
            entries.append({"key": name, "value": value})
        return {"name": self.name, "batch_size": int(self.batch_size), "inputs": entries}


@dataclass
class ModelConfig:
    """The fields of Triton's ``ModelConfig`` this toolkit writes."""

    name: str
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    max_batch_size: int
    platform: str | None = None  # onnxruntime_onnx, tensorrt_plan
    backend: str | None = None  # python, openvino
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    dynamic_batching: DynamicBatching | None = field(default_factory=DynamicBatching)
    default_model_filename: str | None = None
    cc_model_filenames: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    warmup: list[Warmup] = field(default_factory=list)

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"name": self.name}
        if self.platform:
            msg["platform"] = self.platform
        if self.backend:
            msg["backend"] = self.backend
        msg["max_batch_size"] = int(self.max_batch_size)
        if self.default_model_filename:
            msg["default_model_filename"] = self.default_model_filename
        if self.cc_model_filenames:
            msg["cc_model_filenames"] = [{"key": k, "value": v} for k, v in sorted(self.cc_model_filenames.items())]
        msg["input"] = [t.to_message() for t in self.inputs]
        msg["output"] = [t.to_message() for t in self.outputs]
        if self.dynamic_batching is not None and self.max_batch_size > 0:
            msg["dynamic_batching"] = self.dynamic_batching.to_message()
        msg["instance_group"] = [{"kind": Enum(self.instance_kind), "count": int(self.instance_count)}]
        if self.parameters:
            msg["parameters"] = [{"key": k, "value": {"string_value": str(v)}} for k, v in self.parameters.items()]
        if self.warmup:
            msg["model_warmup"] = [w.to_message() for w in self.warmup]
        return msg

    def render(self) -> str:
        return render(self.to_message())


def preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from a quarter of the maximum up to it: 32 -> (8, 16, 32)."""
    if max_batch_size <= 1:
        return ()
    sizes = {max_batch_size}
    s = 1
    while s < max_batch_size:
        if s * 4 >= max_batch_size:
            sizes.add(s)
        s *= 2
    return tuple(sorted(sizes))


# -- protobuf text --------------------------------------------------------------------------------

def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{escaped}"'
    raise TypeError(f"cannot render {type(value).__name__} in protobuf text")


def _render_fields(msg: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in msg.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            lines.extend(_render_fields(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, (list, tuple)):
            if value and all(isinstance(v, Mapping) for v in value):
                for item in value:  # a repeated message (or a map entry) is repeated blocks
                    lines.append(f"{pad}{key} {{")
                    lines.extend(_render_fields(item, indent + 1))
                    lines.append(f"{pad}}}")
            elif value:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def render(msg: Mapping[str, Any]) -> str:
    """A nested dict (messages), lists (repeated fields; map fields as ``{key, value}`` dicts) and
    scalars -> protobuf text format."""
    return "\n".join(_render_fields(msg, 0)) + "\n"


# -- schema check ---------------------------------------------------------------------------------

def schema_available() -> bool:
    try:
        from google.protobuf import text_format  # noqa: F401
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def parse_config(text: str, source: str = "config.pbtxt") -> Any:
    """Parse ``text`` with Triton's ``ModelConfig`` schema; UsageError quoting protobuf's message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise UsageError(f"{source} does not match Triton's model config schema: {exc}") from exc


def validate_config(text: str, *, expected_name: str | None = None, source: str = "config.pbtxt",
                    required: bool = False) -> Any | None:
    """Check ``text`` against Triton's schema and a few rules Triton applies when loading:
    the name matches the directory, inputs and outputs are present, batching fits the batch size.
    Returns the parsed message, or None when ``tritonclient`` is missing and not ``required``."""
    if not schema_available():
        if required:
            from ...errors import MissingDependencyError

            raise MissingDependencyError("tritonclient", "checking config.pbtxt against Triton's schema", "triton")
        log.debug("tritonclient is not installed: %s not checked against Triton's schema", source)
        return None
    cfg = parse_config(text, source)
    if expected_name is not None and cfg.name != expected_name:
        raise UsageError(f"{source}: name '{cfg.name}' differs from its directory '{expected_name}'; Triton "
                         "refuses to load it")
    if not cfg.platform and not cfg.backend:
        raise UsageError(f"{source}: neither platform nor backend is set")
    if not cfg.input or not cfg.output:
        raise UsageError(f"{source}: a model needs at least one input and one output")
    if cfg.HasField("dynamic_batching"):
        if cfg.max_batch_size < 1:
            raise UsageError(f"{source}: dynamic batching needs max_batch_size >= 1")
        too_big = [b for b in cfg.dynamic_batching.preferred_batch_size if b > cfg.max_batch_size or b < 1]
        if too_big:
            raise UsageError(f"{source}: preferred batch sizes {too_big} are outside 1..{cfg.max_batch_size}")
    for w in cfg.model_warmup:
        if w.batch_size > max(1, cfg.max_batch_size):
            raise UsageError(f"{source}: warmup '{w.name}' batch size {w.batch_size} exceeds max_batch_size "
                             f"{cfg.max_batch_size}")
        names = {t.name for t in cfg.input}
        unknown = set(w.inputs) - names
        if unknown:
            raise UsageError(f"{source}: warmup '{w.name}' feeds unknown inputs {sorted(unknown)}")
    return cfg


def read_config_fields(text: str) -> dict[str, Any]:
    """``name``, ``platform``, ``backend``, ``max_batch_size`` of a config.pbtxt (with Triton's schema
    when available, else by a light scan of the top-level fields)."""
    if schema_available():
        cfg = parse_config(text)
        return {"name": cfg.name, "platform": cfg.platform, "backend": cfg.backend,
                "max_batch_size": cfg.max_batch_size}
    out: dict[str, Any] = {"name": "", "platform": "", "backend": "", "max_batch_size": 0}
    depth = 0
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if depth == 0:
            m = re.match(r'(name|platform|backend|max_batch_size)\s*:\s*"?([^"\s]*)"?', stripped)
            if m:
                out[m.group(1)] = int(m.group(2)) if m.group(1) == "max_batch_size" else m.group(2)
        depth += stripped.count("{") + stripped.count("[") - stripped.count("}") - stripped.count("]")
    return out


__all__ = ["DynamicBatching", "Enum", "MAX_NAME_LENGTH", "ModelConfig", "NAME_PATTERN", "TRITON_DTYPES",
           "TensorConfig", "Warmup", "parse_config", "preferred_batch_sizes", "read_config_fields", "render",
           "schema_available", "triton_dtype", "validate_config", "validate_model_name"]
