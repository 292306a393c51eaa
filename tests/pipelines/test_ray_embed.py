"""``embed --executor ray`` on a local Ray cluster (2 CPUs): the rows equal the local ``embed``, a
broken image is skipped and reported, parts are written atomically and a rerun writes only the
missing ones (after a deleted part, or a job interrupted halfway)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.errors import UsageError
from resnet_deploy.pipelines import ray_job

ray = pytest.importorskip("ray", reason="needs ray[data]")
pytest.importorskip("ray.data", reason="needs ray[data]")
pytest.importorskip("pyarrow.parquet", reason="needs pyarrow")

PER_PART = 3


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def onnx(tmp_path_factory):
    from resnet_deploy.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("export")
    result = export_model(ExportConfig(variant="18", head="embedding", output_dir=out, exporter="torchscript",
                                       check_shapes=((2, 3, 64, 64),)))
    return result.onnx_path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Seven real photographs (scikit-image's samples, small) and one broken file."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "horse")):
        img = Image.fromarray(getattr(skimage.data, name)())
        img = img.convert("RGB")
        img.thumbnail((96, 96))
        img.save(folder / f"{i:02d}_{name}.{'png' if i % 3 == 0 else 'jpg'}")
    (folder / "sub").mkdir()
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return folder


@pytest.fixture(scope="module")
def local_rows(onnx, images, tmp_path_factory):
    """What the local ``resnet-deploy embed`` writes for the same folder."""
    from resnet_deploy.cli.main import main
    from resnet_deploy.pipelines.store import read_embeddings

    out = tmp_path_factory.mktemp("local") / "local.parquet"
    assert main(["embed", str(images), "--model", str(onnx), "--output", str(out), "--backend", "onnxruntime",
                 "--batch-size", "4"]) == 0
    paths, rows, _ = read_embeddings(out)
    return dict(zip(paths, rows))


def _run(onnx, images, out, **kw):
    return ray_job.run_ray_embed(str(onnx), str(images), out, backend="onnxruntime", batch_size=4, num_actors=1,
                                 rows_per_part=PER_PART, **kw)


@pytest.fixture(scope="module")
def first_run(cluster, onnx, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "emb.parquet"
    return out, _run(onnx, images, out)


def test_rows_equal_the_local_embed_and_the_broken_image_is_reported(first_run, local_rows, images):
    out, summary = first_run
    assert summary["parts"] == 3 and summary["parts_written"] == 3 and summary["parts_skipped"] == 0
    assert summary["rows_total"] == 8 and summary["rows_written"] == 7
    assert summary["broken"] == 1 and summary["broken_files"][0].startswith(str(images / "sub" / "broken.jpg"))
    assert sorted(p.name for p in out.iterdir()) == ["_job.json", "part-00000.parquet", "part-00001.parquet",
                                                     "part-00002.parquet"]
    paths, rows = ray_job.read_parts(out)
    assert paths == sorted(local_rows)  # same images, sorted, the broken one left out by both
    for path, row in zip(paths, rows):
        ref = local_rows[path]
        np.testing.assert_allclose(row, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))
    job = json.loads((out / "_job.json").read_text())
    assert job["inputs"] == 8 and job["rows_per_part"] == PER_PART and job["model_id"].startswith("sha256:")


def _stamp(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("part-*.parquet"))}


def test_rerun_writes_only_the_deleted_part(first_run, onnx, images):
    out, _ = first_run
    before = _stamp(out)
    _, rows_before = ray_job.read_parts(out)
    again = _run(onnx, images, out)
    assert again["parts_written"] == 0 and again["parts_skipped"] == 3 and again["broken"] == 1
    assert _stamp(out) == before
    (out / "part-00001.parquet").unlink()
    third = _run(onnx, images, out)
    assert third["parts_written"] == 1 and third["parts_skipped"] == 2 and third["rows_written"] == PER_PART
    after = _stamp(out)
    assert after["part-00000.parquet"] == before["part-00000.parquet"]
    assert after["part-00002.parquet"] == before["part-00002.parquet"]
    assert after["part-00001.parquet"] != before["part-00001.parquet"]
    _, rows_after = ray_job.read_parts(out)
    np.testing.assert_allclose(rows_after, rows_before, rtol=0, atol=1e-5)


def test_a_job_stopped_halfway_is_completed_by_a_rerun(cluster, onnx, images, tmp_path, monkeypatch, first_run):
    out = tmp_path / "emb.parquet"
    real = ray_job.write_part
    written = []

    def stop_after_one(path, *args, **kwargs):
        if written:
            raise KeyboardInterrupt  # the job is stopped while the second part is being written
        real(path, *args, **kwargs)
        written.append(path)

    monkeypatch.setattr(ray_job, "write_part", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        _run(onnx, images, out)
    assert len(list(out.glob("part-*.parquet"))) == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # nothing half-written
    monkeypatch.setattr(ray_job, "write_part", real)
    rest = _run(onnx, images, out)
    assert rest["parts_written"] == 2 and rest["parts_skipped"] == 1
    paths, rows = ray_job.read_parts(out)
    ref_paths, ref_rows = ray_job.read_parts(first_run[0])
    assert paths == ref_paths
    np.testing.assert_allclose(rows, ref_rows, rtol=0, atol=1e-5)


def test_other_inputs_or_another_model_are_refused(first_run, onnx, images, tmp_path):
    out, _ = first_run
    subset = sorted(str(p) for p in images.glob("*.jpg"))
    with pytest.raises(UsageError, match="another list of inputs"):
        ray_job.run_ray_embed(str(onnx), subset, out, backend="onnxruntime", rows_per_part=PER_PART)
    import onnx as onnx_lib

    model = onnx_lib.load(str(onnx))
    model.metadata_props.add(key="retrained", value="yes")  # same graph, another file
    other = tmp_path / "other.onnx"
    onnx_lib.save(model, str(other))
    with pytest.raises(UsageError, match="another model"):
        ray_job.run_ray_embed(str(other), str(images), out, backend="onnxruntime", rows_per_part=PER_PART)
    with pytest.raises(UsageError, match="does not exist"):
        ray_job.run_ray_embed(str(tmp_path / "missing.onnx"), str(images), tmp_path / "x")


def test_cli_embed_executor_ray(cluster, onnx, images, tmp_path, capsys, local_rows):
    from resnet_deploy.cli.main import main

    out = tmp_path / "cli.parquet"
    assert main(["embed", str(images), "--model", str(onnx), "--output", str(out), "--executor", "ray",
                 "--num-actors", "1", "--batch-size", "4", "--backend", "onnxruntime"]) == 0
    printed = capsys.readouterr().out
    assert "parts_written: 1" in printed and "broken: 1" in printed
    paths, rows = ray_job.read_parts(out)
    assert len(paths) == 7
    np.testing.assert_allclose(rows, np.stack([local_rows[p] for p in paths]), rtol=0,
                               atol=1e-4 * float(np.abs(rows).max()))


# -- inputs (no Ray) -------------------------------------------------------------------------------

def test_inputs_from_a_folder_a_list_file_a_python_list_and_a_uri(images, tmp_path):
    in_folder = ray_job.resolve_inputs(str(images))
    assert len(in_folder) == 8 and in_folder == sorted(in_folder)
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\n" + "\n".join(reversed(in_folder[:3])) + "\n\n")
    assert ray_job.resolve_inputs(str(listing)) == in_folder[:3]
    assert ray_job.resolve_inputs([in_folder[2], str(images / "sub")]) == sorted([in_folder[2], in_folder[-1]])
    uris = ray_job.resolve_inputs(f"file://{images}")
    assert [u.removeprefix("file://") for u in uris] == in_folder
    assert ray_job.read_image_bytes(uris[0]) == Path(in_folder[0]).read_bytes()
    with pytest.raises(UsageError):
        ray_job.resolve_inputs(str(tmp_path / "nothing-here"))
