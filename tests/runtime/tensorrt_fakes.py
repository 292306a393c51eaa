"""Stand-ins for TensorRT and a CUDA binding, so the builder's and runner's own logic runs on a CPU.

``FakeCuda`` keeps "device" memory in host memory and copies with memmove; graph capture records
the enqueued work and replays it on launch. ``fake_tensorrt()`` is a module with the part of
TensorRT's Python API the toolkit uses; its engine computes ``expected_logits`` (channel means) and
records any two contexts running the same optimization profile at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import threading
import time
import types
from typing import Any

import numpy as np

from resnet_deploy.runtime.tensorrt.cuda import DeviceInfo

CLASSES = 5


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

    def device_count(self) -> int:
        return self.devices

    def device_info(self, ordinal: int) -> DeviceInfo:
        return DeviceInfo(ordinal, self.gpu, self.cc, 141 * 2**30)

    def versions(self) -> dict[str, str]:
        return {"cuda_driver": "12.8", "cuda_runtime": "12.8"}

    @contextlib.contextmanager
    def activate(self, ordinal: int):
        yield

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
    def __init__(self, trt: Any, profiles: list[tuple[tuple, tuple, tuple]], cuda: FakeCuda,
                 classes: int = CLASSES) -> None:
        self.trt, self.profiles, self.cuda, self.classes = trt, profiles, cuda, classes
        self.busy = [0] * len(profiles)
        self.overlaps = 0  # two contexts inside the same profile at once: must stay 0
        self.contexts = 0
        self._lock = threading.Lock()

    num_io_tensors = 2
    names = ["input", "logits"]

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> Any:
        return self.trt.TensorIOMode.INPUT if name == self.names[0] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return self.trt.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple:
        return (-1, 3, -1, -1) if name == self.names[0] else (-1, self.classes)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list:
        return [list(s) for s in self.profiles[profile]]

    def create_execution_context(self, *strategy: Any) -> "FakeContext":
        with self._lock:
            self.contexts += 1
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.shape: tuple | None = None
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        self.profile, self.shape = profile, None
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

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = int(ptr)

    def execute_async_v3(self, stream: int) -> bool:
        eng = self.engine
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


def fake_tensorrt(cuda: FakeCuda, *, version: str = "10.9.0.34", usable: bool = True,
                  unsupported: tuple[str, ...] = ()) -> types.ModuleType:
    """A ``tensorrt`` module: builder, parser, runtime and engine, as far as the toolkit uses them."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.built_configs = []  # every builder config that reached build_serialized_network

    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    trt.IProgressMonitor = IProgressMonitor
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32", VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(NONE="NONE", AMPERE_PLUS="AMPERE_PLUS",
                                                           SAME_COMPUTE_CAPABILITY="SAME_COMPUTE_CAPABILITY")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", BF16="BF16")

    def nptype(dt: Any) -> Any:
        table = {"FLOAT": np.float32, "HALF": np.float16}
        if dt not in table:
            raise TypeError(f"no numpy type for {dt}")
        return table[dt]

    trt.nptype = nptype

    class Tensor:
        def __init__(self, name: str, shape: tuple, dtype: str = "FLOAT") -> None:
            self.name, self.shape, self.dtype = name, shape, dtype

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

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

        def code(self) -> str:
            return "ErrorCode.UNSUPPORTED_NODE"

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.errors = network, []

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            import onnx

            model = onnx.load(path, load_external_data=False)
            for node in model.graph.node:
                if node.op_type in unsupported:
                    self.errors.append(ParserError(node.name, node.op_type, f"no importer for op {node.op_type}"))
                    return False

            def dims(v: Any) -> tuple:
                return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)

            self.network.inputs = [Tensor(v.name, dims(v)) for v in model.graph.input]
            self.network.outputs = [Tensor(v.name, dims(v)) for v in model.graph.output]
            return True

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.entries = json.loads(data) if data else []

        def serialize(self) -> bytes:
            return json.dumps(self.entries).encode()

    class Config:
        def __init__(self) -> None:
            self.profiles: list[Profile] = []
            self.flags: set[str] = {"TF32"}
            self.pool: dict[str, int] = {}
            self.builder_optimization_level = 3
            self.hardware_compatibility_level = "NONE"
            self.progress_monitor = None
            self.cache: TimingCache | None = None

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pool[pool] = size

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: str) -> None:
            self.flags.discard(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if any(e.get("gpu") != cuda.gpu for e in cache.entries):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            if not usable:
                logger.log(Severity.ERROR, "CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            trt.built_configs.append(config)
            mon = config.progress_monitor
            mon.phase_start("Building engine", None, 2)
            for step in range(2):
                if not mon.step_complete("Building engine", step):
                    mon.phase_finish("Building engine")
                    return None
            mon.phase_finish("Building engine")
            config.cache.entries.append({"gpu": cuda.gpu, "layer": len(config.cache.entries)})
            name = network.inputs[0].name
            profiles = [[list(map(list, p.shapes[name]))] for p in config.profiles]
            plan = {"profiles": profiles, "classes": network.outputs[0].shape[-1],
                    "names": [network.inputs[0].name, network.outputs[0].name]}
            return b"FAKEPLAN" + json.dumps(plan).encode()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            if not usable:
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self.logger = logger
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            if not data.startswith(b"FAKEPLAN"):
                self.logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                                "assertion failed (magic tag)")
                return None
            plan = json.loads(data[8:])
            engine = FakeEngine(trt, [tuple(tuple(s) for s in p[0]) for p in plan.get("profiles", [])], cuda,
                                plan.get("classes", CLASSES))
            engine.names = plan.get("names", engine.names)
            return engine

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def install(monkeypatch: Any, *, cuda: FakeCuda | None = None, **trt_kwargs: Any) -> tuple[types.ModuleType, FakeCuda]:
    """Make ``import tensorrt`` and the CUDA layer's backend choice return the fakes for one test."""
    import sys

    from resnet_deploy.runtime.tensorrt import builder, cuda as cuda_mod

    cuda = cuda or FakeCuda()
    trt = fake_tensorrt(cuda, **trt_kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(builder, "_LOGGER", None)  # the process-wide logger belongs to the real TensorRT
    monkeypatch.setattr(cuda_mod, "_ADAPTERS", {"fake-cuda": (lambda: cuda, ("json",))})
    return trt, cuda
