"""Calibration data: an iterable of NCHW float32 batches with a length, and nothing more.

ONNX Runtime's ``CalibrationDataReader`` asks for the next ``{input_name: ndarray}`` or ``None``;
this module keeps the project's side that small (``for batch in source``, ``len(source)`` batches,
``source.num_images`` images) and leaves adapters to the quantizers.

Three sources:

* :class:`ImageFolderSource`: image files found recursively under a folder, prepared with the
  preprocessing record that travels with the weights (the same code inference uses);
* :class:`ArraySource`: a ``.npy`` or ``.npz`` file holding preprocessed NCHW float32 images, or
  NHWC uint8 pictures that are then prepared like image files;
* :class:`SyntheticSource`: seeded, varied images for tests (ranges from it do not fit photos).

:func:`make_source` picks one from a spec (a folder, a file, ``synthetic`` or ``synthetic:N``),
shuffles the items with a seed, keeps ``holdout`` of them aside for the parity check (never used
for calibration, see ``source.heldout``) and takes up to ``size`` for calibration.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import UsageError
from ..models.transforms import Preprocessing

log = logging.getLogger(__name__)

#: Calibration images TensorRT and ModelOpt recommend for CNNs; fewer gives a warning.
RECOMMENDED_IMAGES = 500
#: Default number of calibration images (``--calib-size``).
DEFAULT_SIZE = 500
#: Default number of images kept aside for the parity check.
DEFAULT_HOLDOUT = 16
SYNTHETIC = "synthetic"

Shape = tuple[int, int, int, int]


class CalibrationSource(abc.ABC):
    """A sized iterable of NCHW float32 batches of ``batch_size`` images (the last may be smaller).

    Subclasses hold an ordered list of items (file paths, array rows, seeds) and implement
    ``_load(items) -> batch``. ``subset(items)`` makes a source of the same kind over other items.
    """

    kind: str = "source"

    def __init__(self, items: Sequence[Any], batch_size: int) -> None:
        if batch_size < 1:
            raise UsageError(f"calibration batch size must be >= 1, got {batch_size}")
        self.items = list(items)
        self.batch_size = int(batch_size)
        self.heldout: CalibrationSource | None = None
        #: images left over after the held-out and the calibration images: never calibrated on, so
        #: ``--calib-method auto`` may score on them too (``None`` when there are none)
        self.spare: CalibrationSource | None = None

    # -- the plain-iterable interface ----------------------------------------------------------
    def __len__(self) -> int:
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    @property
    def num_images(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.items), self.batch_size):
            yield self._load(self.items[start:start + self.batch_size])

    # -- for subclasses ------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self, items: Sequence[Any]) -> np.ndarray:
        """The batch of ``items`` as (N, C, H, W) float32."""

    @abc.abstractmethod
    def subset(self, items: Sequence[Any]) -> "CalibrationSource":
        """A source of the same kind and settings over ``items``."""

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one prepared image."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What this source reads, for the cache and the manifest (JSON-able)."""

    def _item_key(self, item: Any) -> str:
        return str(item)

    # -- derived -------------------------------------------------------------------------------
    @property
    def batch_shape(self) -> Shape:
        c, h, w = self.image_shape
        return (self.batch_size, c, h, w)

    def fingerprint(self) -> str:
        """sha256 over what the calibration images are (kind, items, settings): equal fingerprints
        mean the same images, prepared the same way, in the same batches."""
        h = hashlib.sha256()
        h.update(repr(sorted(self.describe().items(), key=lambda kv: kv[0])).encode())
        for item in self.items:
            h.update(self._item_key(item).encode())
            h.update(b"\0")
        return h.hexdigest()


def _check_channels(channels: int, what: str) -> None:
    if channels != 3:
        raise UsageError(f"{what} has {channels} channel(s); the model takes 3 (RGB)")


class ImageFolderSource(CalibrationSource):
    """Image files, prepared with ``prep`` by ``resnet_deploy.models.preprocessing``."""

    kind = "images"

    def __init__(self, items: Sequence[Path], prep: Preprocessing, batch_size: int, *, root: Path | None = None,
                 workers: int | None = None) -> None:
        super().__init__(items, batch_size)
        self.prep = prep
        self.root = Path(root) if root is not None else None
        self.workers = workers

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], prep: Preprocessing, batch_size: int,
                    workers: int | None = None) -> "ImageFolderSource":
        from ..models.preprocessing import IMAGE_SUFFIXES, list_images

        root = Path(folder)
        files = list_images(root)
        if not files:
            raise UsageError(f"no images found in '{root}' (searched recursively for "
                             f"{', '.join(IMAGE_SUFFIXES)})")
        return cls(files, prep, batch_size, root=root if root.is_dir() else root.parent, workers=workers)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, int(self.prep.crop_size), int(self.prep.crop_size))

    def _load(self, items: Sequence[Path]) -> np.ndarray:
        from ..models.preprocessing import preprocess_many

        return preprocess_many(items, self.prep, workers=self.workers)

    def subset(self, items: Sequence[Path]) -> "ImageFolderSource":
        return ImageFolderSource(items, self.prep, self.batch_size, root=self.root, workers=self.workers)

    def _item_key(self, item: Path) -> str:
        p = Path(item)
        try:
            st = p.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        rel = os.path.relpath(p, self.root) if self.root is not None else str(p)
        return f"{rel}:{stamp}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.root) if self.root else None,
                "preprocessing": self.prep.to_dict(), "batch_size": self.batch_size}


class ArraySource(CalibrationSource):
    """Rows of an array loaded from ``.npy``/``.npz``: NCHW float32 (already preprocessed) or
    NHWC uint8 pictures (prepared with ``prep`` like image files)."""

    kind = "array"

    def __init__(self, array: np.ndarray, items: Sequence[int], batch_size: int, *, path: Path,
                 prep: Preprocessing | None = None, digest: str = "") -> None:
        super().__init__(items, batch_size)
        self.array = array
        self.path = Path(path)
        self.prep = prep
        self.digest = digest
        self.pictures = array.dtype == np.uint8

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], batch_size: int, prep: Preprocessing | None = None,
                  key: str | None = None) -> "ArraySource":
        from .._io import sha256_file

        p = Path(path)
        if not p.is_file():
            raise UsageError(f"calibration data '{p}' does not exist")
        try:
            loaded = np.load(p, allow_pickle=False)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"cannot read calibration array '{p}': {first}") from exc
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                if not names:
                    raise UsageError(f"'{p}' holds no arrays")
                if key is None:
                    key = names[0] if len(names) == 1 else next((n for n in ("input", "images", "calib", "x")
                                                                 if n in names), None)
                if key not in names:
                    raise UsageError(f"'{p}' holds arrays {', '.join(names)}; name one of them (the input name, "
                                     "or store a single array)")
                array = loaded[key]
        else:
            array = loaded
        cls._validate(array, p)
        if array.dtype == np.uint8 and prep is None:
            raise UsageError(f"'{p}' holds uint8 pictures; a preprocessing record is needed to prepare them")
        return cls(array, range(len(array)), batch_size, path=p, prep=prep, digest=sha256_file(p))

    @staticmethod
    def _validate(array: np.ndarray, path: Path) -> None:
        shape = "x".join(map(str, array.shape))
        if array.ndim != 4:
            raise UsageError(f"calibration array '{path}' has shape {shape}; expected N x 3 x H x W float32 "
                             "(preprocessed) or N x H x W x 3 uint8 (pictures)")
        if array.dtype == np.uint8:
            _check_channels(array.shape[3], f"calibration array '{path}' (N x H x W x C uint8, shape {shape})")
        elif np.issubdtype(array.dtype, np.floating):
            _check_channels(array.shape[1], f"calibration array '{path}' (N x C x H x W, shape {shape})")
            if not np.all(np.isfinite(array)):
                raise UsageError(f"calibration array '{path}' contains NaN or infinite values")
        else:
            raise UsageError(f"calibration array '{path}' has dtype {array.dtype}; expected float32 N x 3 x H x W "
                             "(preprocessed) or uint8 N x H x W x 3 (pictures)")
        if len(array) == 0:
            raise UsageError(f"calibration array '{path}' is empty (shape {shape})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.pictures:
            crop = int(self.prep.crop_size)  # type: ignore[union-attr]
            return (3, crop, crop)
        return tuple(int(d) for d in self.array.shape[1:])  # type: ignore[return-value]

    def _load(self, items: Sequence[int]) -> np.ndarray:
        rows = self.array[np.asarray(items, dtype=np.int64)]
        if self.pictures:
            from ..models.preprocessing import preprocess_many

            return preprocess_many(list(rows), self.prep)  # type: ignore[arg-type]
        return np.ascontiguousarray(rows, dtype=np.float32)

    def subset(self, items: Sequence[int]) -> "ArraySource":
        return ArraySource(self.array, items, self.batch_size, path=self.path, prep=self.prep, digest=self.digest)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.digest,
                "layout": "NHWC-uint8" if self.pictures else "NCHW-float32",
                "preprocessing": self.prep.to_dict() if (self.pictures and self.prep) else None,
                "batch_size": self.batch_size}


class SyntheticSource(CalibrationSource):
    """Seeded, varied images in the value range of normalized photos (for tests and smoke runs).

    Each item is an integer; image ``i`` is the same for every batching and subset, so held-out
    items never overlap calibration items.
    """

    kind = "synthetic"

    def __init__(self, items: Sequence[int], batch_size: int, image_shape: tuple[int, int, int],
                 seed: int = 0) -> None:
        super().__init__(items, batch_size)
        _check_channels(int(image_shape[0]), "the synthetic calibration shape")
        self._image_shape = tuple(int(d) for d in image_shape)
        self.seed = int(seed)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape  # type: ignore[return-value]

    def _load(self, items: Sequence[int]) -> np.ndarray:
        from ..parity import seeded_inputs

        c, h, w = self._image_shape
        return np.concatenate([seeded_inputs([(1, c, h, w)], seed=self.seed * 1_000_003 + int(i))[0]
                               for i in items])

    def subset(self, items: Sequence[int]) -> "SyntheticSource":
        return SyntheticSource(items, self.batch_size, self._image_shape, self.seed)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "image_shape": list(self._image_shape),
                "batch_size": self.batch_size}


def prep_for_shape(prep: Preprocessing, height: int, width: int) -> Preprocessing:
    """The preprocessing record scaled to a square ``height`` crop (resize keeps the record's ratio)."""
    if height != width:
        raise UsageError(f"calibration shape {height}x{width} is not square; images are prepared by resize and "
                         "center crop to a square, so choose H == W")
    if height == prep.crop_size:
        return prep
    resize = int(round(height * prep.resize_size / prep.crop_size))
    return dataclasses.replace(prep, crop_size=int(height), resize_size=resize)


def holdout_split(source: CalibrationSource, holdout: int, size: int | None = None) -> CalibrationSource:
    """Keep the first ``holdout`` items aside (``result.heldout``) and calibrate on up to ``size`` of
    the rest; what is left after those is ``result.spare``. Items are used in their current order:
    shuffle first (``make_source`` does)."""
    if holdout < 0:
        raise UsageError(f"holdout must be >= 0, got {holdout}")
    items = source.items
    held, rest = items[:holdout], items[holdout:]
    spare: list[Any] = []
    if size is not None:
        rest, spare = rest[:size], rest[size:]
    calib = source.subset(rest)
    calib.heldout = source.subset(held) if held else None
    calib.spare = source.subset(spare) if spare else None
    return calib


def make_source(spec: str | os.PathLike[str], prep: Preprocessing, *, batch_size: int, size: int | None = DEFAULT_SIZE,
                seed: int = 0, shape: Sequence[int] | None = None, holdout: int = 0, workers: int | None = None,
                key: str | None = None) -> CalibrationSource:
    """The calibration source for ``spec``: a folder of images, an image file, a ``.npy``/``.npz``
    file, or ``synthetic`` / ``synthetic:N`` (N images, default ``size + holdout``).

    ``shape`` (N, C, H, W), when given, sets the image size images are prepared at (the record's
    crop otherwise); the batch size is ``batch_size``. Items are shuffled with ``seed``; ``holdout``
    of them are kept aside as ``source.heldout`` and up to ``size`` remain for calibration. Raises
    UsageError when fewer images than one batch remain.
    """
    if size is not None and size < 1:
        raise UsageError(f"--calib-size must be >= 1, got {size}")
    if shape is not None:
        if len(shape) != 4:
            raise UsageError(f"calibration shape must be N x C x H x W, got {'x'.join(map(str, shape))}")
        _check_channels(int(shape[1]), f"calibration shape {'x'.join(map(str, shape))}")
        prep = prep_for_shape(prep, int(shape[2]), int(shape[3]))
    text = os.fspath(spec)
    source: CalibrationSource
    if text == SYNTHETIC or text.startswith(SYNTHETIC + ":"):
        count = (size or DEFAULT_SIZE) + holdout
        if ":" in text:
            try:
                count = int(text.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"bad calibration spec '{text}': expected synthetic or synthetic:N") from None
        if count < 1:
            raise UsageError(f"bad calibration spec '{text}': N must be >= 1")
        crop = int(prep.crop_size)
        source = SyntheticSource(range(count), batch_size, (3, crop, crop), seed=seed)
    else:
        path = Path(text)
        if not path.exists():
            raise UsageError(f"calibration data '{path}' does not exist (expected a folder of images, a .npy/.npz "
                             "file, or 'synthetic')")
        if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
            source = ArraySource.from_file(path, batch_size, prep, key=key)
            if shape is not None and not source.pictures and tuple(source.image_shape[1:]) != tuple(shape[2:]):
                raise UsageError(f"calibration array '{path}' holds {source.image_shape[1]}x{source.image_shape[2]} "
                                 f"images, but the calibration shape is {shape[2]}x{shape[3]}")
        else:
            source = ImageFolderSource.from_folder(path, prep, batch_size, workers=workers)
    order = np.random.default_rng(seed).permutation(len(source.items))
    source = source.subset([source.items[i] for i in order])
    total = source.num_images
    calib = holdout_split(source, holdout, size)
    if calib.num_images < batch_size:
        raise UsageError(f"calibration data '{text}' has {total} image(s); {calib.num_images} remain for calibration "
                         f"after keeping {holdout} aside for the parity check, fewer than one batch of {batch_size}. "
                         "Add images or lower the batch size")
    if calib.num_images < RECOMMENDED_IMAGES and calib.kind != SyntheticSource.kind:
        log.warning("calibrating on %d images; TensorRT and ModelOpt recommend at least %d for CNNs (ranges from "
                    "few images clip less typical activations)", calib.num_images, RECOMMENDED_IMAGES)
    return calib


__all__ = ["ArraySource", "CalibrationSource", "DEFAULT_HOLDOUT", "DEFAULT_SIZE", "ImageFolderSource",
           "RECOMMENDED_IMAGES", "SYNTHETIC", "SyntheticSource", "holdout_split", "make_source", "prep_for_shape"]
