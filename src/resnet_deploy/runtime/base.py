"""One runner interface over every backend (after Polygraphy's runners).

A runner's public ``infer`` validates the batch (rank, channels, dtype, the shapes the artifact
accepts) and then calls the backend hook ``_infer``. Runners are context managers.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import UsageError

Shape = tuple[int, ...]


class InputError(UsageError):
    """A batch the runner cannot accept: the message names what was received and what is allowed."""


def shape_str(shape: Sequence[int | str | None]) -> str:
    return "x".join("?" if (d is None or isinstance(d, str) or (isinstance(d, int) and d < 0)) else str(d)
                    for d in shape)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``shape`` holds ints for fixed dims and names (or None) for dynamic ones;
    ``min_shape``/``max_shape`` are the limits an engine profile accepts, when there are any."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]
    min_shape: Shape | None = None
    opt_shape: Shape | None = None
    max_shape: Shape | None = None

    @property
    def dynamic_dims(self) -> list[int]:
        return [i for i, d in enumerate(self.shape) if not isinstance(d, int) or d < 0]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": np.dtype(self.dtype).name,
                             "shape": [d if isinstance(d, int) and d >= 0 else (d or "?") for d in self.shape],
                             "dynamic_dims": self.dynamic_dims}
        for k in ("min_shape", "opt_shape", "max_shape"):
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v)
        return d

    def allowed(self) -> str:
        text = shape_str(self.shape)
        if self.min_shape is not None and self.max_shape is not None:
            text += f" within [{shape_str(self.min_shape)} .. {shape_str(self.max_shape)}]"
        return text

    def validate(self, array: Any) -> None:
        """Raise InputError for a wrong rank, channel count, dtype or a shape outside the limits."""
        shape = tuple(int(d) for d in getattr(array, "shape", ()))
        dtype = _dtype_of(array)
        if len(shape) != len(self.shape):
            raise InputError(f"input '{self.name}': got shape {shape_str(shape)} (rank {len(shape)}), "
                             f"expected rank {len(self.shape)}: {self.allowed()}")
        for i, (got, want) in enumerate(zip(shape, self.shape)):
            if isinstance(want, int) and want >= 0 and got != want:
                what = "channels" if want == 3 else f"dim {i}"
                raise InputError(f"input '{self.name}': got shape {shape_str(shape)}, {what} must be {want}: "
                                 f"allowed {self.allowed()}")
            if got < 1:
                raise InputError(f"input '{self.name}': got an empty dimension in shape {shape_str(shape)}")
        if self.min_shape is not None and self.max_shape is not None:
            if any(g < lo or g > hi for g, lo, hi in zip(shape, self.min_shape, self.max_shape)):
                raise InputError(f"input '{self.name}': shape {shape_str(shape)} is outside the profile: "
                                 f"allowed {self.allowed()}")
        if dtype is not None and np.dtype(dtype) != np.dtype(self.dtype):
            raise InputError(f"input '{self.name}': got dtype {np.dtype(dtype).name}, expected "
                             f"{np.dtype(self.dtype).name}")


def _dtype_of(array: Any) -> np.dtype | None:
    dt = getattr(array, "dtype", None)
    if dt is None:
        return None
    if isinstance(dt, np.dtype):
        return dt
    # torch tensors: torch.float32 -> float32
    name = str(dt).replace("torch.", "")
    try:
        return np.dtype(name)
    except TypeError:
        return None


@dataclass
class RunnerInfo:
    """What a runner is and what it actually runs (recorded in parity reports and benchmarks)."""

    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    artifact: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "precision": self.precision,
                "artifact": self.artifact, **self.details}


class Runner(abc.ABC):
    """Base class: subclasses implement ``_infer`` and fill ``inputs``/``outputs``/``info``."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: RunnerInfo
    #: The artifact's toolkit metadata when the backend read it while loading (ONNX Runtime does),
    #: so callers need not parse the file a second time; None: use ``artifacts.read_metadata``.
    metadata: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources (sessions, engines, device buffers)."""

    # -- metadata --------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.info.backend}:{self.info.precision}"

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    # -- inference -------------------------------------------------------------
    def infer(self, batch: Any) -> np.ndarray:
        """Run one batch (NCHW float32, or what ``input`` says) and return the first output."""
        return self.infer_dict({self.input.name: batch})[self.outputs[0].name]

    def infer_dict(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run named inputs and return every output by name."""
        names = {s.name for s in self.inputs}
        unknown = set(feeds) - names
        if unknown or len(feeds) != len(self.inputs):
            raise InputError(f"got inputs {sorted(feeds)}, expected {sorted(names)}")
        for spec in self.inputs:
            spec.validate(feeds[spec.name])
        return self._infer(dict(feeds))

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Backend hook: run validated ``feeds`` and return host arrays by output name."""

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """Throughput path: results of ``batches`` in order. Backends with an asynchronous request
        queue (OpenVINO) override it to keep several requests in flight."""
        for batch in batches:
            yield self.infer(batch)

    def synchronize(self) -> None:  # noqa: B027 - host backends are synchronous
        """Block until the last ``infer`` is complete (device backends override)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info.to_dict()}>"
