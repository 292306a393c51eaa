"""TensorRT engines behind the runner interface.

    with TensorRTRunner("resnet50.fp16.engine") as runner:
        logits = runner.infer(batch)        # np.ndarray (or a torch CUDA tensor) in, np.ndarray out

Before deserializing, the engine's manifest is compared with this machine (TensorRT version,
compute capability), so a mismatch reads "rebuild with ..." instead of a deserialization failure.

Each thread that calls ``infer`` gets its own execution context, stream and buffers; the buffers
are allocated once, for the largest shapes the profiles allow, and reused. Per call the input
shape is set with ``set_input_shape``; with ``cuda_graph=True`` the enqueue is captured once per
shape into a CUDA graph and replayed. TensorRT allows one optimization profile to be in use by one
context at a time, so contexts take a profile under a lock: build with ``--profile-copies N`` for
N threads to run truly at once (with one profile, threads take turns on the GPU, still correct).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...errors import UsageError
from ..base import InputError, Runner, RunnerInfo, TensorSpec, shape_str
from .builder import NO_DEVICE, PRECISIONS, import_tensorrt, trt_logger
from .cuda import CudaBackend, DeviceBuffer, HostBuffer, Stream, get_backend, nbytes_of
from .manifest import EngineManifest, MachineInfo, check_compatible, read_manifest, rebuild_command
from .profiles import DIM_NAMES

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


def parse_device(device: str) -> int:
    """``cuda`` / ``cuda:N`` -> N; anything else is a usage error (engines run on CUDA devices)."""
    text = str(device).strip().lower()
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise UsageError(f"TensorRT engines run on CUDA devices: got device '{device}', expected 'cuda' or 'cuda:N'")


def numpy_dtype(trt: Any, dtype: Any) -> np.dtype:
    """TensorRT's DataType as a numpy dtype; BF16/FP8/INT4 I/O has none and is refused."""
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError) as exc:
        raise UsageError(f"engine I/O type {dtype} has no numpy equivalent; export with FP32 inputs and outputs "
                         "(keep_io_types)") from exc


def _precision_from_name(path: str) -> str:
    base = os.path.basename(path)
    return next((p for p in PRECISIONS if f".{p}." in base), "fp32")


def _is_torch_cuda(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and bool(getattr(x, "is_cuda", False))


class _ThreadState:
    """One thread's execution context, stream and buffers (sized for the largest allowed shapes)."""

    def __init__(self, runner: "TensorRTRunner") -> None:
        self.cuda = runner._cuda
        self.context = runner._engine.create_execution_context()
        if self.context is None:
            raise UsageError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = Stream(self.cuda)
        self.profile: int | None = None
        self.shapes: dict[str, Shape] | None = None
        self.out_shapes: dict[str, Shape] = {}
        self.graph: int | None = None
        self.graph_key: Any = None
        self.device: dict[str, DeviceBuffer] = {}
        self.host: dict[str, HostBuffer] = {}
        try:
            for name, nbytes in runner._capacity.items():
                self.device[name] = DeviceBuffer(self.cuda, nbytes)
                self.host[name] = HostBuffer(self.cuda, nbytes)
        except BaseException:
            self.release()
            raise

    def drop_graph(self) -> None:
        if self.graph is not None:
            self.cuda.graph_destroy(self.graph)
            self.graph, self.graph_key = None, None

    def release(self) -> None:
        self.drop_graph()
        for buf in [*self.device.values(), *self.host.values()]:
            buf.free()
        self.device.clear()
        self.host.clear()
        self.stream.destroy()
        self.context = None


class TensorRTRunner(Runner):
    """Run a serialized TensorRT engine (``.engine``/``.plan``) on a CUDA device."""

    def __init__(self, path: str | os.PathLike[str], *, device: str = "cuda:0", cuda_graph: bool = False,
                 backend: str | None = None) -> None:
        path = os.fspath(path)
        ordinal = parse_device(device)
        if not os.path.isfile(path):
            raise UsageError(f"engine file '{path}' does not exist")
        trt = import_tensorrt("the TensorRT runner")
        cuda = get_backend(backend)
        try:
            count = cuda.device_count()
        except UsageError as exc:
            raise UsageError(f"cannot run '{path}': {NO_DEVICE} ({exc})") from exc
        if count <= ordinal:
            raise UsageError(f"cannot run '{path}' on cuda:{ordinal}: CUDA reports {count} device(s)")
        manifest = read_manifest(path)
        if manifest is not None:
            check_compatible(manifest, MachineInfo.probe(ordinal, cuda), engine=path)
        else:
            log.warning("'%s' has no manifest (%s.json): its TensorRT version and GPU cannot be checked before "
                        "loading", path, os.path.basename(path))
        data = Path(path).read_bytes()
        if not data:
            raise UsageError(f"engine file '{path}' is empty")
        if manifest is not None and manifest.engine_sha256 not in (None, hashlib.sha256(data).hexdigest()):
            log.warning("'%s' differs from the engine its manifest describes (sha256 mismatch): the manifest may be "
                        "stale", path)
        with cuda.activate(ordinal):
            try:
                runtime = trt.Runtime(trt_logger(trt))
            except TypeError as exc:
                raise UsageError(f"TensorRT {trt.__version__} cannot create a runtime: {NO_DEVICE}") from exc
            if manifest is not None and manifest.version_compatible:
                runtime.engine_host_code_allowed = True  # version-compatible plans carry their lean runtime
            engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            errors = "; ".join(trt_logger(trt).errors[-2:])
            hint = rebuild_command(manifest, path) if manifest else f"resnet-deploy build MODEL.onnx --output {path}"
            raise UsageError(f"TensorRT {trt.__version__} cannot deserialize '{path}'"
                             + (f" ({errors})" if errors else "")
                             + ": the file is corrupt or was built with another TensorRT version or for another GPU; "
                             f"rebuild with `{hint}`")
        self._runtime = runtime
        self._setup(trt, engine, cuda, ordinal, cuda_graph=cuda_graph, artifact=path, manifest=manifest)

    @classmethod
    def from_engine(cls, engine: Any, *, trt: Any = None, cuda: CudaBackend | None = None, device: str = "cuda:0",
                    cuda_graph: bool = False, manifest: EngineManifest | None = None,
                    artifact: str | None = None) -> "TensorRTRunner":
        """Wrap an already deserialized ``ICudaEngine``."""
        self = cls.__new__(cls)
        self._runtime = None
        self._setup(trt or import_tensorrt("the TensorRT runner"), engine, cuda or get_backend(),
                    parse_device(device), cuda_graph=cuda_graph, artifact=artifact, manifest=manifest)
        return self

    # -- setup -----------------------------------------------------------------
    def _setup(self, trt: Any, engine: Any, cuda: CudaBackend, ordinal: int, *, cuda_graph: bool,
               artifact: str | None, manifest: EngineManifest | None) -> None:
        self._trt, self._engine, self._cuda, self._ordinal = trt, engine, cuda, ordinal
        self._cuda_graph = bool(cuda_graph)
        self._manifest = manifest
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._dtypes = {n: numpy_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        in_names = [n for n in names if is_input[n]]
        out_names = [n for n in names if not is_input[n]]
        nprof = int(engine.num_optimization_profiles)
        # per profile, per input: (min, opt, max)
        self._ranges: list[dict[str, tuple[Shape, Shape, Shape]]] = [
            {n: tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, p)) for n in in_names}
            for p in range(nprof)]
        self.inputs = [self._input_spec(n, engine.get_tensor_shape(n)) for n in in_names]
        self._capacity: dict[str, int] = {
            n: max(nbytes_of(r[n][2], self._dtypes[n]) for r in self._ranges) for n in in_names}
        max_out = self._max_output_shapes(out_names)
        self._capacity.update({n: max(nbytes_of(s, self._dtypes[n]) for s in max_out[n]) for n in out_names})
        self.outputs = [TensorSpec(n, self._dtypes[n], self._dims(engine.get_tensor_shape(n))) for n in out_names]
        self._locks = [threading.Lock() for _ in range(nprof)]
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._states_lock = threading.Lock()
        self._closed = False
        with cuda.activate(ordinal):
            dev = cuda.device_info(ordinal)
        precision = (manifest.precision if manifest else None) or _precision_from_name(artifact or "")
        self.info = RunnerInfo(backend="tensorrt", device=f"cuda:{ordinal}", precision=precision, artifact=artifact,
                               details={"tensorrt": str(trt.__version__), "cuda_backend": cuda.name, "gpu": dev.name,
                                        "compute_capability": dev.cc, "profiles": nprof, "cuda_graph": self._cuda_graph,
                                        "manifest": manifest is not None})

    @staticmethod
    def _dims(shape: Any) -> tuple[int | str | None, ...]:
        dims = [int(d) for d in shape]
        names = DIM_NAMES if len(dims) == 4 else ("batch",) + (None,) * max(len(dims) - 1, 0)
        return tuple(d if d >= 0 else names[i] for i, d in enumerate(dims))

    def _input_spec(self, name: str, shape: Any) -> TensorSpec:
        mins = [r[name][0] for r in self._ranges]
        maxs = [r[name][2] for r in self._ranges]
        lo = tuple(min(s[d] for s in mins) for d in range(len(mins[0])))
        hi = tuple(max(s[d] for s in maxs) for d in range(len(maxs[0])))
        return TensorSpec(name, self._dtypes[name], self._dims(shape), min_shape=lo, opt_shape=self._ranges[0][name][1],
                          max_shape=hi)

    def _max_output_shapes(self, out_names: list[str]) -> dict[str, list[Shape]]:
        """Output shapes at each profile's max input shapes (shape inference only: no device memory)."""
        trt, engine = self._trt, self._engine
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "USER_MANAGED", None)
        with self._cuda.activate(self._ordinal):
            ctx = engine.create_execution_context(strategy) if strategy is not None else \
                engine.create_execution_context()
            if ctx is None:
                raise UsageError("TensorRT could not create an execution context (out of GPU memory?)")
            stream = Stream(self._cuda)
            try:
                out: dict[str, list[Shape]] = {n: [] for n in out_names}
                for p, ranges in enumerate(self._ranges):
                    ctx.set_optimization_profile_async(p, stream.handle)
                    for name, (_, _, hi) in ranges.items():
                        ctx.set_input_shape(name, hi)
                    for n in out_names:
                        shape = tuple(int(d) for d in ctx.get_tensor_shape(n))
                        if any(d < 0 for d in shape):
                            raise UsageError(f"output '{n}' has a data-dependent shape {shape_str(shape)}; this "
                                             "runner needs outputs whose shape follows from the input shape")
                        out[n].append(shape)
                stream.synchronize()
            finally:
                stream.destroy()
                del ctx
        return out

    # -- per-thread state and profiles -----------------------------------------------
    def _state(self) -> _ThreadState:
        st = getattr(self._local, "state", None)
        if st is None:
            if self._closed:
                raise UsageError("the runner is closed")
            with self._cuda.activate(self._ordinal):
                st = _ThreadState(self)
            self._local.state = st
            with self._states_lock:
                self._states.append(st)
        return st

    def _acquire_profile(self, st: _ThreadState, shapes: Mapping[str, Shape]) -> int:
        """A profile whose ranges hold ``shapes``, locked for this thread; its own first, then any free one,
        else wait for the first candidate."""
        fits = [p for p, r in enumerate(self._ranges)
                if all(all(lo <= d <= hi for d, lo, hi in zip(shapes[n], r[n][0], r[n][2])) for n in shapes)]
        if not fits:
            ranges = "; ".join(f"[{shape_str(r[n][0])} .. {shape_str(r[n][2])}]" for r in self._ranges for n in r)
            got = ", ".join(shape_str(s) for s in shapes.values())
            raise InputError(f"input shape {got} is in no optimization profile of this engine: {ranges}")
        order = ([st.profile] if st.profile in fits else []) + [p for p in fits if p != st.profile]
        for p in order:
            if self._locks[p].acquire(blocking=False):
                return p
        self._locks[order[0]].acquire()
        return order[0]

    # -- inference -------------------------------------------------------------
    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        st = self._state()
        shapes = {n: tuple(int(d) for d in feeds[n].shape) for n in feeds}
        with self._cuda.activate(self._ordinal):
            profile = self._acquire_profile(st, shapes)
            try:
                return self._run(st, profile, feeds, shapes)
            finally:
                self._locks[profile].release()

    def _run(self, st: _ThreadState, profile: int, feeds: dict[str, Any], shapes: dict[str, Shape]
             ) -> dict[str, np.ndarray]:
        ctx, stream = st.context, st.stream
        if st.profile != profile:
            if not ctx.set_optimization_profile_async(profile, stream.handle):
                raise UsageError(f"TensorRT refused optimization profile {profile}")
            st.profile, st.shapes = profile, None
        if st.shapes != shapes:
            st.shapes = None  # until every input shape is accepted
            for name, shape in shapes.items():
                if not ctx.set_input_shape(name, shape):
                    raise InputError(f"TensorRT refused input shape {shape_str(shape)} for '{name}'")
            st.out_shapes = {o.name: tuple(int(d) for d in ctx.get_tensor_shape(o.name)) for o in self.outputs}
            st.shapes = shapes
        pointers = {}
        for name, value in feeds.items():
            nbytes = nbytes_of(shapes[name], self._dtypes[name])
            if _is_torch_cuda(value):
                pointers[name] = self._torch_pointer(value)
                if self._cuda_graph:  # the graph reads the buffer it was captured with
                    stream.dtod(st.device[name], pointers[name], nbytes)
            else:
                if type(value).__module__.startswith("torch"):
                    value = value.detach().numpy()
                view = st.host[name].view(shapes[name], self._dtypes[name])
                np.copyto(view, value, casting="no")
                stream.htod(st.device[name], st.host[name], nbytes)
        if self._cuda_graph:
            self._launch_graph(st, profile, shapes)
        else:
            for name in feeds:
                ctx.set_tensor_address(name, pointers.get(name, st.device[name].ptr))
            for o in self.outputs:
                ctx.set_tensor_address(o.name, st.device[o.name].ptr)
            if not ctx.execute_async_v3(stream.handle):
                raise UsageError("TensorRT execute_async_v3 failed (see the log above)")
        for o in self.outputs:
            stream.dtoh(st.host[o.name], st.device[o.name], nbytes_of(st.out_shapes[o.name], self._dtypes[o.name]))
        stream.synchronize()
        return {o.name: st.host[o.name].view(st.out_shapes[o.name], self._dtypes[o.name]).copy() for o in self.outputs}

    def _torch_pointer(self, t: Any) -> int:
        """A CUDA tensor's device pointer (no host round trip), after the work that produced it."""
        import torch

        if t.device.index not in (None, self._ordinal):
            raise InputError(f"input is on {t.device}, the engine runs on cuda:{self._ordinal}")
        if not t.is_contiguous():
            raise InputError("torch CUDA inputs must be contiguous (call .contiguous())")
        torch.cuda.current_stream(t.device).synchronize()
        return int(t.data_ptr())

    def _launch_graph(self, st: _ThreadState, profile: int, shapes: dict[str, Shape]) -> None:
        key = (profile, tuple(sorted(shapes.items())))
        ctx, stream = st.context, st.stream
        if st.graph_key != key:
            st.drop_graph()
            for name in [*shapes, *(o.name for o in self.outputs)]:
                ctx.set_tensor_address(name, st.device[name].ptr)
            if not ctx.execute_async_v3(stream.handle):  # once outside capture, after the shape change
                raise UsageError("TensorRT execute_async_v3 failed (see the log above)")
            self._cuda.graph_begin(stream.handle)
            try:
                ok = ctx.execute_async_v3(stream.handle)
            finally:
                graph = self._cuda.graph_end(stream.handle)
            if not ok:
                self._cuda.graph_destroy(graph)
                raise UsageError("TensorRT execute_async_v3 failed while capturing a CUDA graph")
            st.graph, st.graph_key = graph, key
        self._cuda.graph_launch(st.graph, stream.handle)

    def synchronize(self) -> None:
        st = getattr(self._local, "state", None)
        if st is not None:
            with self._cuda.activate(self._ordinal):
                st.stream.synchronize()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        with self._states_lock, self._cuda.activate(self._ordinal):
            for st in self._states:
                st.release()
            self._states.clear()
        self._engine = None
        self._runtime = None

    @property
    def manifest(self) -> EngineManifest | None:
        return self._manifest


__all__ = ["TensorRTRunner", "numpy_dtype", "parse_device"]
