"""``resnet-deploy build`` into an export directory keeps its manifest true: the entry of an engine it
replaces is dropped before the engine is written, and the new engine is listed with its sha256
(against the fake TensorRT of tests/runtime/tensorrt_fakes.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

import tensorrt_fakes as fakes  # noqa: E402 - registered by tests/runtime/conftest.py
from resnet_deploy.cli.main import main
from resnet_deploy.export.manifest import Manifest

PROFILE = ["--min-shape", "1x3x32x32", "--opt-shape", "2x3x64x64", "--max-shape", "4x3x96x96"]


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture()
def export_dir(tmp_path):
    """An export directory: a small ONNX and an old engine, both in manifest.json."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
                               helper.make_node("Flatten", ["pooled"], ["logits"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="precision", value="fp16")
    onnx.save(model, str(tmp_path / "tiny.fp16.onnx"))
    (tmp_path / "tiny.fp16.engine").write_bytes(b"an engine of the previous export")
    manifest = Manifest(tmp_path)
    manifest.add_artifact(tmp_path / "tiny.fp16.onnx", precision="fp16", backend="tensorrt")
    manifest.add_artifact(tmp_path / "tiny.fp16.engine", precision="fp16", backend="tensorrt", role="engine")
    manifest.data["parity"]["engine.fp16"] = {"passed": True}
    manifest.save()
    return tmp_path


def listed(d) -> dict[str, str]:
    data = json.loads((d / "manifest.json").read_text())
    return {a["path"]: a["sha256"] for a in data["artifacts"]}


def test_build_lists_the_new_engine(monkeypatch, export_dir):
    fakes.install(monkeypatch)
    engine = export_dir / "tiny.fp16.engine"
    assert main(["build", str(export_dir / "tiny.fp16.onnx"), "--output", str(engine), *PROFILE]) == 0
    assert listed(export_dir)["tiny.fp16.engine"] == _sha(engine) != hashlib.sha256(b"an engine").hexdigest()
    assert all(_sha(export_dir / p) == s for p, s in listed(export_dir).items())


def test_interrupted_build_leaves_no_stale_entry(monkeypatch, export_dir):
    fakes.install(monkeypatch)
    import resnet_deploy.runtime.tensorrt as trt

    def killed(onnx, engine, cfg):  # the engine is replaced, then the run ends before the manifest is written
        (export_dir / "tiny.fp16.engine").write_bytes(b"the new engine")
        raise KeyboardInterrupt

    monkeypatch.setattr(trt, "build_engine", killed)
    assert main(["build", str(export_dir / "tiny.fp16.onnx"), "--output", str(export_dir / "tiny.fp16.engine"),
                 *PROFILE]) == 130
    assert "tiny.fp16.engine" not in listed(export_dir)
    assert "engine.fp16" not in json.loads((export_dir / "manifest.json").read_text())["parity"]
    assert all(_sha(export_dir / p) == s for p, s in listed(export_dir).items())
