"""Preprocessing against an independent implementation of torchvision's documented ImageNet recipe.

torchvision cannot be imported beside the CPU torch here, so the reference below re-implements
``Resize(int) -> CenterCrop -> ToTensor -> Normalize`` from their documentation: the short side
becomes ``size`` and the long side ``int(size * long / short)``; PIL resizes (``Image.resize``,
bilinear, ``reducing_gap=None``); the crop is zero-padded when too small and taken at
``int(round((size - crop) / 2))``; ToTensor is ``uint8 / 255`` and Normalize ``(x - mean) / std``
as float32 torch ops.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_deploy.errors import UsageError
from resnet_deploy.models.preprocessing import (FusedPreprocess, ImageError, list_images, load_image, preprocess,
                                                preprocess_many, preprocess_uint8)
from resnet_deploy.models.transforms import IMAGENET_V1, IMAGENET_V2, Preprocessing

skdata = pytest.importorskip("skimage.data")


def reference(img: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """torchvision's documented transforms, written out (PIL in, CHW float32 tensor out)."""
    w, h = img.size
    size = prep.resize_size
    if w <= h:
        out_w, out_h = size, int(size * h / w)
    else:
        out_w, out_h = int(size * w / h), size
    if (out_w, out_h) != (w, h):
        img = img.resize((out_w, out_h), Image.BILINEAR, reducing_gap=None)
    crop = prep.crop_size
    if crop > out_w or crop > out_h:
        left = (crop - out_w) // 2 if crop > out_w else 0
        top = (crop - out_h) // 2 if crop > out_h else 0
        padded = Image.new("RGB", (max(crop, out_w), max(crop, out_h)), (0, 0, 0))
        padded.paste(img, (left, top))
        img = padded
    w2, h2 = img.size
    top = int(round((h2 - crop) / 2.0))
    left = int(round((w2 - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    t = t.to(torch.float32).div(255)  # ToTensor
    mean = torch.as_tensor(prep.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(prep.std, dtype=torch.float32).view(-1, 1, 1)
    return t.sub(mean).div(std)  # Normalize


def assert_matches(ours: np.ndarray, ref: torch.Tensor) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == tuple(ref.shape)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    files = {}
    for name, arr in (("chelsea", skdata.chelsea()), ("coffee", skdata.coffee()), ("astronaut", skdata.astronaut())):
        for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
            path = d / f"{name}.{ext}"
            Image.fromarray(arr).save(path, format=fmt, quality=90)
            files[f"{name}.{ext}"] = path
    return files


# -- equivalence on real photos ------------------------------------------------------------------

@pytest.mark.parametrize("prep", [IMAGENET_V1, IMAGENET_V2, Preprocessing(resize_size=72, crop_size=64)],
                         ids=["v1-256-224", "v2-232-224", "72-64"])
@pytest.mark.parametrize("name", ["chelsea.jpg", "coffee.png", "astronaut.jpg"])
def test_matches_torchvision_recipe_on_photos(photos, name, prep):
    path = photos[name]
    with Image.open(path) as im:
        ref = reference(im.convert("RGB"), prep)
    assert_matches(preprocess(path, prep), ref)


def test_resized_geometry_follows_torchvision_rounding():
    # chelsea is 451x300 (w x h): short side 300 -> 256, long side int(256 * 451 / 300) = int(384.85) = 384;
    # crop offsets: top round((256 - 224) / 2) = 16, left round((384 - 224) / 2) = 80.
    arr = skdata.chelsea()
    img = Image.fromarray(arr)
    resized = np.asarray(img.resize((384, 256), Image.BILINEAR, reducing_gap=None))
    expected = resized[16:16 + 224, 80:80 + 224]
    np.testing.assert_array_equal(preprocess_uint8(img, IMAGENET_V1), expected)


def test_crop_offset_rounds_half_to_even():
    # 96 -> resize 96 (no-op, short side already 96) x 225 wide; crop 64: left = round(161 / 2) = round(80.5) = 80
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (96, 225, 3), dtype=np.uint8)
    out = preprocess_uint8(arr, Preprocessing(resize_size=96, crop_size=64))
    np.testing.assert_array_equal(out, arr[16:80, 80:144])


def test_no_resize_when_short_side_already_matches():
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)
    out = preprocess_uint8(arr, IMAGENET_V1)
    np.testing.assert_array_equal(out, arr[16:240, 38:262])  # left = round(76 / 2) = 38


def test_crop_larger_than_image_is_zero_padded():
    prep = Preprocessing(resize_size=40, crop_size=64)
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))  # stays 50x40 (short side 40)
    out = preprocess(img, prep)
    assert_matches(out, reference(img, prep))
    # padding: left (64 - 50) // 2 = 7, top (64 - 40) // 2 = 12 -> those borders hold normalized black
    black = (0.0 - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    np.testing.assert_allclose(out[:, :12, :], np.broadcast_to(black[:, None, None], (3, 12, 64)), atol=1e-6)
    np.testing.assert_allclose(out[:, :, :7], np.broadcast_to(black[:, None, None], (3, 64, 7)), atol=1e-6)
    assert not np.allclose(out[:, 12:52, 7:57], black[:, None, None])


# -- odd images ----------------------------------------------------------------------------------

def test_one_pixel_image():
    img = Image.new("RGB", (1, 1), (10, 128, 250))
    out = preprocess(img, IMAGENET_V1)
    assert out.shape == (3, 224, 224)
    assert_matches(out, reference(img, IMAGENET_V1))
    expected = (np.array([10, 128, 250], np.float32) / np.float32(255) - np.asarray(IMAGENET_V1.mean, np.float32)) \
        / np.asarray(IMAGENET_V1.std, np.float32)
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), atol=1e-6)


@pytest.mark.parametrize("size", [(10000, 10), (10, 10000)])
def test_extreme_aspect_ratio(size):
    rng = np.random.default_rng(4)
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = preprocess(img, IMAGENET_V1)
    ref = reference(img, IMAGENET_V1).numpy()
    assert out.shape == ref.shape == (3, 224, 224)
    # resampled in the crop window only: within one grey level of the full resize
    step = 1 / 255 / min(IMAGENET_V1.std)
    assert np.abs(out - ref).max() <= step + 1e-5


def test_grayscale_becomes_three_equal_channels(tmp_path):
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (90, 120), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    for c in range(3):
        np.testing.assert_array_equal(arr[:, :, c], gray)
    assert_matches(preprocess(path, IMAGENET_V1), reference(Image.fromarray(gray).convert("RGB"), IMAGENET_V1))


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(skdata.coffee()).convert("CMYK").save(path, quality=95)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    img = load_image(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), expected)
    assert preprocess(path, IMAGENET_V1).shape == (3, 224, 224)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 80, dtype=np.uint32).reshape(64, 80) * 13 % 65536).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # Pillow keeps 16 bits
    arr = np.asarray(load_image(path))
    expected = np.round(ramp / 257.0).astype(np.uint8)  # 0..65535 -> 0..255
    np.testing.assert_array_equal(arr[:, :, 0], expected)
    assert arr.max() > 200 and arr.min() < 50  # neither clipped white nor truncated


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(skdata.chelsea()).save(good, quality=90)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(ImageError, match="truncated.jpg"):
        load_image(bad)
    with pytest.raises(ImageError, match="truncated"):
        preprocess(bad, IMAGENET_V1)
    assert isinstance(ImageError("x"), UsageError)


@pytest.mark.parametrize("payload", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_undecodable_bytes(payload):
    with pytest.raises(ImageError, match="bytes"):
        load_image(payload)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


def test_exif_orientation_is_applied(tmp_path):
    rng = np.random.default_rng(6)
    arr = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.png"
    Image.fromarray(arr).save(path, exif=exif)
    img = load_image(path)
    assert img.size == (40, 70)
    np.testing.assert_array_equal(np.asarray(img), np.rot90(arr, k=-1))


def test_palette_with_transparency_and_alpha(tmp_path):
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 0
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning
        img = load_image(path)
    assert img.mode == "RGB"
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(img), np.asarray(im.convert("RGBA"))[:, :, :3])
    rgba = np.dstack([rgb, rng.integers(0, 256, (32, 48), dtype=np.uint8)])
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(rgba, "RGBA"))), rgb)


def test_sources_agree(photos):
    path = photos["chelsea.png"]
    by_path = preprocess(path, IMAGENET_V1)
    np.testing.assert_array_equal(preprocess(str(path), IMAGENET_V1), by_path)
    np.testing.assert_array_equal(preprocess(path.read_bytes(), IMAGENET_V1), by_path)
    with Image.open(path) as im:
        np.testing.assert_array_equal(preprocess(im, IMAGENET_V1), by_path)
    np.testing.assert_array_equal(preprocess(skdata.chelsea(), IMAGENET_V1), by_path)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 40, 40), np.uint8), "channels-first"),
    (np.zeros((40, 40, 3), np.float32), "float"),
    (np.zeros((2, 40, 40, 3), np.uint8), "HxW"),
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (12345, "int"),
])
def test_bad_arrays_and_types(bad, match):
    with pytest.raises(ImageError, match=match):
        load_image(bad)


def test_unknown_interpolation_is_rejected():
    with pytest.raises(UsageError, match="interpolation"):
        preprocess(np.zeros((8, 8, 3), np.uint8), Preprocessing(interpolation="cubic-ish"))


# -- batches, uint8 path, listing ----------------------------------------------------------------

def test_preprocess_many_threads_equal_sequential(photos):
    paths = [photos[k] for k in sorted(photos)]
    prep = Preprocessing(resize_size=72, crop_size=64)
    batch = preprocess_many(paths, prep, workers=3)
    assert batch.shape == (len(paths), 3, 64, 64) and batch.dtype == np.float32
    for row, p in zip(batch, paths):
        np.testing.assert_array_equal(row, preprocess(p, prep))
    u8 = preprocess_many(paths, prep, workers=2, uint8=True)
    assert u8.shape == (len(paths), 64, 64, 3) and u8.dtype == np.uint8
    np.testing.assert_array_equal(u8[0], preprocess_uint8(paths[0], prep))
    assert preprocess_many([], prep).shape == (0, 3, 64, 64)
    with pytest.raises(UsageError, match="workers"):
        preprocess_many(paths, prep, workers=0)


def test_preprocess_many_names_the_bad_file(photos, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageError, match="bad.png"):
        preprocess_many([photos["coffee.png"], bad], IMAGENET_V1, workers=2)


def test_list_images(tmp_path):
    for rel in ("b.jpg", "a/z.PNG", "a/y.webp", "c.txt", "a/deep/x.jpeg", "d.tif", "notes.md"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/deep/x.jpeg", "a/y.webp", "a/z.PNG", "b.jpg", "d.tif"]
    assert list_images(tmp_path / "b.jpg") == [tmp_path / "b.jpg"]
    with pytest.raises(UsageError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(UsageError, match="not an image"):
        list_images(tmp_path / "c.txt")


# -- fused preprocessing -------------------------------------------------------------------------

def test_fused_preprocess_equals_host_preprocessing(photos):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    prep = Preprocessing(resize_size=72, crop_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    paths = [photos["chelsea.jpg"], photos["astronaut.png"]]
    u8 = preprocess_many(paths, prep, uint8=True)
    fused = FusedPreprocess(net, prep).eval()
    with torch.no_grad():
        got = fused(torch.from_numpy(u8))
        want = net(torch.from_numpy(preprocess_many(paths, prep)))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert set(fused.state_dict()) == {f"model.{k}" for k in net.state_dict()}  # mean/std are not weights
    assert u8.nbytes * 4 == preprocess_many(paths, prep).nbytes


def test_bytes_roundtrip_of_webp_and_gif():
    arr = skdata.astronaut()[::4, ::4]
    for fmt in ("WEBP", "GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        img = load_image(buf.getvalue())
        assert img.mode == "RGB" and img.size == (arr.shape[1], arr.shape[0])


# -- bounded decoding ------------------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` 8-bit RGB whose pixel data is one empty row."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4))


def _jpeg(size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize(size, Image.BILINEAR).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_an_image_over_the_pixel_cap_is_refused_from_its_header():
    from resnet_deploy.models.preprocessing import DEFAULT_MAX_IMAGE_PIXELS

    assert DEFAULT_MAX_IMAGE_PIXELS <= 40_000_000 < Image.MAX_IMAGE_PIXELS
    # no pixel data at all: only the declared size can be the reason
    with pytest.raises(ImageError, match=r"13000x13000 \(169.0 MP\), over the decode limit of 40.0 MP"):
        preprocess(_png_header(13000, 13000), IMAGENET_V1)
    with pytest.raises(ImageError, match="over the decode limit"):  # Pillow's own guard, in our words
        load_image(_png_header(20000, 20000))
    with pytest.raises(ImageError, match="truncated|cannot decode"):  # under the cap: decoding is tried
        load_image(_png_header(100, 100))


def test_the_pixel_cap_is_settable(monkeypatch):
    from resnet_deploy.models.preprocessing import MAX_PIXELS_ENV, max_image_pixels

    png = io.BytesIO()
    Image.new("RGB", (40, 50), (1, 2, 3)).save(png, format="PNG")
    data = png.getvalue()
    assert load_image(data).size == (40, 50)
    with pytest.raises(ImageError, match=r"40x50 \(0.0 MP\), over the decode limit"):
        load_image(data, max_pixels=1999)
    assert preprocess(data, IMAGENET_V1, max_pixels=2000).shape == (3, 224, 224)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1999")
    assert max_image_pixels() == 1999
    with pytest.raises(ImageError, match="over the decode limit"):
        preprocess_many([data], IMAGENET_V1)
    assert load_image(data, max_pixels=2000).size == (40, 50)  # an explicit value wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(UsageError, match="RESNET_DEPLOY_MAX_IMAGE_PIXELS must be a positive integer"):
        load_image(data)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(UsageError, match="positive integer"):
            max_image_pixels(bad)


def test_a_large_jpeg_is_decoded_at_reduced_scale(monkeypatch):
    import resnet_deploy.models.preprocessing as pp

    data = _jpeg((1280, 960))
    prep = Preprocessing(resize_size=72, crop_size=64)
    full = preprocess(data, prep)  # 1.2 MP: under DRAFT_MIN_PIXELS, decoded in full
    assert_matches(full, reference(Image.open(io.BytesIO(data)).convert("RGB"), prep))
    monkeypatch.setattr(pp, "DRAFT_MIN_PIXELS", 1_000_000)
    # the short side stays >= twice the resize size: 960 / 4 = 240 >= 144
    assert load_image(data, min_size=(144, 144)).size == (320, 240)
    assert load_image(data).size == (1280, 960)  # no min_size: nothing to reduce towards
    drafted = preprocess(data, prep)
    assert drafted.shape == full.shape
    assert float(np.abs(drafted - full).mean()) < 0.05  # the same picture, resampled differently
    # the cap applies to the reduced size: 1.2 MP declared, 0.08 MP decoded
    assert preprocess(data, prep, max_pixels=100_000).shape == (3, 64, 64)
    monkeypatch.setattr(pp, "DRAFT_MIN_PIXELS", 16_000_000)
    with pytest.raises(ImageError, match="over the decode limit"):
        preprocess(data, prep, max_pixels=100_000)


def _fifo_reader_returns(fn, path, timeout=10.0):
    """Run ``fn(path)`` in a thread; (finished, result or exception). A FIFO that blocks the reader is
    released afterwards by opening and closing its write end."""
    import os
    import threading

    box: list = []
    t = threading.Thread(target=lambda: box.append(_call(fn, path)), daemon=True)
    t.start()
    t.join(timeout)
    finished = not t.is_alive()
    if not finished:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the blocked reader
        t.join(5)
    return finished, (box[0] if box else None)


def _call(fn, path):
    try:
        return fn(path)
    except Exception as exc:  # noqa: BLE001 - returned for the assertion
        return exc


def test_fifo_and_devices_are_refused_not_read(tmp_path):
    import os

    Image.new("RGB", (40, 40), "red").save(tmp_path / "ok.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    (tmp_path / "folder.jpg").mkdir()
    skipped: list = []
    assert list_images(tmp_path, skipped) == [tmp_path / "ok.jpg"]
    assert sorted(os.path.basename(p) for p, _ in skipped) == ["dangling.jpg", "pipe.jpg", "zero.png"]
    assert "a FIFO" in dict(skipped)[str(tmp_path / "pipe.jpg")]
    finished, result = _fifo_reader_returns(load_image, tmp_path / "pipe.jpg")
    assert finished, "load_image blocked on a FIFO"
    assert isinstance(result, ImageError) and "not a regular file (a FIFO)" in str(result)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path / "folder.jpg")
    with pytest.raises(ImageError, match="a character device"):
        load_image(tmp_path / "zero.png")


def test_empty_and_unknown_files_say_so(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="not a recognized image format") as info:
        load_image(tmp_path / "text.jpg")
    assert "<_io." not in str(info.value)
