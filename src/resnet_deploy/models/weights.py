"""Weights: torchvision's published ImageNet checkpoints (through torch.hub, hash checked), a
checkpoint file in the shapes people actually save, or a seeded random init."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import sha256_file
from ..errors import WeightsError
from .registry import VariantSpec
from .transforms import IMAGENET_V1, Preprocessing, WeightsInfo

log = logging.getLogger(__name__)

RANDOM = "random"
_HASH_RE = re.compile(r"-([a-f0-9]{6,})\.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, *, origin: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A bare state_dict, or one held under ``state_dict``/``model``, with ``module.`` stripped."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{origin}: expected a state_dict or a checkpoint dict, got {type(obj).__name__}")
    if not _is_tensor_dict(obj):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return extract_state_dict(obj[key], origin=f"{origin}['{key}']")
        raise WeightsError(f"{origin}: no state_dict found; top-level keys are "
                           + ", ".join(map(str, list(obj)[:8])) + " (expected tensors, or one of "
                           + ", ".join(_WRAPPER_KEYS) + ")")
    sd = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


#: What a refused pickle is told. PyTorch's own message advises ``weights_only=False``, which runs
#: whatever code the file carries: never pass that on.
_REFUSED = ("holds Python objects other than tensors and plain containers; refused, since loading it could run "
            "code. Re-save the model's state_dict (torch.save(model.state_dict(), PATH)) or use .safetensors")


def _container(head: bytes) -> str:
    """``zip`` (torch.save's format), ``pickle`` (the legacy format, or a plain pickle), or ``other``."""
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "other"


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a .pth/.pt (``torch.load(weights_only=True)``) or .safetensors file."""
    import warnings

    from .._io import file_problem

    p = Path(path)
    problem = file_problem(p)
    if problem is not None:
        raise WeightsError(f"weights file '{p}' {problem}")
    with open(p, "rb") as f:
        head = f.read(8)
    if not head:
        raise WeightsError(f"cannot read weights file '{p}': it is empty (0 bytes)")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise WeightsError(f"'{p}' is a safetensors file; pip install safetensors to read it") from exc
        try:
            return load_file(str(p))
        except Exception as exc:
            raise WeightsError(f"cannot read weights file '{p}': not a valid safetensors file "
                               f"({_first_line(exc)})") from exc
    kind = _container(head)
    if kind == "other":
        raise WeightsError(f"cannot read weights file '{p}': not a PyTorch checkpoint (neither torch.save's zip "
                           "format nor a pickle)")
    if kind == "zip":
        import zipfile

        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise WeightsError(f"cannot read weights file '{p}': a damaged zip archive ({_first_line(exc)})") from exc
        if not any(n.endswith("data.pkl") for n in names):
            raise WeightsError(f"cannot read weights file '{p}': not a PyTorch checkpoint (a zip archive without "
                               "data.pkl)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle refused by weights_only, truncated file...
        import pickle

        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
            raise WeightsError(f"cannot read weights file '{p}': it {_REFUSED}") from exc
        if "magic number" in text:  # a pickle, but not torch.save's legacy layout
            raise WeightsError(f"cannot read weights file '{p}': not a PyTorch checkpoint (a pickle without "
                               "torch.save's header)") from exc
        raise WeightsError(f"cannot read weights file '{p}': {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if not line.isdigit() else f"{type(exc).__name__} {line}"  # KeyError 101, not a bare "101"


def check_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, origin: str, limit: int = 5) -> None:
    """Raise naming the first few missing, unexpected and mis-shaped keys: never a partial load."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                more = f" and {len(items) - limit} more" if len(items) > limit else ""
                parts.append(f"{len(items)} {label}: " + ", ".join(items[:limit]) + more)
        raise WeightsError(f"{origin} does not fit {type(model).__name__}: " + "; ".join(parts))


def hub_checkpoint_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def fetch_published(url: str) -> Path:
    """The published checkpoint from the torch.hub cache, or downloaded into it; hash checked."""
    cached = hub_checkpoint_path(url)
    m = _HASH_RE.search(os.path.basename(url))
    prefix = m.group(1) if m else None
    if cached.is_file():
        if prefix and not sha256_file(cached).startswith(prefix):
            raise WeightsError(f"cached checkpoint '{cached}' fails its hash check (expected sha256 to start "
                               f"with {prefix}); delete it to download it again")
        return cached
    log.info("downloading %s into %s", url, cached.parent)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=prefix, progress=True)
    except Exception as exc:
        raise WeightsError(f"cannot download {url}: {exc}; without network access, place the file at "
                           f"'{cached}' (torch.hub's cache)") from exc
    return cached


def parse_weights_arg(weights: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    """``random`` | ``imagenet`` | ``imagenet:IMAGENET1K_V1`` | ``imagenet1k_v2`` | a path."""
    if weights is None:
        return RANDOM, None
    text = str(weights)
    low = text.lower()
    if low == RANDOM:
        return RANDOM, None
    if low == "imagenet":
        return "imagenet", None
    if low.startswith("imagenet:"):
        return "imagenet", text.split(":", 1)[1]
    if low in ("imagenet1k_v1", "imagenet1k_v2", "imagenet-v1", "imagenet-v2"):
        return "imagenet", "IMAGENET1K_" + low[-2:].upper()
    return "path", text


def load_weights(model: nn.Module, spec: VariantSpec, weights: str | os.PathLike[str] | None,
                 num_classes: int) -> WeightsInfo:
    """Load ``weights`` into ``model`` strictly and return the record that travels with them."""
    kind, value = parse_weights_arg(weights)
    if kind == RANDOM:
        return WeightsInfo(source=RANDOM, preprocessing=IMAGENET_V1, num_classes=num_classes, meaningful=False)
    if kind == "imagenet":
        published = spec.published(value)
        if num_classes != 1000:
            raise WeightsError(f"ImageNet weights have 1000 classes, not {num_classes}; pass a fine-tuned "
                               "checkpoint with --weights PATH")
        path = fetch_published(published.url)
        sd = extract_state_dict(read_checkpoint(path), origin=str(path))
        check_fits(model, sd, origin=f"{spec.name} {published.tag} ({path.name})")
        model.load_state_dict(sd, strict=True)
        return WeightsInfo(source=f"imagenet:{published.tag}", sha256=sha256_file(path),
                           preprocessing=published.preprocessing, num_classes=1000)
    path = Path(value)
    raw = read_checkpoint(path)
    sd = extract_state_dict(raw, origin=str(path))
    check_fits(model, sd, origin=f"'{path}'")
    model.load_state_dict(sd, strict=True)
    prep = IMAGENET_V1
    if isinstance(raw, Mapping) and isinstance(raw.get("preprocessing"), Mapping):
        prep = Preprocessing.from_dict(dict(raw["preprocessing"]))
    return WeightsInfo(source=str(path), sha256=sha256_file(path), preprocessing=prep, num_classes=num_classes)


def checkpoint_num_classes(weights: str | os.PathLike[str] | None) -> int | None:
    """The class count of a checkpoint file's ``fc`` (so fine-tuned heads need no flag)."""
    kind, value = parse_weights_arg(weights)
    if kind != "path":
        return None
    sd = extract_state_dict(read_checkpoint(value), origin=str(value))
    fc = sd.get("fc.weight")
    return int(fc.shape[0]) if fc is not None and fc.ndim == 2 else None
