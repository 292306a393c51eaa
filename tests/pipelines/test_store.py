"""Embedding files: .npy + sidecar and Parquet, appended atomically, resumable after a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resnet_deploy.errors import UsageError
from resnet_deploy.pipelines.store import EmbeddingWriter, output_format, read_embeddings, sidecar_path

FORMATS = ["npy", pytest.param("parquet", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("pyarrow") is None, reason="needs pyarrow"))]


def rows(n: int, dim: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_append_and_resume(tmp_path, fmt):
    out = tmp_path / f"emb.{fmt}"
    meta = {"model_id": "sha256:abc", "preprocessing": {"crop_size": 64}}
    a, b = rows(3), rows(2, seed=1)
    w = EmbeddingWriter(out, metadata=meta)
    assert w.done == set()
    w.add(["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"], a)
    w.flush()
    paths, emb, m = read_embeddings(out)
    assert paths == ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"]
    np.testing.assert_array_equal(emb, a)
    assert m["rows"] == 3 and m["dim"] == 6 and m["model_id"] == "sha256:abc"

    w2 = EmbeddingWriter(out, metadata=meta)  # a rerun
    assert w2.done == {"/x/a.jpg", "/x/b.jpg", "/x/c.jpg"} and w2.rows == 3
    w2.add(["/x/d.jpg", "/x/e.jpg"], b)
    w2.flush()
    paths, emb, _ = read_embeddings(out)
    assert paths[3:] == ["/x/d.jpg", "/x/e.jpg"]
    np.testing.assert_array_equal(emb, np.concatenate([a, b]))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))  # temporaries renamed away


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_refuses_another_model_or_width(tmp_path, fmt):
    out = tmp_path / f"emb.{fmt}"
    w = EmbeddingWriter(out, metadata={"model_id": "sha256:abc"})
    w.add(["a"], rows(1))
    w.flush()
    with pytest.raises(UsageError, match="model id"):
        EmbeddingWriter(out, metadata={"model_id": "sha256:def"})
    with pytest.raises(UsageError, match="6-wide"):
        EmbeddingWriter(out, metadata={"model_id": "sha256:abc", "dim": 8})
    fresh = EmbeddingWriter(out, resume=False, metadata={"model_id": "sha256:def", "dim": 8})
    assert fresh.done == set()
    fresh.flush()  # --overwrite with nothing new still replaces the old file
    paths, emb, _ = read_embeddings(out)
    assert paths == [] and emb.shape == (0, 8)


def test_npy_rows_beyond_the_sidecar_are_dropped(tmp_path):
    out = tmp_path / "emb.npy"
    w = EmbeddingWriter(out)
    w.add(["a", "b"], rows(2))
    w.flush()
    # a crash between writing the .npy and its sidecar: the .npy holds a row the sidecar does not list
    np.save(out, np.concatenate([rows(2), rows(1, seed=9)]))
    w2 = EmbeddingWriter(out)
    assert w2.rows == 2
    w2.add(["c"], rows(1, seed=2))
    w2.flush()
    paths, emb, _ = read_embeddings(out)
    assert paths == ["a", "b", "c"]
    np.testing.assert_array_equal(emb, np.concatenate([rows(2), rows(1, seed=2)]))
    assert np.load(out).shape == (3, 6)


def test_broken_existing_files(tmp_path):
    out = tmp_path / "emb.npy"
    np.save(out, rows(2))
    with pytest.raises(UsageError, match="sidecar"):
        EmbeddingWriter(out)
    sidecar_path(out).write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        EmbeddingWriter(out)
    sidecar_path(out).write_text(json.dumps({"paths": ["a", "b", "c"]}))
    with pytest.raises(UsageError, match="2 rows but its sidecar lists 3"):
        EmbeddingWriter(out)
    EmbeddingWriter(out, resume=False)  # --overwrite ignores what is there


def test_format_from_suffix():
    assert output_format("x.npy") == "npy"
    assert output_format("x.PARQUET") == "parquet"
    assert output_format("x.bin", "npy") == "npy"
    with pytest.raises(UsageError, match="suffix"):
        output_format("x.bin")
    with pytest.raises(UsageError, match="unknown format"):
        output_format("x.npy", "csv")
