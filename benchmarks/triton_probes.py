"""The Triton reproductions of issue 11, as pass/fail probes, runnable against any version of the toolkit.

Against a tiny model served by ``resnet-deploy triton-serve`` (its defaults, loopback): a model
load carrying a ``model.py``, an unload, 8 PNG bombs per request, a 1x3x4000x4000 and a 1x3x1x1
tensor, Ctrl-C; and, without a server, ``--host 'not a host'``, ``triton-repo --precision
../../x`` and a handler ``artifact`` parameter pointing out of its entry. Prints one JSON object
(probe -> ok, detail) and ``PASS n of m``; the version probed is the ``resnet_deploy`` that
``PYTHONPATH`` selects:

    PYTHONPATH=src python benchmarks/triton_probes.py /tmp/probes-after
    git archive <old commit> src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python benchmarks/triton_probes.py /tmp/probes-before
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_load as tl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import resnet_deploy
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from resnet_deploy.pipelines.triton import write_repository
    from resnet_deploy.pipelines.triton.handler import HandlerConfig

    work = Path(argv[0] if argv else "/tmp/triton-probes")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(Path(resnet_deploy.__file__).resolve().parent.parent))
    export = tl.tiny_export(work / "export")
    repo = work / "repo"
    write_repository(export, repo, name="tiny", max_batch_size=8, runner_backend="onnxruntime",
                     entries=("python", "bytes"))
    results: dict[str, tuple[bool, str]] = {}

    def cli(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "resnet_deploy.cli.main", *args], capture_output=True, text=True,
                           env=env, timeout=300)
        return p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""

    err = cli("triton-serve", str(repo), "--host", "not a host", "--no-metrics")
    results["--host 'not a host': a clear message"] = ("choose other ports" not in err and "not an IP" in err, err)
    err = cli("triton-repo", str(export), "--output", str(work / "r2"), "--precision", "../../x")
    results["triton-repo --precision ../../x: a clear message"] = ("export first" not in err and "unknown" in err, err)
    try:
        HandlerConfig.from_parameters({"artifact": "../../../export/tiny.onnx"}, repo / "tiny_python" / "1")
        results["handler refuses an artifact outside its entry"] = (False, "accepted")
    except Exception as exc:  # noqa: BLE001 - any refusal
        results["handler refuses an artifact outside its entry"] = ("outside" in str(exc), str(exc)[:100])

    served = tl.start_triton_serve(repo, env=env)

    def post(path: str, body: dict) -> int:
        req = urllib.request.Request(f"http://{served.http_url}{path}", data=json.dumps(body).encode(),
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    marker = work / "pwned"
    code = (f"open({str(marker)!r}, 'w').write('x')\n"
            "class TritonPythonModel:\n    def execute(self, r):\n        return []\n")
    config = {"backend": "python", "max_batch_size": 0,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]}
    status = post("/v2/repository/models/evil/load", {"parameters": {
        "config": json.dumps(config), "file:1/model.py": base64.b64encode(code.encode()).decode()}})
    time.sleep(2)
    results["load with file:1/model.py refused, no code run"] = (
        status != 200 and not marker.exists(), f"HTTP {status}, marker {'written' if marker.exists() else 'absent'}")

    client = grpcclient.InferenceServerClient(served.grpc_url)
    procs = served.processes()

    def rss() -> dict[str, int]:
        return {k: round(tl.rss_mb(v)) for k, v in procs.items()}

    def send(model: str, arr: np.ndarray, dtype: str, name: str) -> tuple[str, float]:
        inp = grpcclient.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        t0 = time.time()
        try:
            client.infer(model, [inp], client_timeout=600)
            return "accepted", time.time() - t0
        except Exception as exc:  # noqa: BLE001 - a refusal
            return "refused: " + str(exc)[:80], time.time() - t0

    r = send("tiny_python", np.zeros((1, 3, 1, 1), np.float32), "FP32", "input")
    results["tensor entry refuses 1x1"] = (r[0].startswith("refused"), r[0])
    before = rss()
    bomb = np.array([[tl.bomb_png()]] * 8, dtype=object)
    outs = [send("tiny_bytes", bomb, "BYTES", "image") for _ in range(10)]
    after = rss()
    results["10 requests of 8 PNG bombs: bytes model within 10 %"] = (
        after["tiny_bytes"] <= 1.1 * before["tiny_bytes"],
        f"{before['tiny_bytes']} -> {after['tiny_bytes']} MiB; {outs[0][0][:60]}; {sum(o[1] for o in outs):.1f} s")
    r = send("tiny_python", np.zeros((1, 3, 4000, 4000), np.float32), "FP32", "input")
    results["1x3x4000x4000 tensor refused"] = (
        r[0].startswith("refused"), f"{r[0][:70]} in {r[1]:.1f} s; python model {before['tiny_python']} -> "
                                    f"{rss()['tiny_python']} MiB; tritonserver {before['tritonserver']} -> "
                                    f"{rss()['tritonserver']} MiB")
    client.close()
    status = post("/v2/repository/models/tiny_python/unload", {})
    time.sleep(4)
    hc = httpclient.InferenceServerClient(served.http_url)
    ready = hc.is_model_ready("tiny_python")
    hc.close()
    results["unload refused, the model stays ready"] = (status != 200 and ready, f"HTTP {status}, ready {ready}")
    t0 = time.time()
    rc = served.interrupt(120)
    took = time.time() - t0
    rest = served.rest_of_output()
    results["Ctrl-C: exit 130 within 10 s"] = (rc == 130 and took < 10, f"exit {rc} after {took:.1f} s")
    if status == 200:
        noticed = "no longer ready" in rest
        results["an unloaded model is reported, non-zero exit"] = (noticed and rc not in (0, 130),
                                                                   f"reported {noticed}, exit {rc}")
    print(json.dumps({k: {"ok": bool(ok), "detail": why} for k, (ok, why) in results.items()}, indent=1))
    passed = sum(bool(ok) for ok, _ in results.values())
    print(f"PASS {passed} of {len(results)}")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
