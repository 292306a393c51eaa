"""TensorRT: engines from ONNX (strongly typed, TensorRT 10 and 11), their manifests, and a runner.

    ok, why = tensorrt_usable()
    result = build_engine("resnet50.fp16.onnx", "resnet50.fp16.engine", BuildConfig())
    with TensorRTRunner("resnet50.fp16.engine") as runner:
        logits = runner.infer(batch)

Importing this package imports neither TensorRT nor any CUDA binding; they load on first use.
"""

from .builder import (BuildConfig, EngineBuildError, EngineBuildResult, build_engine, check_engine,
                      engine_check_shapes, onnx_precision, tensorrt_usable)
from .manifest import EngineManifest, IncompatibleEngineError, MachineInfo, check_compatible, read_manifest
from .profiles import Profile, default_profiles, parse_shape, profiles_from_args, validate_profiles
from .runner import TensorRTRunner

__all__ = ["BuildConfig", "EngineBuildError", "EngineBuildResult", "EngineManifest", "IncompatibleEngineError",
           "MachineInfo", "Profile", "TensorRTRunner", "build_engine", "check_compatible",
           "check_engine", "default_profiles", "engine_check_shapes", "onnx_precision", "parse_shape",
           "profiles_from_args", "read_manifest", "tensorrt_usable", "validate_profiles"]
