"""The calibration cache: activation ranges saved so a second run does not calibrate again.

Two files, written together:

* ``<name>.calib.json``: per tensor ``min``/``max``/``amax``, the symmetric int8 scale (zero point
  0) and the asymmetric uint8 scale/zero point; the method and its parameters, the number of
  images, the calibration data's fingerprint, the preprocessing record and the sha256 of the FP32
  ONNX it was computed on. A cache is only reused for the same model and preprocessing; it is
  recomputed when the method, its parameters or the images differ.
* ``<name>.calib.cache``: the same ranges as a TensorRT calibration table, one line per tensor
  ``name: <float32 scale as big-endian hex>`` under a ``TRT-<version>-<algorithm>`` header, where
  the scale is ``amax / 127``. ONNX Runtime's TensorRT provider (with
  ``trt_int8_use_native_calibration_table``) and ModelOpt (``calibration_cache_path``) import it.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._io import atomic_path, write_json
from ..errors import UsageError
from .ranges import TensorRange

log = logging.getLogger(__name__)

FORMAT = "resnet-deploy-calibration/1"
#: TensorRT's calibration-table algorithm names by method (percentile has none: it is written as
#: what TensorRT would read, the per-tensor scale).
TRT_ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration", "percentile": "EntropyCalibration2",
                  "mse": "EntropyCalibration2"}
#: Header version when TensorRT is not installed: 10.0.0 in TensorRT's ``major*10000 + minor*100 + patch``.
DEFAULT_TRT_VERSION = 100000


def table_path(json_path: str | os.PathLike[str]) -> Path:
    """``x.calib.json`` -> ``x.calib.cache``."""
    p = Path(json_path)
    name = p.name[:-len(".json")] if p.name.endswith(".json") else p.name
    return p.with_name(name + ".cache")


@dataclass
class CalibrationCache:
    """What a calibration produced, with everything that decides whether it can be reused."""

    ranges: dict[str, TensorRange]
    method: str
    params: dict[str, Any]
    num_images: int
    batch_shape: list[int]
    model_sha256: str
    model_path: str
    preprocessing: dict[str, Any] | None
    data: dict[str, Any] = field(default_factory=dict)  # source description + fingerprint
    #: ``--calib-method auto``: every candidate's held-out score and the method chosen (None otherwise)
    selection: dict[str, Any] | None = None
    #: ``auto`` with several flavours: the ranges of a flavour whose best method differs from ``method``'s
    target_ranges: dict[str, dict[str, TensorRange]] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "created": self.created,
                "model": {"path": self.model_path, "sha256": self.model_sha256},
                "preprocessing": self.preprocessing, "method": self.method, "params": self.params,
                "num_images": self.num_images, "batch_shape": self.batch_shape, "data": self.data,
                **({"selection": self.selection} if self.selection is not None else {}),
                **({"target_tensors": {t: {name: r.to_dict() for name, r in rs.items()}
                                       for t, rs in self.target_ranges.items()}} if self.target_ranges else {}),
                "tensors": {name: r.to_dict() for name, r in self.ranges.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "cache") -> "CalibrationCache":
        if d.get("format") != FORMAT:
            raise UsageError(f"'{origin}' is not a resnet-deploy calibration cache (format {d.get('format')!r}, "
                             f"expected {FORMAT!r})")
        try:
            return cls(ranges={k: TensorRange.from_dict(v) for k, v in d["tensors"].items()}, method=d["method"],
                       params=dict(d.get("params", {})), num_images=int(d["num_images"]),
                       batch_shape=list(d.get("batch_shape", [])), model_sha256=d["model"]["sha256"],
                       model_path=d["model"].get("path", ""), preprocessing=d.get("preprocessing"),
                       data=dict(d.get("data", {})), selection=d.get("selection"),
                       target_ranges={t: {k: TensorRange.from_dict(v) for k, v in rs.items()}
                                      for t, rs in d.get("target_tensors", {}).items()},
                       created=d.get("created", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"calibration cache '{origin}' is incomplete or corrupt: {exc!r}") from exc

    @property
    def chosen_method(self) -> str:
        """The method whose ranges these are (``auto``: the one it chose)."""
        return str(self.selection["chosen"]) if self.selection else self.method

    def method_for(self, target: str) -> str:
        """The method of the ranges ``target`` is quantized with."""
        if self.selection and target in self.selection.get("per_target", {}):
            return str(self.selection["per_target"][target])
        return self.chosen_method

    def ranges_for(self, target: str) -> dict[str, TensorRange]:
        return self.target_ranges.get(target) or self.ranges

    def save(self, path: str | os.PathLike[str], trt_version: int | None = None) -> tuple[Path, Path]:
        """Write the JSON cache and the TensorRT table beside it; returns both paths."""
        path = Path(path)
        write_json(path, self.to_dict())
        table = table_path(path)
        write_trt_table(table, self.ranges, algorithm=TRT_ALGORITHMS.get(self.chosen_method, "EntropyCalibration2"),
                        trt_version=trt_version)
        return path, table

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CalibrationCache":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read calibration cache '{p}': {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise UsageError(f"calibration cache '{p}' is not valid JSON: {exc}") from exc
        return cls.from_dict(data, origin=str(p))

    # -- reuse rules ---------------------------------------------------------------------------
    def foreign_reason(self, model_sha256: str, preprocessing: dict[str, Any] | None) -> str | None:
        """Why this cache belongs to another model or preprocessing (None when it is ours)."""
        if self.model_sha256 != model_sha256:
            return (f"it was made for another model ('{self.model_path}', sha256 {self.model_sha256[:12]}...), "
                    f"not this one (sha256 {model_sha256[:12]}...)")
        if preprocessing is not None and self.preprocessing is not None and \
                _norm(self.preprocessing) != _norm(preprocessing):
            diff = sorted(k for k in set(self.preprocessing) | set(preprocessing)
                          if _norm(self.preprocessing.get(k)) != _norm(preprocessing.get(k)))
            return ("it was made with other preprocessing (" + ", ".join(
                f"{k}: {self.preprocessing.get(k)!r} vs {preprocessing.get(k)!r}" for k in diff) + ")")
        return None

    def stale_reason(self, method: str, params: dict[str, Any], data: dict[str, Any]) -> str | None:
        """Why the ranges must be computed again for this request (None when the cache fits)."""
        if self.method != method or _norm(self.params) != _norm(params):
            return f"it holds {self.method} ranges {self.params}, this run asks for {method} {params}"
        if self.data.get("fingerprint") != data.get("fingerprint"):
            return "it was computed on other calibration images (or another number, order or batching of them)"
        return None


def _norm(value: Any) -> Any:
    """JSON round trip, so tuples and lists, ints and floats compare as they are stored."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def write_trt_table(path: str | os.PathLike[str], ranges: dict[str, TensorRange], *,
                    algorithm: str = "EntropyCalibration2", trt_version: int | None = None) -> Path:
    """A TensorRT calibration table: ``TRT-<version>-<algorithm>`` then ``name: <hex scale>`` lines."""
    version = trt_version if trt_version is not None else installed_trt_version() or DEFAULT_TRT_VERSION
    lines = [f"TRT-{version}-{algorithm}"]
    for name, r in ranges.items():
        if ": " in name or "\n" in name:
            log.warning("tensor name %r cannot be written to a TensorRT calibration table; skipped", name)
            continue
        lines.append(f"{name}: {struct.pack('>f', r.int8_scale).hex()}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def read_trt_table(path: str | os.PathLike[str]) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) from a TensorRT calibration table."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read calibration table '{p}': {exc.strerror or exc}") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise UsageError(f"'{p}' is not a TensorRT calibration table (no 'TRT-<version>-<algorithm>' header)")
    scales = {}
    for ln in lines[1:]:
        name, _, value = ln.rpartition(": ")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
        except (ValueError, struct.error) as exc:
            raise UsageError(f"'{p}': bad line {ln!r}: {exc}") from exc
    return lines[0], scales


def installed_trt_version() -> int | None:
    """TensorRT's version as ``major*10000 + minor*100 + patch`` (None when not installed)."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception:
        return None
    parts = [int(p) for p in str(trt.__version__).split(".")[:3] if p.isdigit()] + [0, 0, 0]
    major, minor, patch = parts[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


__all__ = ["CalibrationCache", "DEFAULT_TRT_VERSION", "FORMAT", "TRT_ALGORITHMS", "installed_trt_version",
           "read_trt_table", "table_path", "write_trt_table"]
