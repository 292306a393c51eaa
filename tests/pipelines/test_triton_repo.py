"""``triton-repo``: config.pbtxt generation checked against Triton's own schema, entries, names,
missing artifacts, atomic writes; and the Python-backend request handler without a server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.errors import UsageError
from resnet_deploy.pipelines.triton import config as tconfig
from resnet_deploy.pipelines.triton.repository import (RepositoryConfig, build_repository, list_models,
                                                       write_repository)

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient for Triton's config schema")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

CROP = 32


def _tiny_onnx(path: Path, crop: int = CROP, dim_name: str = "embedding") -> Path:
    """A model with the toolkit's I/O contract (input NCHW dynamic, output (N, 3)), instant to build:
    global average pooling, so its rows are the per-channel means of the preprocessed picture."""
    import onnx
    from onnx import TensorProto, helper

    from resnet_deploy.artifacts import metadata_props
    from resnet_deploy.models.transforms import Preprocessing

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    out = helper.make_tensor_value_info(dim_name, TensorProto.FLOAT, ["batch", 3])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [0, 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Reshape", ["pooled", "shape"], [dim_name])]
    graph = helper.make_graph(nodes, "tiny", [inp], [out], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    prep = Preprocessing(resize_size=crop + 8, crop_size=crop)
    meta = {"variant": "tiny", "head": "embedding" if dim_name == "embedding" else "logits", "output_dim": 3,
            "preprocessing": prep.to_dict()}
    for k, v in metadata_props(meta).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _export_dir(root: Path, engines: dict[str, dict] | None = None) -> Path:
    """An export directory: manifest.json + tiny.onnx (+ fake engines with their manifests)."""
    root.mkdir(parents=True, exist_ok=True)
    _tiny_onnx(root / "tiny.onnx")
    artifacts = [{"path": "tiny.onnx", "precision": "fp32", "backend": "onnxruntime", "role": "model"}]
    for name, man in (engines or {}).items():
        (root / name).write_bytes(b"not a real engine " + name.encode())
        (root / (name + ".json")).write_text(json.dumps(man))
        artifacts.append({"path": name, "precision": man.get("precision", "fp16"), "backend": "tensorrt"})
    (root / "manifest.json").write_text(json.dumps({"variant": "tiny", "artifacts": artifacts}))
    return root


def _engine_manifest(cc: str, lo=(1, 3, 224, 224), opt=(8, 3, 224, 224), hi=(16, 3, 224, 224)) -> dict:
    return {"precision": "fp16", "tensorrt": "10.7.0", "compute_capability": cc,
            "profiles": [{"min": list(lo), "opt": list(opt), "max": list(hi)}],
            "metadata": {"head": "embedding", "output_dim": 3}}


def _parse(entry_dir: Path):
    return text_format.Parse((entry_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.fixture()
def export_dir(tmp_path):
    return _export_dir(tmp_path / "export", {"tiny.sm80.engine": _engine_manifest("8.0"),
                                             "tiny.sm90.engine": _engine_manifest("9.0")})


def test_every_entry_parses_with_tritons_schema(export_dir, tmp_path):
    repo = tmp_path / "repo"
    result = write_repository(export_dir, repo, max_batch_size=32, instances=2)
    assert result.schema_checked
    kinds = {e.kind: e.name for e in result.entries}
    assert set(kinds) == {"onnxruntime", "openvino", "tensorrt", "python", "bytes"}
    assert sorted(p.name for p in repo.iterdir()) == sorted(kinds.values())

    ort = _parse(repo / kinds["onnxruntime"])
    assert ort.name == kinds["onnxruntime"] and ort.platform == "onnxruntime_onnx"
    assert list(ort.input[0].dims) == [3, -1, -1] and ort.input[0].data_type == model_config_pb2.TYPE_FP32
    assert ort.output[0].name == "embedding" and list(ort.output[0].dims) == [3]
    assert list(ort.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert ort.dynamic_batching.max_queue_delay_microseconds == 500
    assert ort.instance_group[0].count == 2 and ort.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert list(ort.model_warmup[0].inputs["input"].dims) == [3, CROP, CROP]
    assert (repo / kinds["onnxruntime"] / "1" / "model.onnx").read_bytes() == (export_dir / "tiny.onnx").read_bytes()

    ov = _parse(repo / kinds["openvino"])
    assert ov.backend == "openvino" and ov.default_model_filename == "model.onnx"

    trt = _parse(repo / kinds["tensorrt"])
    assert trt.platform == "tensorrt_plan"
    assert dict(trt.cc_model_filenames) == {"8.0": "model.sm80.plan", "9.0": "model.sm90.plan"}
    for cc, fname in trt.cc_model_filenames.items():
        assert (repo / kinds["tensorrt"] / "1" / fname).read_bytes().endswith(f"sm{cc.replace('.', '')}.engine".encode())
    assert list(trt.input[0].dims) == [3, 224, 224]  # fixed by the profile
    assert trt.max_batch_size == 16  # the profile's maximum batch, below --max-batch-size
    assert trt.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert max(trt.dynamic_batching.preferred_batch_size) <= 16

    py = _parse(repo / kinds["python"])
    assert py.backend == "python" and py.parameters["input_kind"].string_value == "tensor"
    assert (repo / kinds["python"] / "1" / "model.py").is_file()

    by = _parse(repo / kinds["bytes"])
    assert by.input[0].data_type == model_config_pb2.TYPE_STRING and list(by.input[0].dims) == [1]
    assert by.parameters["input_kind"].string_value == "bytes"
    assert by.output[0].data_type == model_config_pb2.TYPE_FP32

    models = {m["name"]: m["servable"] for m in list_models(repo)}
    assert models == {kinds["onnxruntime"]: False, kinds["openvino"]: False, kinds["tensorrt"]: False,
                      kinds["python"]: True, kinds["bytes"]: True}


def test_dynamic_engine_profile_gives_dynamic_dims(tmp_path):
    export = _export_dir(tmp_path / "e", {"tiny.engine": _engine_manifest("8.9", lo=(1, 3, 128, 128),
                                                                          opt=(4, 3, 224, 224), hi=(8, 3, 512, 512))})
    result = write_repository(export, tmp_path / "repo", entries=("tensorrt",), max_batch_size=32)
    trt = _parse(tmp_path / "repo" / result.entries[0].name)
    assert list(trt.input[0].dims) == [3, -1, -1]
    assert trt.max_batch_size == 8
    assert list(trt.model_warmup[0].inputs["input"].dims) == [3, 224, 224]  # the profile's opt shape


def test_rendered_config_round_trips_through_the_schema():
    mc = tconfig.ModelConfig(name="m", backend="python",
                             inputs=[tconfig.TensorConfig("image", "TYPE_STRING", (1,))],
                             outputs=[tconfig.TensorConfig("embedding", "TYPE_FP32", (2048,))],
                             max_batch_size=4, parameters={"quote": 'a "b" \\ c'},
                             dynamic_batching=tconfig.DynamicBatching(tconfig.preferred_batch_sizes(4), 100))
    parsed = tconfig.validate_config(mc.render(), expected_name="m")
    assert parsed.parameters["quote"].string_value == 'a "b" \\ c'
    assert list(parsed.output[0].dims) == [2048]
    assert list(parsed.dynamic_batching.preferred_batch_size) == [1, 2, 4]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 100


@pytest.mark.parametrize("text, match", [
    ('name: "m"\nplatfrom: "onnxruntime_onnx"\n', "schema"),
    ('name: "m"\nbackend: "python"\ninput { name: "x" data_type: TYPE_FLOAT32 dims: [1] }\n', "schema"),
    ('name: "other"\nbackend: "python"\nmax_batch_size: 1\ninput { name: "x" data_type: TYPE_FP32 dims: [1] }\n'
     'output { name: "y" data_type: TYPE_FP32 dims: [1] }\n', "differs from its directory"),
    ('name: "m"\nbackend: "python"\nmax_batch_size: 4\ninput { name: "x" data_type: TYPE_FP32 dims: [1] }\n'
     'output { name: "y" data_type: TYPE_FP32 dims: [1] }\ndynamic_batching { preferred_batch_size: [8] }\n',
     "outside 1..4"),
])
def test_schema_check_rejects_what_triton_would(text, match):
    with pytest.raises(UsageError, match=match):
        tconfig.validate_config(text, expected_name="m")


@pytest.mark.parametrize("name", ["", "a b", "a/b", "..", ".hidden", "-x", "naïve", "x" * 200])
def test_model_names_triton_rejects(export_dir, tmp_path, name):
    with pytest.raises(UsageError, match="name"):
        write_repository(export_dir, tmp_path / "repo", name=name)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("name", ["resnet50", "ResNet-50.v2", "_x"])
def test_model_names_triton_accepts(name):
    assert tconfig.validate_model_name(name) == name


def test_missing_artifacts(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        write_repository(tmp_path / "nope", tmp_path / "repo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="nothing to serve"):
        write_repository(tmp_path / "empty", tmp_path / "repo")
    onnx_only = _export_dir(tmp_path / "onnx_only")
    with pytest.raises(UsageError, match="resnet-deploy build"):
        write_repository(onnx_only, tmp_path / "repo", entries=("tensorrt",))
    with pytest.raises(UsageError, match="no fp16 ONNX"):
        write_repository(onnx_only, tmp_path / "repo", entries=("onnxruntime",), precision="fp16")
    with pytest.raises(UsageError, match="unknown entry kind 'onnx'"):
        write_repository(onnx_only, tmp_path / "repo", entries=("onnx",))
    assert not (tmp_path / "repo").exists()
    # by default the entries it cannot write are reported, the others written
    result = write_repository(onnx_only, tmp_path / "repo")
    assert "tensorrt" in result.skipped and "resnet-deploy build" in result.skipped["tensorrt"]
    assert len(result.entries) == 4


def test_existing_entries_need_force_and_other_models_are_kept(export_dir, tmp_path):
    repo = tmp_path / "repo"
    first = write_repository(export_dir, repo, entries=("python",))
    entry = repo / first.entries[0].name
    (repo / "someone_else").mkdir()
    (repo / "someone_else" / "config.pbtxt").write_text('name: "someone_else"\n')
    with pytest.raises(UsageError, match="--force"):
        write_repository(export_dir, repo, entries=("python",), max_batch_size=4)
    assert _parse(entry).max_batch_size == 32  # untouched
    write_repository(export_dir, repo, entries=("python",), max_batch_size=4, force=True)
    assert _parse(entry).max_batch_size == 4
    assert (repo / "someone_else" / "config.pbtxt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.")]  # no staging left


def test_a_failure_midway_leaves_nothing_behind(export_dir, tmp_path, monkeypatch):
    from resnet_deploy.pipelines.triton import repository

    real = repository._write_entry
    calls = []

    def failing(staging, kind, *args, **kwargs):
        calls.append(kind)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(staging, kind, *args, **kwargs)

    monkeypatch.setattr(repository, "_write_entry", failing)
    with pytest.raises(OSError, match="disk full"):
        build_repository(RepositoryConfig(export_dir=export_dir, output=tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_cli_triton_repo(export_dir, tmp_path, capsys):
    from resnet_deploy.cli.main import main

    assert main(["triton-repo", str(export_dir), "--output", str(tmp_path / "repo"), "--name", "tiny",
                 "--max-batch-size", "8", "--instances", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny_bytes" in out and "checked against Triton's schema" in out and "docker run" in out
    assert main(["triton-repo", str(export_dir), "--output", str(tmp_path / "repo2"), "--name", "a b"]) == 2
    assert "not valid for Triton" in capsys.readouterr().err
    assert main(["triton-repo", str(tmp_path / "missing"), "--output", str(tmp_path / "repo3")]) == 2


# -- the Python-backend handler, without a server ---------------------------------------------------

def _png(rgb: tuple[int, int, int], size=(40, 50)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def tiny_handler(tmp_path):
    from resnet_deploy.pipelines.triton.handler import HandlerConfig, RequestHandler

    version = tmp_path / "entry" / "1"
    version.mkdir(parents=True)
    _tiny_onnx(version / "model.onnx")
    params = {"artifact": "model.onnx", "input_kind": "bytes", "runner_backend": "onnxruntime", "head": "embedding",
              "batch_size": "4", "warmup": "true"}
    handler = RequestHandler(HandlerConfig.from_parameters(params, version))
    yield handler
    handler.close()


def test_bytes_handler_answers_each_request_and_fails_bad_ones_alone(tiny_handler):
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    requests = [np.array([[red]], dtype=object), np.array([[b"not an image"]], dtype=object),
                np.array([[blue], [red]], dtype=object), np.array([[b""]], dtype=object)]
    results = tiny_handler.handle(requests)
    assert isinstance(results[1], UsageError) and "image 0" in str(results[1])
    assert isinstance(results[3], UsageError)
    expected = tiny_handler.model.run([red, blue])  # the Embedder itself: decode + preprocess + infer
    np.testing.assert_allclose(results[0], expected[:1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(results[2], expected[[1, 0]], rtol=0, atol=1e-6)
    # global average pooling of a red picture: channel means are the normalized red, green, blue values
    assert results[0][0, 0] > 2.0 and results[0][0, 1] < -1.5


def test_tensor_handler_groups_requests_by_shape(tmp_path):
    from resnet_deploy.pipelines.triton.handler import HandlerConfig, RequestHandler

    version = tmp_path / "1"
    version.mkdir()
    _tiny_onnx(version / "model.onnx")
    cfg = HandlerConfig.from_parameters({"input_kind": "tensor", "runner_backend": "onnxruntime"}, version)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 32, 32), dtype=np.float32)
    b = rng.standard_normal((1, 3, 48, 40), dtype=np.float32)
    c = rng.standard_normal((1, 3, 32, 32), dtype=np.float32)
    bad = rng.standard_normal((1, 4, 32, 32), dtype=np.float32)
    with RequestHandler(cfg) as h:
        results = h.handle([a, b, c, bad])
    for arr, res in zip((a, b, c), results[:3]):
        np.testing.assert_allclose(res, arr.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert isinstance(results[3], UsageError) and "channels must be 3" in str(results[3])


def test_handler_parameters_are_checked(tmp_path):
    from resnet_deploy.pipelines.triton.handler import HandlerConfig

    with pytest.raises(UsageError, match="missing from the repository entry"):
        HandlerConfig.from_parameters({"artifact": "model.onnx"}, tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(UsageError, match="input_kind"):
        HandlerConfig.from_parameters({"input_kind": "jpeg"}, tmp_path)
    cfg = HandlerConfig.from_parameters({"device": "cuda"}, tmp_path, device_id=1)
    assert cfg.device == "cuda:1"


# -- bounds, integrity and messages (issue 11) -------------------------------------------------------

def _tensor_handler(tmp_path, **params):
    from resnet_deploy.pipelines.triton.handler import HandlerConfig, RequestHandler

    version = tmp_path / "1"
    version.mkdir(exist_ok=True)
    _tiny_onnx(version / "model.onnx")
    base = {"input_kind": "tensor", "runner_backend": "onnxruntime", "batch_size": "4"}
    return RequestHandler(HandlerConfig.from_parameters({**base, **params}, version))


def test_tensor_handler_refuses_sizes_outside_its_bounds_before_running(tmp_path, monkeypatch):
    h = _tensor_handler(tmp_path, max_height="96", max_width="128", max_request_bytes=str(3 * 64 * 64 * 4 * 8))
    calls: list[tuple[int, ...]] = []
    real = h.model.run_batch
    monkeypatch.setattr(h.model, "run_batch", lambda b: calls.append(b.shape) or real(b))
    rng = np.random.default_rng(0)
    ok = rng.standard_normal((1, 3, 32, 32), dtype=np.float32)
    edge = rng.standard_normal((1, 3, 96, 128), dtype=np.float32)
    requests = [np.zeros((1, 3, 1, 1), np.float32), np.zeros((1, 3, 16, 64), np.float32), ok,
                np.zeros((1, 3, 97, 64), np.float32), np.zeros((1, 3, 64, 129), np.float32),
                np.zeros((9, 3, 64, 64), np.float32), edge]
    results = h.handle(requests)
    for i in (0, 1, 3, 4):
        assert isinstance(results[i], UsageError) and "height and width must be within 32..96" in str(results[i])
    assert "1x1" in str(results[0]) and "97x64" in str(results[3])
    assert isinstance(results[5], UsageError) and "max_request_bytes" in str(results[5])
    np.testing.assert_allclose(results[2], ok.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[6], edge.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert sorted(calls) == [(1, 3, 32, 32), (1, 3, 96, 128)]  # nothing refused reached the runner
    h.close()


def test_large_tensors_run_in_fewer_rows_per_call(tmp_path, monkeypatch):
    h = _tensor_handler(tmp_path)  # batch 4 at crop 32: 4096 pixels per call
    calls: list[int] = []
    real = h.model.run_batch
    monkeypatch.setattr(h.model, "run_batch", lambda b: calls.append(len(b)) or real(b))
    x = np.random.default_rng(1).standard_normal((5, 3, 64, 64), dtype=np.float32)
    small = np.random.default_rng(2).standard_normal((6, 3, 32, 32), dtype=np.float32)
    big_out, small_out = h.handle([x, small])
    np.testing.assert_allclose(big_out, x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small_out, small.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert calls == [1, 1, 1, 1, 1, 4, 2]  # 64x64 is 4 crops: one row per call; 32x32: full batches
    h.close()


def test_bytes_handler_bounds_request_bytes_and_decoded_pixels(tmp_path):
    from resnet_deploy.pipelines.triton.handler import HandlerConfig, RequestHandler

    version = tmp_path / "1"
    version.mkdir()
    _tiny_onnx(version / "model.onnx")
    red = _png((255, 0, 0))
    params = {"input_kind": "bytes", "runner_backend": "onnxruntime", "max_request_bytes": str(3 * len(red)),
              "max_image_pixels": "1999"}
    with RequestHandler(HandlerConfig.from_parameters(params, version)) as h:
        small = _png((0, 0, 255), size=(40, 40))
        results = h.handle([np.array([[red]] * 4, dtype=object), np.array([[red]], dtype=object),
                            np.array([[small]], dtype=object)])
    assert isinstance(results[0], UsageError) and "max_request_bytes" in str(results[0])
    assert isinstance(results[1], UsageError) and "40x50 (0.0 MP), over the decode limit of 0.0 MP" in str(results[1])
    assert results[2].shape == (1, 3)


def test_handler_verifies_the_model_file_and_keeps_inside_the_entry(tmp_path):
    from resnet_deploy._io import sha256_file
    from resnet_deploy.pipelines.triton.handler import HandlerConfig

    version = tmp_path / "entry" / "1"
    version.mkdir(parents=True)
    _tiny_onnx(version / "model.onnx")
    good = sha256_file(version / "model.onnx")
    assert HandlerConfig.from_parameters({"artifact_sha256": good}, version).artifact == version / "model.onnx"
    with pytest.raises(UsageError, match=f"sha256 {good}, config.pbtxt records {'0' * 64}"):
        HandlerConfig.from_parameters({"artifact_sha256": "0" * 64}, version)
    _tiny_onnx(tmp_path / "outside.onnx")
    for name in ("../../outside.onnx", str(tmp_path / "outside.onnx")):
        with pytest.raises(UsageError, match="outside|absolute"):
            HandlerConfig.from_parameters({"artifact": name}, version)
    (version / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(UsageError, match="resolves outside"):
        HandlerConfig.from_parameters({"artifact": "link.onnx"}, version)
    for key, bad in (("max_height", "0"), ("max_request_bytes", "lots")):
        with pytest.raises(UsageError, match=f"parameter {key} must be a positive integer"):
            HandlerConfig.from_parameters({key: bad}, version)


def test_repository_records_the_sha256_and_the_bounds(tmp_path):
    from resnet_deploy._io import sha256_file

    export = _export_dir(tmp_path / "export")
    result = write_repository(export, tmp_path / "repo", entries=("python", "bytes"), max_side=512,
                              max_request_bytes=1 << 20, max_image_pixels=10_000_000)
    kinds = {e.kind: tmp_path / "repo" / e.name for e in result.entries}
    digest = sha256_file(export / "tiny.onnx")
    py, by = _parse(kinds["python"]), _parse(kinds["bytes"])
    assert py.parameters["artifact_sha256"].string_value == digest == by.parameters["artifact_sha256"].string_value
    assert py.parameters["max_height"].string_value == py.parameters["max_width"].string_value == "512"
    assert py.parameters["max_request_bytes"].string_value == str(1 << 20)
    assert by.parameters["max_image_pixels"].string_value == "10000000"
    assert json.loads((kinds["python"] / "resnet_deploy.json").read_text())["sha256"] == digest
    # the handler refuses the entry once its model file is replaced
    from resnet_deploy.pipelines.triton.handler import HandlerConfig

    model = kinds["python"] / "1" / "model.onnx"
    model.unlink()  # a hard link to the export: replace, do not edit the shared inode
    _tiny_onnx(model, crop=48)
    params = {k: v.string_value for k, v in py.parameters.items()}
    with pytest.raises(UsageError, match="does not match its entry"):
        HandlerConfig.from_parameters(params, model.parent)


def test_default_bounds_and_tiny_max_side(tmp_path):
    export = _export_dir(tmp_path / "export")
    result = write_repository(export, tmp_path / "repo", entries=("python",))
    py = _parse(tmp_path / "repo" / result.entries[0].name)
    assert py.parameters["max_height"].string_value == "1024"
    assert py.parameters["max_request_bytes"].string_value == str(64 << 20)
    with pytest.raises(UsageError, match="--max-side must be >= 32"):
        write_repository(export, tmp_path / "repo2", entries=("python",), max_side=8)


@pytest.mark.parametrize("flag, value", [("--precision", "../../x"), ("--precision", "fp64"),
                                         ("--trt-precision", "../x")])
def test_unknown_precision_is_named(export_dir, tmp_path, capsys, flag, value):
    from resnet_deploy.cli.main import main

    assert main(["triton-repo", str(export_dir), "--output", str(tmp_path / "repo"), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"unknown {flag} '{value}'; choose one of: fp32, fp16, bf16, int8" in err
    assert "export first" not in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()


# -- triton-serve options, without starting a server ------------------------------------------------

@pytest.mark.parametrize("host, match", [("not a host", "is not an IP address"),
                                         ("localhost", r"not an IP address \(for loopback pass 127.0.0.1\)"),
                                         ("203.0.113.7", "is not an address of this machine"),
                                         ("999.1.1.1", "is not an IP address")])
def test_serve_host_is_checked_with_a_clear_message(tmp_path, capsys, host, match):
    from resnet_deploy.cli.main import main

    (tmp_path / "repo").mkdir()
    assert main(["triton-serve", str(tmp_path / "repo"), "--host", host, "--no-metrics"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--host" in err
    import re

    assert re.search(match, err), err
    assert "choose other ports" not in err


def test_exposure_warning_names_what_is_exposed():
    from resnet_deploy.pipelines.triton.server import exposure_warning

    ports = {"HTTP": 8000, "gRPC": 8001, "metrics": None}
    assert exposure_warning("127.0.0.1", ports, False) is None
    assert exposure_warning("::1", ports, False) is None
    text = exposure_warning("0.0.0.0", ports, False)
    assert "0.0.0.0 is not loopback" in text and "inference, health, metadata and statistics" in text
    assert "HTTP port 8000, gRPC port 8001" in text and "metrics" not in text and "model control" not in text
    opened = exposure_warning("0.0.0.0", ports, True)
    assert "model control" in opened and "run code" in opened
    assert "every process on this machine" in exposure_warning("127.0.0.1", ports, True)


def test_server_command_is_locked_by_default(tmp_path):
    """The command line: model control off, admin APIs restricted with a secret that is not logged."""
    from resnet_deploy.pipelines.triton import server as tserver

    dist = tserver.TritonDistribution(Path("/bin/tritonserver"), tmp_path, tmp_path, tmp_path, "3.11")
    srv = tserver.TritonServer(tserver.ServerConfig(tmp_path, http_port=1, grpc_port=2, metrics_port=None))
    srv.models = ["m"]
    cmd = srv._command(dist, tmp_path)
    assert "--model-control-mode=none" in cmd and f"--model-repository={tmp_path / 'models'}" in cmd
    assert not any(a.startswith("--load-model") for a in cmd)
    for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
        value = next(a for a in cmd if a.startswith(flag))[len(flag):]
        apis, key = value.split(":", 1)
        assert apis.split(",") == ["model-repository", "model-config", "shared-memory", "trace", "logging"]
        assert key.startswith(tserver.ADMIN_HEADER + "=") and len(key.split("=", 1)[1]) >= 32
    opened = tserver.TritonServer(tserver.ServerConfig(tmp_path, http_port=1, grpc_port=2, metrics_port=None,
                                                       allow_model_control=True))
    opened.models = ["m"]
    cmd = opened._command(dist, tmp_path)
    assert "--model-control-mode=explicit" in cmd and "--load-model=m" in cmd
    assert next(a for a in cmd if a.startswith("--http-restricted-api=")).split("=", 1)[1].startswith(
        "shared-memory,trace,logging:")
