"""TensorRT on a GPU: FP16 and INT8 engines of ResNet-18 and ResNet-50 against PyTorch at min, opt,
max and an off-grid shape; the timing cache; several threads; CUDA graphs; torch CUDA inputs; the
CUDA layer on the real driver. Skipped with a reason where no CUDA device or TensorRT is present.

``benchmarks/gpu_check.sh`` runs these after its own checks and points ``RESNET_DEPLOY_GPU_EXPORTS``
at the exports it made, so the engines are built once; alone, the tests export and build their own
(small profiles, a shared timing cache).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.parity import compare, seeded_inputs, tolerances_for
from resnet_deploy.runtime.tensorrt import BuildConfig, Profile, TensorRTRunner, build_engine, read_manifest
from resnet_deploy.runtime.tensorrt.builder import engine_check_shapes
from resnet_deploy.runtime.tensorrt.profiles import check_shapes

pytestmark = pytest.mark.gpu

PROFILE = Profile((1, 3, 64, 64), (4, 3, 128, 128), (8, 3, 192, 192))
# gpu_check.sh narrows this to the variants whose engines it built (budget)
VARIANTS = tuple(os.environ.get("RESNET_DEPLOY_GPU_VARIANTS", "resnet18,resnet50").split(","))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    given = os.environ.get("RESNET_DEPLOY_GPU_EXPORTS")
    return Path(given) if given else tmp_path_factory.mktemp("gpu")


@pytest.fixture(scope="session")
def timing_cache(workdir) -> Path:
    return Path(os.environ.get("RESNET_DEPLOY_TIMING_CACHE") or workdir / "timing.cache")


def _onnx(workdir: Path, variant: str) -> dict[str, Path]:
    """FP32, FP16 and TensorRT-flavoured INT8 ONNX of ``variant``: the ones gpu_check.sh exported
    (``<variant>/`` and ``<variant>-int8/``), else exported here."""
    from resnet_deploy.errors import CheckFailedError
    from resnet_deploy.export import ExportConfig, export_model

    out = workdir / variant
    if not (out / f"{variant}.fp16.onnx").is_file():
        try:
            export_model(ExportConfig(variant=variant, output_dir=out, exporter="torchscript",
                                      check_shapes=((2, 3, 128, 128),), fp16=True, int8=True, engine="never",
                                      int8_options={"calib_data": "synthetic", "target": "tensorrt"}))
        except CheckFailedError as exc:  # the artifacts are written; the engine tests judge them
            print(f"{variant} export: {exc}")
    found = {"fp32": out / f"{variant}.onnx", "fp16": out / f"{variant}.fp16.onnx"}
    for d in (out, workdir / f"{variant}-int8"):
        if (d / f"{variant}.int8.tensorrt.onnx").is_file():
            found["int8.tensorrt"] = d / f"{variant}.int8.tensorrt.onnx"
            break
    return {k: p for k, p in found.items() if p.is_file()}


@pytest.fixture(scope="session")
def engines(workdir, timing_cache) -> dict[tuple[str, str], Path]:
    """(variant, precision) -> engine: the one ``resnet-export --engine`` built beside its ONNX, else one
    built here with PROFILE."""
    out: dict[tuple[str, str], Path] = {}
    for variant in VARIANTS:
        onnx = _onnx(workdir, variant)
        for key, precision in (("fp16", "fp16"), ("int8.tensorrt", "int8")):
            if key not in onnx:
                continue
            engine = onnx[key].with_suffix(".engine")
            if not (engine.is_file() and read_manifest(engine) is not None):
                engine = workdir / variant / f"{variant}.{precision}.test.engine"
                if not (engine.is_file() and read_manifest(engine) is not None):
                    build_engine(onnx[key], engine, BuildConfig(profiles=(PROFILE,), timing_cache=timing_cache))
            out[(variant, precision)] = engine
    return out


def assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-3) -> None:
    """Equal up to ``rel`` of the largest magnitude (other contexts may run other FP16 kernels)."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rel * np.abs(want).max() + 1e-5


def _engine(engines, variant, precision) -> Path:
    if (variant, precision) not in engines:
        pytest.skip(f"no {precision} ONNX for {variant} (the INT8 export did not produce a TensorRT flavour)")
    return engines[(variant, precision)]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_matches_pytorch_at_min_opt_max_and_off_grid(engines, variant, precision):
    import torch

    from resnet_deploy.runtime.torch_runner import TorchRunner

    engine = _engine(engines, variant, precision)
    shapes = engine_check_shapes(read_manifest(engine).profiles)
    assert len(shapes) == 4
    torch.backends.cudnn.allow_tf32 = False  # an FP32 reference, not a TF32 one
    torch.backends.cuda.matmul.allow_tf32 = False
    tol = tolerances_for(precision)
    if precision == "int8":  # random weights: only the centered cosine means anything (export/pipeline.py's rule)
        from dataclasses import replace

        tol = replace(tol, max_abs_rel=float("inf"), min_cosine=0.0, min_top1=0.0, min_top5=0.0)
    with TorchRunner.from_variant(variant, device="cuda:0") as ref, TensorRTRunner(engine) as trt_runner:
        assert trt_runner.info.precision == precision
        report = compare(ref, trt_runner, seeded_inputs(shapes, seed=1), precision=precision, tolerances=tol)
    assert report.passed, report.table()


def test_timing_cache_is_reused_by_a_rebuild(engines, workdir, timing_cache, tmp_path):
    first = _engine(engines, "resnet18", "fp16")
    m = read_manifest(first)
    assert timing_cache.is_file() and timing_cache.stat().st_size > 0
    again = build_engine(m.onnx, tmp_path / "r18.engine", BuildConfig(profiles=tuple(m.profiles[:1]),
                                                                      timing_cache=timing_cache))
    assert again.timing_cache_loaded
    print(f"timing cache: first build {m.build_seconds:.1f}s, rebuild {again.build_seconds:.1f}s")


def test_several_threads_share_one_runner(engines, timing_cache, tmp_path):
    m = read_manifest(_engine(engines, "resnet18", "fp16"))
    profile = m.profiles[0]
    engine = build_engine(m.onnx, tmp_path / "r18.x2.engine",
                          BuildConfig(profiles=(profile,), timing_cache=timing_cache, profile_copies=2)).engine
    inputs = seeded_inputs([s for s in check_shapes(profile)] * 4, seed=3)
    with TensorRTRunner(engine) as runner:
        expected = [runner.infer(x) for x in inputs]
        errors: list[BaseException] = []

        def work(offset: int) -> None:
            try:
                for k in range(len(inputs)):
                    i = (k + offset) % len(inputs)
                    assert_close(runner.infer(inputs[i]), expected[i], rel=1e-2)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t * 3,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


def test_cuda_graph_and_torch_cuda_inputs_give_the_same_logits(engines):
    import torch

    engine = _engine(engines, "resnet18", "fp16")
    opt = read_manifest(engine).profiles[0].opt
    x, other = seeded_inputs([opt, opt], seed=5)
    with TensorRTRunner(engine) as plain, TensorRTRunner(engine, cuda_graph=True) as graphed:
        want = plain.infer(x)
        on_gpu = plain.infer(torch.from_numpy(x).cuda())
        first, second = graphed.infer(x), graphed.infer(x)
        assert_close(graphed.infer(other), plain.infer(other))
        graphed_gpu = graphed.infer(torch.from_numpy(x).cuda())
    for got in (on_gpu, first, second, graphed_gpu):
        assert_close(got, want)


@pytest.mark.parametrize("name", ["cuda-python", "pycuda"])
def test_cuda_layer_round_trip_on_the_driver(name):
    from resnet_deploy.runtime.tensorrt.cuda import DeviceBuffer, HostBuffer, Stream, available_backends, get_backend

    if name not in available_backends():
        pytest.skip(f"{name} is not installed")
    cuda = get_backend(name)
    assert cuda.device_count() >= 1
    x = np.arange(4096, dtype=np.float32).reshape(16, 256)
    with cuda.activate(0):
        host, dev, dev2, back = (HostBuffer(cuda, x.nbytes), DeviceBuffer(cuda, x.nbytes),
                                 DeviceBuffer(cuda, x.nbytes), HostBuffer(cuda, x.nbytes))
        stream = Stream(cuda)
        np.copyto(host.view(x.shape, x.dtype), x)
        stream.htod(dev, host, x.nbytes)
        stream.dtod(dev2, dev.ptr, x.nbytes)
        stream.dtoh(back, dev2, x.nbytes)
        stream.synchronize()
        np.testing.assert_array_equal(back.view(x.shape, x.dtype), x)
        for b in (host, dev, dev2, back):
            b.free()
        stream.destroy()
