"""PyTorch -> ONNX (dynamic N, H, W), ``make_dynamic``, FP16 conversion, the export manifest."""

from .dynamic import make_dynamic
from .manifest import MANIFEST_NAME, Manifest, package_versions
from .onnx_export import DEFAULT_OPSET, EXPORTERS, MIN_SPATIAL, export_onnx, save_onnx
from .pipeline import (DEFAULT_CHECK_SHAPES, ENGINE_MODES, ExportConfig, ExportResult, export_model, parse_shape,
                       verify)

__all__ = ["DEFAULT_CHECK_SHAPES", "DEFAULT_OPSET", "ENGINE_MODES", "EXPORTERS", "MANIFEST_NAME", "MIN_SPATIAL",
           "ExportConfig", "ExportResult", "Manifest", "export_model", "export_onnx", "make_dynamic", "package_versions",
           "parse_shape", "save_onnx", "verify"]
