"""An export directory always holds one generation: a re-export replaces it as a whole, a killed or
failed one leaves the previous generation as it was, and checks that need no model run first."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resnet_deploy._io import remove_stale_temporaries, write_bytes
from resnet_deploy.errors import UsageError
from resnet_deploy.export import ExportConfig, export_model
from resnet_deploy.export import pipeline
from resnet_deploy.export.generation import recover

SRC = Path(__file__).resolve().parents[2] / "src"
SMALL = dict(variant="18", exporter="torchscript", simplify=False, check_shapes=((1, 3, 64, 64),))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def snapshot(d: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(d.iterdir()) if p.is_file()}


def assert_one_generation(d: Path) -> dict:
    """Every listed file is there with its sha256, and no model file is there unlisted."""
    manifest = json.loads((d / "manifest.json").read_text())
    listed = {a["path"] for a in manifest["artifacts"]}
    for a in manifest["artifacts"]:
        assert _sha(d / a["path"]) == a["sha256"], a["path"]
    models = {p.name for p in d.iterdir() if p.suffix in (".onnx", ".engine") and p.name.startswith("resnet18.")}
    assert models <= listed, models - listed
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    return manifest


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}."))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A finished FP32 + FP16 export (seed 0): the previous generation of the tests below."""
    out = tmp_path_factory.mktemp("gen") / "X"
    export_model(ExportConfig(output_dir=out, fp16=True, **SMALL))
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_reexport_replaces_the_whole_generation(first, tmp_path):
    x = _copy(first, tmp_path / "X")
    (x / "notes.txt").write_text("mine")
    (x / "other.onnx").write_bytes(b"another model's file")
    before = snapshot(x)
    result = export_model(ExportConfig(output_dir=x, seed=1, **SMALL))  # no --fp16 this time
    manifest = assert_one_generation(x)
    assert not (x / "resnet18.fp16.onnx").exists()  # the stale FP16 went with its generation
    assert "fp16" not in manifest["parity"]
    assert (x / "notes.txt").read_text() == "mine"  # files that are not the old generation's are carried over
    assert (x / "other.onnx").read_bytes() == b"another model's file"
    assert _sha(x / "resnet18.onnx") != before["resnet18.onnx"]
    assert result.output_dir == x and result.onnx_path == x / "resnet18.onnx" and result.manifest.path.parent == x
    assert leftovers(x) == []


KILLER = textwrap.dedent("""
    import os, sys
    from resnet_deploy.export import ExportConfig, export_model, generation, pipeline
    where = sys.argv[2]
    if where in ("fp32", "fp16"):
        real = pipeline.verify
        def verify(path, *a, precision, **kw):
            if precision == where:
                os._exit(137)  # as kill -9: no cleanup runs
            return real(path, *a, precision=precision, **kw)
        pipeline.verify = verify
    else:  # between the two renames of the swap where the filesystem cannot exchange atomically
        generation._exchange = lambda a, b: False
        real_rename = os.rename
        def rename(a, b):
            real_rename(a, b)
            if ".old-" in str(b):
                os._exit(137)
        generation.os.rename = rename
    export_model(ExportConfig(output_dir=sys.argv[1], fp16=True, seed=1, variant="18", exporter="torchscript",
                              simplify=False, check_shapes=((1, 3, 64, 64),)))
""")


@pytest.mark.parametrize("where", ["fp32", "fp16", "swap"])
def test_killed_reexport_leaves_the_previous_generation(first, tmp_path, where):
    x = _copy(first, tmp_path / "X")
    before = snapshot(x)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(x), where], env=env, capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert leftovers(x)  # the killed run's staging (or the set-aside old generation)
    if where == "swap":
        assert not x.exists()  # killed between the renames: the old generation waits aside
        recover(x)  # what the next run does first
        assert snapshot(x) == before
    else:
        assert snapshot(x) == before  # untouched: every listed sha256 still matches
    assert_one_generation(x)
    export_model(ExportConfig(output_dir=x, fp16=True, seed=1, **SMALL))  # the next run completes it
    manifest = assert_one_generation(x)
    assert manifest["parity"]["fp16"]["passed"] and leftovers(x) == []


def test_failed_export_keeps_the_previous_generation_and_writes_nothing(first, tmp_path, monkeypatch):
    x = _copy(first, tmp_path / "X")
    before = snapshot(x)

    def broken(*a, **kw):
        raise UsageError("FP16 conversion failed")

    import resnet_deploy.export.fp16 as fp16

    monkeypatch.setattr(fp16, "convert_to_fp16", broken)
    with pytest.raises(UsageError, match="FP16 conversion failed"):
        export_model(ExportConfig(output_dir=x, fp16=True, seed=1, **SMALL))
    assert snapshot(x) == before and leftovers(x) == []
    fresh = tmp_path / "new" / "deeper"
    with pytest.raises(UsageError):
        export_model(ExportConfig(output_dir=fresh, fp16=True, **SMALL))
    assert not (tmp_path / "new").exists()  # no empty directories either


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if an export gets as far as building the model."""
    def create_model(*a, **kw):
        raise AssertionError("a check that needs no model ran after the model was built")

    monkeypatch.setattr(pipeline, "create_model", create_model)


@pytest.mark.parametrize("change, message", [
    (dict(int8=True, int8_options={"calib_data": "EMPTY"}), "no images found"),
    (dict(int8=True, int8_options={"calib_data": "synthetic", "holdout": 1}), "--holdout must be >= 2"),
    (dict(int8=True, int8_options={"calib_data": "synthetic:4", "holdout": 2}), "fewer than one batch"),
    (dict(int8=True, int8_options={"calib_data": "synthetic", "shape": (8, 3, 64, 96)}), "not square"),
    (dict(fp16=True, engine_options={"min_shapes": ["8x3x64x64"], "opt_shapes": ["1x3x64x64"],
                                     "max_shapes": ["4x3x64x64"]}), "min <= opt <= max"),
    (dict(fp16=True, engine_options={"workspace_gib": -1.0}), "--workspace"),
    (dict(check_shapes=((1, 3, 8, 8),)), "at least 32"),
    (dict(engine="always"), "--engine always"),
])
def test_preflight_fails_before_the_model_and_writes_nothing(tmp_path, no_model, change, message):
    (tmp_path / "EMPTY").mkdir()
    cfg = ExportConfig(output_dir=tmp_path / "X", **{**SMALL, **change})
    if cfg.int8_options.get("calib_data") == "EMPTY":
        cfg.int8_options["calib_data"] = str(tmp_path / "EMPTY")
    with pytest.raises(UsageError, match=message):
        export_model(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMPTY"]


def test_engine_always_without_tensorrt_fails_first(tmp_path, no_model, monkeypatch):
    import resnet_deploy.runtime.tensorrt as trt

    monkeypatch.setattr(trt, "tensorrt_usable", lambda device=0: (False, "no GPU here"))
    with pytest.raises(UsageError, match="no engine can be built here: no GPU here"):
        export_model(ExportConfig(output_dir=tmp_path / "X", fp16=True, engine="always", **SMALL))
    assert not (tmp_path / "X").exists()


def test_output_that_cannot_be_an_export_directory_is_refused_first(tmp_path, no_model, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        export_model(ExportConfig(output_dir=tmp_path / "file", **SMALL))
    with pytest.raises(UsageError, match="is not a directory"):
        export_model(ExportConfig(output_dir=tmp_path / "file" / "sub", **SMALL))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="current directory"):
        export_model(ExportConfig(output_dir=Path("."), **SMALL))
    (tmp_path / "project" / "src").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds the folder 'src'"):
        export_model(ExportConfig(output_dir=tmp_path / "project", **SMALL))
    assert (tmp_path / "project" / "src").is_dir()


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / f".model.onnx.{dead}-abcd1234.tmp", tmp_path / ".model.onnx.k2j4_x9q.tmp"]  # new, old style
    live = tmp_path / f".model.onnx.{os.getpid()}-abcd1234.tmp"  # a writer that still runs
    mine = [tmp_path / ".notes.tmp", tmp_path / "model.onnx.tmp", tmp_path / "keep.txt"]
    for p in stale + [live] + mine:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in [live] + mine)


def test_first_write_into_a_directory_removes_stale_temporaries(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / ".a.onnx.1q2w3e4r.tmp").write_bytes(b"half a model")
    write_bytes(d / "b.bin", b"ok")
    assert sorted(p.name for p in d.iterdir()) == ["b.bin"]
