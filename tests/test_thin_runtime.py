"""A thin runtime: every serving command runs in a subprocess where ``import torch`` fails (and the
rest of the ``export`` extra: onnx, onnxscript, onnxslim, onnxconverter-common), and gives the same
outputs as in the full environment. A ``sitecustomize`` on ``PYTHONPATH`` blocks the imports, so
nothing can fall back on them quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnet_deploy
from resnet_deploy.cli.main import main
from resnet_deploy.pipelines.store import read_embeddings

#: Top-level modules of the ``export`` extra: none of them may be needed to serve an artifact.
BLOCKED = ("torch", "onnx", "onnxscript", "onnxslim", "onnxconverter_common")
SRC = Path(resnet_deploy.__file__).resolve().parents[1]

SITECUSTOMIZE = textwrap.dedent('''\
    import sys

    BLOCKED = {blocked!r}


    class _Blocked:
        """Refuse the export stack, as on a machine where it is not installed."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: thin-runtime test)", name=name)
            return None


    sys.meta_path.insert(0, _Blocked())
    ''')


@pytest.fixture(scope="module")
def thin_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a thin-runtime subprocess: the blocker first, then this checkout's src."""
    site = tmp_path_factory.mktemp("thin-site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(SRC), env.get("PYTHONPATH", "")) if p)
    env["RESNET_DEPLOY_PROGRESS"] = "0"
    return env


def run_thin(env: dict[str, str], *argv: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet_deploy.cli.main", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_full(capsys, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three small pictures of different sizes and modes, and one broken file."""
    d = tmp_path_factory.mktemp("thin-images")
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (130, 70, 3), dtype=np.uint8)).save(d / "b.jpg", quality=90)
    (d / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(d / "sub" / "c.webp")
    (d / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    return d


@pytest.fixture(scope="module")
def embedding_export(tmp_path_factory) -> Path:
    """A ResNet-18 embedding export (random weights), written by the full environment."""
    from resnet_deploy.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("thin-export")
    export_model(ExportConfig(variant="18", head="embedding", output_dir=out, exporter="torchscript",
                              simplify=False, check_shapes=((1, 3, 64, 64),)))
    return out


@pytest.fixture(scope="module")
def embedding_onnx(embedding_export) -> Path:
    return embedding_export / "resnet18-embedding.onnx"


# -- the blocker and the imports -------------------------------------------------------------------

def test_the_blocker_refuses_torch_and_onnx(thin_env):
    for module in ("torch", "onnx"):
        r = subprocess.run([sys.executable, "-c", f"import {module}"], env=thin_env, capture_output=True, text=True)
        assert r.returncode != 0 and "blocked: thin-runtime test" in r.stderr


def test_serving_modules_import_with_torch_set_to_none():
    """The issue's check: ``sys.modules['torch'] = None`` makes any ``import torch`` fail."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
            "from resnet_deploy.pipelines.embedder import Embedder\n"
            "import resnet_deploy.runtime, resnet_deploy.models.preprocessing, resnet_deploy.artifacts\n"
            "import resnet_deploy.pipelines.triton.handler, resnet_deploy.pipelines.ray_job\n"
            "from resnet_deploy.cli.main import build_parser; build_parser()\n"
            "print('ok')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_embedder_rows_are_bit_identical_without_torch(thin_env, embedding_onnx, images):
    from resnet_deploy.pipelines import Embedder

    files = sorted(str(p) for p in images.rglob("*")
                   if p.suffix in (".png", ".jpg", ".webp") and "broken" not in p.name)
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from resnet_deploy.pipelines import Embedder
        with Embedder({str(embedding_onnx)!r}, backend="onnxruntime", threads=1) as emb:
            rows = emb.embed({files!r})
            print(emb.head, emb.dim)
        np.save(sys.argv[1], rows)
        assert "torch" not in sys.modules and "onnx" not in sys.modules
    """)
    out = images.parent / "thin-rows.npy"
    r = subprocess.run([sys.executable, "-c", code, str(out)], env=thin_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with Embedder(embedding_onnx, backend="onnxruntime", threads=1) as emb:
        ref = emb.embed(files)
        assert r.stdout.split()[:2] == [str(emb.head), str(emb.dim)]
    thin = np.load(out)
    assert thin.dtype == ref.dtype and thin.shape == ref.shape == (3, 512)
    assert np.array_equal(thin, ref)  # bit-identical, not merely close


# -- the serving commands --------------------------------------------------------------------------

def test_infer_gives_the_same_json(thin_env, resnet18_onnx, images, capsys):
    argv = ["infer", "--model", resnet18_onnx, images / "a.png", images / "sub" / "broken.jpg", images / "b.jpg",
            "--backend", "onnxruntime", "--threads", "1", "--top-k", "3", "--json"]
    code, out, _ = run_full(capsys, *argv)
    thin = run_thin(thin_env, *argv)
    assert thin.returncode == code == 2  # the broken image, in both
    assert json.loads(thin.stdout) == json.loads(out)
    assert json.loads(out)["results"][0]["top_k"][0]["label"]  # ImageNet names, from the packaged list


def test_embed_writes_the_same_rows(thin_env, embedding_onnx, images, tmp_path, capsys):
    full, thin = tmp_path / "full.npy", tmp_path / "thin.npy"
    code, _, _ = run_full(capsys, "embed", images, "--model", embedding_onnx, "-o", full, "--backend", "onnxruntime",
                          "--threads", "1", "--batch-size", "2")
    r = run_thin(thin_env, "embed", images, "--model", embedding_onnx, "-o", thin, "--backend", "onnxruntime",
                 "--threads", "1", "--batch-size", "2")
    assert code == r.returncode == 0, r.stderr
    assert "1 unreadable skipped" in r.stdout
    full_paths, full_rows, _ = read_embeddings(full)
    thin_paths, thin_rows, _ = read_embeddings(thin)
    assert thin_paths == full_paths and len(thin_paths) == 3
    assert np.array_equal(thin_rows, full_rows)


@pytest.mark.slow
def test_embed_on_ray_writes_the_same_rows(thin_env, embedding_onnx, images, tmp_path, capsys):
    pytest.importorskip("ray.data", reason="needs ray[data]")
    pytest.importorskip("pyarrow.parquet", reason="needs pyarrow")
    local = tmp_path / "local.npy"
    assert run_full(capsys, "embed", images, "--model", embedding_onnx, "-o", local, "--backend", "onnxruntime",
                    "--threads", "1")[0] == 0
    out = tmp_path / "ray.parquet"
    env = dict(thin_env, RAY_ADDRESS="", RAY_USAGE_STATS_ENABLED="0")  # a private local cluster
    r = run_thin(env, "embed", images, "--model", embedding_onnx, "-o", out, "--backend", "onnxruntime",
                 "--executor", "ray", "--num-actors", "1", "--batch-size", "2", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    paths, rows, _ = read_embeddings(out)
    local_paths, local_rows, _ = read_embeddings(local)
    by_path = dict(zip(paths, rows))
    assert sorted(by_path) == sorted(local_paths)
    for path, row in zip(local_paths, local_rows):
        assert np.array_equal(by_path[path], row)


def test_check_against_another_artifact_gives_the_same_report(thin_env, resnet18_onnx, capsys):
    argv = ["check", resnet18_onnx, "--reference", resnet18_onnx, "--backend", "onnxruntime",
            "--reference-backend", "onnxruntime", "--threads", "1", "--shapes", "1x3x64x64,2x3x64x96", "--json", "-"]
    code, out, _ = run_full(capsys, *argv)
    r = run_thin(thin_env, *argv)
    assert r.returncode == code == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(out)


def test_bench_times_the_same_targets(thin_env, resnet18_onnx, tmp_path, capsys):
    argv = ["bench", resnet18_onnx, "--backends", "onnxruntime", "--batch-sizes", "1,2", "--shapes", "64x64",
            "--warmup", "1", "--iterations", "3", "--rounds", "1", "--threads", "1", "-q"]
    code, _, _ = run_full(capsys, *argv, "--json", tmp_path / "full.json")
    r = run_thin(thin_env, *argv, "--json", tmp_path / "thin.json")
    assert code == r.returncode == 0, r.stderr

    def targets(path: Path) -> list[tuple]:
        data = json.loads(path.read_text())
        return [(m["label"], m["backend"], m["precision"], m["batch"], m["height"], m["width"])
                for m in data["results"]]

    assert targets(tmp_path / "thin.json") == targets(tmp_path / "full.json")
    assert len(targets(tmp_path / "thin.json")) == 2


def test_triton_repo_writes_the_same_files(thin_env, embedding_export, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient for Triton's config schema")
    full, thin = tmp_path / "full", tmp_path / "thin"
    code, _, _ = run_full(capsys, "triton-repo", embedding_export, "-o", full, "--name", "r18")
    r = run_thin(thin_env, "triton-repo", embedding_export, "-o", thin, "--name", "r18")
    assert code == r.returncode == 0, r.stderr

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes().replace(str(root).encode(), b"ROOT")
                for p in sorted(root.rglob("*")) if p.is_file()}

    written = files(thin)
    assert any(name.endswith("model.py") for name in written)
    assert written == files(full)


def test_triton_python_model_serves_without_torch(thin_env, embedding_export, images, tmp_path):
    """The Python model a Triton instance loads (``model.py``), driven by a stand-in for Triton's
    ``triton_python_backend_utils``: encoded images in, the Embedder's rows out."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient for Triton's config schema")
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from resnet_deploy.pipelines import Embedder

    repo = tmp_path / "repo"
    assert main(["triton-repo", str(embedding_export), "-o", str(repo), "--name", "r18", "--entries", "bytes",
                 "--runner-backend", "onnxruntime", "-q"]) == 0
    entry = repo / "r18_bytes"
    config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    model_config = json_format.MessageToJson(config, preserving_proto_field_name=True)
    files = [images / "a.png", images / "b.jpg"]
    code = textwrap.dedent(f"""
        import importlib.util, json, sys, types
        import numpy as np

        pb = types.ModuleType("triton_python_backend_utils")
        class TritonError(Exception):
            def __init__(self, msg, code=None): super().__init__(msg)
        class TritonModelException(Exception): pass
        class Tensor:
            def __init__(self, name, array): self.name, self.array = name, array
            def as_numpy(self): return self.array
        class InferenceResponse:
            def __init__(self, output_tensors, error=None): self.output_tensors, self.error = output_tensors, error
        pb.TritonError, pb.TritonModelException, pb.Tensor, pb.InferenceResponse = (TritonError, TritonModelException,
                                                                                   Tensor, InferenceResponse)
        pb.get_input_tensor_by_name = lambda request, name: request[name]
        sys.modules["triton_python_backend_utils"] = pb

        spec = importlib.util.spec_from_file_location("model", {str(entry / "1" / "model.py")!r})
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)
        m = model.TritonPythonModel()
        m.initialize({{"model_config": {model_config!r}, "model_repository": {str(entry)!r},
                       "model_version": "1", "model_instance_device_id": "0"}})
        data = [open(p, "rb").read() for p in {[str(f) for f in files]!r}]
        request = {{m.input_name: Tensor(m.input_name, np.array(data, dtype=object).reshape(-1, 1))}}
        (response,) = m.execute([request])
        assert response.error is None, response.error
        np.save(sys.argv[1], response.output_tensors[0].as_numpy())
        m.finalize()
        assert "torch" not in sys.modules and "onnx" not in sys.modules
    """)
    out = tmp_path / "rows.npy"
    r = subprocess.run([sys.executable, "-c", code, str(out)], env=thin_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with Embedder(embedding_export / "resnet18-embedding.onnx", backend="onnxruntime") as emb:
        ref = emb.embed([str(f) for f in files])
    got = np.load(out)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


# -- what truly needs torch says which extra to install ----------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["export", "--variant", "18", "-o", "never-written"], "'resnet-deploy export' needs the 'torch' package"),
    (["check", "{onnx}"], "checking against PyTorch needs the 'torch' package"),
    (["infer", "--model", "18", "{image}"], "the torch backend needs the 'torch' package"),
])
def test_torch_commands_name_the_extra_in_one_line(thin_env, resnet18_onnx, images, argv, needle):
    argv = [a.format(onnx=resnet18_onnx, image=images / "a.png") for a in argv]
    r = run_thin(thin_env, *argv, "-q") if argv[0] != "export" else run_thin(thin_env, *argv)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert needle in lines[0] and "pip install 'resnet-deploy[export]'" in lines[0]
    assert not Path("never-written").exists()


def test_help_lists_export_as_unavailable(thin_env):
    r = run_thin(thin_env, "--help")
    assert r.returncode == 0
    text = "".join(r.stdout.split())  # argparse wraps the help lines
    assert "export(unavailable:'resnet-deployexport'needsthe'torch'package" in text
    assert "resnet-deploy[export]" in text and "triton-serve" in text


def test_a_serving_command_does_not_import_torch_even_where_it_is_installed(resnet18_onnx, images):
    """Only the command's own module is imported: ``infer`` in the full environment leaves torch alone."""
    code = textwrap.dedent(f"""
        import sys
        from resnet_deploy.cli.main import main
        code = main(["infer", "--model", {str(resnet18_onnx)!r}, {str(images / "a.png")!r}, "--backend",
                     "onnxruntime", "-q"])
        print(code, "torch" in sys.modules)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ["0", "False"]


def test_only_a_missing_optional_package_becomes_an_install_hint():
    from resnet_deploy.errors import MissingDependencyError, missing_dependency

    hint = missing_dependency(ModuleNotFoundError("No module named 'torch'", name="torch"), "'resnet-deploy export'")
    assert isinstance(hint, MissingDependencyError) and hint.exit_code == 2
    assert str(hint) == ("'resnet-deploy export' needs the 'torch' package, which is not installed; "
                         "pip install 'resnet-deploy[export]'")
    assert "resnet-deploy[tensorrt-cu12]" in str(missing_dependency(ModuleNotFoundError(name="tensorrt"), "x"))
    # a broken install or a bug is not "install this extra": it surfaces as it is
    assert missing_dependency(ImportError("cannot import name 'nn' from 'torch'", name="torch"), "x") is None
    assert missing_dependency(ModuleNotFoundError(name="torch._C"), "x") is None
    assert missing_dependency(ModuleNotFoundError(name="resnet_deploy.nothing"), "x") is None


@pytest.mark.slow
def test_triton_serve_without_torch_answers_like_the_embedder(thin_env, embedding_export, images, tmp_path):
    """``triton-serve`` itself, and the Python-model instances it starts (the backend stub inherits the
    import path, blocker included), serve encoded images without torch."""
    import signal
    import threading

    from resnet_deploy.pipelines import Embedder
    from resnet_deploy.pipelines.triton import server as tserver

    try:
        tserver.find_distribution()
    except Exception as exc:  # noqa: BLE001 - any reason the server cannot be found is a reason to skip
        pytest.skip(f"nvidia-pytriton (the Triton server binary) cannot be used here: {exc}")
    httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
    repo = tmp_path / "repo"
    r = run_thin(thin_env, "triton-repo", embedding_export, "-o", repo, "--name", "r18", "--entries", "bytes",
                 "--runner-backend", "onnxruntime", "-q")
    assert r.returncode == 0, r.stderr
    http, grpc = tserver.free_port(), tserver.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli.main", "triton-serve", str(repo), "--http-port",
                             str(http), "--grpc-port", str(grpc), "--no-metrics"], env=thin_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(300) and proc.poll() is None, "triton-serve did not start:\n" + "".join(lines[-40:])
        data = [(images / "a.png").read_bytes(), (images / "b.jpg").read_bytes()]
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}", connection_timeout=120, network_timeout=120)
        try:
            inp = httpclient.InferInput("image", [len(data), 1], "BYTES")
            inp.set_data_from_numpy(np.array(data, dtype=object).reshape(-1, 1))
            got = client.infer("r18_bytes", [inp]).as_numpy("embedding")
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    with Embedder(embedding_export / "resnet18-embedding.onnx", backend="onnxruntime") as emb:
        ref = emb.embed([images / "a.png", images / "b.jpg"])
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
