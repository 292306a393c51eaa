"""The engine manifest, the compatibility decision made before loading, and the errors a user sees
when TensorRT, a GPU or a sound engine is missing. The build and load paths run against a fake
TensorRT (tests/runtime/tensorrt_fakes.py): what is tested is this toolkit's logic around it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from resnet_deploy.artifacts import engine_manifest_path, read_metadata
from resnet_deploy.errors import MissingDependencyError, UsageError
from resnet_deploy.runtime import load_runner
from resnet_deploy.runtime.tensorrt import (BuildConfig, EngineManifest, IncompatibleEngineError, MachineInfo, Profile,
                                            TensorRTRunner, build_engine, check_compatible, read_manifest,
                                            tensorrt_usable)
from resnet_deploy.runtime.tensorrt.manifest import gpu_compatible, rebuild_command, tensorrt_compatible


import tensorrt_fakes as fakes  # noqa: E402 - registered by tests/runtime/conftest.py
TINY = BuildConfig(profiles=(Profile((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 96)),))

#: What ``resnet-deploy build`` recorded for an engine built on an H100 with TensorRT 10.3.
RECORDED = {
    "precision": "fp16", "tensorrt": "10.3.0.26", "compute_capability": "9.0", "gpu_name": "NVIDIA H100 80GB HBM3",
    "profiles": [{"min": [1, 3, 128, 128], "opt": [8, 3, 224, 224], "max": [32, 3, 512, 512]}],
    "onnx": "exports/resnet50/resnet50.fp16.onnx", "engine": "resnet50.fp16.engine",
    "hardware_compatibility": "none", "version_compatible": False,
    "flags": {"workspace_gib": 4.0, "opt_level": 3, "timing_cache": "trt.cache", "profile_copies": 1, "tf32": True},
    "metadata": {"variant": "resnet50", "preprocessing": {"resize_size": 232, "crop_size": 224}},
}


# -- recorded manifests and the decision -----------------------------------------------------------

def test_manifest_round_trip(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    m = EngineManifest.from_dict(RECORDED)
    assert m.save(engine) == engine_manifest_path(engine)
    again = read_manifest(engine)
    assert again == m and again.profiles == [Profile((1, 3, 128, 128), (8, 3, 224, 224), (32, 3, 512, 512))]
    assert read_metadata(engine)["preprocessing"]["resize_size"] == 232  # what runners and embedders read
    assert read_manifest(tmp_path / "other.engine") is None
    engine_manifest_path(engine).write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_manifest(engine)
    engine_manifest_path(engine).write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(UsageError, match="lacks tensorrt, compute_capability, profiles"):
        read_manifest(engine)


@pytest.mark.parametrize("built, here, vc, ok", [
    ("10.3.0.26", "10.3.0.26", False, True),
    ("10.3.0.26", "10.3.0.30", False, True),  # same release, another build number
    ("10.3.0.26", "10.4.0.26", False, False),
    ("10.3.0.26", "10.8.0.43", True, True),  # version-compatible: later 10.x
    ("10.8.0.43", "10.3.0.26", True, False),  # never backwards
    ("10.13.0.35", "11.0.0.12", True, False),  # never across a major version
    ("unknown", "10.3.0.26", False, True),  # nothing to judge by
])
def test_tensorrt_version_rule(built, here, vc, ok):
    assert tensorrt_compatible(built, here, vc) is ok


@pytest.mark.parametrize("built, here, level, ok", [
    ("9.0", "9.0", "none", True), ("9.0", "8.9", "none", False), ("8.6", "8.9", "same-compute-capability", False),
    ("8.0", "9.0", "ampere+", True), ("8.6", "12.0", "ampere+", True), ("8.0", "7.5", "ampere+", False),
    ("unknown", "9.0", "none", True),  # the build host's GPU could not be probed
])
def test_gpu_rule(built, here, level, ok):
    assert gpu_compatible(built, here, level) is ok


def test_incompatible_engine_says_what_and_how_to_rebuild():
    m = EngineManifest.from_dict(RECORDED)
    check_compatible(m, MachineInfo(tensorrt="10.3.0.26", compute_capability="9.0", gpu_name="NVIDIA H100 80GB HBM3"))
    check_compatible(m, MachineInfo())  # nothing known: nothing judged
    with pytest.raises(IncompatibleEngineError) as info:
        check_compatible(m, MachineInfo(tensorrt="11.1.0.5", compute_capability="8.9", gpu_name="NVIDIA L4"),
                         engine="/srv/resnet50.fp16.engine")
    msg = str(info.value)
    assert msg.startswith("this engine was built with TensorRT 10.3.0.26 for compute capability 9.0 "
                          "(NVIDIA H100 80GB HBM3); this machine has TensorRT 11.1.0.5 and compute capability 8.9 "
                          "(NVIDIA L4): rebuild with `resnet-deploy build exports/resnet50/resnet50.fp16.onnx "
                          "--output /srv/resnet50.fp16.engine --min-shape 1x3x128x128 --opt-shape 8x3x224x224 "
                          "--max-shape 32x3x512x512 --workspace 4.0 --opt-level 3 --timing-cache trt.cache`")
    ampere = EngineManifest.from_dict({**RECORDED, "hardware_compatibility": "ampere+", "version_compatible": True})
    check_compatible(ampere, MachineInfo(tensorrt="10.8.0.43", compute_capability="8.6"))
    assert "--version-compatible --hardware-compatibility ampere+" in rebuild_command(ampere)


# -- building against the fake TensorRT -------------------------------------------------------------

def test_build_writes_engine_manifest_and_timing_cache(monkeypatch, tmp_path, onnx_model):
    trt, _ = fakes.install(monkeypatch)
    cache = tmp_path / "timing.cache"
    cfg = BuildConfig(profiles=TINY.profiles, workspace_gib=1.5, opt_level=2, timing_cache=cache,
                      hardware_compatibility="ampere+", profile_copies=2, tf32=False)
    first = build_engine(onnx_model, tmp_path / "tiny.fp16.engine", cfg)
    config = trt.built_configs[-1]
    assert trt.built_configs and config.pool == {trt.MemoryPoolType.WORKSPACE: int(1.5 * 2**30)}
    assert config.builder_optimization_level == 2
    assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert trt.BuilderFlag.TF32 not in config.flags and len(config.profiles) == 2
    assert [p._shapes["input"] for p in config.profiles] == [((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 96))] * 2
    m = read_manifest(first.engine)
    assert m.precision == "fp16" and m.tensorrt == trt.__version__ and m.compute_capability == "9.0"
    assert m.gpu_name == "Fake H200" and m.cuda_driver == "12.8" and m.hardware_compatibility == "ampere+"
    assert m.flags["strongly_typed"] is True and m.flags["profile_copies"] == 2
    assert m.inputs == [{"name": "input", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    assert m.metadata["variant"] == "resnet18" and m.metadata["preprocessing"]["crop_size"] == 224
    assert len(m.onnx_sha256) == 64 and len(m.profiles) == 2
    assert cache.is_file() and not first.timing_cache_loaded
    second = build_engine(onnx_model, tmp_path / "again.engine", cfg)
    assert second.timing_cache_loaded
    assert len(json.loads(cache.read_text())) == 2  # the rebuild started from the saved entries


def test_timing_cache_from_another_gpu_is_not_used(monkeypatch, tmp_path, onnx_model):
    fakes.install(monkeypatch)
    cache = tmp_path / "timing.cache"
    cache.write_text(json.dumps([{"gpu": "NVIDIA A10"}]))
    result = build_engine(onnx_model, tmp_path / "e.engine", BuildConfig(profiles=TINY.profiles, timing_cache=cache))
    assert not result.timing_cache_loaded
    assert json.loads(cache.read_text()) == [{"gpu": "Fake H200", "layer": 0}]


def test_parse_errors_name_the_onnx_node(monkeypatch, tmp_path, onnx_model):
    fakes.install(monkeypatch, unsupported=("Flatten",))
    with pytest.raises(UsageError, match=r"cannot parse .*node '/Flatten' \(Flatten\): no importer for op Flatten"):
        build_engine(onnx_model, tmp_path / "e.engine", TINY)
    assert not (tmp_path / "e.engine").exists()


def test_profiles_are_validated_before_tensorrt_is_touched(tmp_path, onnx_model):
    bad = BuildConfig(profiles=(Profile((4, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224)),))
    with pytest.raises(UsageError, match="batch must satisfy min <= opt <= max, got 4, 1, 8"):
        build_engine(onnx_model, tmp_path / "e.engine", bad)


def test_no_cuda_device_is_said_plainly(monkeypatch, tmp_path, onnx_model):
    fakes.install(monkeypatch, usable=False)
    with pytest.raises(UsageError, match="cannot create a builder: no usable CUDA device"):
        build_engine(onnx_model, tmp_path / "e.engine", TINY)
    ok, reason = tensorrt_usable()
    assert not ok and "no usable CUDA device" in reason


def test_tensorrt_usable_with_a_device(monkeypatch):
    fakes.install(monkeypatch)
    ok, reason = tensorrt_usable()
    trt = sys.modules["tensorrt"]
    assert ok and reason == f"TensorRT {trt.__version__} on Fake H200 (compute capability 9.0, fake-cuda)"
    ok, reason = tensorrt_usable(device=1)
    assert not ok and "CUDA reports 1 device(s), device 1 was asked for" in reason


# -- loading -----------------------------------------------------------------------------------------

def test_built_engine_loads_and_runs(monkeypatch, tmp_path, onnx_model):
    fakes.install(monkeypatch)
    engine = build_engine(onnx_model, tmp_path / "tiny.fp16.engine", TINY).engine
    with load_runner(engine, device="cuda:0") as runner:
        assert isinstance(runner, TensorRTRunner)
        assert runner.info.precision == "fp16" and runner.info.details["gpu"] == "Fake H200"
        x = np.random.default_rng(0).standard_normal((3, 3, 40, 72)).astype(np.float32)
        np.testing.assert_allclose(runner.infer(x), fakes.expected_logits(x, classes=3), rtol=1e-5, atol=1e-5)


def test_incompatible_engine_is_refused_before_deserializing(monkeypatch, tmp_path, onnx_model):
    fakes.install(monkeypatch, cuda=fakes.FakeCuda(cc=(8, 9), gpu="NVIDIA L4"), version="11.1.0.5")
    engine = tmp_path / "resnet50.fp16.engine"
    engine.write_bytes(b"FAKEPLAN{}")
    EngineManifest.from_dict(RECORDED).save(engine)
    with pytest.raises(IncompatibleEngineError, match=r"built with TensorRT 10.3.0.26 for compute capability 9.0 .*"
                                                      r"this machine has TensorRT 11.1.0.5 and compute capability 8.9"):
        TensorRTRunner(engine)


def test_corrupt_engine(monkeypatch, tmp_path, onnx_model):
    fakes.install(monkeypatch)
    engine = build_engine(onnx_model, tmp_path / "tiny.fp16.engine", TINY).engine
    engine.write_bytes(b"\x00garbage")
    with pytest.raises(UsageError, match=r"cannot deserialize .*magic tag.*the file is corrupt .*rebuild with "
                                         r"`resnet-deploy build .*tiny.fp16.onnx"):
        TensorRTRunner(engine)
    engine.write_bytes(b"")
    with pytest.raises(UsageError, match="is empty"):
        TensorRTRunner(engine)


def test_runner_without_a_gpu(monkeypatch, tmp_path):
    fakes.install(monkeypatch, cuda=fakes.FakeCuda(devices=0))
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"FAKEPLAN{}")
    with pytest.raises(UsageError, match=r"on cuda:0: CUDA reports 0 device\(s\)"):
        TensorRTRunner(engine)


def test_missing_tensorrt_names_the_package(monkeypatch, tmp_path, onnx_model):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(MissingDependencyError, match=r"needs the 'tensorrt' package.*resnet-deploy\[tensorrt-cu12\].*tensorrt-cu13"):
        TensorRTRunner(engine)
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        build_engine(onnx_model, tmp_path / "e.engine", TINY)
    ok, reason = tensorrt_usable()
    assert not ok and reason.startswith("TensorRT is not installed (pip install 'resnet-deploy[tensorrt-cu12]' or")


def test_cli_build_without_tensorrt_exits_2(monkeypatch, tmp_path, onnx_model, capsys):
    from resnet_deploy.cli.main import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["build", str(onnx_model), "--output", str(tmp_path / "e.engine")]) == 2
    assert "cannot build a TensorRT engine on this machine: TensorRT is not installed" in capsys.readouterr().err


def test_cli_build_with_fake_tensorrt(monkeypatch, tmp_path, onnx_model, capsys):
    from resnet_deploy.cli.main import main

    fakes.install(monkeypatch)
    out = tmp_path / "e.engine"
    rc = main(["build", str(onnx_model), "--output", str(out), "--min-shape", "1x3x32x32", "--opt-shape",
               "2x3x64x64", "--max-shape", "4x3x96x96", "--opt-level", "1", "--version-compatible"])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"engine:    {out}" in text and "profile 0: min 1x3x32x32, opt 2x3x64x64, max 4x3x96x96" in text
    assert read_manifest(out).version_compatible and read_manifest(out).flags["opt_level"] == 1


def test_export_engine_stage_builds_checks_and_records(monkeypatch, tmp_path, onnx_model):
    """``resnet-export --fp16`` on a GPU host: the export's engine stage builds the engine from the FP16 ONNX, checks
    it against the FP32 ONNX (ONNX Runtime) at min/opt/max/off-grid, and records both in manifest.json."""
    from resnet_deploy.export import ExportConfig, Manifest
    from resnet_deploy.export.pipeline import ExportResult, engine_stage

    fakes.install(monkeypatch)
    out = tmp_path / "export"
    out.mkdir()
    fp16 = out / "tiny.fp16.onnx"
    fp16.write_bytes(onnx_model.read_bytes())  # GlobalAveragePool: the fake engine computes exactly this
    result = ExportResult(output_dir=out, manifest=Manifest(out), artifacts={"fp32": onnx_model, "fp16": fp16})
    cfg = ExportConfig(variant="18", fp16=True, engine="always",
                       engine_options={"min_shapes": ["1x3x32x32"], "opt_shapes": ["2x3x64x64"],
                                       "max_shapes": ["3x3x80x80"]})
    timings: dict[str, float] = {}
    engine_stage(cfg, result, timings)
    engine = out / "tiny.fp16.engine"
    assert result.artifacts["engine.fp16"] == engine and engine.is_file()
    report = result.parity["engine.fp16"]
    assert report.passed, report.table()
    assert [tuple(m.shape) for m in report.results] == [(1, 3, 32, 32), (2, 3, 64, 64), (3, 3, 80, 80),
                                                        (2, 3, 57, 57)]
    saved = json.loads(result.manifest.path.read_text())
    entry = [a for a in saved["artifacts"] if a["role"] == "engine"][0]
    assert entry["path"] == "tiny.fp16.engine" and entry["engine_manifest"] == "tiny.fp16.engine.json"
    assert saved["parity"]["engine.fp16"]["passed"] and saved["engine"] == {"built": True,
                                                                             "engines": {"fp16": "tiny.fp16.engine"}}
    assert read_manifest(engine).parity["passed"] and any("build TensorRT fp16" in k for k in timings)


def test_export_engine_stage_without_an_engine_source(monkeypatch, tmp_path, onnx_model):
    """INT8 for ONNX Runtime only leaves nothing for TensorRT: `auto` notes it, `always` is an error."""
    from resnet_deploy.errors import UsageError
    from resnet_deploy.export import ExportConfig, Manifest
    from resnet_deploy.export.pipeline import ExportResult, engine_stage

    fakes.install(monkeypatch)
    out = tmp_path / "export"
    out.mkdir()
    artifacts = {"fp32": onnx_model, "int8.onnxruntime": onnx_model}
    result = ExportResult(output_dir=out, manifest=Manifest(out), artifacts=dict(artifacts))
    engine_stage(ExportConfig(variant="18", int8=True, engine="auto"), result, {})
    assert result.notes == ["no TensorRT engine built: no FP16 or TensorRT-flavour INT8 ONNX to build from "
                            "(add --fp16 or --int8-target tensorrt)"]
    assert result.manifest.data["engine"]["built"] is False and set(result.artifacts) == set(artifacts)
    with pytest.raises(UsageError, match="--engine always: no FP16 or TensorRT-flavour INT8 ONNX"):
        engine_stage(ExportConfig(variant="18", int8=True, engine="always"), result, {})
