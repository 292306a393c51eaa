"""PyTorch -> ONNX (dynamic N, H, W), ``make_dynamic``, FP16 conversion, the export manifest."""

from .dynamic import make_dynamic
from .._io import save_onnx
from ..shapes import MIN_SPATIAL, parse_shape
from ..versions import package_versions
from .manifest import MANIFEST_NAME, Manifest
from .onnx_export import DEFAULT_OPSET, EXPORTERS, export_onnx
from .pipeline import DEFAULT_CHECK_SHAPES, ENGINE_MODES, ExportConfig, ExportResult, export_model, verify

__all__ = ["DEFAULT_CHECK_SHAPES", "DEFAULT_OPSET", "ENGINE_MODES", "EXPORTERS", "MANIFEST_NAME", "MIN_SPATIAL",
           "ExportConfig", "ExportResult", "Manifest", "export_model", "export_onnx", "make_dynamic", "package_versions",
           "parse_shape", "save_onnx", "verify"]
