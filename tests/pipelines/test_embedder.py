"""Embedder: one embedding API over every backend, batched, thread-safe, skipping unreadable images."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_deploy.errors import UsageError
from resnet_deploy.models import create_model
from resnet_deploy.models.heads import EmbeddingModel
from resnet_deploy.models.preprocessing import ImageError, preprocess_many
from resnet_deploy.models.transforms import Preprocessing
from resnet_deploy.pipelines import Embedder, ImageModel
from resnet_deploy.runtime import openvino_available
from resnet_deploy.runtime.base import Runner, RunnerInfo, TensorSpec

skdata = pytest.importorskip("skimage.data")

PREP = Preprocessing(resize_size=72, crop_size=64)


def _export(out: Path, ckpt: Path, **kw) -> Path:
    from resnet_deploy.export import ExportConfig, export_model

    cfg = ExportConfig(variant="18", weights=str(ckpt), output_dir=out, exporter="torchscript", simplify=False,
                       check_shapes=((1, 3, 64, 64), (2, 3, 64, 96)), **kw)
    return export_model(cfg).onnx_path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A ResNet-18 checkpoint whose preprocessing record is 72 -> 64, its embedding ONNX (plain and
    with fused uint8 preprocessing), and a few photos."""
    root = tmp_path_factory.mktemp("embedder")
    model, _ = create_model("18", seed=3)
    ckpt = root / "r18.pth"
    torch.save({"state_dict": model.state_dict(), "preprocessing": PREP.to_dict()}, ckpt)
    onnx = _export(root / "emb", ckpt, head="embedding")
    fused = _export(root / "u8", ckpt, head="embedding", fuse_preprocess=True)
    imgs = root / "imgs"
    imgs.mkdir()
    paths = []
    for i, arr in enumerate((skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket(),
                             skdata.coffee()[::-1])):
        p = imgs / f"img{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return {"ckpt": ckpt, "onnx": onnx, "fused": fused, "paths": paths, "model": model}


@pytest.fixture(scope="module")
def reference_rows(assets):
    """Embeddings computed directly: preprocessing + the PyTorch module, no Embedder involved."""
    batch = torch.from_numpy(preprocess_many(assets["paths"], PREP))
    with torch.no_grad():
        return EmbeddingModel(assets["model"]).eval()(batch).numpy()


def test_onnx_embedder_matches_pytorch(assets, reference_rows):
    with Embedder(assets["onnx"], backend="onnxruntime", batch_size=2) as emb:
        assert emb.backend == "onnxruntime"
        assert emb.preprocessing == PREP  # read from the artifact's metadata
        assert emb.dim == 512 and emb.head == "embedding"
        rows = emb.embed(assets["paths"])
    assert rows.shape == (5, 512) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, reference_rows, rtol=1e-4, atol=1e-4)


def test_variant_name_builds_the_torch_reference(assets, reference_rows):
    with Embedder("resnet18", weights=str(assets["ckpt"])) as emb:
        assert emb.backend == "torch" and emb.head == "embedding"
        assert emb.preprocessing == PREP  # from the checkpoint's record
        np.testing.assert_allclose(emb.embed(assets["paths"][:2]), reference_rows[:2], rtol=1e-5, atol=1e-5)
    module = EmbeddingModel(assets["model"]).eval()
    with Embedder(module, preprocessing=PREP) as emb:
        assert emb.head == "embedding" and emb.dim == 512
        np.testing.assert_allclose(emb.embed(assets["paths"][4]), reference_rows[4:], rtol=1e-5, atol=1e-5)


def test_any_mix_of_sources(assets):
    path = assets["paths"][0]
    with Embedder(assets["onnx"], backend="onnxruntime") as emb:
        by_path = emb.embed([path])
        with Image.open(path) as im:
            mixed = emb.embed([str(path), path.read_bytes(), im, np.asarray(im.convert("RGB"))])
        assert mixed.shape == (4, 512)
        for row in mixed:
            np.testing.assert_allclose(row, by_path[0], rtol=1e-5, atol=1e-5)
        pre = preprocess_many([path, path], PREP)
        np.testing.assert_allclose(emb.embed(pre), emb.embed_batch(pre), rtol=0, atol=0)
        np.testing.assert_allclose(emb.embed(pre)[1], by_path[0], rtol=1e-5, atol=1e-5)
        assert emb.embed([]).shape == (0, 512)


def test_batch_size_does_not_change_results(assets):
    with Embedder(assets["onnx"], backend="onnxruntime", batch_size=2, workers=3) as small, \
            Embedder(assets["onnx"], backend="onnxruntime", batch_size=64, workers=1) as big:
        np.testing.assert_allclose(small.embed(assets["paths"]), big.embed(assets["paths"]), rtol=1e-5, atol=1e-5)
        with pytest.raises(UsageError, match="batch_size"):
            Embedder(assets["onnx"], backend="onnxruntime", batch_size=0)


def test_iter_embed_skips_unreadable(assets, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(assets["paths"][0].read_bytes()[:1500])
    missing = tmp_path / "missing.png"
    items = [assets["paths"][0], bad, assets["paths"][1], missing, assets["paths"][2]]
    errors = []
    with Embedder(assets["onnx"], backend="onnxruntime", batch_size=2) as emb:
        got = list(emb.iter_embed(items, on_error=lambda p, e: errors.append((p, e))))
        ok = [p for chunk, _ in got for p in chunk]
        rows = np.concatenate([r for _, r in got])
        assert ok == [assets["paths"][0], assets["paths"][1], assets["paths"][2]]
        assert [p for p, _ in errors] == [bad, missing]
        assert all(isinstance(e, ImageError) for _, e in errors)
        np.testing.assert_allclose(rows, emb.embed(ok), rtol=1e-5, atol=1e-5)
        with pytest.raises(ImageError, match="broken.jpg"):  # embed() must return a row per item: it raises
            emb.embed(items)


def test_thread_safe(assets, reference_rows):
    results: dict[int, np.ndarray] = {}
    failures = []
    with Embedder(assets["onnx"], backend="onnxruntime", batch_size=2, workers=2) as emb:
        def work(i: int) -> None:
            try:
                order = list(np.roll(np.arange(5), i))
                results[i] = emb.embed([assets["paths"][j] for j in order])[np.argsort(order)]
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures
    for rows in results.values():
        np.testing.assert_allclose(rows, reference_rows, rtol=1e-4, atol=1e-4)


def test_fused_preprocess_artifact(assets, reference_rows):
    with Embedder(assets["fused"], backend="onnxruntime") as emb:
        assert emb.uint8_input
        rows = emb.embed(assets["paths"])
        np.testing.assert_allclose(rows, reference_rows, rtol=1e-4, atol=1e-4)
        u8 = preprocess_many(assets["paths"][:2], PREP, uint8=True)
        np.testing.assert_allclose(emb.embed(u8), rows[:2], rtol=1e-5, atol=1e-5)  # prepared NHWC batch
        with pytest.raises(UsageError, match="uint8"):
            emb.embed([np.zeros((3, 64, 64), np.float32)])


@pytest.mark.skipif(not openvino_available(), reason="needs openvino")
def test_openvino_stream_path(assets, reference_rows):
    with Embedder(assets["onnx"], backend="openvino", batch_size=2) as emb:
        assert emb.backend == "openvino"
        got = list(emb.iter_embed(assets["paths"]))
    assert [len(c) for c, _ in got] == [2, 2, 1]
    np.testing.assert_allclose(np.concatenate([r for _, r in got]), reference_rows, rtol=1e-3, atol=1e-3)


def test_logits_artifact_warns(assets, caplog):
    model = assets["model"]
    with caplog.at_level(logging.WARNING, logger="resnet_deploy"):
        with Embedder(model, preprocessing=PREP) as emb:  # a bare ResNet: logits
            rows = emb.embed(assets["paths"][:1])
    assert rows.shape == (1, 1000)
    assert any("logits head" in r.getMessage() for r in caplog.records)


class _StaticBatchRunner(Runner):
    """A runner whose input has a fixed batch of 4 (like a static engine): returns each row's mean."""

    def __init__(self) -> None:
        self.inputs = [TensorSpec("input", np.dtype(np.float32), (4, 3, 64, 64))]
        self.outputs = [TensorSpec("out", np.dtype(np.float32), (4, 1))]
        self.info = RunnerInfo(backend="fake")
        self.calls: list[int] = []

    def _infer(self, feeds):
        x = feeds["input"]
        self.calls.append(len(x))
        return {"out": x.reshape(len(x), -1).mean(axis=1, keepdims=True)}


def test_static_batch_is_padded_and_split():
    runner = _StaticBatchRunner()
    model = ImageModel(runner, batch_size=32, preprocessing=PREP)
    assert model.batch_size == 4
    batch = np.random.default_rng(0).standard_normal((6, 3, 64, 64)).astype(np.float32)
    out = model.run_batch(batch)
    assert out.shape == (6, 1)
    np.testing.assert_allclose(out[:, 0], batch.reshape(6, -1).mean(axis=1), rtol=1e-5)
    assert runner.calls == [4, 4]  # the 2 leftover rows were padded to the fixed batch
    model.close()
