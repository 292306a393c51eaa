"""Planning only: which targets a selection makes and which it skips with a note (nothing is run)."""

from __future__ import annotations

import pytest

from resnet_deploy.bench.peers import Selection, plan_targets, precision_of_name, unsupported
from resnet_deploy.errors import UsageError


def _labels(plan):
    return [t.label for t in plan.targets]


def test_backends_times_precisions(tmp_path):
    plan = plan_targets(Selection(variant="18", backends=("torch", "onnxruntime"), precisions=("fp32",),
                                  workdir=tmp_path))
    assert _labels(plan) == ["torch:fp32", "onnxruntime:fp32"]
    assert plan.notes == []
    assert all(t.variant == "18" for t in plan.targets)


def test_cpu_peers_are_added_and_impossible_combinations_noted(tmp_path):
    plan = plan_targets(Selection(variant="50", precisions=("fp32", "int8"), peers=True, workdir=tmp_path))
    labels = _labels(plan)
    for want in ("torch:fp32", "torch:bf16", "torch-compile:fp32", "onnxruntime:fp32", "openvino:fp32",
                 "openvino:bf16", "onnxruntime:int8", "openvino:int8"):
        assert want in labels
    assert "torch:int8" not in labels
    assert any(n.startswith("torch:int8: skipped") for n in plan.notes)
    assert len(labels) == len(set(labels))


def test_cuda_peers(tmp_path):
    plan = plan_targets(Selection(variant="50", backends=("torch",), peers=True, device="cuda", workdir=tmp_path))
    assert {"torch:fp32", "torch:fp16", "onnxruntime:fp32", "tensorrt:fp16"} <= set(_labels(plan))
    assert not any(t.backend == "openvino" for t in plan.targets)
    assert all(t.device == "cuda" for t in plan.targets)


@pytest.mark.parametrize("backend, precision, cuda, fragment", [
    ("torch", "int8", False, "no INT8 path"), ("torch", "fp16", False, "bf16"),
    ("onnxruntime", "fp16", False, "--device cuda"), ("onnxruntime", "bf16", False, "BF16"),
    ("openvino", "fp32", True, "NVIDIA"), ("tensorrt", "fp16", False, "NVIDIA GPU")])
def test_unsupported_combinations_say_why(backend, precision, cuda, fragment):
    assert fragment in unsupported(backend, precision, cuda)


@pytest.mark.parametrize("backend, precision, cuda", [("torch", "bf16", False), ("torch", "fp16", True),
                                                      ("onnxruntime", "int8", False), ("openvino", "int8", False),
                                                      ("tensorrt", "int8", True)])
def test_supported_combinations(backend, precision, cuda):
    assert unsupported(backend, precision, cuda) is None


def test_explicit_artifacts_run_as_what_they_are(tmp_path):
    a = tmp_path / "resnet50.onnx"
    b = tmp_path / "resnet50.int8.onnxruntime.onnx"
    for p in (a, b):
        p.write_bytes(b"")  # planning does not open them
    plan = plan_targets(Selection(artifacts=(str(a), str(b)), backends=("onnxruntime", "openvino")))
    assert _labels(plan) == ["onnxruntime:fp32", "openvino:fp32", "onnxruntime:int8", "openvino:int8"]
    assert plan.targets[2].artifact == str(b)


def test_two_artifacts_of_the_same_kind_are_told_apart(tmp_path):
    a, b = tmp_path / "one.onnx", tmp_path / "two.onnx"
    for p in (a, b):
        p.write_bytes(b"")
    plan = plan_targets(Selection(artifacts=(str(a), str(b)), backends=("onnxruntime",)))
    assert _labels(plan) == ["onnxruntime:fp32 [one.onnx]", "onnxruntime:fp32 [two.onnx]"]


def test_engines_need_cuda(tmp_path):
    e = tmp_path / "resnet50.fp16.engine"
    e.write_bytes(b"")
    plan = plan_targets(Selection(artifacts=(str(e),)))
    assert plan.targets == [] and "NVIDIA GPU" in plan.notes[0]
    plan = plan_targets(Selection(artifacts=(str(e),), device="cuda"))
    assert _labels(plan) == ["tensorrt:fp16"]


@pytest.mark.parametrize("kw, match", [
    (dict(), "--variant"), (dict(variant="51"), "unknown variant"), (dict(variant="18", backends=("tf",)), "backend"),
    (dict(variant="18", precisions=("int4",)), "precision"), (dict(variant="18", device="tpu"), "device"),
    (dict(artifacts=("/nonexistent/x.onnx",)), "does not exist")])
def test_bad_selections_are_usage_errors(kw, match):
    with pytest.raises(UsageError, match=match):
        Selection(**kw)


@pytest.mark.parametrize("name, want", [("resnet50.onnx", "fp32"), ("resnet50.fp16.onnx", "fp16"),
                                        ("resnet50.int8.onnxruntime.onnx", "int8"), ("r.fp16.engine", "fp16"),
                                        ("int8.onnx", "fp32")])
def test_precision_of_name(name, want):
    assert precision_of_name(name) == want
