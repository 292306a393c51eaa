"""INT8 with a calibration set: sources of calibration images, activation ranges (minmax, entropy,
percentile), explicit Q/DQ ONNX for ONNX Runtime (u8s8) and TensorRT (symmetric s8s8), a reusable
calibration cache (JSON + TensorRT calibration table), and parity on held-out images.

    from resnet_deploy.calibration import CalibrationConfig, run_int8_stage

    res = run_int8_stage("exports/resnet50/resnet50.onnx", None, "exports/resnet50", "resnet50",
                         CalibrationConfig(calib_data="calib_images/", target="both"))
    res.artifacts["onnxruntime"], res.parity["onnxruntime"].passed
"""

from .cache import CalibrationCache, read_trt_table, write_trt_table
from .qdq import (TARGET_CHOICES, TARGETS, prepare, qdq_summary, quantize, quantize_modelopt, quantize_onnxruntime,
                  quantize_tensorrt, targets_for)
from .ranges import (DEFAULT_NUM_BINS, DEFAULT_PERCENTILE, METHODS, Calibration, MethodConfig, RangeCollector,
                     TensorRange, TensorStats, calibrate, compute_ranges, entropy_amax, percentile_amax)
from .sources import (DEFAULT_HOLDOUT, DEFAULT_SIZE, RECOMMENDED_IMAGES, ArraySource, CalibrationSource,
                      ImageFolderSource, SyntheticSource, holdout_split, make_source)
from .stage import CalibrationConfig, Int8StageResult, record_in_manifest, run_int8_stage

__all__ = ["ArraySource", "Calibration", "CalibrationCache", "CalibrationConfig", "CalibrationSource",
           "DEFAULT_HOLDOUT", "DEFAULT_NUM_BINS", "DEFAULT_PERCENTILE", "DEFAULT_SIZE", "ImageFolderSource",
           "Int8StageResult", "METHODS", "MethodConfig", "RECOMMENDED_IMAGES", "RangeCollector", "SyntheticSource",
           "TARGETS", "TARGET_CHOICES", "TensorRange", "TensorStats", "calibrate", "compute_ranges", "entropy_amax",
           "holdout_split", "make_source", "percentile_amax", "prepare", "qdq_summary", "quantize",
           "quantize_modelopt", "quantize_onnxruntime", "quantize_tensorrt", "read_trt_table",
           "record_in_manifest", "run_int8_stage", "targets_for", "write_trt_table"]
