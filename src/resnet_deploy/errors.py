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

    def __init__(self, package: str, feature: str, extra: str | None = None) -> None:
        hint = f"pip install 'resnet-deploy[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the '{package}' package, which is not installed; {hint}")
        self.package = package


class CheckFailedError(ResnetDeployError):
    """A check ran and its result is outside tolerance (exit code 1)."""

    exit_code = 1


def require(module: str, feature: str, extra: str | None = None):
    """Import an optional dependency or raise one clear error naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module.split(".")[0], feature, extra) from exc
