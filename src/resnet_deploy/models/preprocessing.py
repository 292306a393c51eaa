"""Image preprocessing: the one place that turns files, bytes, PIL images or arrays into model inputs.

Semantics are torchvision's ImageNet evaluation recipe on PIL images, driven by the
:class:`~resnet_deploy.models.transforms.Preprocessing` record that travels with the weights::

    Resize(resize_size)          # short side -> resize_size, long side int(resize * long / short)
    CenterCrop(crop_size)        # offsets int(round((h - crop) / 2)); zero padding when smaller
    ToTensor()                   # uint8 HWC -> float32 CHW in [0, 1]  (x / 255)
    Normalize(mean, std)         # (x - mean) / std, in float32

The float steps are done through a 256-entry table per channel computed with the same float32
operations, so results are bit-identical to torchvision's, not merely close.

Decoding (``load_image``) returns an RGB image with the EXIF orientation applied; CMYK, grayscale,
palette (with or without transparency), alpha, 16-bit and float images are converted to 8-bit RGB.
Alpha is dropped (as ``PIL.Image.convert("RGB")`` does, which is what torchvision's loaders call).
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from ..errors import UsageError
from .transforms import Preprocessing

log = logging.getLogger(__name__)

#: Suffixes ``list_images`` picks up (compared case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Preprocessing.interpolation -> PIL resampling filter.
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_ORIENTATION = 0x0112  # EXIF tag
#: A resized image larger than this many crops (aspect ratio beyond ~30:1) is resampled in the crop window only.
EXTREME_AREA = 40

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


class ImageError(UsageError):
    """An image that cannot be read or converted; the message names its source."""


def default_workers() -> int:
    """Decode threads used when ``workers`` is None (Pillow releases the GIL while decoding)."""
    return max(1, min(8, os.cpu_count() or 1))


# -- decoding -------------------------------------------------------------------------------------

def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {'x'.join(map(str, src.shape))} {src.dtype}>"
    if isinstance(src, Image.Image):
        return f"<PIL {src.mode} {src.width}x{src.height}>"
    return f"<{type(src).__name__}>"


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """High-bit-depth or float pixels -> uint8 (16-bit: round(v / 257); float: [0, 1] or [0, 255])."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        # 16-bit data (PNG/TIFF ``I;16``, or Pillow's 32-bit ``I`` holding 16-bit values)
        wide = np.clip(arr.astype(np.int64), 0, 65535)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        f = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if f.size and f.max() <= 1.0:
            f = f * 255.0
        return np.clip(np.rint(f), 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {arr.dtype}")


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        raise ImageError(f"image array of shape {'x'.join(map(str, arr.shape))} looks channels-first; pass "
                         "HxWxC (HxWx3 uint8 RGB), or a preprocessed float32 batch to Embedder.embed_batch")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ImageError(f"image array must be HxW or HxWxC with C in 1, 3, 4; got shape "
                         f"{'x'.join(map(str, arr.shape))}")
    if np.issubdtype(arr.dtype, np.floating):
        raise ImageError(f"float image arrays are ambiguous ({arr.dtype}); pass uint8 (or uint16) HxWxC pixels, "
                         "or an already preprocessed NCHW float32 batch to Embedder.embed_batch")
    if arr.size == 0:
        raise ImageError(f"image array of shape {'x'.join(map(str, arr.shape))} is empty")
    arr = np.ascontiguousarray(_to_uint8(arr))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[:, :, 0]
    mode = {2: "L"}.get(arr.ndim) or ("RGB" if arr.shape[-1] == 3 else "RGBA")
    return Image.fromarray(arr, mode=mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float: scale, do not clip
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the documented route for palette transparency (no warning)
    if mode == "La":
        img = img.convert("LA")
    return img.convert("RGB")  # CMYK, L, LA, RGBA, P, 1, YCbCr, LAB, HSV


def load_image(src: ImageSource) -> Image.Image:
    """Decode ``src`` (a path, encoded bytes, a PIL image or an HxWxC uint8/uint16 array) into an
    RGB PIL image with its EXIF orientation applied. Raises :class:`ImageError` naming the source."""
    name = _describe(src)
    try:
        if isinstance(src, Image.Image):
            img = src
            img.load()
        elif isinstance(src, np.ndarray):
            return _array_to_pil(src).convert("RGB")
        elif isinstance(src, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(src)))
            img.load()
        elif isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                img = Image.open(f)
                img.load()
        else:
            raise ImageError(f"cannot read an image from a {type(src).__name__}; pass a file path, encoded "
                             "bytes, a PIL image or an HxWx3 uint8 array")
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"image '{name}' does not exist") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad data
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"cannot decode image '{name}': {reason}") from exc
    if img.width < 1 or img.height < 1:
        raise ImageError(f"image '{name}' is empty ({img.width}x{img.height})")
    try:
        if img.getexif().get(_ORIENTATION, 1) in range(2, 9):
            img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block must not lose a readable image
        log.debug("ignoring unreadable EXIF orientation of %s: %s", name, exc)
    try:
        return _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot convert image '{name}' (mode {img.mode}) to RGB: {exc}") from exc


# -- geometry (torchvision's documented rounding) -------------------------------------------------

def resize_output_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the short side becomes ``size``, the long side
    ``int(size * long / short)`` (truncated). Returns ``(new_height, new_width)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def center_crop_box(height: int, width: int, crop: int) -> tuple[tuple[int, int, int, int], int, int]:
    """torchvision ``CenterCrop(crop)``: zero padding ``(left, top, right, bottom)`` when the image is
    smaller than the crop, then the ``(top, left)`` offset ``int(round((size - crop) / 2))`` into the
    padded image (Python's round: halves go to even)."""
    pad_l = (crop - width) // 2 if crop > width else 0
    pad_t = (crop - height) // 2 if crop > height else 0
    pad_r = (crop - width + 1) // 2 if crop > width else 0
    pad_b = (crop - height + 1) // 2 if crop > height else 0
    h, w = height + pad_t + pad_b, width + pad_l + pad_r
    return (pad_l, pad_t, pad_r, pad_b), int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))


def _check_prep(prep: Preprocessing) -> None:
    if not isinstance(prep, Preprocessing):
        raise UsageError(f"expected a Preprocessing record, got {type(prep).__name__}")
    if prep.interpolation not in _RESAMPLE:
        raise UsageError(f"unknown interpolation '{prep.interpolation}'; choose one of: {', '.join(_RESAMPLE)}")
    if int(prep.resize_size) < 1 or int(prep.crop_size) < 1:
        raise UsageError(f"resize_size and crop_size must be >= 1, got {prep.resize_size} and {prep.crop_size}")


def _resized_cropped(src: ImageSource, prep: Preprocessing) -> np.ndarray:
    """Decode, resize the short side and center-crop: (crop, crop, 3) uint8."""
    _check_prep(prep)
    img = load_image(src)
    crop = int(prep.crop_size)
    new_h, new_w = resize_output_size(img.height, img.width, int(prep.resize_size))
    (pl, pt, pr, pb), top, left = center_crop_box(new_h, new_w, crop)
    resample = _RESAMPLE[prep.interpolation]
    if new_h * new_w > EXTREME_AREA * crop * crop and not (pl or pt or pr or pb):
        # An extreme aspect ratio (a 10000x10 strip would become 256000x256, 196 MB): resample only the
        # window that the crop keeps. Same geometry; pixels within one grey level of the full resize.
        sx, sy = img.width / new_w, img.height / new_h
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        return np.asarray(img.resize((crop, crop), resample, box=box, reducing_gap=None))
    if (new_h, new_w) != (img.height, img.width):  # torchvision returns the image unchanged otherwise
        # PIL always antialiases bilinear/bicubic downscaling; torchvision ignores antialias=False on PIL.
        img = img.resize((new_w, new_h), resample, reducing_gap=None)
    arr = np.asarray(img)
    if pl or pt or pr or pb:
        arr = np.pad(arr, ((pt, pb), (pl, pr), (0, 0)))
    return arr[top:top + crop, left:left + crop]


@lru_cache(maxsize=16)
def _lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ((v / 255) - mean) / std computed with torchvision's float32 operations."""
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    out = (v[None, :] - m) / s
    out.setflags(write=False)
    return out


def normalize_uint8(arr: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32: ToTensor then Normalize(mean, std)."""
    lut = _lut(tuple(prep.mean), tuple(prep.std))
    out = np.empty((3, arr.shape[0], arr.shape[1]), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], arr[:, :, c], out=out[c])
    return out


def preprocess(img: ImageSource, prep: Preprocessing) -> np.ndarray:
    """One image -> (3, crop, crop) float32, equal to torchvision's
    ``Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean, std)`` on the PIL image."""
    return normalize_uint8(_resized_cropped(img, prep), prep)


def preprocess_uint8(img: ImageSource, prep: Preprocessing) -> np.ndarray:
    """One image -> (crop, crop, 3) uint8, resized and cropped only: the input of a model exported
    with fused preprocessing (:class:`FusedPreprocess`), a quarter of the bytes of float32."""
    return np.ascontiguousarray(_resized_cropped(img, prep))


def preprocess_many(items: Iterable[ImageSource], prep: Preprocessing, workers: int | None = None,
                    uint8: bool = False) -> np.ndarray:
    """Several images -> (N, 3, crop, crop) float32 (or (N, crop, crop, 3) uint8), decoded in a thread
    pool of ``workers`` threads. The first unreadable image raises :class:`ImageError`."""
    _check_prep(prep)
    items = list(items)
    crop = int(prep.crop_size)
    if not items:
        return np.empty((0, crop, crop, 3), np.uint8) if uint8 else np.empty((0, 3, crop, crop), np.float32)
    fn = preprocess_uint8 if uint8 else preprocess
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(items) == 1:
        arrays = [fn(x, prep) for x in items]
    else:
        pool = ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="decode")
        try:
            arrays = list(pool.map(lambda x: fn(x, prep), items))
        finally:  # on an error or Ctrl-C, the images not started yet are not decoded
            pool.shutdown(wait=True, cancel_futures=True)
    return np.stack(arrays)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``folder`` (recursive, by suffix, sorted by path). A single image file
    is returned as a one-element list."""
    root = Path(folder)
    if root.is_file():
        if root.suffix.lower() not in IMAGE_SUFFIXES:
            raise UsageError(f"'{root}' is not an image file; expected one of: {', '.join(IMAGE_SUFFIXES)}")
        return [root]
    if not root.is_dir():
        raise UsageError(f"image folder '{root}' does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return sorted(found)


# -- fused preprocessing --------------------------------------------------------------------------

class FusedPreprocess(nn.Module):
    """``model`` taking uint8 NHWC images that are already resized and cropped: ``/255``, mean/std
    normalization and NHWC -> NCHW happen inside the graph, so a runner moves a quarter of the bytes.

    Feed it :func:`preprocess_uint8` output (stacked). The mean and std come from ``prep``.
    """

    def __init__(self, model: nn.Module, prep: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32).div(255.0)
        return self.model((x - self.mean) / self.std)


__all__ = ["IMAGE_SUFFIXES", "FusedPreprocess", "ImageError", "ImageSource", "center_crop_box", "default_workers",
           "list_images", "load_image", "normalize_uint8", "preprocess", "preprocess_many", "preprocess_uint8",
           "resize_output_size"]
