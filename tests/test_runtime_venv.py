"""The runtime-only install, for real: a fresh virtual environment with the base install and the
``onnxruntime`` extra only (no torch, no onnx), resolved by pip from the package's own metadata,
runs ``infer`` and ``embed`` on an ONNX exported by the full environment, with identical results.

pip reuses its wheel cache; the test skips (with pip's reason) when the package registry cannot be
reached. NumPy, Pillow and ONNX Runtime are held at the versions of this environment, so that
"identical" compares the code and not two library versions.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnet_deploy
from resnet_deploy.cli.main import main
from resnet_deploy.pipelines.store import read_embeddings

pytestmark = pytest.mark.slow

SRC = Path(resnet_deploy.__file__).resolve().parents[1]
ROOT = SRC.parent
#: pip's words for "the registry is out of reach" (the test skips on them; any other failure fails it).
OFFLINE = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution",
           "No matching distribution found", "Could not find a version", "ConnectTimeout", "ProxyError")
PINNED = ("numpy", "pillow", "onnxruntime")


def _clean_env() -> dict[str, str]:
    """The environment without this checkout on PYTHONPATH: the venv must run its own install."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["RESNET_DEPLOY_PROGRESS"] = "0"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """``python -m venv`` + ``pip install '<this checkout>[onnxruntime]'``; returns the venv's bin."""
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip(f"no pyproject.toml beside {SRC} (an installed copy, not a checkout)")
    root = tmp_path_factory.mktemp("runtime-venv")
    pkg = root / "pkg"  # a copy, so that the build writes nothing into the checkout
    pkg.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", pkg)
    shutil.copy2(ROOT / "README.md", pkg)
    shutil.copytree(SRC, pkg / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    constraints = root / "constraints.txt"
    constraints.write_text("".join(f"{name}=={importlib.metadata.version(name)}\n" for name in PINNED))
    venv = root / "venv"
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(constraints),
                          f"{pkg}[onnxruntime]"], capture_output=True, text=True, env=env, timeout=900)
    if pip.returncode != 0:
        tail = (pip.stderr or pip.stdout).strip().splitlines()[-3:]
        if any(word in pip.stderr for word in OFFLINE):
            pytest.skip("the package registry cannot be reached to build the runtime venv: " + " | ".join(tail))
        pytest.fail("pip install '.[onnxruntime]' failed:\n" + pip.stderr[-4000:])
    return venv / "bin"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A logits and an embedding ResNet-18 ONNX, exported by the full environment."""
    from resnet_deploy.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("venv-exports")
    paths = []
    for head in ("logits", "embedding"):
        result = export_model(ExportConfig(variant="18", head=head, output_dir=out / head, exporter="torchscript",
                                           simplify=False, check_shapes=((1, 3, 64, 64),), seed=3))
        paths.append(result.onnx_path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("venv-images")
    rng = np.random.default_rng(11)
    Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (120, 80, 3), dtype=np.uint8)).save(d / "b.jpg", quality=92)
    return d


def test_the_runtime_venv_has_no_torch_and_no_onnx(runtime_venv):
    listed = subprocess.run([str(runtime_venv / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, env=_clean_env(), check=True)
    names = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert {"resnet-deploy", "numpy", "pillow", "tqdm", "onnxruntime"} <= names
    assert not names & {"torch", "onnx", "onnxscript", "onnxslim", "onnxconverter-common", "onnxruntime-gpu"}
    where = subprocess.run([str(runtime_venv / "python"), "-c", "import resnet_deploy; print(resnet_deploy.__file__)"],
                           capture_output=True, text=True, env=_clean_env(), check=True)
    assert str(runtime_venv.parent) in where.stdout  # its own install, not this checkout


def test_infer_in_the_runtime_venv_matches_the_full_environment(runtime_venv, exported, images, capsys):
    logits, _ = exported
    argv = ["infer", "--model", str(logits), str(images / "a.png"), str(images / "b.jpg"), "--top-k", "5",
            "--threads", "1", "--json"]
    capsys.readouterr()
    assert main([*argv, "--backend", "onnxruntime"]) == 0
    full = json.loads(capsys.readouterr().out)
    # no --backend: auto picks ONNX Runtime there, the only backend installed
    r = subprocess.run([str(runtime_venv / "resnet-deploy"), *argv], capture_output=True, text=True,
                       env=_clean_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == full


def test_embed_in_the_runtime_venv_matches_the_full_environment(runtime_venv, exported, images, tmp_path):
    _, embedding = exported
    full, thin = tmp_path / "full.npy", tmp_path / "thin.npy"
    assert main(["embed", str(images), "--model", str(embedding), "-o", str(full), "--backend", "onnxruntime",
                 "--threads", "1", "-q"]) == 0
    r = subprocess.run([str(runtime_venv / "resnet-deploy"), "embed", str(images), "--model", str(embedding),
                        "-o", str(thin), "--threads", "1"], capture_output=True, text=True, env=_clean_env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    full_paths, full_rows, _ = read_embeddings(full)
    thin_paths, thin_rows, _ = read_embeddings(thin)
    assert thin_paths == full_paths and thin_rows.shape == (2, 512)
    assert np.array_equal(thin_rows, full_rows)


def test_export_in_the_runtime_venv_names_the_extra(runtime_venv):
    r = subprocess.run([str(runtime_venv / "resnet-export"), "--variant", "18"], capture_output=True, text=True,
                       env=_clean_env(), timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: 'resnet-deploy export' needs the 'torch' package, which is not installed; "
                                "pip install 'resnet-deploy[export]'")
