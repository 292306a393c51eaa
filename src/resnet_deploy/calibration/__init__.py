"""INT8 with a calibration set: sources of calibration images, activation ranges (minmax, entropy,
percentile, mse; ``auto`` scores them all on held-out images), per-layer sensitivity and mixed
precision, explicit Q/DQ ONNX for ONNX Runtime (u8s8) and TensorRT (symmetric s8s8), a reusable
calibration cache (JSON + TensorRT calibration table), and parity on held-out images.

    from resnet_deploy.calibration import CalibrationConfig, run_int8_stage

    res = run_int8_stage("exports/resnet50/resnet50.onnx", None, "exports/resnet50", "resnet50",
                         CalibrationConfig(calib_data="calib_images/", target="both"))
    res.artifacts["onnxruntime"], res.parity["onnxruntime"].passed
"""

from .accuracy import (HeldoutScorer, MethodChoice, MixedPrecision, Sensitivity, choose_method, logit_error,
                       mixed_precision, plot_sensitivity, sensitivity)
from .cache import CalibrationCache, read_trt_table, write_trt_table
from .qdq import (TARGET_CHOICES, TARGETS, float_layers, prepare, qdq_summary, quantize, quantize_modelopt,
                  quantize_onnxruntime, quantize_tensorrt, quantized_layers, targets_for)
from .ranges import (DEFAULT_NUM_BINS, DEFAULT_PERCENTILE, METHOD_CHOICES, METHODS, Calibration, MethodConfig,
                     RangeCollector, Statistics, TensorRange, TensorStats, calibrate, collect, compute_ranges,
                     entropy_amax, mse_amax, percentile_amax)
from .sources import (DEFAULT_HOLDOUT, DEFAULT_SIZE, RECOMMENDED_IMAGES, ArraySource, CalibrationSource,
                      ImageFolderSource, SyntheticSource, holdout_split, make_source)
from .stage import CalibrationConfig, Int8StageResult, record_in_manifest, run_int8_stage

__all__ = ["HeldoutScorer", "METHOD_CHOICES", "MethodChoice", "MixedPrecision", "Sensitivity", "Statistics",
           "choose_method", "collect", "float_layers", "logit_error", "mixed_precision", "mse_amax", "plot_sensitivity",
           "quantized_layers", "sensitivity",
           "ArraySource", "Calibration", "CalibrationCache", "CalibrationConfig", "CalibrationSource",
           "DEFAULT_HOLDOUT", "DEFAULT_NUM_BINS", "DEFAULT_PERCENTILE", "DEFAULT_SIZE", "ImageFolderSource",
           "Int8StageResult", "METHODS", "MethodConfig", "RECOMMENDED_IMAGES", "RangeCollector", "SyntheticSource",
           "TARGETS", "TARGET_CHOICES", "TensorRange", "TensorStats", "calibrate", "compute_ranges", "entropy_amax",
           "holdout_split", "make_source", "percentile_amax", "prepare", "qdq_summary", "quantize",
           "quantize_modelopt", "quantize_onnxruntime", "quantize_tensorrt", "read_trt_table",
           "record_in_manifest", "run_int8_stage", "targets_for", "write_trt_table"]
