"""``triton-serve`` against the real server from ``nvidia-pytriton``: real photos sent as encoded
bytes over HTTP and gRPC from several threads, dynamic batching seen in Triton's statistics, FP32
parity with the local Embedder, a corrupt image answered with an error while the server stays up,
start failures quoting Triton's log, a server killed under load, and a clean Ctrl-C stop."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.errors import UsageError
from resnet_deploy.pipelines.triton import server as tserver

try:  # located without importing it: the Makefile installs nvidia-pytriton with --no-deps
    tserver.find_distribution()
except Exception as exc:  # noqa: BLE001 - any reason the server cannot be found is a reason to skip
    pytest.skip(f"nvidia-pytriton (the Triton server binary) cannot be used here: {exc}", allow_module_level=True)
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from tritonclient.utils import InferenceServerException  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import triton_load  # noqa: E402  (how a user starts triton-serve; shared with the security tests)

NAME = "r18"
BYTES_MODEL, TENSOR_MODEL = f"{NAME}_bytes", f"{NAME}_python"


def _photos() -> dict[str, bytes]:
    """Real photographs (scikit-image's sample data), encoded as a client would send them."""
    import skimage.data
    from PIL import Image

    out = {}
    for name, fmt in (("astronaut", "JPEG"), ("coffee", "JPEG"), ("chelsea", "PNG"), ("rocket", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buf, format=fmt, quality=90)
        out[name] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def photos():
    return _photos()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from resnet_deploy.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("export")
    export_model(ExportConfig(variant="18", head="embedding", output_dir=out, exporter="torchscript",
                              check_shapes=((2, 3, 64, 64),)))
    return out


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    from resnet_deploy.pipelines.triton import write_repository

    path = tmp_path_factory.mktemp("triton") / "repo"
    # onnxruntime inside the model, the same runner as the local reference below
    write_repository(export_dir, path, name=NAME, max_batch_size=8, max_queue_delay_us=20000,
                     runner_backend="onnxruntime")
    return path


@pytest.fixture(scope="module")
def embedder(export_dir):
    from resnet_deploy.pipelines import Embedder

    onnx = next(export_dir.glob("*.onnx"))
    with Embedder(onnx, backend="onnxruntime") as emb:
        yield emb


@pytest.fixture(scope="module")
def served(repo):
    """``resnet-deploy triton-serve`` as a user runs it, on free loopback ports; stopped with Ctrl-C
    (SIGINT) at the end, which must end it cleanly."""
    try:
        s = triton_load.start_triton_serve(repo)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield s
    if s.proc.poll() is None:
        try:
            s.interrupt(timeout=60)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            pytest.fail("triton-serve did not stop within 60 s of Ctrl-C")


def _bytes_input(mod, data: list[bytes]):
    inp = mod.InferInput("image", [len(data), 1], "BYTES")
    inp.set_data_from_numpy(np.array(data, dtype=object).reshape(-1, 1))
    return inp


def _infer_bytes(protocol: str, url: str, data: list[bytes]) -> np.ndarray:
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(url)
        try:
            res = client.infer(BYTES_MODEL, [_bytes_input(grpcclient, data)], client_timeout=120)
        finally:
            client.close()
    else:
        client = httpclient.InferenceServerClient(url, connection_timeout=120, network_timeout=120)
        try:
            res = client.infer(BYTES_MODEL, [_bytes_input(httpclient, data)])
        finally:
            client.close()
    return res.as_numpy("embedding")


def _assert_fp32_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


def test_serve_prints_endpoints(served):
    text = "\n".join(served.lines)
    assert f"HTTP     http://127.0.0.1:{served.http_port}" in text and f"gRPC     127.0.0.1:{served.grpc_port}" in text
    assert BYTES_MODEL in text and TENSOR_MODEL in text
    assert f"skipped  {NAME}_onnxruntime" in text  # native entries need NVIDIA's container


def test_bytes_over_http_and_grpc_from_threads_batch_and_match_the_local_embedder(served, photos, embedder):
    names = list(photos)
    reference = dict(zip(names, embedder.embed([photos[n] for n in names])))
    jobs = [(("grpc", served.grpc_url) if i % 2 else ("http", served.http_url), names[i % len(names)])
            for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: (job[1], _infer_bytes(job[0][0], job[0][1], [photos[job[1]]])), jobs))
    for name, got in answers:
        _assert_fp32_close(got, reference[name][None])
    # several images in one request come back in order
    many = _infer_bytes("grpc", served.grpc_url, [photos[n] for n in names])
    _assert_fp32_close(many, np.stack([reference[n] for n in names]))

    stats = tserver.model_statistics(f"http://127.0.0.1:{served.http_port}", BYTES_MODEL)
    hist = tserver.batch_histogram(stats)
    assert sum(b * n for b, n in hist.items()) == int(stats["inference_count"])
    assert max(hist) > 1, f"no request was batched with another: {hist}"
    assert int(stats["execution_count"]) < int(stats["inference_count"])


def test_tensor_entry_matches_the_runner(served, photos, embedder):
    batch = np.stack([embedder.prepare(photos["coffee"]), embedder.prepare(photos["chelsea"])])
    client = grpcclient.InferenceServerClient(served.grpc_url)
    inp = grpcclient.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    got = client.infer(TENSOR_MODEL, [inp], client_timeout=120).as_numpy("embedding")
    client.close()
    _assert_fp32_close(got, embedder.embed_batch(batch))


def test_corrupt_image_is_an_error_and_the_server_stays_up(served, photos, embedder):
    truncated = photos["astronaut"][: len(photos["astronaut"]) // 3]
    for protocol, url in (("http", served.http_url), ("grpc", served.grpc_url)):
        with pytest.raises(InferenceServerException, match="cannot decode") as err:
            _infer_bytes(protocol, url, [b"definitely not a JPEG"])
        assert "image 0" in str(err.value)
        assert err.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
        with pytest.raises(InferenceServerException, match="image 1 of the request"):
            _infer_bytes(protocol, url, [photos["coffee"], truncated])
    client = httpclient.InferenceServerClient(served.http_url)
    assert client.is_server_live() and client.is_model_ready(BYTES_MODEL)
    client.close()
    _assert_fp32_close(_infer_bytes("http", served.http_url, [photos["rocket"]]), embedder.embed([photos["rocket"]]))


def test_ctrl_c_stops_cleanly(served):
    """Last test using ``served``: SIGINT ends triton-serve with exit code 130 and frees its ports."""
    served.proc.send_signal(signal.SIGINT)
    served.proc.wait(60)
    rest = served.rest_of_output()
    assert served.proc.returncode == 130, rest
    assert "stopped (SIGINT)" in rest
    assert tserver.port_is_free(served.http_port) and tserver.port_is_free(served.grpc_port)


# -- start failures and faults (the library launcher) -----------------------------------------------

def test_a_port_in_use_quotes_tritons_log_line(repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = tserver.TritonServer(tserver.ServerConfig(repo, http_port=port, grpc_port=0, metrics_port=None,
                                                        models=(TENSOR_MODEL,)))
        with pytest.raises(UsageError) as err:
            srv.start()
    msg = str(err.value)
    assert "Triton said" in msg and f"127.0.0.1:{port}' already in use" in msg and "--http-port" in msg
    assert not srv.is_running()


def test_a_model_that_fails_to_load_quotes_tritons_log_line(repo, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(repo / TENSOR_MODEL, broken / TENSOR_MODEL)
    (broken / TENSOR_MODEL / "1" / "model.onnx").unlink()
    (broken / TENSOR_MODEL / "1" / "model.onnx").write_bytes(b"this is not ONNX")
    srv = tserver.TritonServer(tserver.ServerConfig(broken, http_port=0, grpc_port=0, metrics_port=None))
    with pytest.raises(UsageError) as err:
        srv.start()
    msg = str(err.value)
    assert f"failed to load '{TENSOR_MODEL}'" in msg and "model.onnx" in msg


def test_server_killed_under_load_gives_client_errors_not_a_hang(repo, photos):
    srv = tserver.TritonServer(tserver.ServerConfig(repo, http_port=0, grpc_port=0, metrics_port=None,
                                                    models=(BYTES_MODEL,))).start()
    url = srv.grpc_url
    outcomes: list[str] = []

    def client_loop() -> None:
        client = grpcclient.InferenceServerClient(url)
        for _ in range(200):
            try:
                client.infer(BYTES_MODEL, [_bytes_input(grpcclient, [photos["chelsea"]])], client_timeout=30)
                outcomes.append("ok")
            except InferenceServerException:
                outcomes.append("error")
                break
        client.close()

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    os.killpg(srv.proc.pid, signal.SIGKILL)  # the whole server: tritonserver and its backend stub
    t0 = time.monotonic()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client hung after the server was killed"
    assert time.monotonic() - t0 < 45
    assert outcomes.count("error") == 4
    srv.stop()


def test_serve_refuses_a_repository_without_python_backend_models(tmp_path, capsys):
    from resnet_deploy.cli.main import main

    model = tmp_path / "repo" / "m"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "m"\nplatform: "onnxruntime_onnx"\n')
    assert main(["triton-serve", str(tmp_path / "repo"), "--http-port", "0", "--grpc-port", "0", "--no-metrics"]) == 2
    assert "no Python-backend model" in capsys.readouterr().err


# -- log parsing and the stub's NumPy (no server) ---------------------------------------------------

LOG = """\
W1128 12:10:28.331490 8013 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory"
E1128 12:10:28.331701 8013 server.cc:241] "CudaDriverHelper has not been initialized."
I1128 12:10:29.000000 8013 model_lifecycle.cc:472] "loading: m:1"
E1128 12:10:30.341957 8013 main.cc:257] "failed to start HTTP service: Unavailable - Socket '127.0.0.1:18100' already in use "
"""


def test_failure_lines_pick_tritons_reason():
    lines = tserver.failure_lines(LOG.splitlines())
    assert lines == [LOG.splitlines()[3]]
    load = ('E1128 12:06:53.799120 5722 model_lifecycle.cc:642] "failed to load \'echo\' version 1: Internal: '
            'ModuleNotFoundError: No module named \'numpy\'"')
    assert tserver.failure_lines(LOG.splitlines() + [load]) == [load]
    assert tserver.parse_log_line(load)[1] == "model_lifecycle.cc:642"
    assert tserver.failure_lines(["error while loading shared libraries: libpython3.11.so.1.0"]) == [
        "error while loading shared libraries: libpython3.11.so.1.0"]


def test_stub_numpy_2_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(tserver, "stub_numpy_requirement", lambda: "numpy<2.0.0,>=1.21")
    monkeypatch.setattr(tserver, "_numpy_version_in", lambda dirs: "2.4.6")
    with pytest.raises(UsageError, match=r"pip install --target .* 'numpy<2'"):
        tserver.check_stub_numpy(())
    monkeypatch.setattr(tserver, "_numpy_version_in", lambda dirs: "1.26.4")
    assert tserver.check_stub_numpy(()) == "1.26.4"
    with pytest.raises(UsageError, match="does not exist"):
        tserver.stub_site_dirs((tmp_path / "missing",))


def test_stub_env_puts_the_overlay_first(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    bindir = tserver.make_stub_env(tmp_path / "env", (overlay,))
    assert (bindir / "python3").resolve().is_file() and (tmp_path / "env" / "pyvenv.cfg").is_file()
    pth = next((tmp_path / "env" / "lib").glob("python3.*/site-packages/00-resnet-deploy.pth")).read_text().split()
    assert pth[0] == str(overlay.resolve())
    import resnet_deploy

    assert any(Path(resnet_deploy.__file__).resolve().is_relative_to(p) for p in pth[1:])
    # the interpreter the stub would embed sees the overlay first, then this environment's packages
    import sysconfig

    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    code = (f"import sys, resnet_deploy; print(sys.path.index({str(overlay.resolve())!r}) < "
            f"sys.path.index({site!r}))")
    out = subprocess.run([str(bindir / "python3"), "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.stdout.strip() == "True", out.stderr
