"""Checkpoints in the shapes people save, the torch.hub path with its hash check, bad checkpoints."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from resnet_deploy.errors import WeightsError
from resnet_deploy.models import VARIANTS, create_model, registry
from resnet_deploy.models.registry import PublishedWeights
from resnet_deploy.models.transforms import IMAGENET_V2


@pytest.fixture(scope="module")
def reference():
    """A resnet18 with non-default weights (seed 7) and its state_dict."""
    model, _ = create_model("18", seed=7)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _same_outputs(a, b):
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("shape", ["bare", "state_dict", "model", "module_prefix", "nested_module_prefix"])
def test_checkpoint_shapes_load_strictly(tmp_path, reference, shape):
    model, sd = reference
    obj = {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}},
        "model": {"model": sd, "args": {"arch": "resnet18"}},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "nested_module_prefix": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }[shape]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded, info = create_model("18", weights=str(path))
    assert _same_outputs(model, loaded)
    assert info.source == str(path) and info.meaningful
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_safetensors(tmp_path, reference):
    safetensors = pytest.importorskip("safetensors.torch")
    model, sd = reference
    path = tmp_path / "w.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded, _ = create_model("18", weights=str(path))
    assert _same_outputs(model, loaded)


def test_num_classes_comes_from_a_fine_tuned_checkpoint(tmp_path):
    ft, _ = create_model("18", num_classes=10, seed=1)
    path = tmp_path / "ft.pt"
    torch.save(ft.state_dict(), path)
    loaded, info = create_model("18", weights=str(path))
    assert loaded.fc.out_features == 10 and info.num_classes == 10


def test_mismatched_checkpoint_names_keys(tmp_path, reference):
    _, sd = reference
    bad = dict(sd)
    bad.pop("layer4.1.bn2.running_var")
    bad["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(WeightsError, match=r"1 missing: layer4.1.bn2.running_var.*1 unexpected: extra.weight"):
        create_model("18", weights=str(path))
    with pytest.raises(WeightsError, match=r"mis-shaped: layer1.0.conv1.weight \(checkpoint \(64, 64, 3, 3\), "
                                           r"model \(64, 64, 1, 1\)\).* and 19 more"):
        create_model("50", weights=str(path))  # a resnet18 checkpoint for a resnet50: names and shapes differ


@pytest.mark.parametrize("content, message", [
    (b"", "cannot read weights file .*empty"),
    (b"not a checkpoint at all", "cannot read weights file .*not a PyTorch checkpoint"),
    (b"PK\x03\x04broken zip", "cannot read weights file .*damaged zip"),
    (b"\x80\x04K\x05.", "not a PyTorch checkpoint"),  # a plain pickle of an int
])
def test_corrupt_file(tmp_path, content, message):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as info:
        create_model("18", weights=str(path))
    assert "weights_only" not in str(info.value)  # never the advice to load it unsafely


def test_pickled_code_is_refused_without_the_unsafe_advice(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    for path, data in ((tmp_path / "legacy.pth", pickle.dumps(Evil())), (tmp_path / "zip.pth", None)):
        if data is None:
            torch.save({"model": object.__new__(Evil)}, path)
        else:
            path.write_bytes(data)
        with pytest.raises(WeightsError, match="refused, since loading it could run code") as info:
            create_model("18", weights=str(path))
        assert "weights_only" not in str(info.value)


def test_missing_file():
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("18", weights="/nonexistent/weights.pth")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save({"epoch": 1, "notes": "x"}, path)
    with pytest.raises(WeightsError, match="no state_dict found"):
        create_model("18", weights=str(path))


def _publish(monkeypatch, tmp_path, sd, name="resnet18"):
    """Place ``sd`` in the hub cache under a URL whose hash prefix matches, as torchvision names them."""
    import torch.hub

    staging = tmp_path / "staging.pth"
    torch.save(sd, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    url = f"https://download.pytorch.org/models/{name}-{digest[:8]}.pth"
    spec = VARIANTS[name]
    patched = type(spec)(**{**spec.__dict__, "weights": (PublishedWeights("IMAGENET1K_V2", url, IMAGENET_V2),)})
    monkeypatch.setitem(registry.VARIANTS, name, patched)
    cached = torch.hub.get_dir() + f"/checkpoints/{name}-{digest[:8]}.pth"
    staging.rename(cached)
    return cached


def test_imagenet_weights_from_the_hub_cache(hub_dir, tmp_path, monkeypatch, reference):
    model, sd = reference
    _publish(monkeypatch, tmp_path, sd)
    loaded, info = create_model("18", weights="imagenet")
    assert _same_outputs(model, loaded)
    assert info.source == "imagenet:IMAGENET1K_V2"
    assert info.preprocessing.resize_size == 232  # the V2 recipe travels with the weights


def test_imagenet_cache_with_a_bad_hash_is_refused(hub_dir, tmp_path, monkeypatch, reference):
    _, sd = reference
    cached = _publish(monkeypatch, tmp_path, sd)
    with open(cached, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(WeightsError, match="fails its hash check"):
        create_model("18", weights="imagenet")


def test_imagenet_download_failure_says_where_to_put_the_file(hub_dir, monkeypatch):
    import torch.hub

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match=r"cannot download .*resnet18-f37072fd.pth.*place the file at"):
        create_model("18", weights="imagenet:IMAGENET1K_V1")


def test_imagenet_with_other_class_count_is_refused(hub_dir):
    with pytest.raises(WeightsError, match="1000 classes, not 10"):
        create_model("18", weights="imagenet", num_classes=10)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_checkpoint_loads_strictly(tmp_path, name, torchvision_shapes):
    """A checkpoint with torchvision's key names and shapes (derived independently) loads strictly."""
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.tensor(5) if k.endswith("num_batches_tracked") else torch.randn(*s, generator=g) * 0.01)
          for k, s in torchvision_shapes(name).items()}
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = sd[k].abs() + 1
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    model, _ = create_model(name, weights=str(path))
    assert torch.equal(model.state_dict()["fc.weight"], sd["fc.weight"])
