"""The thin CUDA layer under the TensorRT runner: device buffers, pinned host buffers, streams,
asynchronous copies and CUDA graph capture.

Two adapters expose the same small surface (``CudaBackend``), with pointers and stream handles as
plain ints, which is what TensorRT's ``set_tensor_address`` and ``execute_async_v3`` take:

* ``CudaPython`` over ``cuda-python`` (``cuda.bindings.runtime``): what NVIDIA's TensorRT samples
  use since 10.14; a wheel, nothing to compile. Preferred.
* ``PyCuda`` over ``pycuda`` (a source package that compiles against the CUDA toolkit), for
  environments that already have it. It works in the device's primary context, the one the CUDA
  runtime (TensorRT, torch) uses, so pointers and streams are shared with them.

``DeviceBuffer``, ``HostBuffer`` and ``Stream`` sit on top and do not care which adapter runs.
Nothing here is imported by ``import resnet_deploy``; the bindings load on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from ...errors import MissingDependencyError, UsageError

log = logging.getLogger(__name__)

BACKEND_NAMES = ("cuda-python", "pycuda")
COPY_KINDS = ("htod", "dtoh", "dtod")


class CudaError(UsageError):
    """A CUDA call failed; the message names the call and CUDA's own error text."""


@dataclass(frozen=True)
class DeviceInfo:
    ordinal: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    def to_dict(self) -> dict[str, Any]:
        return {"ordinal": self.ordinal, "name": self.name, "compute_capability": self.cc,
                "total_memory_gib": round(self.total_memory / 2**30, 1)}


class CudaBackend(Protocol):
    """What the runner needs from CUDA. Pointers and stream handles are ints."""

    name: str

    def device_count(self) -> int: ...
    def device_info(self, ordinal: int) -> DeviceInfo: ...
    def versions(self) -> dict[str, str]: ...
    def activate(self, ordinal: int) -> contextlib.AbstractContextManager[None]: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def malloc_host(self, nbytes: int) -> int: ...
    def free_host(self, ptr: int) -> None: ...
    def stream_create(self) -> int: ...
    def stream_destroy(self, stream: int) -> None: ...
    def stream_synchronize(self, stream: int) -> None: ...
    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> None: ...
    def graph_begin(self, stream: int) -> None: ...
    def graph_end(self, stream: int) -> int: ...
    def graph_launch(self, graph: int, stream: int) -> None: ...
    def graph_destroy(self, graph: int) -> None: ...


def _version_text(v: int) -> str:
    """CUDA's integer versions: 12040 -> '12.4'."""
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


class CudaPython:
    """``cuda-python``'s runtime bindings. Every call returns ``(error, *results)``; errors raise."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:  # cuda-python < 12.6 spelled it this way
                from cuda import cudart  # type: ignore[no-redef]
            except ImportError as exc:
                raise MissingDependencyError("cuda-python", "the TensorRT runner's CUDA layer", "tensorrt-cu12",
                                             alternative="or [tensorrt-cu13] on an R580+ driver") from exc
        self._rt = cudart
        self._objects: dict[int, Any] = {}  # handle -> the binding's object (streams, graphs)

    def _call(self, what: str, result: Any) -> Any:
        err, rest = result[0], result[1:]
        if err != self._rt.cudaError_t.cudaSuccess:
            text = self._rt.cudaGetErrorString(err)[1]
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise CudaError(f"{what} failed: {text} ({getattr(err, 'name', err)})")
        return rest[0] if len(rest) == 1 else rest

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount", self._rt.cudaGetDeviceCount()))

    def device_info(self, ordinal: int) -> DeviceInfo:
        p = self._call("cudaGetDeviceProperties", self._rt.cudaGetDeviceProperties(ordinal))
        name = p.name.split(b"\0", 1)[0].decode() if isinstance(p.name, bytes) else str(p.name)
        return DeviceInfo(ordinal, name, (int(p.major), int(p.minor)), int(p.totalGlobalMem))

    def versions(self) -> dict[str, str]:
        return {"cuda_driver": _version_text(self._call("cudaDriverGetVersion", self._rt.cudaDriverGetVersion())),
                "cuda_runtime": _version_text(self._call("cudaRuntimeGetVersion", self._rt.cudaRuntimeGetVersion()))}

    @contextlib.contextmanager
    def activate(self, ordinal: int) -> Iterator[None]:
        self._call("cudaSetDevice", self._rt.cudaSetDevice(ordinal))  # the runtime's current device is per thread
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", self._rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", self._rt.cudaFree(ptr))

    def malloc_host(self, nbytes: int) -> int:
        return int(self._call("cudaMallocHost", self._rt.cudaMallocHost(nbytes)))

    def free_host(self, ptr: int) -> None:
        self._call("cudaFreeHost", self._rt.cudaFreeHost(ptr))

    def stream_create(self) -> int:
        stream = self._call("cudaStreamCreateWithFlags",
                            self._rt.cudaStreamCreateWithFlags(self._rt.cudaStreamNonBlocking))
        self._objects[int(stream)] = stream
        return int(stream)

    def stream_destroy(self, stream: int) -> None:
        self._call("cudaStreamDestroy", self._rt.cudaStreamDestroy(self._objects.pop(stream, stream)))

    def stream_synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", self._rt.cudaStreamSynchronize(self._objects.get(stream, stream)))

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> None:
        kinds = {"htod": self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                 "dtoh": self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                 "dtod": self._rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice}
        self._call(f"cudaMemcpyAsync({kind})",
                   self._rt.cudaMemcpyAsync(dst, src, nbytes, kinds[kind], self._objects.get(stream, stream)))

    def graph_begin(self, stream: int) -> None:
        # thread-local mode: other threads may keep allocating while this one captures
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", self._rt.cudaStreamBeginCapture(self._objects.get(stream, stream), mode))

    def graph_end(self, stream: int) -> int:
        graph = self._call("cudaStreamEndCapture", self._rt.cudaStreamEndCapture(self._objects.get(stream, stream)))
        try:
            exe = self._call("cudaGraphInstantiate", self._rt.cudaGraphInstantiate(graph, 0))
        except CudaError:
            self._rt.cudaGraphDestroy(graph)
            raise
        self._objects[int(exe)] = (exe, graph)
        return int(exe)

    def graph_launch(self, graph: int, stream: int) -> None:
        exe, _ = self._objects[graph]
        self._call("cudaGraphLaunch", self._rt.cudaGraphLaunch(exe, self._objects.get(stream, stream)))

    def graph_destroy(self, graph: int) -> None:
        exe, g = self._objects.pop(graph)
        self._call("cudaGraphExecDestroy", self._rt.cudaGraphExecDestroy(exe))
        self._call("cudaGraphDestroy", self._rt.cudaGraphDestroy(g))


class PyCuda:
    """``pycuda.driver`` in each device's primary context (shared with the CUDA runtime)."""

    name = "pycuda"

    def __init__(self) -> None:
        try:
            import pycuda.driver as drv
        except ImportError as exc:
            raise MissingDependencyError("pycuda", "the TensorRT runner's CUDA layer (pycuda adapter)", "pycuda") \
                from exc
        try:
            drv.init()
        except drv.Error as exc:
            raise CudaError(f"cuInit failed: {exc}") from exc
        self._drv = drv
        self._contexts: dict[int, Any] = {}
        self._objects: dict[int, Any] = {}  # pointer/handle -> pycuda object that owns it

    def _guard(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._drv.Error as exc:
            raise CudaError(f"{what} failed: {exc}") from exc

    def device_count(self) -> int:
        return int(self._guard("cuDeviceGetCount", self._drv.Device.count))

    def device_info(self, ordinal: int) -> DeviceInfo:
        dev = self._guard("cuDeviceGet", self._drv.Device, ordinal)
        major, minor = dev.compute_capability()
        return DeviceInfo(ordinal, dev.name(), (int(major), int(minor)), int(dev.total_memory()))

    def versions(self) -> dict[str, str]:
        built = self._drv.get_version()  # the CUDA version pycuda was compiled against, e.g. (12, 4, 0)
        return {"cuda_driver": _version_text(int(self._drv.get_driver_version())),
                "cuda_runtime": f"{built[0]}.{built[1]}"}

    @contextlib.contextmanager
    def activate(self, ordinal: int) -> Iterator[None]:
        ctx = self._contexts.get(ordinal)
        if ctx is None:
            ctx = self._contexts[ordinal] = self._guard("cuDevicePrimaryCtxRetain",
                                                        lambda: self._drv.Device(ordinal).retain_primary_context())
        ctx.push()
        try:
            yield
        finally:
            self._drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        alloc = self._guard("cuMemAlloc", self._drv.mem_alloc, nbytes)
        self._objects[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._guard("cuMemFree", self._objects.pop(ptr).free)

    def malloc_host(self, nbytes: int) -> int:
        arr = self._guard("cuMemHostAlloc", self._drv.pagelocked_empty, nbytes, np.uint8)
        self._objects[arr.ctypes.data] = arr
        return int(arr.ctypes.data)

    def free_host(self, ptr: int) -> None:
        self._guard("cuMemFreeHost", self._objects.pop(ptr).base.free)

    def stream_create(self) -> int:
        stream = self._guard("cuStreamCreate", self._drv.Stream)
        self._objects[int(stream.handle)] = stream
        return int(stream.handle)

    def stream_destroy(self, stream: int) -> None:
        self._objects.pop(stream, None)  # pycuda destroys the stream with its object

    def stream_synchronize(self, stream: int) -> None:
        self._guard("cuStreamSynchronize", self._objects[stream].synchronize)

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> None:
        s = self._objects[stream]
        if kind == "htod":
            self._guard("cuMemcpyHtoDAsync", self._drv.memcpy_htod_async, dst, _host_view(src, nbytes), s)
        elif kind == "dtoh":
            self._guard("cuMemcpyDtoHAsync", self._drv.memcpy_dtoh_async, _host_view(dst, nbytes), src, s)
        else:
            self._guard("cuMemcpyDtoDAsync", self._drv.memcpy_dtod_async, dst, src, nbytes, s)

    def _no_graphs(self, *_: Any) -> Any:
        raise UsageError("CUDA graph capture needs the cuda-python backend (pip install cuda-python); the "
                         "pycuda adapter runs without graphs: pass cuda_graph=False")

    graph_begin = graph_end = graph_launch = graph_destroy = _no_graphs


def _host_view(ptr: int, nbytes: int) -> Any:
    """A writable buffer over host memory at ``ptr`` (what pycuda's copies take)."""
    return (ctypes.c_char * nbytes).from_address(ptr)


#: adapter name -> (class, modules that provide its binding; any one is enough)
_ADAPTERS: dict[str, tuple[type, tuple[str, ...]]] = {
    "cuda-python": (CudaPython, ("cuda.bindings", "cuda.cudart")),  # cuda.cudart: cuda-python < 12.6
    "pycuda": (PyCuda, ("pycuda",)),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def available_backends() -> list[str]:
    """Adapters whose binding package is installed here, in order of preference."""
    return [name for name, (_, modules) in _ADAPTERS.items() if any(_installed(m) for m in modules)]


def get_backend(prefer: str | None = None) -> CudaBackend:
    """The CUDA adapter: ``prefer`` ('cuda-python' or 'pycuda'), else the first one installed."""
    if prefer is not None and prefer not in _ADAPTERS:
        raise UsageError(f"unknown CUDA backend '{prefer}'; choose one of: {', '.join(BACKEND_NAMES)}")
    if prefer is not None:
        return _ADAPTERS[prefer][0]()
    names = available_backends()
    if not names:
        raise MissingDependencyError("cuda-python", "the TensorRT runner's CUDA layer (or pycuda)", "tensorrt-cu12",
                                     alternative="or [tensorrt-cu13] on an R580+ driver")
    return _ADAPTERS[names[0]][0]()


def _nvidia_smi() -> tuple[int, str | None, str]:
    """(GPUs listed, the driver's CUDA version, what was seen) from ``nvidia-smi``; (0, None, why) without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0, None, "nvidia-smi is not on PATH"
    try:
        proc = subprocess.run([exe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, None, f"nvidia-smi failed: {exc}"
    if proc.returncode != 0:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return 0, None, f"nvidia-smi: {last[0]}"
    version = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", proc.stdout)
    try:
        listed = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    count = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    return count, version.group(1) if version else None, f"nvidia-smi lists {count} GPU(s)"


def gpu_count() -> tuple[int, str]:
    """CUDA devices usable here and how that was found, asked of the CUDA layer itself (not torch, which may
    be a CPU build): cuda-python's ``cudaGetDeviceCount`` when installed, else ``nvidia-smi``."""
    if any(_installed(m) for m in _ADAPTERS["cuda-python"][1]):
        try:
            cuda = CudaPython()
            n = cuda.device_count()
            return n, f"cudaGetDeviceCount: {n} device(s)"
        except UsageError as exc:
            return 0, f"{exc}{driver_hint(binding_cuda_major(), driver_cuda_version())}"
    n, _, why = _nvidia_smi()
    return n, why + " (cuda-python is not installed: pip install 'resnet-deploy[tensorrt-cu12]' or [tensorrt-cu13])"


def driver_cuda_version() -> str | None:
    """The newest CUDA version the installed driver supports ("12.8"), or None without a driver."""
    try:
        cuda = get_backend()
        v = cuda.versions().get("cuda_driver")
        if v and v != "none":
            return v
    except (UsageError, ImportError, AttributeError):
        pass
    return _nvidia_smi()[1]


def binding_cuda_major() -> int | None:
    """The CUDA major the installed cuda-python (cuda-bindings) was built for, from its distribution version."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return int(metadata.version(dist).split(".")[0])
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


#: CUDA major -> the extra that installs TensorRT and cuda-python for it
EXTRAS = {12: "tensorrt-cu12", 13: "tensorrt-cu13"}


def driver_hint(built_for: int | None, driver: str | None) -> str:
    """'' or one sentence naming what to install when packages built for CUDA ``built_for`` meet an older
    driver (CUDA 13 wheels need an R580+ driver; an R550/R570 driver supports CUDA 12.x)."""
    if built_for is None or driver is None:
        return ""
    try:
        driver_major = int(driver.split(".")[0])
    except ValueError:
        return ""
    if driver_major >= built_for:
        return ""
    extra = EXTRAS.get(driver_major)
    fix = (f"pip install 'resnet-deploy[{extra}]' (TensorRT and cuda-python for CUDA {driver_major})" if extra
           else f"install TensorRT and cuda-python built for CUDA {driver_major}")
    return (f"; the installed packages are built for CUDA {built_for}, but this driver supports CUDA {driver} "
            f"(CUDA 13 needs an R580+ driver): {fix}, or update the driver")


def nbytes_of(shape: Sequence[int], dtype: Any) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``."""
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


class DeviceBuffer:
    """``nbytes`` of device memory, allocated once and reused; ``ptr`` is an int."""

    def __init__(self, backend: CudaBackend, nbytes: int) -> None:
        if nbytes < 1:
            raise UsageError(f"a device buffer needs at least 1 byte, got {nbytes}")
        self.backend, self.nbytes = backend, int(nbytes)
        self.ptr: int | None = backend.malloc(self.nbytes)

    def free(self) -> None:
        if self.ptr is not None:
            self.backend.free(self.ptr)
            self.ptr = None


class HostBuffer:
    """``nbytes`` of pinned (page-locked) host memory, viewed as numpy arrays without copying."""

    def __init__(self, backend: CudaBackend, nbytes: int) -> None:
        if nbytes < 1:
            raise UsageError(f"a host buffer needs at least 1 byte, got {nbytes}")
        self.backend, self.nbytes = backend, int(nbytes)
        self.ptr: int | None = backend.malloc_host(self.nbytes)

    def view(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """The first ``prod(shape) * itemsize`` bytes as an array (writes go to the pinned memory)."""
        need = nbytes_of(shape, dtype)
        if self.ptr is None:
            raise UsageError("host buffer used after free()")
        if need > self.nbytes:
            raise UsageError(f"shape {tuple(shape)} {np.dtype(dtype).name} needs {need} bytes; this pinned buffer "
                             f"holds {self.nbytes}")
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        return np.frombuffer(raw, dtype=np.uint8, count=need).view(dtype).reshape(tuple(shape))

    def free(self) -> None:
        if self.ptr is not None:
            self.backend.free_host(self.ptr)
            self.ptr = None


class Stream:
    """A non-blocking CUDA stream with the copies the runner makes."""

    def __init__(self, backend: CudaBackend) -> None:
        self.backend = backend
        self.handle: int | None = backend.stream_create()

    def htod(self, dst: DeviceBuffer, src: HostBuffer | int, nbytes: int) -> None:
        self._copy(dst.ptr, src.ptr if isinstance(src, HostBuffer) else src, nbytes, "htod", dst.nbytes)

    def dtoh(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int) -> None:
        self._copy(dst.ptr, src.ptr, nbytes, "dtoh", min(dst.nbytes, src.nbytes))

    def dtod(self, dst: DeviceBuffer, src: int, nbytes: int) -> None:
        self._copy(dst.ptr, src, nbytes, "dtod", dst.nbytes)

    def _copy(self, dst: int | None, src: int | None, nbytes: int, kind: str, room: int) -> None:
        if dst is None or src is None or self.handle is None:
            raise UsageError(f"{kind} copy with a freed buffer or stream")
        if nbytes > room:
            raise UsageError(f"{kind} copy of {nbytes} bytes into a {room}-byte buffer")
        self.backend.memcpy_async(dst, src, nbytes, kind, self.handle)

    def synchronize(self) -> None:
        if self.handle is not None:
            self.backend.stream_synchronize(self.handle)

    def destroy(self) -> None:
        if self.handle is not None:
            self.backend.stream_destroy(self.handle)
            self.handle = None
