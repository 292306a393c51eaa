"""The export manifest as readers see it: schema, paths inside the directory, sha256 verification."""

from __future__ import annotations

import hashlib
import json

import pytest

from resnet_deploy.artifacts import (MANIFEST_NAME, manifest_entry, read_manifest, resolve_inside,
                                     validate_manifest, verify_artifact)
from resnet_deploy.errors import UsageError


def _export_dir(tmp_path, content=b"model bytes"):
    d = tmp_path / "exp"
    d.mkdir()
    (d / "m.onnx").write_bytes(content)
    entry = {"path": "m.onnx", "sha256": hashlib.sha256(content).hexdigest(), "precision": "fp32"}
    (d / MANIFEST_NAME).write_text(json.dumps({"artifacts": [entry]}))
    return d


def test_verify_accepts_the_recorded_file(tmp_path):
    d = _export_dir(tmp_path)
    assert verify_artifact(d / "m.onnx")["path"] == "m.onnx"


def test_verify_names_both_hashes_on_mismatch(tmp_path):
    d = _export_dir(tmp_path)
    recorded = hashlib.sha256(b"model bytes").hexdigest()
    (d / "m.onnx").write_bytes(b"another generation")
    actual = hashlib.sha256(b"another generation").hexdigest()
    with pytest.raises(UsageError) as info:
        verify_artifact(d / "m.onnx")
    assert recorded in str(info.value) and actual in str(info.value)


def test_file_without_manifest_or_not_listed_is_not_checked(tmp_path):
    (tmp_path / "loose.onnx").write_bytes(b"x")
    assert verify_artifact(tmp_path / "loose.onnx") is None
    d = _export_dir(tmp_path)
    (d / "other.onnx").write_bytes(b"y")
    assert manifest_entry(d / "other.onnx") is None


@pytest.mark.parametrize("data, needle", [
    (5, "not a JSON object"),
    ([1], "not a JSON object"),
    ({"artifacts": 5}, "'artifacts' must be a list"),
    ({"artifacts": [1]}, "artifacts[0] must be an object"),
    ({"artifacts": [{"path": 5}]}, "not a file name"),
    ({"artifacts": [{"path": "../../other.onnx"}]}, "outside"),
    ({"artifacts": [{"path": "/etc/passwd"}]}, "absolute"),
    ({"artifacts": [{"path": "m.onnx", "sha256": "zz"}]}, "sha256"),
    ({"artifacts": [], "parity": []}, "'parity' must be an object"),
])
def test_manifest_schema_is_checked_in_one_place(tmp_path, data, needle):
    with pytest.raises(UsageError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        validate_manifest(data, tmp_path / MANIFEST_NAME)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(UsageError):
        read_manifest(tmp_path)


def test_symlink_out_of_the_directory_is_refused(tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    d = tmp_path / "exp"
    d.mkdir()
    (d / "link.onnx").symlink_to(outside)
    with pytest.raises(UsageError, match="outside"):
        resolve_inside(d, "link.onnx")
    assert resolve_inside(d, "sub/../m.onnx") == (d / "m.onnx").resolve()


def test_load_runner_refuses_a_file_that_is_not_the_exported_one(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from resnet_deploy.runtime import load_runner

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    d = tmp_path / "exp"
    d.mkdir()
    onnx.save(model, d / "m.onnx")
    entry = {"path": "m.onnx", "sha256": hashlib.sha256((d / "m.onnx").read_bytes()).hexdigest()}
    (d / MANIFEST_NAME).write_text(json.dumps({"artifacts": [entry]}))
    load_runner(d / "m.onnx", backend="onnxruntime").close()
    model.doc_string = "replaced"
    onnx.save(model, d / "m.onnx")
    with pytest.raises(UsageError, match="does not match its manifest"):
        load_runner(d / "m.onnx", backend="onnxruntime")
