"""The calibration cache: JSON + TensorRT table round trip, reuse without calibrating again, and
refusal of a cache made for another model or preprocessing."""

from __future__ import annotations

import json
import logging
import re
import struct

import onnx
import pytest

from resnet_deploy._io import sha256_file
from resnet_deploy.calibration import CalibrationConfig, run_int8_stage, stage
from resnet_deploy.calibration.cache import CalibrationCache, read_trt_table, table_path
from resnet_deploy.calibration.ranges import TensorRange
from resnet_deploy.errors import UsageError


def _cache(**kw):
    base = dict(ranges={"input": TensorRange(-2.1, 2.6, 2.6), "relu_1": TensorRange(0.0, 9.5, 4.25)},
                method="entropy", params={"num_bins": 2048, "num_quantized_bins": 128}, num_images=64,
                batch_shape=[8, 3, 64, 64], model_sha256="ab" * 32, model_path="m.onnx",
                preprocessing={"crop_size": 64, "resize_size": 73, "mean": [0.5, 0.5, 0.5]},
                data={"kind": "images", "fingerprint": "f" * 64})
    base.update(kw)
    return CalibrationCache(**base)


def test_round_trip_and_tensorrt_table(tmp_path):
    c = _cache()
    json_path, table = c.save(tmp_path / "m.int8.calib.json", trt_version=100300)
    assert table == table_path(json_path) == tmp_path / "m.int8.calib.cache"
    back = CalibrationCache.load(json_path)
    assert back.ranges == c.ranges and back.method == "entropy" and back.num_images == 64
    assert back.model_sha256 == c.model_sha256 and back.preprocessing == c.preprocessing
    raw = json.loads(json_path.read_text())
    assert raw["tensors"]["relu_1"]["int8"] == {"scale": pytest.approx(4.25 / 127), "zero_point": 0}
    assert raw["tensors"]["relu_1"]["uint8"]["zero_point"] == 0  # non-negative tensor: zero point 0
    assert raw["tensors"]["input"]["uint8"]["zero_point"] > 0
    lines = table.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert all(re.fullmatch(r"[^:]+: [0-9a-f]{8}", ln) for ln in lines[1:])
    header, scales = read_trt_table(table)
    assert scales["relu_1"] == pytest.approx(4.25 / 127, rel=1e-6)
    # big-endian float32 hex, as TensorRT writes it (e.g. 1/127 -> 3c010204)
    assert lines[1].split(": ")[1] == struct.pack(">f", 2.6 / 127).hex()


def test_foreign_and_stale_reasons():
    c = _cache()
    assert c.foreign_reason("ab" * 32, dict(c.preprocessing)) is None
    assert "another model" in c.foreign_reason("cd" * 32, c.preprocessing)
    other = dict(c.preprocessing, mean=[0.485, 0.456, 0.406])
    assert "other preprocessing" in c.foreign_reason("ab" * 32, other) and "mean" in c.foreign_reason("ab" * 32, other)
    assert c.stale_reason("entropy", {"num_quantized_bins": 128, "num_bins": 2048}, {"fingerprint": "f" * 64}) is None
    assert "minmax" in c.stale_reason("minmax", {}, {"fingerprint": "f" * 64})
    assert "other calibration images" in c.stale_reason("entropy", c.params, {"fingerprint": "0" * 64})
    with pytest.raises(UsageError, match="not a resnet-deploy calibration cache"):
        CalibrationCache.from_dict({"format": "something else"})


@pytest.fixture()
def counting(monkeypatch):
    """Count calibration runs of the INT8 stage."""
    calls = []
    real = stage.calibrate

    def spy(*args, **kwargs):
        calls.append(kwargs.get("total"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "calibrate", spy)
    return calls


def _cfg(**kw):
    base = dict(calib_data="synthetic", calib_size=16, shape=(8, 3, 64, 64), target="onnxruntime", holdout=4,
                method="minmax")
    base.update(kw)
    return CalibrationConfig(**base)


def test_second_run_reuses_the_cache(tiny_resnet, tmp_path, counting):
    fp32, module = tiny_resnet
    first = run_int8_stage(fp32, module, tmp_path, "tiny", _cfg())
    assert counting == [2] and not first.cache_reused
    sha_first = sha256_file(first.artifacts["onnxruntime"])
    second = run_int8_stage(fp32, module, tmp_path, "tiny", _cfg())
    assert counting == [2] and second.cache_reused  # no second calibration
    assert any("reused" in n for n in second.notes)
    assert sha256_file(second.artifacts["onnxruntime"]) == sha_first  # same ranges, same model
    # another method is another request: calibrate again and overwrite
    third = run_int8_stage(fp32, module, tmp_path, "tiny", _cfg(method="percentile"))
    assert counting == [2, 2] and not third.cache_reused
    assert CalibrationCache.load(third.cache).method == "percentile"
    run_int8_stage(fp32, module, tmp_path, "tiny", _cfg(method="percentile", recalibrate=True))
    assert counting == [2, 2, 2]


def _foreign_copy(fp32, path, **meta):
    """Same graph, other bytes (and, with ``meta``, other metadata such as preprocessing)."""
    from resnet_deploy.artifacts import metadata_props

    m = onnx.load(str(fp32))
    props = {p.key: p.value for p in m.metadata_props}
    props.update(metadata_props(meta) if meta else {"note": "another model"})
    del m.metadata_props[:]
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save_model(m, str(path))
    return path


def test_explicit_cache_of_another_model_is_refused(tiny_resnet, tmp_path, counting):
    fp32, module = tiny_resnet
    cache = tmp_path / "shared.calib.json"
    run_int8_stage(fp32, module, tmp_path / "a", "tiny", _cfg(cache=cache))
    other = _foreign_copy(fp32, tmp_path / "other.onnx")
    with pytest.raises(UsageError, match=r"made for another model .*--recalibrate"):
        run_int8_stage(other, module, tmp_path / "b", "other", _cfg(cache=cache))
    assert len(counting) == 1
    # asked explicitly, it is recomputed and overwritten
    run_int8_stage(other, module, tmp_path / "b", "other", _cfg(cache=cache, recalibrate=True))
    assert len(counting) == 2 and CalibrationCache.load(cache).model_sha256 == sha256_file(other)


def test_explicit_cache_with_other_preprocessing_is_refused(tiny_resnet, tmp_path):
    fp32, module = tiny_resnet
    cache = tmp_path / "c.calib.json"
    res = run_int8_stage(fp32, module, tmp_path, "tiny", _cfg(cache=cache))
    c = CalibrationCache.load(res.cache)
    c.preprocessing = dict(c.preprocessing, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    c.save(cache)  # same model sha, other preprocessing record
    with pytest.raises(UsageError, match=r"other preprocessing \(mean: .*std"):
        run_int8_stage(fp32, module, tmp_path, "tiny", _cfg(cache=cache))


def test_default_cache_of_a_rewritten_model_is_recomputed(tiny_resnet, tmp_path, counting, caplog):
    fp32, module = tiny_resnet
    run_int8_stage(fp32, module, tmp_path, "tiny", _cfg())
    other = _foreign_copy(fp32, tmp_path / "re-exported.onnx")
    with caplog.at_level(logging.WARNING, logger="resnet_deploy"):
        res = run_int8_stage(other, module, tmp_path, "tiny", _cfg())  # same stem, same default cache path
    assert len(counting) == 2 and not res.cache_reused
    assert "another model" in caplog.text
