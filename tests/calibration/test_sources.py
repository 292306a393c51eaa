"""Calibration sources: images found recursively and prepared with the record, arrays, synthetic;
seeded shuffling, the held-out split, and clear errors for bad inputs."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from resnet_deploy.calibration.sources import (ArraySource, ImageFolderSource, SyntheticSource, holdout_split,
                                               make_source, prep_for_shape)
from resnet_deploy.errors import UsageError
from resnet_deploy.models import Preprocessing
from resnet_deploy.models.preprocessing import preprocess

PREP = Preprocessing(resize_size=73, crop_size=64)


def test_image_folder_is_searched_recursively_and_prepared_with_the_record(image_folder):
    src = make_source(image_folder, PREP, batch_size=8, size=None, seed=0)
    assert isinstance(src, ImageFolderSource)
    assert src.num_images == 24 and len(src) == 3
    assert any("sub" in str(p) for p in src.items) and any("sub" not in str(p.parent) for p in src.items)
    batches = list(src)
    assert [b.shape for b in batches] == [(8, 3, 64, 64)] * 3
    assert all(b.dtype == np.float32 for b in batches)
    # the same preprocessing inference uses, item for item
    np.testing.assert_array_equal(batches[0][1], preprocess(src.items[1], PREP))


def test_shuffle_is_seeded_and_heldout_is_disjoint(image_folder):
    a = make_source(image_folder, PREP, batch_size=4, size=10, seed=1, holdout=6)
    b = make_source(image_folder, PREP, batch_size=4, size=10, seed=1, holdout=6)
    c = make_source(image_folder, PREP, batch_size=4, size=10, seed=2, holdout=6)
    assert a.items == b.items and a.items != c.items
    assert a.num_images == 10 and len(a) == 3  # 4 + 4 + 2
    assert a.heldout is not None and a.heldout.num_images == 6
    assert not set(a.items) & set(a.heldout.items)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_fingerprint_changes_when_an_image_changes(image_folder):
    a = make_source(image_folder, PREP, batch_size=4, size=8, seed=0)
    before = a.fingerprint()
    victim = a.items[0]
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    b = make_source(image_folder, PREP, batch_size=4, size=8, seed=0)
    assert a.items == b.items and b.fingerprint() != before


def test_calibration_shape_sets_the_prepared_size(image_folder):
    src = make_source(image_folder, PREP, batch_size=4, size=4, shape=(4, 3, 96, 96))
    assert src.batch_shape == (4, 3, 96, 96)
    assert next(iter(src)).shape == (4, 3, 96, 96)
    assert prep_for_shape(PREP, 96, 96).resize_size == round(96 * 73 / 64)
    with pytest.raises(UsageError, match="not square"):
        make_source(image_folder, PREP, batch_size=4, size=4, shape=(4, 3, 64, 96))


def test_npy_float_batches_and_npz(tmp_path):
    arr = np.random.default_rng(0).standard_normal((20, 3, 32, 48)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    np.savez(tmp_path / "x.npz", input=arr, other=arr[:2])
    for name in ("x.npy", "x.npz"):
        src = make_source(tmp_path / name, PREP, batch_size=8, size=None, seed=0)
        assert isinstance(src, ArraySource)
        assert src.batch_shape == (8, 3, 32, 48)
        got = np.concatenate(list(src))
        assert got.shape == arr.shape
        np.testing.assert_array_equal(np.sort(got.ravel()), np.sort(arr.ravel()))  # same rows, shuffled


def test_npy_uint8_pictures_are_prepared_with_the_record(tmp_path):
    pics = np.random.default_rng(0).integers(0, 256, (9, 70, 90, 3), dtype=np.uint8)
    np.save(tmp_path / "p.npy", pics)
    src = make_source(tmp_path / "p.npy", PREP, batch_size=3, size=None, seed=0)
    batch = next(iter(src))
    assert batch.shape == (3, 3, 64, 64)
    np.testing.assert_array_equal(batch[0], preprocess(pics[src.items[0]], PREP))


def test_synthetic_is_deterministic_per_item():
    s = SyntheticSource(range(6), 3, (3, 32, 32), seed=0)
    whole = np.concatenate(list(s))
    part = np.concatenate(list(s.subset([4, 5])))
    np.testing.assert_array_equal(whole[4:], part)
    calib = holdout_split(s, 2)
    assert calib.items == [2, 3, 4, 5] and calib.heldout.items == [0, 1]


def test_warns_below_the_recommended_count(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="resnet_deploy"):
        make_source(image_folder, PREP, batch_size=4, size=20)
    assert "recommend at least 500" in caplog.text


@pytest.mark.parametrize("case", ["empty", "missing", "too_few", "channels", "rank", "nan"])
def test_bad_inputs_raise_usage_errors(tmp_path, image_folder, case):
    if case == "empty":
        (tmp_path / "empty" / "deeper").mkdir(parents=True)
        (tmp_path / "empty" / "notes.txt").write_text("not an image")
        spec, match = tmp_path / "empty", "no images found"
    elif case == "missing":
        spec, match = tmp_path / "nope", "does not exist"
    elif case == "too_few":
        spec, match = image_folder, "fewer than one batch of 32"
    elif case == "channels":
        np.save(tmp_path / "gray.npy", np.zeros((8, 1, 32, 32), np.float32))
        spec, match = tmp_path / "gray.npy", "1 channel"
    elif case == "rank":
        np.save(tmp_path / "flat.npy", np.zeros((8, 3072), np.float32))
        spec, match = tmp_path / "flat.npy", "expected N x 3 x H x W"
    else:
        a = np.zeros((8, 3, 32, 32), np.float32)
        a[0, 0, 0, 0] = np.nan
        np.save(tmp_path / "nan.npy", a)
        spec, match = tmp_path / "nan.npy", "NaN"
    with pytest.raises(UsageError, match=match):
        make_source(spec, PREP, batch_size=32 if case == "too_few" else 4, size=None)


def test_unreadable_image_names_the_file(image_folder):
    bad = image_folder / "sub" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    src = make_source(image_folder, PREP, batch_size=25, size=None)
    with pytest.raises(UsageError, match="broken.jpg"):
        list(src)
