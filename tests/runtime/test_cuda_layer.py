"""The thin CUDA layer and the TensorRT runner's own logic (buffers, shapes, profiles, threads, CUDA
graphs), on a fake CUDA backend and a fake TensorRT engine, so it runs without a GPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from resnet_deploy.errors import MissingDependencyError, UsageError
from resnet_deploy.runtime import InputError
from resnet_deploy.runtime.tensorrt import cuda as cuda_mod
from resnet_deploy.runtime.tensorrt.cuda import DeviceBuffer, HostBuffer, Stream, get_backend, nbytes_of
from resnet_deploy.runtime.tensorrt.runner import TensorRTRunner, numpy_dtype, parse_device


import tensorrt_fakes as fakes  # noqa: E402 - registered by tests/runtime/conftest.py
CLASSES, FakeCuda, FakeEngine = fakes.CLASSES, fakes.FakeCuda, fakes.FakeEngine
expected_logits, fake_tensorrt = fakes.expected_logits, fakes.fake_tensorrt

P_SMALL = ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 96))
P_LARGE = ((4, 3, 128, 128), (8, 3, 128, 128), (8, 3, 160, 160))


def make_runner(profiles=(P_SMALL,), **kw):
    cuda = FakeCuda()
    trt = fakes.make(cuda)
    engine = FakeEngine(trt, list(profiles), cuda)
    return TensorRTRunner.from_engine(engine, trt=trt, cuda=cuda, **kw), engine, cuda


def batch(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- the CUDA layer -------------------------------------------------------------------------------

def test_round_trip_through_device_and_pinned_buffers():
    cuda = FakeCuda()
    x = batch((2, 3, 8, 8))
    host, dev, back = HostBuffer(cuda, x.nbytes), DeviceBuffer(cuda, x.nbytes), HostBuffer(cuda, x.nbytes)
    stream = Stream(cuda)
    np.copyto(host.view(x.shape, x.dtype), x)
    stream.htod(dev, host, x.nbytes)
    stream.dtoh(back, dev, x.nbytes)
    stream.synchronize()
    np.testing.assert_array_equal(back.view(x.shape, x.dtype), x)
    assert cuda.copies == ["htod", "dtoh"]
    for b in (host, dev, back):
        b.free()
        b.free()  # idempotent
    stream.destroy()
    assert not cuda.memory and not cuda.pinned and not cuda.streams


def test_buffers_refuse_what_does_not_fit():
    cuda = FakeCuda()
    host, dev = HostBuffer(cuda, 64), DeviceBuffer(cuda, 64)
    with pytest.raises(UsageError, match="needs 80 bytes; this pinned buffer holds 64"):
        host.view((20,), np.float32)
    with pytest.raises(UsageError, match="htod copy of 128 bytes into a 64-byte buffer"):
        Stream(cuda).htod(dev, host, 128)
    with pytest.raises(UsageError, match="at least 1 byte"):
        DeviceBuffer(cuda, 0)
    host.free()
    with pytest.raises(UsageError, match="after free"):
        host.view((4,), np.float32)


def test_nbytes_and_dtype_mapping():
    assert nbytes_of((32, 3, 512, 512), np.float32) == 32 * 3 * 512 * 512 * 4
    assert nbytes_of((8, 1000), np.float16) == 16000
    trt = fake_tensorrt(FakeCuda())
    assert numpy_dtype(trt, trt.DataType.HALF) == np.float16
    with pytest.raises(UsageError, match="no numpy equivalent"):
        numpy_dtype(trt, trt.DataType.BF16)


def test_backend_selection(monkeypatch):
    with pytest.raises(UsageError, match="unknown CUDA backend 'cupy'; choose one of: cuda-python, pycuda"):
        get_backend("cupy")
    monkeypatch.setattr(cuda_mod, "available_backends", lambda: [])
    with pytest.raises(MissingDependencyError, match="cuda-python"):
        get_backend()
    fake = FakeCuda()
    monkeypatch.setattr(cuda_mod, "_ADAPTERS", {"cuda-python": (lambda: fake, ("json",)),
                                                "pycuda": (lambda: None, ("no_such_module_xyz",))})
    monkeypatch.setattr(cuda_mod, "available_backends", lambda: ["cuda-python"])
    assert get_backend() is fake


def test_cuda_python_without_a_driver_says_so():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    backend = cuda_mod.CudaPython()
    try:
        count = backend.device_count()
    except cuda_mod.CudaError as exc:
        assert "cudaGetDeviceCount failed" in str(exc)
    else:
        pytest.skip(f"this machine has {count} CUDA device(s)")


def test_parse_device():
    assert parse_device("cuda") == 0 and parse_device("cuda:1") == 1
    with pytest.raises(UsageError, match="TensorRT engines run on CUDA devices: got device 'cpu'"):
        parse_device("cpu")


# -- the runner on a fake engine --------------------------------------------------------------------

def test_buffers_are_sized_once_for_the_profile_max():
    runner, _, cuda = make_runner(profiles=(P_SMALL, P_LARGE))
    assert runner._capacity == [{"input": 4 * 3 * 96 * 96 * 4, "logits": 4 * CLASSES * 4},
                                {"input": 8 * 3 * 160 * 160 * 4, "logits": 8 * CLASSES * 4}]
    spec = runner.input
    assert spec.min_shape == (1, 3, 32, 32) and spec.max_shape == (8, 3, 160, 160)
    assert spec.shape == ("batch", 3, "height", "width")
    runner.infer(batch((1, 3, 32, 32)))
    allocated = len(cuda.memory)
    for shape in [(4, 3, 96, 96), (2, 3, 50, 70)]:
        runner.infer(batch(shape))
    assert len(cuda.memory) == allocated == 2  # input and output, reused across shapes
    runner.infer(batch((8, 3, 160, 160)))  # profile 1: its own context and buffers
    assert len(cuda.memory) == 4
    runner.close()
    assert not cuda.memory and not cuda.pinned and not cuda.streams


@pytest.mark.parametrize("graph", [False, True])
def test_results_at_min_opt_max_and_off_grid(graph):
    runner, _, cuda = make_runner(cuda_graph=graph)
    for i, shape in enumerate([P_SMALL[0], P_SMALL[1], P_SMALL[2], (3, 3, 33, 65)]):
        x = batch(shape, seed=i)
        np.testing.assert_allclose(runner.infer(x), expected_logits(x), rtol=1e-5, atol=1e-5)
    if graph:
        assert cuda.graphs_made == 4  # one capture per shape
        runner.infer(batch(P_SMALL[1], seed=9))
        assert cuda.graphs_made == 5
        again = batch(P_SMALL[1], seed=10)
        np.testing.assert_allclose(runner.infer(again), expected_logits(again), rtol=1e-5, atol=1e-5)
        assert cuda.graphs_made == 5  # same shape: the graph is replayed
    runner.close()


def test_torch_cpu_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    runner, _, _ = make_runner()
    x = batch((2, 3, 40, 40))
    np.testing.assert_allclose(runner.infer(torch.from_numpy(x)), expected_logits(x), rtol=1e-5, atol=1e-5)


def test_one_profile_serves_many_threads_one_at_a_time():
    runner, engine, _ = make_runner(profiles=(P_SMALL,))
    x = batch((2, 3, 40, 40))
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(runner.infer(x))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(np.allclose(r, expected_logits(x), atol=1e-5) for r in results)
    assert engine.contexts == 2 and engine.overlaps == 0  # the waiting threads reused context 0
    assert engine.made[1].profiles_set == [0]


def test_shapes_outside_the_profiles_and_wrong_dtypes_are_refused():
    runner, _, _ = make_runner(profiles=(P_SMALL, P_LARGE))
    with pytest.raises(InputError, match="outside the profile"):
        runner.infer(batch((9, 3, 64, 64)))
    # inside the union of the two profiles, in neither of them
    with pytest.raises(InputError, match="in no optimization profile of this engine"):
        runner.infer(batch((6, 3, 64, 64)))
    with pytest.raises(InputError, match="got dtype float64, expected float32"):
        runner.infer(np.zeros((1, 3, 32, 32)))
    with pytest.raises(InputError, match="channels must be 3"):
        runner.infer(batch((1, 4, 32, 32)))


def test_context_i_runs_profile_i_and_busy_threads_wait():
    # two copies of one profile: two contexts, context i bound to profile i; the other threads wait
    runner, engine, _ = make_runner(profiles=(P_SMALL, P_SMALL))
    errors, seen = [], []

    def work(seed: int) -> None:
        try:
            for i in range(12):
                x = batch((1 + (seed + i) % 4, 3, 32 + 5 * i, 40), seed=seed * 100 + i)
                np.testing.assert_allclose(runner.infer(x), expected_logits(x), rtol=1e-5, atol=1e-5)
            seen.append(threading.get_ident())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(seen) == 4
    assert engine.overlaps == 0
    assert engine.contexts == 1 + 2  # one shape-inference context, then one per profile, not per thread
    assert sorted(tuple(c.profiles_set) for c in engine.made[1:]) == [(0,), (1,)]  # each set once, never switched
    runner.close()
    with pytest.raises(UsageError, match="closed"):
        runner.infer(batch((1, 3, 32, 32)))
