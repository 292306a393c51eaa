"""``resnet-deploy infer`` and ``resnet-deploy embed`` end to end on ResNet-18."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_deploy.cli.infer import class_labels, softmax, top_k
from resnet_deploy.cli.main import main
from resnet_deploy.data import imagenet_classes
from resnet_deploy.errors import UsageError
from resnet_deploy.models import create_model
from resnet_deploy.models.preprocessing import preprocess_many
from resnet_deploy.models.transforms import Preprocessing
from resnet_deploy.pipelines import Embedder
from resnet_deploy.pipelines.store import read_embeddings, sidecar_path
from resnet_deploy.runtime import load_runner

skdata = pytest.importorskip("skimage.data")

PREP = Preprocessing(resize_size=72, crop_size=64)


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    (d / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(skdata.chelsea()).save(d / "chelsea.jpg", quality=90)
    Image.fromarray(skdata.coffee()).save(d / "nested" / "coffee.png")
    Image.fromarray(skdata.astronaut()).save(d / "nested" / "deeper" / "astronaut.webp")
    Image.fromarray(skdata.rocket()).convert("L").save(d / "rocket_gray.jpg")
    (d / "broken.jpg").write_bytes((d / "chelsea.jpg").read_bytes()[:2500])
    (d / "readme.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def embedding_onnx(tmp_path_factory):
    """ResNet-18 with the embedding head; its weights record preprocessing 72 -> 64."""
    from resnet_deploy.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("emb")
    model, _ = create_model("18", seed=5)
    ckpt = root / "r18.pth"
    torch.save({"state_dict": model.state_dict(), "preprocessing": PREP.to_dict()}, ckpt)
    cfg = ExportConfig(variant="18", weights=str(ckpt), head="embedding", output_dir=root / "out",
                       exporter="torchscript", simplify=False, check_shapes=((1, 3, 64, 64), (2, 3, 64, 96)))
    return export_model(cfg).onnx_path


# -- infer -------------------------------------------------------------------------------------

def test_infer_json_top_k_with_names(resnet18_onnx, photos, capsys):
    images = [photos / "chelsea.jpg", photos / "broken.jpg", photos / "nested" / "coffee.png"]
    code, out, _ = cli(capsys, "infer", "--model", resnet18_onnx, *images, "--top-k", 3, "--json",
                       "--backend", "onnxruntime")
    assert code == 2  # one image was unreadable; the others still ran
    data = json.loads(out)
    assert data["backend"] == "onnxruntime"
    results = data["results"]
    assert [r["image"] for r in results] == [str(p) for p in images]
    assert "truncated" in results[1]["error"] and "top_k" not in results[1]
    # independent computation: preprocessing + runner + softmax
    ok = [images[0], images[2]]
    with load_runner(resnet18_onnx, backend="onnxruntime") as runner:
        logits = runner.infer(preprocess_many(ok, Preprocessing()))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    names = imagenet_classes()
    for r, p in zip([results[0], results[2]], probs):
        top = r["top_k"]
        assert len(top) == 3
        assert [t["index"] for t in top] == list(np.argsort(-p)[:3])
        np.testing.assert_allclose([t["probability"] for t in top], np.sort(p)[::-1][:3], rtol=1e-4)
        assert [t["label"] for t in top] == [names[t["index"]] for t in top]


def test_infer_table(resnet18_onnx, photos, capsys):
    code, out, _ = cli(capsys, "infer", "-m", resnet18_onnx, photos / "chelsea.jpg", "--top-k", 2,
                       "--backend", "onnxruntime")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("backend: onnxruntime (cpu, fp32)")
    assert lines[1].endswith("chelsea.jpg")
    assert len(lines) == 4 and lines[2].strip().startswith("1.") and lines[3].strip().startswith("2.")
    index = int(lines[2].split()[1])
    assert lines[2].rstrip().endswith(imagenet_classes()[index])


def test_infer_refuses_embedding_heads_and_bad_args(embedding_onnx, resnet18_onnx, photos, capsys):
    code, _, err = cli(capsys, "infer", "-m", embedding_onnx, photos / "chelsea.jpg", "--backend", "onnxruntime")
    assert code == 2 and "resnet-deploy embed" in err
    code, _, err = cli(capsys, "infer", "-m", resnet18_onnx, photos / "chelsea.jpg", "--top-k", 0)
    assert code == 2 and "--top-k" in err
    code, _, err = cli(capsys, "infer", "-m", resnet18_onnx, photos / "chelsea.jpg", "--weights", "imagenet")
    assert code == 2 and "variant name" in err


def test_top_k_labels_and_softmax(tmp_path):
    logits = np.array([[1.0, 3.0, 3.0, -2.0], [1000.0, 0.0, 999.0, 0.0]])
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.isfinite(p).all()  # large logits do not overflow
    preds = top_k(logits, 2, ["a", "b", "c", "d"])
    assert [x.index for x in preds[0]] == [1, 2]  # ties keep the lower index first
    assert [x.label for x in preds[1]] == ["a", "c"]
    assert len(top_k(logits, 10)[0]) == 4 and top_k(logits, 1)[0][0].label is None
    assert class_labels(1000, None)[:2] == ["tench", "goldfish"] and class_labels(10, None) is None
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    assert class_labels(2, str(labels)) == ["cat", "dog"]
    with pytest.raises(UsageError, match="2 names but the model has 3"):
        class_labels(3, str(labels))


def test_imagenet_classes_package_data():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[281] == "tabby" and names[999] == "toilet tissue"


# -- embed -------------------------------------------------------------------------------------

def _readable(photos: Path) -> list[str]:
    return sorted(str(p) for p in photos.rglob("*") if p.suffix in (".jpg", ".png", ".webp")
                  and p.name != "broken.jpg")


def test_embed_npy_resume_and_append(embedding_onnx, photos, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    code, stdout, err = cli(capsys, "embed", "--model", embedding_onnx, photos, "--output", out,
                            "--batch-size", 2, "--backend", "onnxruntime")
    assert code == 0, err
    assert "backend: onnxruntime" in stdout and "4 new" in stdout and "1 unreadable skipped" in stdout
    assert "broken.jpg" in err  # reported, not fatal
    rows = np.load(out)
    meta = json.loads(sidecar_path(out).read_text())
    assert rows.shape == (4, 512) and rows.dtype == np.float32
    assert meta["paths"] == _readable(photos)  # sorted, recursive, absolute
    assert meta["dim"] == 512 and meta["head"] == "embedding" and meta["model_id"].startswith("sha256:")
    assert [f["path"] for f in meta["failed"]] == [str(photos / "broken.jpg")]
    with Embedder(embedding_onnx, backend="onnxruntime") as emb:
        np.testing.assert_allclose(rows, emb.embed(meta["paths"]), rtol=1e-5, atol=1e-5)

    code, stdout, _ = cli(capsys, "embed", "-m", embedding_onnx, photos, "-o", out, "--backend", "onnxruntime")
    assert code == 0 and "0 new" in stdout and "4 already there" in stdout
    np.testing.assert_array_equal(np.load(out), rows)

    extra = tmp_path / "more"
    extra.mkdir()
    for p in photos.rglob("*"):
        if p.is_file():
            (extra / p.name).write_bytes(p.read_bytes())
    Image.fromarray(skdata.camera()).save(extra / "camera.png")
    out2 = tmp_path / "emb2.npy"
    assert cli(capsys, "embed", "-m", embedding_onnx, extra, "-o", out2, "--backend", "onnxruntime")[0] == 0
    (extra / "zzz_new.jpg").write_bytes((photos / "chelsea.jpg").read_bytes())
    before = np.load(out2)
    code, stdout, _ = cli(capsys, "embed", "-m", embedding_onnx, extra, "-o", out2, "--backend", "onnxruntime")
    assert code == 0 and "1 new" in stdout
    after = np.load(out2)
    np.testing.assert_array_equal(after[:len(before)], before)  # old rows untouched, the new one appended
    np.testing.assert_allclose(after[-1], after[[i for i, p in enumerate(
        json.loads(sidecar_path(out2).read_text())["paths"]) if p.endswith("/chelsea.jpg")][0]], rtol=1e-5,
        atol=1e-5)


def test_embed_parquet_matches_npy(embedding_onnx, photos, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    npy, pq = tmp_path / "e.npy", tmp_path / "e.parquet"
    assert cli(capsys, "embed", "-m", embedding_onnx, photos, "-o", npy, "--backend", "onnxruntime")[0] == 0
    assert cli(capsys, "embed", "-m", embedding_onnx, photos, "-o", pq, "--backend", "onnxruntime",
               "--workers", 1)[0] == 0
    p1, e1, _ = read_embeddings(npy)
    p2, e2, meta = read_embeddings(pq)
    assert p1 == p2
    np.testing.assert_allclose(e1, e2, rtol=1e-5, atol=1e-5)
    assert meta["dim"] == 512
    import pyarrow.parquet as pqm

    table = pqm.read_table(pq)
    assert table.column_names == ["path", "embedding"] and table.num_rows == 4


def test_embed_interrupted_job_resumes(embedding_onnx, photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "e.npy"
    real = Embedder.iter_embed

    def interrupted(self, paths, *a, **kw):
        for n, item in enumerate(real(self, paths, *a, **kw)):
            if n == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Embedder, "iter_embed", interrupted)
    code, _, _ = cli(capsys, "embed", "-m", embedding_onnx, photos, "-o", out, "--batch-size", 2,
                     "--backend", "onnxruntime")
    assert code == 130
    # the first batch (broken.jpg, skipped, and chelsea.jpg) finished before the interrupt and was kept
    assert np.load(out).shape == (1, 512)
    assert json.loads(sidecar_path(out).read_text())["paths"] == [str(photos / "chelsea.jpg")]
    monkeypatch.setattr(Embedder, "iter_embed", real)
    code, stdout, _ = cli(capsys, "embed", "-m", embedding_onnx, photos, "-o", out, "--backend", "onnxruntime")
    assert code == 0 and "3 new" in stdout and "1 already there" in stdout
    assert json.loads(sidecar_path(out).read_text())["paths"] == _readable(photos)


def test_embed_usage_errors(embedding_onnx, photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["-m", embedding_onnx, empty, "-o", tmp_path / "x.npy"], "no images"),
        (["-m", embedding_onnx, photos, "-o", tmp_path / "x.csv"], "--format"),
        (["-m", embedding_onnx, tmp_path / "missing", "-o", tmp_path / "x.npy"], "does not exist"),
        (["-m", embedding_onnx, photos, "-o", tmp_path / "x.npy", "--batch-size", "0"], "--batch-size"),
        (["-m", embedding_onnx, photos, "-o", tmp_path / "x.npy", "--num-actors", "2"], "--executor ray"),
        (["-m", tmp_path / "nope.onnx", photos, "-o", tmp_path / "x.npy"], "does not exist"),
    ]
    for argv, message in cases:
        code, _, err = cli(capsys, "embed", *argv)
        assert code == 2, (argv, err)
        assert message in err, (argv, err)


def test_embed_ray_executor_is_passed_through(monkeypatch, tmp_path, capsys):
    calls = []
    fake = types.ModuleType("resnet_deploy.pipelines.ray_job")
    fake.run_ray_embed = lambda *a, **kw: calls.append((a, kw)) or {"rows": 7}
    monkeypatch.setitem(sys.modules, "resnet_deploy.pipelines.ray_job", fake)
    code, out, _ = cli(capsys, "embed", "-m", "m.onnx", "imgs", "-o", "out.parquet", "--executor", "ray",
                       "--num-actors", 3, "--ray-address", "ray://head:10001", "--batch-size", 8)
    assert code == 0 and "rows: 7" in out
    (args, kwargs), = calls
    assert args == ("m.onnx", "imgs", "out.parquet")
    assert kwargs == {"backend": "auto", "batch_size": 8, "num_actors": 3, "ray_address": "ray://head:10001",
                      "device": "cpu"}


def test_failed_embed_writes_nothing_and_the_next_run_is_not_refused(embedding_onnx, photos, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_text("not a picture")
    out = tmp_path / "out" / "e.npy"
    code, _, err = cli(capsys, "embed", "-m", embedding_onnx, bad, "-o", out, "--backend", "onnxruntime")
    assert code == 2 and "no image could be embedded" in err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no 0-row .npy, no sidecar
    code, stdout, err = cli(capsys, "embed", "-m", embedding_onnx, photos, "-o", out, "--backend", "onnxruntime")
    assert code == 0 and "4 rows" in stdout, err
    rows = np.load(out)
    # every image unreadable again, with --overwrite: the good file stays as it was
    code, _, err = cli(capsys, "embed", "-m", embedding_onnx, bad, "-o", out, "--backend", "onnxruntime",
                       "--overwrite")
    assert code == 2 and "nothing written" in err
    np.testing.assert_array_equal(np.load(out), rows)


def test_overwrite_replaces_an_output_that_does_not_match(embedding_onnx, photos, tmp_path, capsys):
    out = tmp_path / "e.npy"
    np.save(out, np.ones((3, 7), np.float32))
    sidecar_path(out).write_text(json.dumps([1, 2]))
    code, _, err = cli(capsys, "embed", "-m", embedding_onnx, photos, "-o", out, "--backend", "onnxruntime")
    assert code == 2 and "not a JSON object" in err and np.load(out).shape == (3, 7)
    code, stdout, err = cli(capsys, "embed", "-m", embedding_onnx, photos, "-o", out, "--backend", "onnxruntime",
                            "--overwrite")
    assert code == 0, err
    assert np.load(out).shape == (4, 512) and len(json.loads(sidecar_path(out).read_text())["paths"]) == 4


def test_embed_checks_its_output_before_embedding(embedding_onnx, photos, tmp_path, capsys, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("embedding started before the output was checked")

    monkeypatch.setattr(Embedder, "iter_embed", never)
    model_bytes = Path(embedding_onnx).read_bytes()
    image = photos / "chelsea.jpg"
    image_bytes = image.read_bytes()
    (tmp_path / "dir.npy").mkdir()
    (tmp_path / "link.parquet").symlink_to(image)
    cases = [
        (["-o", embedding_onnx, "--format", "npy", "--overwrite"], "is an input"),
        (["-o", image, "--format", "npy", "--overwrite"], "is an input"),
        (["-o", photos / "nested" / ".." / "chelsea.jpg", "--format", "parquet"], "is an input"),
        (["-o", tmp_path / "link.parquet", "--overwrite"], "is an input"),
        (["-o", tmp_path / "dir.npy"], "is a directory"),
        (["-o", tmp_path / "dir.npy", "--overwrite"], "is a directory"),
    ]
    for extra, message in cases:
        code, _, err = cli(capsys, "embed", "-m", embedding_onnx, photos, "--backend", "onnxruntime", *extra)
        assert code == 2 and message in err, (extra, err)
        assert "Traceback" not in err
    assert Path(embedding_onnx).read_bytes() == model_bytes and image.read_bytes() == image_bytes


def test_infer_errors_go_to_stderr_and_odd_outputs_are_refused(resnet18_onnx, photos, tmp_path, capsys):
    code, out, err = cli(capsys, "infer", "-m", resnet18_onnx, photos / "chelsea.jpg", photos / "broken.jpg",
                         "--backend", "onnxruntime")
    assert code == 2 and "broken.jpg" in err and "broken.jpg" not in out and "chelsea.jpg" in out
    labels = tmp_path / "labels.bin"
    labels.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = cli(capsys, "infer", "-m", resnet18_onnx, photos / "chelsea.jpg", "--labels", labels)
    assert code == 2 and "is not UTF-8 text" in err and "Traceback" not in err
