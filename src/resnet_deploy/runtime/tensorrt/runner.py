"""TensorRT engines behind the runner interface.

    with TensorRTRunner("resnet50.fp16.engine") as runner:
        logits = runner.infer(batch)        # np.ndarray (or a torch CUDA tensor) in, np.ndarray out

Before deserializing, the engine's manifest is compared with this machine (TensorRT version,
compute capability), so a mismatch reads "rebuild with ..." instead of a deserialization failure.

Execution context *i* is bound to optimization profile *i* for its whole life, with its own stream
and buffers (allocated once, for that profile's largest shapes, and reused): concurrently used
contexts each need their own profile (NVIDIA's developer guide on dynamic shapes). A call takes a
free context whose profile holds the input shape; a thread that finds every such context busy waits
for one. Build with ``--profile-copies N`` for N threads to run truly at once. Contexts are created
on first need. Per call the input shape is set with ``set_input_shape``; with ``cuda_graph=True``
the enqueue is captured once per shape into a CUDA graph and replayed.
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


class _Slot:
    """Execution context ``profile``: bound to optimization profile ``profile``, with its own stream and
    buffers (sized for that profile's largest shapes)."""

    def __init__(self, runner: "TensorRTRunner", profile: int) -> None:
        self.cuda = runner._cuda
        self.profile = profile
        self.context = runner._engine.create_execution_context()
        if self.context is None:
            raise UsageError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = Stream(self.cuda)
        self.shapes: dict[str, Shape] | None = None
        self.out_shapes: dict[str, Shape] = {}
        self.graph: int | None = None
        self.graph_key: Any = None
        self.device: dict[str, DeviceBuffer] = {}
        self.host: dict[str, HostBuffer] = {}
        try:
            if not self.context.set_optimization_profile_async(profile, self.stream.handle):
                raise UsageError(f"TensorRT refused optimization profile {profile} for execution context {profile}")
            for name, nbytes in runner._capacity[profile].items():
                self.device[name] = DeviceBuffer(self.cuda, nbytes)
                self.host[name] = HostBuffer(self.cuda, nbytes)
            self.stream.synchronize()
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
        max_out = self._max_output_shapes(out_names)
        # per profile: bytes of each I/O buffer at that profile's largest shapes
        self._capacity: list[dict[str, int]] = [
            {**{n: nbytes_of(self._ranges[p][n][2], self._dtypes[n]) for n in in_names},
             **{n: nbytes_of(max_out[n][p], self._dtypes[n]) for n in out_names}} for p in range(nprof)]
        self.outputs = [TensorSpec(n, self._dtypes[n], self._dims(engine.get_tensor_shape(n))) for n in out_names]
        self._slots: list[_Slot | None] = [None] * nprof  # context i <-> profile i, created on first need
        self._busy = [False] * nprof
        self._free = threading.Condition()
        self._local = threading.local()  # the slot this thread used last (its synchronize())
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
        with self._cuda.activate(self._ordinal):
            # no device memory: this context only infers output shapes (10.x and 11.x have the strategy)
            ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
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

    # -- contexts and profiles ---------------------------------------------------------------
    def _acquire(self, shapes: Mapping[str, Shape]) -> _Slot:
        """A free context whose profile holds ``shapes``, marked busy: one already made first, else a new
        one; when every fitting context is busy, wait for one."""
        fits = [p for p, r in enumerate(self._ranges)
                if all(all(lo <= d <= hi for d, lo, hi in zip(shapes[n], r[n][0], r[n][2])) for n in shapes)]
        if not fits:
            ranges = "; ".join(f"[{shape_str(r[n][0])} .. {shape_str(r[n][2])}]" for r in self._ranges for n in r)
            got = ", ".join(shape_str(s) for s in shapes.values())
            raise InputError(f"input shape {got} is in no optimization profile of this engine: {ranges}")
        with self._free:
            while True:
                if self._closed:
                    raise UsageError("the runner is closed")
                free = [p for p in fits if not self._busy[p]]
                if free:
                    made = [p for p in free if self._slots[p] is not None]
                    p = (made or free)[0]
                    self._busy[p] = True
                    break
                self._free.wait()
        try:
            if self._slots[p] is None:
                self._slots[p] = _Slot(self, p)
        except BaseException:
            self._release(p)
            raise
        return self._slots[p]  # type: ignore[return-value]

    def _release(self, profile: int) -> None:
        with self._free:
            self._busy[profile] = False
            self._free.notify_all()  # a waiter may need this profile or not: let each look

    # -- inference -------------------------------------------------------------
    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        if self._closed:
            raise UsageError("the runner is closed")
        shapes = {n: tuple(int(d) for d in feeds[n].shape) for n in feeds}
        with self._cuda.activate(self._ordinal):
            st = self._acquire(shapes)
            try:
                self._local.slot = st
                return self._run(st, st.profile, feeds, shapes)
            finally:
                self._release(st.profile)

    def _run(self, st: _Slot, profile: int, feeds: dict[str, Any], shapes: dict[str, Shape]
             ) -> dict[str, np.ndarray]:
        ctx, stream = st.context, st.stream
        if st.shapes != shapes:
            st.shapes = None  # until every input shape is accepted
            for name, shape in shapes.items():
                if not ctx.set_input_shape(name, shape):
                    lo, _, hi = self._ranges[profile][name]
                    raise InputError(f"TensorRT refused input shape {shape_str(shape)} for tensor '{name}' "
                                     f"(profile {profile}: {shape_str(lo)} .. {shape_str(hi)})")
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
                self._set_address(ctx, name, pointers.get(name, st.device[name].ptr), shapes[name])
            for o in self.outputs:
                self._set_address(ctx, o.name, st.device[o.name].ptr, st.out_shapes[o.name])
            if not ctx.execute_async_v3(stream.handle):
                raise UsageError("TensorRT execute_async_v3 failed (see the log above)")
        for o in self.outputs:
            stream.dtoh(st.host[o.name], st.device[o.name], nbytes_of(st.out_shapes[o.name], self._dtypes[o.name]))
        stream.synchronize()
        return {o.name: st.host[o.name].view(st.out_shapes[o.name], self._dtypes[o.name]).copy() for o in self.outputs}

    @staticmethod
    def _set_address(ctx: Any, name: str, ptr: int | None, shape: Shape) -> None:
        if not ctx.set_tensor_address(name, int(ptr or 0)):
            raise UsageError(f"TensorRT refused the device address {ptr:#x} for tensor '{name}' (shape "
                             f"{shape_str(shape)}): see TensorRT's log above")

    def _torch_pointer(self, t: Any) -> int:
        """A CUDA tensor's device pointer (no host round trip), after the work that produced it."""
        import torch

        if t.device.index not in (None, self._ordinal):
            raise InputError(f"input is on {t.device}, the engine runs on cuda:{self._ordinal}")
        if not t.is_contiguous():
            raise InputError("torch CUDA inputs must be contiguous (call .contiguous())")
        torch.cuda.current_stream(t.device).synchronize()
        return int(t.data_ptr())

    def _launch_graph(self, st: _Slot, profile: int, shapes: dict[str, Shape]) -> None:
        key = (profile, tuple(sorted(shapes.items())))
        ctx, stream = st.context, st.stream
        if st.graph_key != key:
            st.drop_graph()
            for name, shape in [*shapes.items(), *((o.name, st.out_shapes[o.name]) for o in self.outputs)]:
                self._set_address(ctx, name, st.device[name].ptr, shape)
            if not ctx.execute_async_v3(stream.handle):  # once outside capture, after the shape change
                raise UsageError("TensorRT execute_async_v3 failed (see the log above)")
            self._cuda.graph_begin(stream.handle)
            try:
                ok = ctx.execute_async_v3(stream.handle)
            except BaseException:
                self._abandon_capture(stream.handle)  # the enqueue's error is the one to report
                raise
            if not ok:
                self._abandon_capture(stream.handle)
                raise UsageError("TensorRT execute_async_v3 failed while capturing a CUDA graph (see the log above)")
            st.graph, st.graph_key = self._cuda.graph_end(stream.handle), key
        self._cuda.graph_launch(st.graph, stream.handle)

    def _abandon_capture(self, stream: int) -> None:
        """End a capture that failed; an error from ending it (the capture was invalidated) is logged, not
        raised, so the first error stays the one reported."""
        try:
            graph = self._cuda.graph_end(stream)
        except Exception as exc:  # noqa: BLE001 - secondary to the error being raised
            log.debug("ending the failed CUDA graph capture: %s", exc)
            return
        try:
            self._cuda.graph_destroy(graph)
        except Exception as exc:  # noqa: BLE001 - secondary to the error being raised
            log.debug("destroying the failed CUDA graph: %s", exc)

    def synchronize(self) -> None:
        st = getattr(self._local, "slot", None)
        if st is not None and st.context is not None:
            with self._cuda.activate(self._ordinal):
                st.stream.synchronize()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        with self._free:
            self._closed = True
            self._free.notify_all()
            while any(self._busy):  # let running calls finish with their buffers
                self._free.wait(timeout=1.0)
        with self._cuda.activate(self._ordinal):
            for st in self._slots:
                if st is not None:
                    st.release()
            self._slots = [None] * len(self._slots)
        self._engine = None
        self._runtime = None

    @property
    def manifest(self) -> EngineManifest | None:
        return self._manifest


__all__ = ["TensorRTRunner", "numpy_dtype", "parse_device"]
