"""Stand-ins for TensorRT and a CUDA binding, so the builder's and runner's own logic runs on a CPU.

``FakeCuda`` keeps "device" memory in host memory and copies with memmove; graph capture records
the enqueued work and replays it on launch. ``fake_tensorrt()`` is a module with the part of
TensorRT's Python API the toolkit uses; its engine computes ``expected_logits`` (channel means) and
records any two contexts running the same optimization profile at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import os
import threading
import time
import types
from typing import Any

import numpy as np

from resnet_deploy.runtime.tensorrt.cuda import DeviceInfo

CLASSES = 5
#: set to a key of real_tensorrt.VERSIONS: ``install`` swaps that version's real enums and base classes in
REAL_ENV = "RESNET_DEPLOY_FAKE_TRT_REAL"


class FakeCuda:
    name = "fake-cuda"

    def __init__(self, devices: int = 1, cc: tuple[int, int] = (9, 0), gpu: str = "Fake H200") -> None:
        self.devices, self.cc, self.gpu = devices, cc, gpu
        self.memory: dict[int, Any] = {}
        self.pinned: dict[int, Any] = {}
        self.streams: set[int] = set()
        self.copies: list[str] = []
        self.capturing: dict[int, list] = {}
        self.graphs: dict[int, list] = {}
        self.graphs_made = 0
        self._next = 1
        self._lock = threading.Lock()
        self._current = threading.local()
        self.activated: list[int] = []
        self.fail_capture_end = False  # graph_end raises, as when the enqueue invalidated the capture

    def device_count(self) -> int:
        return self.devices

    def device_info(self, ordinal: int) -> DeviceInfo:
        return DeviceInfo(ordinal, self.gpu, self.cc, 141 * 2**30)

    def versions(self) -> dict[str, str]:
        return {"cuda_driver": "12.8", "cuda_runtime": "12.8"}

    @property
    def current(self) -> int:
        """The calling thread's current device (``cudaSetDevice``), 0 until one is activated."""
        return getattr(self._current, "device", 0)

    @contextlib.contextmanager
    def activate(self, ordinal: int):
        before = self.current
        self._current.device = ordinal
        self.activated.append(ordinal)
        try:
            yield
        finally:
            self._current.device = before

    def _alloc(self, table: dict, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(nbytes)
        with self._lock:
            table[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def malloc(self, nbytes: int) -> int:
        return self._alloc(self.memory, nbytes)

    def free(self, ptr: int) -> None:
        with self._lock:
            del self.memory[ptr]

    def malloc_host(self, nbytes: int) -> int:
        return self._alloc(self.pinned, nbytes)

    def free_host(self, ptr: int) -> None:
        with self._lock:
            del self.pinned[ptr]

    def stream_create(self) -> int:
        with self._lock:
            self._next += 1
            self.streams.add(self._next)
            return self._next

    def stream_destroy(self, stream: int) -> None:
        with self._lock:
            self.streams.remove(stream)

    def stream_synchronize(self, stream: int) -> None:
        assert stream in self.streams

    def enqueue(self, stream: int, work) -> None:
        """Run ``work`` now, or record it when ``stream`` is capturing."""
        if stream in self.capturing:
            self.capturing[stream].append(work)
        else:
            work()

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> None:
        self.copies.append(kind)
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes))

    def graph_begin(self, stream: int) -> None:
        self.capturing[stream] = []

    def graph_end(self, stream: int) -> int:
        if self.fail_capture_end:
            self.capturing.pop(stream, None)
            raise RuntimeError("cudaStreamEndCapture failed: operation not permitted when stream is capturing "
                               "(cudaErrorStreamCaptureInvalidated)")
        with self._lock:
            self._next += 1
            self.graphs[self._next] = self.capturing.pop(stream)
            self.graphs_made += 1
            return self._next

    def graph_launch(self, graph: int, stream: int) -> None:
        for work in self.graphs[graph]:
            work()

    def graph_destroy(self, graph: int) -> None:
        del self.graphs[graph]


def _floats(ptr: int, count: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(ptr))


class FakeEngine:
    """``ICudaEngine``: two I/O tensors, the given profiles; computes ``expected_logits``."""

    def __init__(self, trt: Any, profiles: list[tuple[tuple, tuple, tuple]], cuda: FakeCuda,
                 classes: int = CLASSES) -> None:
        self.trt, self.profiles, self.cuda, self.classes = trt, profiles, cuda, classes
        self.busy = [0] * len(profiles)
        self.overlaps = 0  # two contexts inside the same profile at once: must stay 0
        self.contexts = 0
        self.made: list["FakeContext"] = []
        self.names = ["input", "logits"]
        self.refuse: tuple[str, ...] = ()
        self._lock = threading.Lock()

    num_io_tensors = property(lambda self: 2)
    num_optimization_profiles = property(lambda self: len(self.profiles))

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:  # noqa: F821 - TensorRT's enum
        return self.trt.TensorIOMode.INPUT if name == self.names[0] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:  # noqa: F821 - TensorRT's enum
        return self.trt.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple:
        return (-1, 3, -1, -1) if name == self.names[0] else (-1, self.classes)

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        return [list(s) for s in self.profiles[profile_index]]

    def create_execution_context(self, strategy: Any = None) -> IExecutionContext:  # noqa: F821
        if strategy is not None and not isinstance(strategy, self.trt.ExecutionContextAllocationStrategy):
            raise TypeError("create_execution_context(): incompatible function arguments")
        with self._lock:
            self.contexts += 1
            ctx = FakeContext(self)
            self.made.append(ctx)
        return ctx


class FakeContext:
    """``IExecutionContext``: records every profile it was switched to (``profiles_set``)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.profiles_set: list[int] = []
        self.shape: tuple | None = None
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        self.profile, self.shape = profile_index, None
        self.profiles_set.append(profile_index)
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        lo, _, hi = self.engine.profiles[self.profile]
        shape = tuple(int(d) for d in shape)
        if not all(a <= d <= b for d, a, b in zip(shape, lo, hi)):
            return False
        self.shape = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        classes = self.engine.classes
        if self.shape is None:
            return (-1, 3, -1, -1) if name == self.engine.names[0] else (-1, classes)
        return self.shape if name == self.engine.names[0] else (self.shape[0], classes)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name in self.engine.refuse or not isinstance(memory, int):
            return False
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        eng, stream = self.engine, stream_handle
        shape, p, k = self.shape, self.profile, eng.classes
        src, dst = self.addresses[eng.get_tensor_name(0)], self.addresses[eng.get_tensor_name(1)]

        def work() -> None:
            with eng._lock:
                eng.busy[p] += 1
                if eng.busy[p] > 1:
                    eng.overlaps += 1
            time.sleep(0.001)
            x = _floats(src, int(np.prod(shape))).reshape(shape)
            _floats(dst, shape[0] * k)[:] = expected_logits(x, k).ravel()
            with eng._lock:
                eng.busy[p] -= 1

        eng.cuda.enqueue(stream, work)
        return True


def expected_logits(x: np.ndarray, classes: int = CLASSES) -> np.ndarray:
    """What the fake engine computes: output k is the mean of channel k % C, times 1 + k // C (with three
    outputs that is global average pooling, so a GlobalAveragePool+Flatten ONNX is its exact reference)."""
    means = x.mean(axis=(2, 3), dtype=np.float64)
    k = np.arange(classes)
    return (means[:, k % x.shape[1]] * (1 + k // x.shape[1])).astype(np.float32)


#: enum values as TensorRT 10 and 11 have them (the contract tests compare these with the real modules)
ENUMS: dict[str, dict[int, dict[str, int]]] = {
    "NetworkDefinitionCreationFlag": {10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
                                      11: {"STRONGLY_TYPED": 0}},  # deprecated and ignored in 11
    "MemoryPoolType": {10: {"WORKSPACE": 0}, 11: {"WORKSPACE": 0}},
    "BuilderFlag": {10: {"TF32": 6, "VERSION_COMPATIBLE": 13}, 11: {"TF32": 6, "VERSION_COMPATIBLE": 12}},
    "HardwareCompatibilityLevel": {10: {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2},
                                   11: {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2}},
    "TensorIOMode": {10: {"NONE": 0, "INPUT": 1, "OUTPUT": 2}, 11: {"NONE": 0, "INPUT": 1, "OUTPUT": 2}},
    "DataType": {10: {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "UINT8": 5, "BF16": 7},
                 11: {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "UINT8": 5, "BF16": 7}},
    "ExecutionContextAllocationStrategy": {10: {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2},
                                           11: {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2}},
    "ErrorCode": {10: {"SUCCESS": 0, "INTERNAL_ERROR": 1, "UNSUPPORTED_NODE": 8},
                  11: {"SUCCESS": 0, "INTERNAL_ERROR": 1, "UNSUPPORTED_NODE": 8}},
    "Severity": {10: {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4},
                 11: {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}},
}
#: names on the fake module that only tests use (not part of TensorRT)
FAKE_ONLY = frozenset({"built_configs"})


def _enum(name: str, major: int) -> type:
    """An enum type like pybind11's: named members, ``int()`` gives the value, ``__members__``."""
    return enum.IntEnum(name, ENUMS[name][major])


def fake_tensorrt(cuda: FakeCuda, *, version: str = "10.13.3.9", usable: bool = True,
                  unsupported: tuple[str, ...] = (), real: Any = None, timing_cache_readable: bool = True,
                  empty_timing_cache: bool = True, refuse_addresses: tuple[str, ...] = ()) -> types.ModuleType:
    """A ``tensorrt`` module: builder, parser, runtime and engine, as far as the toolkit uses them, with the
    real module's names, signatures, enum types and return types. ``real``: a real ``tensorrt`` module whose
    enums, ``ILogger``, ``IProgressMonitor`` and ``nptype`` replace the fake's (so type mismatches surface).
    ``timing_cache_readable=False``: ``create_timing_cache`` of non-empty data returns None (a corrupt
    cache); ``empty_timing_cache=False``: even an empty one cannot be made. ``refuse_addresses``: tensors
    whose ``set_tensor_address`` returns False."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = 11 if int(version.split(".")[0]) >= 11 else 10
    trt.built_configs = []  # every builder config that reached build_serialized_network

    class ILogger:
        Severity = _enum("Severity", major)

        def __init__(self) -> None:
            self._base_init = True

        def log(self, severity: Any, msg: str) -> None:
            raise NotImplementedError

    class IProgressMonitor:
        def __init__(self) -> None:
            self._base_init = True

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            raise NotImplementedError

        def step_complete(self, phase_name: str, step: int) -> bool:
            raise NotImplementedError

        def phase_finish(self, phase_name: str) -> None:
            raise NotImplementedError

    trt.ILogger, trt.IProgressMonitor = ILogger, IProgressMonitor
    for name in ENUMS:
        if name != "Severity":
            setattr(trt, name, _enum(name, major))

    def nptype(trt_type: Any) -> Any:
        table = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT8: np.int8,
                 trt.DataType.INT32: np.int32}
        if trt_type not in table:
            raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype. {trt_type}")
        return table[trt_type]

    trt.nptype = nptype
    if real is not None:  # the real enums and base classes: what the toolkit's code meets on a GPU host
        for name in [*ENUMS, "ILogger", "IProgressMonitor", "nptype"]:
            if name != "Severity":
                setattr(trt, name, getattr(real, name))
        if not hasattr(real.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
            major = 11
    Severity = trt.ILogger.Severity

    def _base_inited(obj: Any, base: type) -> None:
        """pybind11 raises TypeError when a trampoline subclass did not call the base ``__init__``."""
        if real is None and not getattr(obj, "_base_init", False):
            raise TypeError(f"{base.__name__}.__init__() must be called when overriding __init__")

    class IHostMemory(bytearray):
        """Serialized data as TensorRT returns it: not ``bytes``, but a buffer (``memoryview(m)``) with
        ``nbytes`` and ``dtype``."""

        nbytes = property(lambda self: len(self))
        dtype = property(lambda self: trt.DataType.UINT8)

    class ITensor:
        def __init__(self, name: str, shape: tuple, dtype: Any) -> None:
            self._name, self._shape, self._dtype = name, shape, dtype

        name = property(lambda self: self._name)
        shape = property(lambda self: self._shape)
        dtype = property(lambda self: self._dtype)

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self._flags = flags
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []

        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_input(self, index: int) -> ITensor:
            return self._inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self._outputs[index]

    class ParserError:
        def __init__(self, name: str, op: str, desc: str) -> None:
            self._name, self._op, self._desc = name, op, desc

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._op

        def node(self) -> int:
            return 3

        def desc(self) -> str:
            return self._desc

        def code(self) -> ErrorCode:  # noqa: F821 - the real annotation names TensorRT's enum
            return trt.ErrorCode.UNSUPPORTED_NODE

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Any) -> None:
            self._network, self._errors = network, []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def parse_from_file(self, model: str) -> bool:
            import onnx

            loaded = onnx.load(model, load_external_data=False)
            for node in loaded.graph.node:
                if node.op_type in unsupported:
                    self._errors.append(ParserError(node.name, node.op_type, f"no importer for op {node.op_type}"))
                    return False

            def dims(v: Any) -> tuple:
                return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)

            self._network._inputs = [ITensor(v.name, dims(v), trt.DataType.FLOAT) for v in loaded.graph.input]
            self._network._outputs = [ITensor(v.name, dims(v), trt.DataType.FLOAT) for v in loaded.graph.output]
            return True

    class IOptimizationProfile:
        def __init__(self) -> None:
            self._shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
            self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class ITimingCache:
        def __init__(self, entries: list) -> None:
            self._entries = entries

        def serialize(self) -> IHostMemory:
            return IHostMemory(json.dumps(self._entries).encode())

    class IBuilderConfig:
        def __init__(self) -> None:
            self.profiles: list[IOptimizationProfile] = []
            self.flags: set[Any] = {trt.BuilderFlag.TF32}
            self.pool: dict[Any, int] = {}
            self._level = 3
            self._hw = trt.HardwareCompatibilityLevel.NONE
            self._monitor: Any = None
            self.cache: ITimingCache | None = None

        def _typed(self, value: Any, enum_type: Any, what: str) -> Any:
            if not isinstance(value, enum_type):
                raise TypeError(f"{what}(): incompatible function arguments: {value!r} is not a "
                                f"{enum_type.__name__}")
            return value

        builder_optimization_level = property(lambda self: self._level,
                                              lambda self, v: setattr(self, "_level", int(v)))
        hardware_compatibility_level = property(
            lambda self: self._hw,
            lambda self, v: setattr(self, "_hw", self._typed(v, trt.HardwareCompatibilityLevel,
                                                               "hardware_compatibility_level")))

        def _set_monitor(self, monitor: Any) -> None:
            _base_inited(monitor, trt.IProgressMonitor)
            self._monitor = monitor

        progress_monitor = property(lambda self: self._monitor, _set_monitor)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            self.pool[self._typed(pool, trt.MemoryPoolType, "set_memory_pool_limit")] = pool_size

        def set_flag(self, flag: Any) -> None:
            self.flags.add(self._typed(flag, trt.BuilderFlag, "set_flag"))

        def clear_flag(self, flag: Any) -> None:
            self.flags.discard(self._typed(flag, trt.BuilderFlag, "clear_flag"))

        def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache:
            data = bytes(memoryview(serialized_timing_cache))
            if not data:
                return ITimingCache([]) if empty_timing_cache else None
            try:
                entries = json.loads(data)
            except ValueError:
                return None  # TensorRT logs an error and returns None for data it cannot read
            return ITimingCache(entries) if timing_cache_readable else None

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            if not isinstance(cache, ITimingCache):
                raise TypeError("set_timing_cache(): incompatible function arguments")
            if any(e.get("gpu") != cuda.gpu for e in cache._entries):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            _base_inited(logger, trt.ILogger)
            self.device = cuda.current  # the device current on this thread when the builder was made
            if not usable:
                logger.log(Severity.ERROR, "CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            if not isinstance(flags, int) or isinstance(flags, enum.Enum):
                raise TypeError("create_network(): flags is a bit mask (int)")
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory:
            trt.built_configs.append(config)
            config.device = self.device
            mon = config.progress_monitor
            mon.phase_start("Building engine", None, 2)
            for step in range(2):
                if not mon.step_complete("Building engine", step):
                    mon.phase_finish("Building engine")
                    return None
            mon.phase_finish("Building engine")
            if config.cache is not None:
                config.cache._entries.append({"gpu": cuda.gpu, "layer": len(config.cache._entries)})
            name = network.get_input(0).name
            profiles = [[list(map(list, p._shapes[name]))] for p in config.profiles]
            plan = {"profiles": profiles, "classes": network.get_output(0).shape[-1],
                    "names": [network.get_input(0).name, network.get_output(0).name],
                    "refuse": list(refuse_addresses)}
            return IHostMemory(b"FAKEPLAN" + json.dumps(plan).encode())

    class Runtime:
        def __init__(self, logger: Any) -> None:
            _base_inited(logger, trt.ILogger)
            if not usable:
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self._logger = logger
            self._host_code = False

        engine_host_code_allowed = property(lambda self: self._host_code,
                                            lambda self, v: setattr(self, "_host_code", bool(v)))

        def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine:
            data = bytes(memoryview(serialized_engine))
            if not data.startswith(b"FAKEPLAN"):
                self._logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                                 "assertion failed (magic tag)")
                return None
            plan = json.loads(data[8:])
            engine = ICudaEngine(trt, [tuple(tuple(s) for s in p[0]) for p in plan.get("profiles", [])], cuda,
                                 plan.get("classes", CLASSES))
            engine.names = plan.get("names", engine.names)
            engine.refuse = tuple(plan.get("refuse", ()))
            return engine

    ICudaEngine, IExecutionContext = FakeEngine, FakeContext
    for cls in (ILogger, IProgressMonitor, IHostMemory, ITensor, INetworkDefinition, ParserError, OnnxParser,
                IOptimizationProfile, ITimingCache, IBuilderConfig, Builder, Runtime):
        if real is None or cls.__name__ not in ("ILogger", "IProgressMonitor"):
            setattr(trt, cls.__name__, cls)
    trt.ICudaEngine, trt.IExecutionContext = ICudaEngine, IExecutionContext
    return trt


def make(cuda: FakeCuda, **trt_kwargs: Any) -> types.ModuleType:
    """``fake_tensorrt``, with the real enums and base classes swapped in when ``$RESNET_DEPLOY_FAKE_TRT_REAL``
    names a version (test_tensorrt_contract runs the runner and builder tests that way)."""
    key = os.environ.get(REAL_ENV)
    if key and "real" not in trt_kwargs:
        import real_tensorrt

        trt_kwargs["real"] = real_tensorrt.load_in_process(key)
        trt_kwargs.setdefault("version", str(trt_kwargs["real"].__version__).split(".post")[0])
    return fake_tensorrt(cuda, **trt_kwargs)


def install(monkeypatch: Any, *, cuda: FakeCuda | None = None, **trt_kwargs: Any) -> tuple[types.ModuleType, FakeCuda]:
    """Make ``import tensorrt`` and the CUDA layer's backend choice return the fakes for one test."""
    import sys

    from resnet_deploy.runtime.tensorrt import builder, cuda as cuda_mod

    cuda = cuda or FakeCuda()
    trt = make(cuda, **trt_kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(builder, "_LOGGER", None)  # the process-wide logger belongs to the real TensorRT
    monkeypatch.setattr(cuda_mod, "_ADAPTERS", {"fake-cuda": (lambda: cuda, ("json",))})
    return trt, cuda
