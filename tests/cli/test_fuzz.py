"""A standing fuzz table: the CLI driven with hostile inputs, one row each.

Every row asserts the documented exit code (0 ok, 1 a check failed, 2 bad usage or input), no
``Traceback`` on stderr, one ``error`` line for a failure (log lines ``[W] ...`` aside), no new
file in the output directory after bad input (exit 2) nor anywhere among the inputs, no change to any
input file (sha256 before and after; size, mtime and inode for the few large files, whose sha256
is compared once at the end of the module).

Rows run in-process through ``resnet_deploy.cli.main.main(argv)`` with stderr captured; the rows
that could block a decode thread forever (FIFOs) run in a subprocess with a timeout instead.
Categories (the first part of each row id): weights, artifacts, images, manifests, sidecars,
options, outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from resnet_deploy.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"
#: Substrings no row may ever print: a traceback, PyTorch's advice to load pickles unsafely, the repr
#: of a file object, an attribute error on None, OpenVINO's source location.
FORBIDDEN = ("Traceback", "weights_only=False", "<_io.", "NoneType", "core.cpp")
#: Files above this size are compared by (size, mtime, inode) per row and by sha256 once at the end.
HASH_LIMIT = 1 << 20
ROW_TIMEOUT_S = 60
CROP = 32


# -- the workspace: tiny ONNX graphs, a ResNet-18 checkpoint, hostile files -----------------------

def _tiny_onnx(path: Path, *, head: str = "logits", classes: int = 4, output_4d: bool = False,
               variant: str | None = None) -> Path:
    """NCHW float32 (dynamic N, H, W) -> GlobalAveragePool -> Flatten -> Gemm: (N, classes), or the
    pooled (N, 3, 1, 1) when ``output_4d``. Carries the toolkit's metadata (preprocessing 36 -> 32)."""
    import onnx
    from onnx import TensorProto, helper

    from resnet_deploy.models.transforms import Preprocessing

    rng = np.random.default_rng(0)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled" if not output_4d else "logits"])]
    inits = []
    if output_4d:
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 1, 1])
    else:
        name = "embedding" if head == "embedding" else "logits"
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
        weight = rng.standard_normal((3, classes)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(weight, "W"))
        nodes.append(helper.make_node("MatMul", ["flat", "W"], [name]))
        out = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", classes])
    graph = helper.make_graph(nodes, "tiny", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    prep = Preprocessing(resize_size=36, crop_size=CROP).to_dict()
    meta = {"head": head, "preprocessing": json.dumps(prep), "output_dim": str(classes)}
    if variant:
        meta["variant"] = variant
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _image(path: Path, size=(48, 40), mode="RGB", fmt=None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(len(str(path)))
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Every input the rows use. Read-only for the rows: the module checks that none of it changes."""
    import torch

    from resnet_deploy.models import create_model

    root = tmp_path_factory.mktemp("fuzz")
    m = root / "models"
    m.mkdir()
    _tiny_onnx(m / "cls.onnx")
    _tiny_onnx(m / "emb.onnx", head="embedding", classes=6)
    _tiny_onnx(m / "out4d.onnx", output_4d=True)
    _tiny_onnx(m / "variant.onnx", variant="18")
    (m / "empty.onnx").write_bytes(b"")
    (m / "random.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    (m / "text.onnx").write_text("this is not a model\n")
    (m / "truncated.onnx").write_bytes((m / "cls.onnx").read_bytes()[:100])
    (m / "dir.onnx").mkdir()
    (m / "model.engine").write_bytes(b"not an engine")
    (m / "empty.npy").write_bytes(b"")  # a model given a wrong suffix
    os.symlink("/dev/zero", m / "zero.onnx")
    os.mkfifo(m / "pipe.onnx")

    w = root / "weights"
    w.mkdir()
    model, _ = create_model("18", seed=0)
    sd = model.state_dict()
    torch.save(sd, w / "r18.pth")
    torch.save({"state_dict": sd, "epoch": 3}, w / "r18_wrapped.pth")
    (w / "text.pth").write_text("hello, this is a text file\n")
    (w / "random.pth").write_bytes(np.random.default_rng(2).bytes(4096))
    (w / "empty.pth").write_bytes(b"")
    (w / "evil.pth").write_bytes(pickle.dumps(_Evil()))
    (w / "plain_pickle.pth").write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2))
    torch.save({"epoch": 3, "lr": 0.1}, w / "no_tensors.pth")
    torch.save({"model": object.__new__(_Evil)}, w / "evil_zip.pth")  # pickled class, zip container
    torch.save({k: v for k, v in sd.items() if k != "fc.bias"} | {"extra.w": torch.zeros(1)}, w / "misfit.pth")
    torch.save([1, 2, 3], w / "list.pth")
    with zipfile.ZipFile(w / "notorch.pth", "w") as z:
        z.writestr("hello.txt", "not a torch archive")
    (w / "truncated.pth").write_bytes((w / "r18.pth").read_bytes()[:5000])
    (w / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (w / "dir.pth").mkdir()
    os.mkfifo(w / "pipe.pth")

    img = root / "images"
    img.mkdir()
    _image(img / "a.jpg")
    _image(img / "b.png", size=(33, 60))
    mixed = root / "mixed"
    mixed.mkdir()
    _image(mixed / "good.jpg")
    (mixed / "empty.jpg").write_bytes(b"")
    (mixed / "text.jpg").write_text("not a picture")
    (mixed / "trunc.png").write_bytes((img / "b.png").read_bytes()[:60])
    (mixed / "dir.jpg").mkdir()
    os.symlink("/dev/zero", mixed / "zero.jpg")
    os.symlink(root / "missing.jpg", mixed / "dangling.jpg")
    bad = root / "bad_only"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not a picture")
    (root / "no_images").mkdir()
    fifo = root / "fifo_dir"
    fifo.mkdir()
    _image(fifo / "good.jpg")
    os.mkfifo(fifo / "pipe.jpg")
    (root / "odd").mkdir()
    _image(root / "odd" / "tiny.png", size=(1, 1))
    _image(root / "odd" / "gray.png", mode="L")
    _image(root / "odd" / "cmyk.jpg", mode="CMYK")

    lab = root / "labels"
    lab.mkdir()
    (lab / "four.txt").write_text("cat\ndog\nfox\nowl\n")
    (lab / "three.txt").write_text("cat\ndog\nfox\n")
    (lab / "binary.txt").write_bytes(b"\xff\xfe\x00\x89PNG" + np.random.default_rng(3).bytes(256))
    (lab / "empty.txt").write_bytes(b"")

    ex = root / "exports"
    for name, manifest in {"ok": None, "int5": {"artifacts": 5}, "list": [1], "dotdot": {"artifacts": [
            {"path": "../../other.onnx"}]}, "absolute": {"artifacts": [{"path": "/etc/passwd"}]},
            "notjson": "{not json", "entry_str": {"artifacts": ["cls.onnx"]}, "null_path": {"artifacts": [
            {"path": None}]}, "badsha": {"artifacts": [{"path": "cls.onnx", "sha256": "0" * 64}]},
            "shortsha": {"artifacts": [{"path": "cls.onnx", "sha256": "abc"}]}}.items():
        d = ex / name
        d.mkdir(parents=True)
        (d / "cls.onnx").write_bytes((m / "cls.onnx").read_bytes())
        if manifest is not None:
            (d / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))

    cal = root / "calib"
    cal.mkdir()
    np.save(cal / "batch.npy", np.zeros((4, 3, CROP, CROP), np.float32))
    (cal / "text.npy").write_text("not an array")
    return root


@pytest.fixture(scope="module")
def large_hashes(ws):
    """sha256 of the inputs too large to hash per row; compared at the end of the module."""
    before = {p: _sha(p) for p in _regular_files(ws) if p.stat().st_size > HASH_LIMIT}
    yield before
    after = {p: _sha(p) for p in before}
    assert after == before, "a large input file changed"


# -- snapshots ------------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _regular_files(root: Path) -> list[Path]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(p).st_mode):
                out.append(p)
    return out


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (no symlink followed, no FIFO opened) -> what it holds."""
    state: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISREG(st.st_mode):
                state[rel] = _sha(Path(p)) if st.st_size <= HASH_LIMIT else (st.st_size, st.st_mtime_ns, st.st_ino)
            elif stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(p))
            else:
                state[rel] = ("kind", stat.S_IFMT(st.st_mode))
    return state


def _diff(before: dict, after: dict) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return [f"new: {k}" for k in added] + [f"removed: {k}" for k in removed] + [f"changed: {k}" for k in changed]


# -- the table ------------------------------------------------------------------------------------

@dataclass
class Row:
    id: str
    argv: list[str]
    code: int  # the documented exit code: 0 ok, 1 a check failed, 2 bad usage or input
    expect: tuple[str, ...] = ()  # substrings of stderr (a failure) or stdout (a success)
    setup: Callable[[Path, Path], None] | None = None  # (ws, out): files that exist before the run
    subprocess: bool = False  # could block a thread forever on the original code: run it out of process
    creates: tuple[str, ...] = ()  # files a success must leave in the output directory
    one_line: bool = True  # a failure prints exactly one non-log line on stderr

    def __post_init__(self) -> None:
        if isinstance(self.expect, str):
            self.expect = (self.expect,)


def _existing_npy(rows: int = 2, dim: int = 6, sidecar: object = "default", npy: bytes | None = None):
    """Setup: an existing ``out/e.npy`` (+ sidecar) from an earlier run."""

    def setup(ws: Path, out: Path) -> None:
        target = out / "e.npy"
        if npy is not None:
            target.write_bytes(npy)
        else:
            np.save(target, np.ones((rows, dim), np.float32))
        if sidecar == "default":
            side = {"paths": [str(ws / "images" / f"x{i}.jpg") for i in range(rows)], "dim": dim}
            (out / "e.npy.json").write_text(json.dumps(side))
        elif sidecar is not None:
            side = sidecar if isinstance(sidecar, (str, bytes)) else json.dumps(sidecar)
            (out / "e.npy.json").write_bytes(side if isinstance(side, bytes) else side.encode())

    return setup


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


ORT = ["--backend", "onnxruntime"]
CLS, EMB = "{ws}/models/cls.onnx", "{ws}/models/emb.onnx"
IMG = "{ws}/images/a.jpg"


def _infer(model: str, *extra: str) -> list[str]:
    return ["infer", "-m", model, IMG, *extra]


def _embed(model: str = EMB, inputs: str = "{ws}/images", output: str = "{out}/e.npy", *extra: str) -> list[str]:
    return ["embed", "-m", model, inputs, "-o", output, *ORT, *extra]


def _check(*extra: str) -> list[str]:
    return ["check", CLS, "--reference", CLS, *ORT, "--reference-backend", "onnxruntime", *extra]


ROWS: list[Row] = [
    # -- weights files (infer on a variant name, export, check's reference) -------------------------
    Row("weights-valid", ["infer", "-m", "18", "--weights", "{ws}/weights/r18.pth", IMG, "--top-k", "2"], 0,
        expect="1."),
    Row("weights-wrapped", ["infer", "-m", "18", "--weights", "{ws}/weights/r18_wrapped.pth", IMG], 0),
    Row("weights-text", ["infer", "-m", "18", "--weights", "{ws}/weights/text.pth", IMG], 2,
        expect="not a PyTorch checkpoint"),
    Row("weights-random-bytes", ["infer", "-m", "18", "--weights", "{ws}/weights/random.pth", IMG], 2,
        expect="not a PyTorch checkpoint"),
    Row("weights-empty", ["infer", "-m", "18", "--weights", "{ws}/weights/empty.pth", IMG], 2, expect="empty"),
    Row("weights-evil-pickle", ["infer", "-m", "18", "--weights", "{ws}/weights/evil.pth", IMG], 2,
        expect="refused"),
    Row("weights-plain-pickle", ["infer", "-m", "18", "--weights", "{ws}/weights/plain_pickle.pth", IMG], 2),
    Row("weights-evil-zip", ["infer", "-m", "18", "--weights", "{ws}/weights/evil_zip.pth", IMG], 2,
        expect="refused"),
    Row("weights-no-tensors", ["infer", "-m", "18", "--weights", "{ws}/weights/no_tensors.pth", IMG], 2,
        expect="no state_dict"),
    Row("weights-misfit", ["infer", "-m", "18", "--weights", "{ws}/weights/misfit.pth", IMG], 2,
        expect="does not fit"),
    Row("weights-list", ["infer", "-m", "18", "--weights", "{ws}/weights/list.pth", IMG], 2,
        expect="expected a state_dict"),
    Row("weights-zip-not-torch", ["infer", "-m", "18", "--weights", "{ws}/weights/notorch.pth", IMG], 2,
        expect="not a PyTorch checkpoint"),
    Row("weights-truncated", ["infer", "-m", "18", "--weights", "{ws}/weights/truncated.pth", IMG], 2,
        expect="weights file"),
    Row("weights-garbage-safetensors", ["infer", "-m", "18", "--weights", "{ws}/weights/garbage.safetensors",
                                        IMG], 2, expect="weights file"),
    Row("weights-directory", ["infer", "-m", "18", "--weights", "{ws}/weights/dir.pth", IMG], 2,
        expect="is a directory"),
    Row("weights-missing", ["infer", "-m", "18", "--weights", "{ws}/weights/nope.pth", IMG], 2,
        expect="does not exist"),
    Row("weights-fifo", ["infer", "-m", "18", "--weights", "{ws}/weights/pipe.pth", IMG], 2,
        expect="not a regular file", subprocess=True),
    Row("weights-export-text", ["export", "--variant", "18", "--weights", "{ws}/weights/text.pth", "-o",
                                "{out}/x"], 2, expect="not a PyTorch checkpoint"),
    Row("weights-export-evil", ["export", "--variant", "18", "--weights", "{ws}/weights/evil.pth", "-o",
                                "{out}/x"], 2, expect="refused"),
    Row("weights-export-dir", ["export", "--variant", "18", "--weights", "{ws}/weights", "-o", "{out}/x"], 2,
        expect="is a directory"),
    Row("weights-check-reference-random", ["check", "{ws}/models/variant.onnx", *ORT, "--weights",
                                           "{ws}/weights/random.pth"], 2, expect="not a PyTorch checkpoint"),
    Row("weights-check-reference-evil", ["check", "{ws}/models/variant.onnx", *ORT, "--weights",
                                         "{ws}/weights/evil.pth"], 2, expect="refused"),
    Row("weights-export-fifo", ["export", "--variant", "18", "--weights", "{ws}/weights/pipe.pth", "-o",
                                "{out}/x"], 2, expect="not a regular file (a FIFO)"),
    Row("weights-imagenet-bad-tag", ["infer", "-m", "18", "--weights", "imagenet:V9", IMG], 2,
        expect="no published weights"),

    # -- artifacts (--model / check ARTIFACT / calibrate MODEL) ------------------------------------
    Row("artifacts-valid-infer", ["infer", "-m", CLS, IMG, *ORT], 0, expect="class 0"),
    Row("artifacts-valid-openvino", ["infer", "-m", CLS, IMG, "--backend", "openvino"], 0),
    Row("artifacts-empty-ort", _infer("{ws}/models/empty.onnx", *ORT), 2, expect="not an ONNX model"),
    Row("artifacts-empty-auto", _infer("{ws}/models/empty.onnx"), 2, expect="not an ONNX model"),
    Row("artifacts-empty-openvino", _infer("{ws}/models/empty.onnx", "--backend", "openvino"), 2,
        expect="not an ONNX model"),
    Row("artifacts-random-bytes", _infer("{ws}/models/random.onnx", *ORT), 2, expect="not an ONNX model"),
    Row("artifacts-text", _infer("{ws}/models/text.onnx"), 2, expect="not an ONNX model"),
    Row("artifacts-truncated", _infer("{ws}/models/truncated.onnx", *ORT), 2, expect="not an ONNX model"),
    Row("artifacts-directory", _infer("{ws}/models/dir.onnx", *ORT), 2, expect="is a directory"),
    Row("artifacts-directory-no-suffix", _infer("{ws}/models"), 2, expect="is a directory"),
    Row("artifacts-missing", _infer("{ws}/models/nope.onnx"), 2, expect="does not exist"),
    Row("artifacts-unknown-variant", _infer("resnet51"), 2, expect="unknown variant"),
    Row("artifacts-zero-symlink", _infer("{ws}/models/zero.onnx"), 2, expect="not a regular file"),
    Row("artifacts-fifo", _infer("{ws}/models/pipe.onnx"), 2, expect="not a regular file", subprocess=True),
    Row("artifacts-engine-no-gpu", _infer("{ws}/models/model.engine"), 2),
    Row("artifacts-npy-as-model", _infer("{ws}/models/empty.npy"), 2),
    Row("artifacts-output-4d", _infer("{ws}/models/out4d.onnx", *ORT), 2, expect="(N, classes)"),
    Row("artifacts-embedding-to-infer", _infer(EMB, *ORT), 2, expect="resnet-deploy embed"),
    Row("artifacts-embed-empty", _embed("{ws}/models/empty.onnx"), 2, expect="not an ONNX model"),
    Row("artifacts-embed-directory", _embed("{ws}/models/dir.onnx"), 2, expect="is a directory"),
    Row("artifacts-embed-output-4d", _embed("{ws}/models/out4d.onnx"), 2),
    Row("artifacts-check-empty", ["check", "{ws}/models/empty.onnx", *ORT], 2, expect="not an ONNX model"),
    Row("artifacts-check-random", ["check", "{ws}/models/random.onnx"], 2, expect="not an ONNX model"),
    Row("artifacts-check-directory", ["check", "{ws}/models/dir.onnx"], 2, expect="is a directory"),
    Row("artifacts-check-no-variant", ["check", CLS, *ORT], 2, expect="--variant"),
    Row("artifacts-check-reference-empty", ["check", CLS, "--reference", "{ws}/models/empty.onnx", *ORT], 2,
        expect="not an ONNX model"),
    Row("artifacts-check-reference-directory", ["check", CLS, "--reference", "{ws}/models/dir.onnx", *ORT], 2,
        expect="is a directory"),
    Row("artifacts-calibrate-empty", ["calibrate", "{ws}/models/empty.onnx", "--calib-data", "synthetic:8",
                                      "-o", "{out}/q.onnx"], 2, expect="not an ONNX model"),
    Row("artifacts-calibrate-directory", ["calibrate", "{ws}/models/dir.onnx", "--calib-data", "synthetic:8",
                                          "-o", "{out}/q.onnx"], 2, expect="is a directory"),
    Row("artifacts-bench-empty", ["bench", "{ws}/models/empty.onnx", "--backends", "onnxruntime",
                                  "--iterations", "1", "--warmup", "1", "--rounds", "1"], 2,
        expect="not an ONNX model"),
    Row("artifacts-build-no-tensorrt", ["build", CLS, "-o", "{out}/x.engine"], 2),
    Row("artifacts-build-directory", ["build", "{ws}/models/dir.onnx", "-o", "{out}/x.engine"], 2),

    # -- images ------------------------------------------------------------------------------------
    Row("images-valid-folder-embed", _embed(), 0, expect="2 rows", creates=("e.npy", "e.npy.json")),
    Row("images-mixed-embed", _embed(EMB, "{ws}/mixed"), 0, expect="1 rows", creates=("e.npy", "e.npy.json"),
        one_line=False),
    Row("images-all-unreadable-embed", _embed(EMB, "{ws}/bad_only"), 2, expect="no image could be embedded",
        one_line=False),
    Row("images-no-images-embed", _embed(EMB, "{ws}/no_images"), 2, expect="no images"),
    Row("images-fifo-embed", _embed(EMB, "{ws}/fifo_dir"), 0, expect="1 rows", subprocess=True,
        creates=("e.npy", "e.npy.json"), one_line=False),
    Row("images-fifo-infer", ["infer", "-m", CLS, "{ws}/fifo_dir/pipe.jpg", *ORT], 2,
        expect="not a regular file", subprocess=True),
    Row("images-fifo-check", ["check", CLS, "--reference", CLS, "--images", "{ws}/fifo_dir", *ORT], 0,
        subprocess=True),
    Row("images-fifo-calibrate", ["calibrate", CLS, "--calib-data", "{ws}/fifo_dir", "--holdout", "2",
                                  "--int8-target", "onnxruntime", "-o", "{out}/q.onnx"], 2,
        expect="has 1 image(s)", subprocess=True, one_line=False),  # the FIFO is neither counted nor read
    Row("images-zero-byte-infer", ["infer", "-m", CLS, "{ws}/mixed/empty.jpg", *ORT], 2, expect="empty"),
    Row("images-text-infer", ["infer", "-m", CLS, "{ws}/mixed/text.jpg", *ORT], 2,
        expect="not a recognized image"),
    Row("images-truncated-infer", ["infer", "-m", CLS, "{ws}/mixed/trunc.png", *ORT], 2,
        expect="cannot decode"),
    Row("images-directory-infer", ["infer", "-m", CLS, "{ws}/mixed/dir.jpg", *ORT], 2, expect="is a directory"),
    Row("images-dev-zero-infer", ["infer", "-m", CLS, "{ws}/mixed/zero.jpg", *ORT], 2,
        expect="not a regular file"),
    Row("images-dangling-link-infer", ["infer", "-m", CLS, "{ws}/mixed/dangling.jpg", *ORT], 2,
        expect="broken symbolic link"),
    Row("images-missing-infer", ["infer", "-m", CLS, "{ws}/images/nope.jpg", *ORT], 2, expect="does not exist"),
    Row("images-partial-infer", ["infer", "-m", CLS, IMG, "{ws}/mixed/text.jpg", *ORT], 2,
        expect="text.jpg", one_line=False),
    Row("images-partial-infer-json", ["infer", "-m", CLS, IMG, "{ws}/mixed/empty.jpg", *ORT, "--json"], 2,
        expect="empty.jpg", one_line=False),
    Row("images-odd-modes-infer", ["infer", "-m", CLS, "{ws}/odd/tiny.png", "{ws}/odd/gray.png",
                                   "{ws}/odd/cmyk.jpg", *ORT], 0),
    Row("images-check-folder-unreadable", _check("--images", "{ws}/bad_only"), 2, expect="no readable images"),
    Row("images-check-folder-missing", _check("--images", "{ws}/nowhere"), 2, expect="does not exist"),
    Row("images-embed-missing-folder", _embed(EMB, "{ws}/nowhere"), 2, expect="does not exist"),
    Row("images-embed-single-text-file", _embed(EMB, "{ws}/labels/four.txt"), 2, expect="not an image"),
    Row("images-calibrate-fifo-as-data", ["calibrate", CLS, "--calib-data", "{ws}/fifo_dir/pipe.jpg", "-o",
                                          "{out}/q.onnx"], 2, expect="not a regular file (a FIFO)"),
    Row("images-calibrate-no-images", ["calibrate", CLS, "--calib-data", "{ws}/no_images", "-o", "{out}/q.onnx"],
        2),
    Row("images-calibrate-unreadable", ["calibrate", CLS, "--calib-data", "{ws}/bad_only", "-o",
                                        "{out}/q.onnx", "--holdout", "0"], 2, one_line=False),

    # -- manifests (triton-repo, and the sha256 check of every reader) -----------------------------
    Row("manifests-valid", ["triton-repo", "{ws}/exports/ok", "-o", "{out}/repo", "--entries", "onnxruntime"], 0,
        creates=("repo",)),
    Row("manifests-artifacts-int", ["triton-repo", "{ws}/exports/int5", "-o", "{out}/repo"], 2,
        expect="'artifacts' must be a list"),
    Row("manifests-list", ["triton-repo", "{ws}/exports/list", "-o", "{out}/repo"], 2,
        expect="not a JSON object"),
    Row("manifests-dotdot", ["triton-repo", "{ws}/exports/dotdot", "-o", "{out}/repo"], 2,
        expect="outside"),
    Row("manifests-absolute", ["triton-repo", "{ws}/exports/absolute", "-o", "{out}/repo"], 2,
        expect="absolute"),
    Row("manifests-not-json", ["triton-repo", "{ws}/exports/notjson", "-o", "{out}/repo"], 2,
        expect="not valid JSON"),
    Row("manifests-entry-string", ["triton-repo", "{ws}/exports/entry_str", "-o", "{out}/repo"], 2,
        expect="must be an object"),
    Row("manifests-null-path", ["triton-repo", "{ws}/exports/null_path", "-o", "{out}/repo"], 2,
        expect="not a file name"),
    Row("manifests-sha-mismatch-repo", ["triton-repo", "{ws}/exports/badsha", "-o", "{out}/repo"], 2,
        expect="does not match"),
    Row("manifests-sha-mismatch-infer", _infer("{ws}/exports/badsha/cls.onnx", *ORT), 2,
        expect="does not match"),
    Row("manifests-sha-mismatch-embed", _embed("{ws}/exports/badsha/cls.onnx"), 2, expect="does not match"),
    Row("manifests-sha-mismatch-check", ["check", "{ws}/exports/badsha/cls.onnx", "--reference", CLS, *ORT], 2,
        expect="does not match"),
    Row("manifests-short-sha-infer", _infer("{ws}/exports/shortsha/cls.onnx", *ORT), 2, expect="sha256"),
    Row("manifests-int-infer", _infer("{ws}/exports/int5/cls.onnx", *ORT), 2, expect="must be a list"),
    Row("manifests-export-dir-missing", ["triton-repo", "{ws}/exports/nowhere", "-o", "{out}/repo"], 2,
        expect="does not exist"),
    Row("manifests-export-dir-is-file", ["triton-repo", CLS, "-o", "{out}/repo"], 2),

    # -- sidecars and existing outputs of embed ----------------------------------------------------
    Row("sidecars-paths-int", _embed(), 2, expect="sidecar", setup=_existing_npy(sidecar={"paths": 5})),
    Row("sidecars-list", _embed(), 2, expect="sidecar", setup=_existing_npy(sidecar=[1, 2])),
    Row("sidecars-paths-of-ints", _embed(), 2, expect="sidecar", setup=_existing_npy(sidecar={"paths": [1, 2]})),
    Row("sidecars-not-json", _embed(), 2, expect="not valid JSON", setup=_existing_npy(sidecar="{oops")),
    Row("sidecars-missing", _embed(), 2, expect="no sidecar", setup=_existing_npy(sidecar=None)),
    Row("sidecars-binary", _embed(), 2, expect="sidecar", setup=_existing_npy(sidecar=b"\xff\xfe{")),
    Row("sidecars-more-paths-than-rows", _embed(), 2, expect="rows",
        setup=_existing_npy(rows=2, sidecar={"paths": ["a", "b", "c"]})),
    Row("sidecars-npy-text", _embed(), 2, expect="not a readable .npy",
        setup=_existing_npy(npy=b"just text, not an array")),
    Row("sidecars-npy-zip", _embed(), 2, expect="not a readable .npy",
        setup=_existing_npy(npy=b"PK\x03\x04" + b"\x00" * 40)),
    Row("sidecars-npy-pickled-object", _embed(), 2, expect="not a readable .npy",
        setup=_existing_npy(npy=_npy_bytes(np.array([{"a": 1}], dtype=object)))),
    Row("sidecars-npy-3d", _embed(), 2, expect="float32 rows",
        setup=_existing_npy(npy=_npy_bytes(np.zeros((2, 2, 2), np.float32)))),
    Row("sidecars-npy-int", _embed(), 2, expect="float32 rows",
        setup=_existing_npy(npy=_npy_bytes(np.zeros((2, 6), np.int64)))),
    Row("sidecars-wrong-width", _embed(), 2, expect="wide", setup=_existing_npy(dim=5)),
    Row("sidecars-overwrite-replaces-bad", _embed(EMB, "{ws}/images", "{out}/e.npy", "--overwrite"), 0,
        expect="2 rows", setup=_existing_npy(npy=b"PK\x03\x04junk", sidecar=[1, 2]), creates=("e.npy",)),
    Row("sidecars-overwrite-replaces-wrong-width", _embed(EMB, "{ws}/images", "{out}/e.npy", "--overwrite"), 0,
        expect="2 rows", setup=_existing_npy(dim=5), creates=("e.npy",)),
    Row("sidecars-parquet-garbage", _embed(EMB, "{ws}/images", "{out}/e.parquet"), 2,
        expect="not a readable", setup=lambda ws, out: (out / "e.parquet").write_bytes(b"garbage")),

    # -- outputs -----------------------------------------------------------------------------------
    Row("outputs-embed-onto-model", _embed(EMB, "{ws}/images", EMB, "--format", "npy", "--overwrite"), 2,
        expect="is an input"),
    Row("outputs-embed-onto-model-symlink", _embed(EMB, "{ws}/images", "{out}/link.npy", "--overwrite"), 2,
        expect="is an input", setup=lambda ws, out: os.symlink(ws / "models" / "emb.onnx", out / "link.npy")),
    Row("outputs-embed-onto-image", _embed(EMB, "{ws}/images", "{ws}/images/a.jpg", "--format", "npy",
                                           "--overwrite"), 2, expect="is an input"),
    Row("outputs-embed-onto-image-dotted", _embed(EMB, "{ws}/images", "{ws}/images/../images/b.png", "--format",
                                                  "parquet", "--overwrite"), 2, expect="is an input"),
    Row("outputs-embed-is-directory", _embed(EMB, "{ws}/images", "{out}/d.npy"), 2, expect="is a directory",
        setup=lambda ws, out: (out / "d.npy").mkdir()),
    Row("outputs-embed-is-directory-overwrite", _embed(EMB, "{ws}/images", "{out}/d.npy", "--overwrite"), 2,
        expect="is a directory", setup=lambda ws, out: (out / "d.npy").mkdir()),
    Row("outputs-embed-parent-is-file", _embed(EMB, "{ws}/images", "{out}/f/e.npy"), 2,
        setup=lambda ws, out: (out / "f").write_text("x")),
    Row("outputs-embed-sidecar-is-directory", _embed(), 2, expect="is a directory",
        setup=lambda ws, out: (out / "e.npy.json").mkdir()),
    Row("outputs-embed-bad-suffix", _embed(EMB, "{ws}/images", "{out}/e.csv"), 2, expect="--format"),
    Row("outputs-embed-fifo", _embed(EMB, "{ws}/images", "{out}/p.npy", "--overwrite"), 2,
        expect="not a regular file", setup=lambda ws, out: os.mkfifo(out / "p.npy")),
    Row("outputs-embed-empty-name", _embed(EMB, "{ws}/images", ""), 2),
    Row("outputs-check-json-directory", _check("--json", "{out}/d"), 2, expect="is a directory",
        setup=lambda ws, out: (out / "d").mkdir()),
    Row("outputs-export-onto-file", ["export", "--variant", "18", "-o", "{out}/file"], 2, expect="file",
        setup=lambda ws, out: (out / "file").write_text("x")),
    Row("outputs-calibrate-onto-model", ["calibrate", CLS, "--calib-data", "synthetic:8", "-o", CLS], 2,
        expect="overwrite"),
    Row("outputs-calibrate-onto-calib-data", ["calibrate", CLS, "--calib-data", "{ws}/calib/batch.npy",
                                              "--int8-target", "onnxruntime", "-o", "{ws}/calib/batch.npy"], 2,
        expect="is an input"),
    Row("outputs-bench-plot-suffix", ["bench", CLS, "--backends", "onnxruntime", "--plot", "{out}/x.txt"], 2,
        expect=".png"),
    Row("outputs-triton-repo-onto-file", ["triton-repo", "{ws}/exports/ok", "-o", "{out}/file"], 2,
        setup=lambda ws, out: (out / "file").write_text("x")),

    # -- options -----------------------------------------------------------------------------------
    Row("options-threads-negative-infer", _infer(CLS, *ORT, "--threads", "-4"), 2, expect="--threads"),
    Row("options-threads-negative-infer-openvino", _infer(CLS, "--backend", "openvino", "--threads", "-4"), 2,
        expect="--threads"),
    Row("options-threads-negative-infer-torch", _infer("18", "--threads", "-4"), 2, expect="--threads"),
    Row("options-threads-zero-embed", _embed(EMB, "{ws}/images", "{out}/e.npy", "--threads", "0"), 2,
        expect="--threads"),
    Row("options-threads-negative-check", _check("--threads", "-4"), 2, expect="--threads"),
    Row("options-threads-negative-bench", ["bench", CLS, "--backends", "onnxruntime", "--threads", "-4"], 2,
        expect="--threads"),
    Row("options-threads-text", _infer(CLS, "--threads", "many"), 2, expect="--threads"),
    Row("options-checkpoint-nan", _embed(EMB, "{ws}/images", "{out}/e.npy", "--checkpoint-every", "nan"), 2,
        expect="--checkpoint-every"),
    Row("options-checkpoint-inf", _embed(EMB, "{ws}/images", "{out}/e.npy", "--checkpoint-every", "inf"), 2,
        expect="--checkpoint-every"),
    Row("options-checkpoint-negative", _embed(EMB, "{ws}/images", "{out}/e.npy", "--checkpoint-every", "-1"), 2,
        expect="--checkpoint-every"),
    Row("options-batch-size-zero-embed", _embed(EMB, "{ws}/images", "{out}/e.npy", "--batch-size", "0"), 2,
        expect="--batch-size"),
    Row("options-batch-size-huge-infer", _infer(CLS, *ORT, "--batch-size", "99999999999999999999"), 2,
        expect="--batch-size"),
    Row("options-workers-zero", _infer(CLS, *ORT, "--workers", "0"), 2, expect="--workers"),
    Row("options-top-k-zero", _infer(CLS, *ORT, "--top-k", "0"), 2, expect="--top-k"),
    Row("options-top-k-text", _infer(CLS, *ORT, "--top-k", "1.5"), 2, expect="--top-k"),
    Row("options-labels-binary", _infer(CLS, *ORT, "--labels", "{ws}/labels/binary.txt"), 2,
        expect="UTF-8"),
    Row("options-labels-directory", _infer(CLS, *ORT, "--labels", "{ws}/labels"), 2, expect="is a directory"),
    Row("options-labels-wrong-count", _infer(CLS, *ORT, "--labels", "{ws}/labels/three.txt"), 2,
        expect="3 names"),
    Row("options-labels-empty", _infer(CLS, *ORT, "--labels", "{ws}/labels/empty.txt"), 2, expect="0 names"),
    Row("options-labels-fifo", _infer(CLS, *ORT, "--labels", "{ws}/fifo_dir/pipe.jpg"), 2,
        expect="not a regular file (a FIFO)"),
    Row("options-labels-ok", _infer(CLS, *ORT, "--labels", "{ws}/labels/four.txt"), 0, expect="owl"),
    Row("options-check-shapes-tiny", _check("--shapes", "1x3x8x8"), 2, expect="at least 32"),
    Row("options-check-shapes-zero", _check("--shapes", "0x3x224x224"), 2, expect="bad shape"),
    Row("options-check-shapes-foo", _check("--shapes", "foo"), 2, expect="bad shape"),
    Row("options-check-shapes-channels", _check("--shapes", "1x4x64x64"), 2, expect="Nx3xHxW"),
    Row("options-check-shapes-empty", _check("--shapes", ","), 2, expect="--shapes"),
    Row("options-check-ok", _check("--shapes", "1x3x32x32"), 0),
    Row("options-check-max-images-zero", _check("--max-images", "0"), 2, expect="--max-images"),
    Row("options-check-tolerance-nan", _check("--min-cosine", "nan"), 2, expect="--min-cosine"),
    Row("options-export-check-shapes-zero", ["export", "--variant", "18", "--check-shapes", "0x3x224x224",
                                             "-o", "{out}/x"], 2, expect="bad shape"),
    Row("options-export-check-shapes-foo", ["export", "--variant", "18", "--check-shapes", "foo", "-o",
                                            "{out}/x"], 2, expect="bad shape"),
    Row("options-export-check-shapes-tiny", ["export", "--variant", "18", "--check-shapes", "1x3x8x8", "-o",
                                             "{out}/x"], 2, expect="at least 32"),
    Row("options-export-opset-text", ["export", "--variant", "18", "--opset", "abc", "-o", "{out}/x"], 2,
        expect="--opset"),
    Row("options-export-unknown-flag", ["export", "--variant", "18", "--bogus", "-o", "{out}/x"], 2,
        expect="--bogus"),
    Row("options-export-unknown-flag-subprocess", ["export", "--bogus"], 2, expect="--bogus", subprocess=True),
    Row("options-export-variant-unknown", ["export", "--variant", "51", "-o", "{out}/x"], 2,
        expect="unknown variant"),
    Row("options-export-variant-directory", ["export", "--variant", "{ws}/models", "-o", "{out}/x"], 2,
        expect="unknown variant"),
    Row("options-export-num-classes-zero", ["export", "--variant", "18", "--num-classes", "0", "-o", "{out}/x"],
        2, expect="--num-classes"),
    Row("options-export-int8-no-calib", ["export", "--variant", "18", "--int8", "-o", "{out}/x"], 2,
        expect="--calib-data"),
    Row("options-export-workspace-nan", ["export", "--variant", "18", "--workspace", "nan", "-o", "{out}/x"], 2,
        expect="--workspace"),
    Row("options-calibrate-size-negative", ["calibrate", CLS, "--calib-data", "synthetic:8", "--calib-size",
                                            "-1", "-o", "{out}/q.onnx"], 2, expect="--calib-size"),
    Row("options-calibrate-percentile-nan", ["calibrate", CLS, "--calib-data", "synthetic:8", "--calib-method",
                                             "percentile", "--percentile", "nan", "-o", "{out}/q.onnx"], 2,
        expect="--percentile"),
    Row("options-calibrate-shape-foo", ["calibrate", CLS, "--calib-data", "synthetic:8", "--shape", "foo", "-o",
                                        "{out}/q.onnx"], 2, expect="bad shape"),
    Row("options-calibrate-shape-tiny", ["calibrate", CLS, "--calib-data", "synthetic:8", "--shape",
                                         "8x3x8x8", "-o", "{out}/q.onnx"], 2, expect="at least 32"),
    Row("options-calibrate-holdout-negative", ["calibrate", CLS, "--calib-data", "synthetic:8", "--holdout",
                                               "-1", "-o", "{out}/q.onnx"], 2, expect="--holdout"),
    Row("options-bench-batch-zero", ["bench", CLS, "--backends", "onnxruntime", "--batch-sizes", "0"], 2,
        expect="--batch-sizes"),
    Row("options-bench-rounds-zero", ["bench", CLS, "--backends", "onnxruntime", "--rounds", "0"], 2,
        expect="--rounds"),
    Row("options-bench-duration-nan", ["bench", CLS, "--backends", "onnxruntime", "--duration", "nan"], 2,
        expect="--duration"),
    Row("options-bench-pause-negative", ["bench", CLS, "--backends", "onnxruntime", "--pause-ms", "-5"], 2,
        expect="--pause-ms"),
    Row("options-bench-warmup-bogus", ["bench", CLS, "--backends", "onnxruntime", "--warmup", "soon"], 2,
        expect="warmup"),
    Row("options-bench-shapes-tiny", ["bench", CLS, "--backends", "onnxruntime", "--shapes", "8x8"], 2,
        expect="at least 32"),
    Row("options-build-min-shape-foo", ["build", CLS, "-o", "{out}/x.engine", "--min-shape", "foo",
                                          "--max-shape", "1x3x64x64"], 2,
        expect="bad shape"),
    Row("options-unknown-command", ["frobnicate"], 2, expect="frobnicate"),
    Row("options-no-command", [], 2, one_line=False),
    Row("options-embed-num-actors-local", _embed(EMB, "{ws}/images", "{out}/e.npy", "--num-actors", "2"), 2,
        expect="--executor ray"),
    Row("options-triton-repo-max-batch-zero", ["triton-repo", "{ws}/exports/ok", "-o", "{out}/repo",
                                               "--max-batch-size", "0"], 2, expect="--max-batch-size"),
]


# -- running one row -------------------------------------------------------------------------------

class _RowTimeout(Exception):
    pass


def _run_inprocess(argv: list[str], capsys) -> tuple[int | None, str, str]:
    def alarm(signum, frame):
        raise _RowTimeout(f"row still running after {ROW_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(ROW_TIMEOUT_S)
    code: int | None
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - an escaped exception is exactly what this table looks for
        traceback.print_exc()
        code = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    return code, out, err


def _run_subprocess(argv: list[str], cwd: Path) -> tuple[int | None, str, str]:
    env = dict(os.environ, RESNET_DEPLOY_PROGRESS="0",
               PYTHONPATH=os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli.main", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=ROW_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err + f"\n(hung: killed after {ROW_TIMEOUT_S} s)"
    return proc.returncode, out, err


def _error_lines(err: str) -> list[str]:
    """stderr without log lines (``[W] ...``) and blank lines."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("[")]


def test_table_is_large_and_covers_every_category():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), "duplicate row ids"
    assert len(ROWS) >= 100
    categories = {r.id.split("-")[0] for r in ROWS}
    assert categories == {"weights", "artifacts", "images", "manifests", "sidecars", "options", "outputs"}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: Row, ws: Path, large_hashes, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if row.setup is not None:
        row.setup(ws, out)
    argv = [a.format(ws=ws, out=out) for a in row.argv]
    inputs_before, out_before = snapshot(ws), snapshot(out)
    if row.subprocess:
        code, stdout, err = _run_subprocess(argv, tmp_path)
    else:
        code, stdout, err = _run_inprocess(argv, capsys)
    report = f"argv: {argv}\nexit: {code}\nstdout:\n{stdout[-2000:]}\nstderr:\n{err[-3000:]}"

    assert code in (0, 1, 2), report
    assert code == row.code, report
    for bad in FORBIDDEN:
        assert bad not in err and bad not in stdout, f"{bad!r} printed\n{report}"
    assert _diff(inputs_before, snapshot(ws)) == [], f"an input changed\n{report}"
    out_diff = _diff(out_before, snapshot(out))
    if code != 0:
        if code == 2:  # bad input writes nothing (a failed check, exit 1, keeps its artifacts to inspect)
            assert out_diff == [], f"a failure left files behind\n{report}"
        if row.one_line:
            lines = _error_lines(err)
            assert len(lines) == 1, f"expected one error line on stderr, got {len(lines)}\n{report}"
        for text in row.expect:
            assert text in err, f"{text!r} not in stderr\n{report}"
    else:
        for name in row.creates:
            assert (out / name).exists(), f"{name} was not written\n{report}"
        for text in row.expect:
            assert text in stdout, f"{text!r} not in stdout\n{report}"
    assert not [p for p in out.rglob("*.tmp")], f"a temporary file was left\n{report}"
