"""Check an artifact against PyTorch (or another artifact): ``run_check(CheckConfig)``.

The reference is rebuilt from the artifact's own metadata (variant, weights, classes, head) unless
the config says otherwise. Inputs: seeded batches at several shapes (plus an engine profile's min,
opt and max), a folder of images, or saved ``.npy``/``.npz`` batches. ``resnet-deploy check`` is a
thin CLI over this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import MissingDependencyError, UsageError
from .models.transforms import Preprocessing
from .parity import DEFAULT_TOLERANCES, ParityReport, compare, tolerances_for
from .runtime import load_runner, runner_options
from .runtime.base import Runner, TensorSpec

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
#: Seeded shapes checked by default: batch 1 at 224, an odd batch at a non-square size, a larger one.
DEFAULT_SHAPES: tuple[Shape, ...] = ((1, 3, 224, 224), (3, 3, 160, 288), (2, 3, 320, 320))
TOLERANCE_FLAGS = ("max_abs_rel", "min_cosine", "min_centered_cosine", "min_top1", "min_top5")


@dataclass
class CheckConfig:
    """What ``check`` compares, on which inputs, against which bars."""

    artifact: str
    backend: str = "auto"
    device: str | None = None  # None: cuda for engines, else cpu
    threads: int | None = None
    reference: str | None = None  # another artifact; None: PyTorch from metadata / variant+weights
    reference_backend: str = "auto"
    variant: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    head: str | None = None
    seed: int | None = None
    shapes: tuple[Shape, ...] | None = None  # None: DEFAULT_SHAPES unless real inputs are given
    images: str | None = None
    max_images: int = 32
    inputs: str | None = None
    precision: str | None = None
    tolerance_overrides: dict[str, float] = field(default_factory=dict)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def resolved_device(cfg: CheckConfig) -> str:
    from .pipelines.embedder import default_device

    return default_device(cfg.artifact, cfg.device)


def runner_kwargs(threads: int | None) -> dict[str, Any]:
    return {"threads": threads} if threads else {}


def is_fused(runner: Runner) -> bool:
    """An artifact exported with ``--fuse-preprocess`` takes uint8 NHWC pictures."""
    return np.dtype(runner.input.dtype) == np.uint8


def build_reference(cfg: CheckConfig, meta: dict[str, Any], candidate: Runner, prep: Preprocessing) -> Runner:
    """The PyTorch reference: the artifact's own variant/weights/head unless the config overrides."""
    if cfg.reference:
        return load_runner(cfg.reference, backend=cfg.reference_backend, device=_reference_device(cfg),
                           **runner_kwargs(cfg.threads))
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("torch", "checking against PyTorch", "export",
                                     alternative="or compare with another artifact: --reference OTHER_ARTIFACT") \
            from exc
    from .models import create_model
    from .models.heads import wrap_head
    from .runtime.torch_runner import TorchRunner

    variant = cfg.variant or meta.get("variant")
    if not variant:
        raise UsageError(f"'{cfg.artifact}' carries no 'variant' metadata (not exported by resnet-deploy?); pass "
                         "--variant and --weights, or --reference OTHER_ARTIFACT")
    weights = cfg.weights or meta.get("weights") or "random"
    num_classes = cfg.num_classes or (int(meta["num_classes"]) if str(meta.get("num_classes", "")).isdigit()
                                      else None)
    head = cfg.head or meta.get("head") or "logits"
    normalize = _truthy(meta.get("normalize", False)) and head == "embedding"
    seed = cfg.seed if cfg.seed is not None else int(meta.get("seed", 0) or 0)
    model, winfo = create_model(variant, weights=weights, num_classes=num_classes, seed=seed)
    module = wrap_head(model, head, normalize)
    if is_fused(candidate):
        from .models.fused import FusedPreprocess

        module = FusedPreprocess(module, prep).eval()
    ref = TorchRunner(module, device=_reference_device(cfg), output_name=candidate.outputs[0].name,
                      label=f"{variant} ({winfo.source})", **runner_kwargs(cfg.threads))
    if is_fused(candidate):
        ref.inputs = [candidate.inputs[0]]  # the wrapped module takes the same uint8 NHWC batch
    return ref


def _reference_device(cfg: CheckConfig) -> str:
    device = resolved_device(cfg)
    if device.startswith("cuda"):
        import torch

        return device if torch.cuda.is_available() else "cpu"
    return "cpu"


def _fits(spec: TensorSpec, shape: Shape) -> bool:
    try:
        spec.validate(np.empty(shape, dtype=spec.dtype))
    except UsageError:
        return False
    return True


def _profile_shapes(spec: TensorSpec) -> list[Shape]:
    return [tuple(int(d) for d in s) for s in (spec.min_shape, spec.opt_shape, spec.max_shape) if s is not None]


def _static_shape(spec: TensorSpec) -> Shape | None:
    """The one shape a fully static input accepts (batch 1 when only the batch is dynamic)."""
    if all(isinstance(d, int) and d > 0 for d in spec.shape[1:]):
        batch = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else 1
        return (batch, *spec.shape[1:])
    return None


def to_layout(shape: Shape, fused: bool) -> Shape:
    """``NxCxHxW`` as typed -> the runner's layout (NHWC for fused preprocessing)."""
    if fused and len(shape) == 4 and shape[1] == 3 and shape[3] != 3:
        n, c, h, w = shape
        return (n, h, w, c)
    return shape


def seeded_batches(shapes: list[Shape], seed: int, fused: bool) -> list[np.ndarray]:
    from .parity import seeded_inputs

    if not fused:
        return seeded_inputs(shapes, seed=seed)
    nchw = [(n, c, h, w) for n, h, w, c in shapes]
    # the uint8 picture a normalized pattern came from (about -2.2..2.7 -> 0..255)
    return [np.clip((b.transpose(0, 2, 3, 1) + 2.2) / 4.9 * 255, 0, 255).astype(np.uint8)
            for b in seeded_inputs(nchw, seed=seed)]


def image_batches(folder: str, prep: Preprocessing, fused: bool, limit: int, max_batch: int) -> list[np.ndarray]:
    """Up to ``limit`` readable images under ``folder``, preprocessed, in batches of ``max_batch``."""
    from .models.preprocessing import ImageError, list_images, preprocess, preprocess_uint8

    fn = preprocess_uint8 if fused else preprocess
    rows = []
    for path in list_images(folder):
        if len(rows) == limit:
            break
        try:
            rows.append(fn(path, prep))
        except ImageError as exc:
            log.warning("skipping unreadable image: %s", exc)
    if not rows:
        raise UsageError(f"no readable images under '{folder}'")
    arr = np.stack(rows)
    return [arr[i:i + max_batch] for i in range(0, len(arr), max_batch)]


def file_batches(path: str, spec: TensorSpec) -> list[np.ndarray]:
    from ._io import require_file

    p = require_file(path, "inputs file")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UsageError(f"'{p}' is not a readable .npy/.npz file: {exc}") from exc
    arrays = [loaded[k] for k in loaded.files] if hasattr(loaded, "files") else [loaded]
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.ndim == len(spec.shape) - 1:
            a = a[None]
        want = np.dtype(spec.dtype)
        if a.dtype != want and np.issubdtype(a.dtype, np.floating) and np.issubdtype(want, np.floating):
            log.info("casting %s inputs from %s to %s", p.name, a.dtype, want)
            a = a.astype(want)
        out.append(a)
    if not out:
        raise UsageError(f"'{p}' holds no arrays")
    return out


def check_inputs(cfg: CheckConfig, candidate: Runner, prep: Preprocessing, seed: int) -> list[np.ndarray]:
    spec = candidate.input
    fused = is_fused(candidate)
    real: list[np.ndarray] = []
    max_batch = int(spec.max_shape[0]) if spec.max_shape else 8
    if isinstance(spec.shape[0], int) and spec.shape[0] > 0:
        max_batch = spec.shape[0]
    if cfg.images:
        real += image_batches(cfg.images, prep, fused, cfg.max_images, min(8, max_batch))
    if cfg.inputs:
        real += file_batches(cfg.inputs, spec)
    shapes: list[Shape] = []
    if cfg.shapes is not None:
        shapes = [to_layout(s, fused) for s in cfg.shapes]
    elif not real:
        shapes = [s for s in (to_layout(s, fused) for s in DEFAULT_SHAPES) if _fits(spec, s)]
        if not shapes:
            static = _static_shape(spec)
            if static is not None:
                shapes = [static]
    for s in _profile_shapes(spec):
        if s not in shapes:
            shapes.append(s)
    if not shapes and not real:
        raise UsageError(f"no default shape fits input '{spec.name}' ({spec.allowed()}); pass --shapes")
    return seeded_batches(shapes, seed, fused) + real


def run_check(cfg: CheckConfig) -> tuple[ParityReport, Runner, Runner]:
    """Load the artifact and its reference, run both on the inputs, and compare. Runners are closed."""
    from .artifacts import read_metadata

    meta = read_metadata(cfg.artifact)
    prep = Preprocessing.from_dict(meta["preprocessing"]) if isinstance(meta.get("preprocessing"), dict) \
        else Preprocessing()
    if cfg.precision is not None and cfg.precision not in DEFAULT_TOLERANCES:
        raise UsageError(f"unknown precision '{cfg.precision}'; choose one of: {', '.join(DEFAULT_TOLERANCES)}")
    seed = cfg.seed if cfg.seed is not None else 0
    device = resolved_device(cfg)
    # --precision sets the tolerances, and also what a backend that has a choice (OpenVINO: f32 or
    # bf16) runs; runner_options drops what the chosen backend does not take.
    options = runner_options(cfg.artifact, cfg.backend, device, threads=cfg.threads, precision=cfg.precision)
    with load_runner(cfg.artifact, backend=cfg.backend, device=device, **options) as candidate:
        with build_reference(cfg, meta, candidate, prep) as reference:
            inputs = check_inputs(cfg, candidate, prep, seed)
            precision = cfg.precision or candidate.info.precision
            tol = tolerances_for(precision if precision in DEFAULT_TOLERANCES else "fp32",
                                 **cfg.tolerance_overrides)
            report = compare(reference, candidate, inputs, precision=precision, tolerances=tol)
    return report, candidate, reference
