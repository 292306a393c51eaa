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

NumPy and Pillow only: this is the serving path. :class:`FusedPreprocess` (a torch module, for
export) is in :mod:`resnet_deploy.models.fused` and still importable from here.

Decoding is bounded: an encoded image (a file or bytes) whose pixels, once decoded, would exceed
``max_pixels`` (default :data:`DEFAULT_MAX_IMAGE_PIXELS`, 40 MP, or ``$RESNET_DEPLOY_MAX_IMAGE_PIXELS``)
is refused from its header, before any pixel is decoded; and a JPEG over :data:`DRAFT_MIN_PIXELS`
is decoded at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``, in the DCT) when the preprocessing only
needs its resize size, so a 50 MP photo costs a few MB, not 150. Smaller images decode as before,
bit for bit.
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
from PIL import Image, ImageOps

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

#: The most pixels an encoded image may decode to (Pillow's own guard only warns at 89 MP and
#: refuses at 179 MP: 540 MB of RGB). A 493 KB PNG can declare 13000x13000.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
#: Environment variable that sets the process-wide cap (a positive integer).
MAX_PIXELS_ENV = "RESNET_DEPLOY_MAX_IMAGE_PIXELS"
#: JPEGs above this many pixels are decoded at reduced scale (draft) for preprocessing; below it,
#: decoding is exactly Pillow's full decode (bit-identical to torchvision's loader).
DRAFT_MIN_PIXELS = 16_000_000

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


def max_image_pixels(value: int | None = None) -> int:
    """The decode cap in pixels: ``value``, else ``$RESNET_DEPLOY_MAX_IMAGE_PIXELS``, else
    :data:`DEFAULT_MAX_IMAGE_PIXELS`. UsageError unless it is a positive integer."""
    source = "max_pixels"
    if value is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_IMAGE_PIXELS
        source = f"${MAX_PIXELS_ENV}"
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{source} must be a positive integer (pixels), got '{text}'") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{source} must be a positive integer (pixels), got {value!r}")
    return int(value)


def _bound(img: Image.Image, name: str, max_pixels: int, min_size: tuple[int, int] | None) -> None:
    """Before decoding: draft a large JPEG down towards ``min_size`` (its pixels are never needed at
    full size), then refuse an image still over ``max_pixels``. Only the header has been read."""
    w, h = img.size
    if min_size is not None and w * h > DRAFT_MIN_PIXELS and getattr(img, "format", None) == "JPEG":
        # Pillow picks the largest 1/2, 1/4, 1/8 scale that keeps both sides >= the requested size.
        img.draft(None, min_size)
        w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"image '{name}' is {w}x{h} ({w * h / 1e6:.1f} MP), over the decode limit of "
                         f"{max_pixels / 1e6:.1f} MP (set by max_pixels or ${MAX_PIXELS_ENV})")


def load_image(src: ImageSource, *, max_pixels: int | None = None,
               min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``src`` (a path, encoded bytes, a PIL image or an HxWxC uint8/uint16 array) into an
    RGB PIL image with its EXIF orientation applied. Raises :class:`ImageError` naming the source.

    An encoded image over ``max_pixels`` (see :func:`max_image_pixels`) is refused before it is
    decoded. ``min_size`` ``(width, height)``: the caller needs no more than this, so a JPEG over
    :data:`DRAFT_MIN_PIXELS` may be decoded at a reduced scale no smaller than it."""
    name = _describe(src)
    cap = max_image_pixels(max_pixels) if isinstance(src, (bytes, bytearray, memoryview, str, os.PathLike)) else 0
    try:
        if isinstance(src, Image.Image):
            img = src
            img.load()
        elif isinstance(src, np.ndarray):
            return _array_to_pil(src).convert("RGB")
        elif isinstance(src, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(src)))
            _bound(img, name, cap, min_size)
            img.load()
        elif isinstance(src, (str, os.PathLike)):
            from .._io import open_regular

            try:
                f = open_regular(src, "image")  # a FIFO or a device is refused, not read forever
            except UsageError as exc:
                raise ImageError(str(exc)) from None
            with f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise ImageError(f"image '{name}' is empty (0 bytes)")
                img = Image.open(f)
                _bound(img, name, cap, min_size)
                img.load()
        else:
            raise ImageError(f"cannot read an image from a {type(src).__name__}; pass a file path, encoded "
                             "bytes, a PIL image or an HxWx3 uint8 array")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, above ours: the header is enormous
        raise ImageError(f"image '{name}' is over the decode limit of {cap / 1e6:.1f} MP ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"image '{name}' does not exist") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad data
        if isinstance(exc, Image.UnidentifiedImageError):  # its message is the repr of a file object
            reason = "not a recognized image format"
        else:
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


def _resized_cropped(src: ImageSource, prep: Preprocessing, max_pixels: int | None = None) -> np.ndarray:
    """Decode, resize the short side and center-crop: (crop, crop, 3) uint8."""
    _check_prep(prep)
    # A large JPEG may be decoded at reduced scale, its short side kept at >= twice the resize size
    # (so the resize below still averages over the pixels it drops).
    img = load_image(src, max_pixels=max_pixels, min_size=(2 * int(prep.resize_size),) * 2)
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


def preprocess(img: ImageSource, prep: Preprocessing, *, max_pixels: int | None = None) -> np.ndarray:
    """One image -> (3, crop, crop) float32, equal to torchvision's
    ``Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean, std)`` on the PIL image.
    ``max_pixels``: the decode cap (:func:`max_image_pixels`)."""
    return normalize_uint8(_resized_cropped(img, prep, max_pixels), prep)


def preprocess_uint8(img: ImageSource, prep: Preprocessing, *, max_pixels: int | None = None) -> np.ndarray:
    """One image -> (crop, crop, 3) uint8, resized and cropped only: the input of a model exported
    with fused preprocessing (:class:`FusedPreprocess`), a quarter of the bytes of float32."""
    return np.ascontiguousarray(_resized_cropped(img, prep, max_pixels))


def preprocess_many(items: Iterable[ImageSource], prep: Preprocessing, workers: int | None = None,
                    uint8: bool = False, *, max_pixels: int | None = None) -> np.ndarray:
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
        arrays = [fn(x, prep, max_pixels=max_pixels) for x in items]
    else:
        pool = ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="decode")
        try:
            arrays = list(pool.map(lambda x: fn(x, prep, max_pixels=max_pixels), items))
        finally:  # on an error or Ctrl-C, the images not started yet are not decoded
            pool.shutdown(wait=True, cancel_futures=True)
    return np.stack(arrays)


def list_images(folder: str | os.PathLike[str], skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Every image file under ``folder`` (recursive, by suffix, sorted by path). A single image file
    is returned as a one-element list.

    Only regular files are listed (symlinks to them included): a FIFO, a device or a broken link
    named like an image is skipped, since reading it would block or never end. Each is appended to
    ``skipped`` as ``(path, reason)`` for the caller to report, or logged as a warning when
    ``skipped`` is None."""
    from .._io import file_problem

    root = Path(folder)
    if root.is_file():
        if root.suffix.lower() not in IMAGE_SUFFIXES:
            raise UsageError(f"'{root}' is not an image file; expected one of: {', '.join(IMAGE_SUFFIXES)}")
        return [root]
    if not root.is_dir():
        problem = file_problem(root)
        raise UsageError(f"image folder '{root}' " + ("does not exist" if problem in (None, "does not exist")
                                                      else problem))
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(dirpath) / name
            problem = file_problem(path)
            if problem is not None:
                if skipped is None:
                    log.warning("skipping '%s': it %s", path, problem)
                else:
                    skipped.append((str(path), f"image '{path}' {problem}"))
                continue
            found.append(path)
    return sorted(found)


# -- fused preprocessing --------------------------------------------------------------------------

def __getattr__(name: str) -> Any:
    # FusedPreprocess is a torch module: it lives in .fused, imported (with torch) only when asked for.
    if name == "FusedPreprocess":
        from .fused import FusedPreprocess

        return FusedPreprocess
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "DRAFT_MIN_PIXELS", "IMAGE_SUFFIXES", "ImageError",
           "ImageSource", "MAX_PIXELS_ENV", "center_crop_box", "default_workers", "list_images", "load_image",
           "max_image_pixels", "normalize_uint8", "preprocess", "preprocess_many", "preprocess_uint8",
           "resize_output_size"]
