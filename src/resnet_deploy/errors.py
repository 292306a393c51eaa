"""One small exception hierarchy. The CLI maps each class to an exit code."""

from __future__ import annotations


class ResnetDeployError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 2


class UsageError(ResnetDeployError):
    """Bad usage or bad input: an unknown variant, a corrupt file, a shape out of range."""

    exit_code = 2


class WeightsError(UsageError):
    """A weights file that cannot be read or does not fit the variant."""


class MissingDependencyError(UsageError):
    """An optional package that a requested feature needs is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None, alternative: str | None = None) -> None:
        hint = f"pip install 'resnet-deploy[{extra}]'" if extra else f"pip install {package}"
        tail = f" ({alternative})" if alternative else ""
        super().__init__(f"{feature} needs the '{package}' package, which is not installed; {hint}{tail}")
        self.package = package


class CheckFailedError(ResnetDeployError):
    """A check ran and its result is outside tolerance (exit code 1)."""

    exit_code = 1


#: Top-level module of an optional dependency -> the extra of resnet-deploy that installs it.
EXTRAS_BY_MODULE = {
    "torch": "export", "onnx": "export", "onnxscript": "export", "onnxslim": "export",
    "onnxconverter_common": "export", "safetensors": "safetensors", "onnxruntime": "onnxruntime",
    "openvino": "openvino", "tensorrt": "tensorrt-cu12", "cuda": "tensorrt-cu12", "pycuda": "pycuda",
    "modelopt": "modelopt", "tritonclient": "triton", "ray": "ray", "pyarrow": "parquet", "matplotlib": "plot",
}


def missing_dependency(exc: ImportError, feature: str) -> MissingDependencyError | None:
    """``exc`` as a :class:`MissingDependencyError` naming the extra, when it is an optional package
    of this toolkit that is not installed; None for any other import failure (a broken install or a
    bug, to surface as it is)."""
    if not isinstance(exc, ModuleNotFoundError) or exc.name not in EXTRAS_BY_MODULE:
        return None
    return MissingDependencyError(exc.name, feature, EXTRAS_BY_MODULE[exc.name])


def require(module: str, feature: str, extra: str | None = None):
    """Import an optional dependency or raise one clear error naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingDependencyError(top, feature, extra or EXTRAS_BY_MODULE.get(top)) from exc
