"""Load and hostile requests against a real ``resnet-deploy triton-serve`` on loopback.

8 client threads for 20 s: 6 send real photos (encoded JPEG/PNG to the ``bytes`` entry, one to
three per request, over gRPC and HTTP) and preprocessed tensors (the ``python`` entry), and check
every answer against the local :class:`~resnet_deploy.pipelines.embedder.Embedder`; 2 send garbage
(random bytes, truncated JPEGs, a PNG declaring 13000x13000, a JPEG declaring 65000x65000, 1x1 and
40x5000 tensors, FP16 where FP32 is expected, requests over the byte limit), each of which must be
refused. Prints requests/s, p50/p99 latency of the good requests, errors, wrong answers, and the
memory of the model processes (Triton's Python backend stubs) and of tritonserver before and after:
``rss`` (VmRSS), ``anon`` (private memory) and ``shmem`` (the Python backend's shared-memory pool,
which keeps the size of the largest request Triton accepted: a garbage request is 64 MiB + one
photo, just over the entries' default ``max_request_bytes``).

    python benchmarks/triton_load.py                       # ResNet-18 embedding, 8 threads, 20 s
    python benchmarks/triton_load.py --duration 5 --threads 8 --garbage-threads 2

``tests/pipelines/test_triton_security.py`` runs the same driver (:func:`run_load`) for a few
seconds against a tiny model. Exit 0 when there was no wrong answer and no failed good request.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# -- hostile payloads -------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 13000) -> bytes:
    """A valid PNG of ``side`` x ``side`` 1-bit pixels, all zero: a few KB that decode to side² bytes
    (169 MB for 13000, then 507 MB as RGB)."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def big_jpeg_header(width: int = 65000, height: int = 65000) -> bytes:
    """A small baseline JPEG whose frame header declares ``width`` x ``height`` (the scan is short)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buf, format="JPEG", quality=80)
    data = bytearray(buf.getvalue())
    i = 2
    while i < len(data):  # walk the markers to SOF0 (FFC0) and patch its height and width
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xC0:
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF0 marker")


def garbage_requests(photo: bytes, max_request_bytes: int) -> list[tuple[str, str, Any]]:
    """(name, entry kind, payload) for each kind of bad request: ``bytes`` payloads are lists of
    encoded images, ``tensor`` payloads are arrays."""
    rng = np.random.default_rng(1)
    bomb = bomb_png()
    return [
        ("random bytes", "bytes", [rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()]),
        ("truncated JPEG", "bytes", [photo[: len(photo) // 3]]),
        ("8 PNGs declaring 13000x13000", "bytes", [bomb] * 8),
        ("JPEG declaring 65000x65000", "bytes", [big_jpeg_header()]),
        ("empty image", "bytes", [b""]),
        (f"request over {max_request_bytes} bytes", "bytes", [photo + b"\x00" * max_request_bytes]),
        ("1x3x1x1 tensor", "tensor", np.zeros((1, 3, 1, 1), np.float32)),
        ("1x3x40x5000 tensor", "tensor", np.zeros((1, 3, 40, 5000), np.float32)),
        ("1x3x8x8 tensor", "tensor", np.zeros((1, 3, 8, 8), np.float32)),
        ("NaN tensor of a wrong channel count", "tensor", np.full((1, 4, 64, 64), np.nan, np.float32)),
        ("FP16 tensor", "tensor", np.zeros((1, 3, 64, 64), np.float16)),
    ]


# -- processes --------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def server_processes(root_pid: int) -> dict[str, int]:
    """``{"tritonserver": pid, "<model>": stub pid, ...}`` among the descendants of ``root_pid`` (the
    ``triton-serve`` process, or tritonserver itself)."""
    found: dict[str, int] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        cmd = _cmdline(pid)
        if cmd and cmd[0].endswith("tritonserver"):
            found["tritonserver"] = pid
        elif cmd and cmd[0].endswith("triton_python_backend_stub"):
            model = next((Path(a).parent.parent.name for a in cmd if a.endswith("model.py")), str(pid))
            found[model] = pid
        todo.extend(_children(pid))
    return found


def memory_mb(pid: int) -> dict[str, float]:
    """``rss`` (VmRSS: every resident page), ``anon`` (RssAnon: the process's private memory) and
    ``shmem`` (RssShmem: here the Python backend's shared-memory pool, shared with tritonserver) of
    ``pid``, in MiB."""
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssShmem": "shmem"}
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in keys:
                out[keys[key]] = int(line.split()[1]) / 1024
    return out


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS``: anonymous, file and shared memory pages)."""
    return memory_mb(pid)["rss"]


@dataclass
class Served:
    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    lines: list[str]
    output: "queue.Queue[str | None]"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def processes(self) -> dict[str, int]:
        return server_processes(self.proc.pid)

    def rest_of_output(self, timeout: float = 30) -> str:
        out = []
        while True:
            line = self.output.get(timeout=timeout)
            if line is None:
                return "".join(out)
            out.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> list[str]:
        """The output lines up to the first holding ``text`` (all of them if it exits or ``timeout`` passes)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.output.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if text in line:
                break
        return seen

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C (SIGINT) and wait: its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)


def start_triton_serve(repo: Path, *extra: str, timeout: float = 240, env: dict[str, str] | None = None,
                       stderr_separately: bool = False) -> Served:
    """``resnet-deploy triton-serve REPO`` as a user runs it, on free loopback ports; returns once it
    printed "Ctrl-C to stop" (RuntimeError with its output if it exits or is not ready in time)."""
    from resnet_deploy.pipelines.triton.server import free_port

    http, grpc = free_port(), free_port()
    cmd = [sys.executable, "-m", "resnet_deploy.cli.main", "triton-serve", str(repo), "--http-port", str(http),
           "--grpc-port", str(grpc), "--no-metrics", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env,
                            stderr=subprocess.PIPE if stderr_separately else subprocess.STDOUT)
    lines: list[str] = []
    q: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line is None:
            break
        lines.append(line.rstrip())
        if "Ctrl-C to stop" in line:
            return Served(proc, http, grpc, lines, q)
    proc.kill()
    err = proc.stderr.read() if stderr_separately and proc.stderr else ""
    raise RuntimeError("triton-serve did not become ready:\n" + "\n".join(lines) + err)


# -- a tiny model -----------------------------------------------------------------------------------


def tiny_export(root: Path) -> Path:
    """An export directory holding a model with the toolkit's I/O contract (NCHW in, (N, 3) out):
    global average pooling, with crop 32 preprocessing metadata."""
    import onnx
    from onnx import TensorProto, helper

    from resnet_deploy._io import sha256_file
    from resnet_deploy.artifacts import metadata_props
    from resnet_deploy.models.transforms import Preprocessing

    root.mkdir(parents=True)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [0, 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Reshape", ["pooled", "shape"], ["embedding"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [inp], [out], initializer=[shape]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {"variant": "tiny", "head": "embedding", "output_dim": 3,
            "preprocessing": Preprocessing(resize_size=40, crop_size=32).to_dict()}
    for k, v in metadata_props(meta).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(root / "tiny.onnx"))
    manifest = {"variant": "tiny", "artifacts": [{"path": "tiny.onnx", "precision": "fp32",
                                                  "sha256": sha256_file(root / "tiny.onnx")}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# -- the load ---------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    duration_s: float = 0.0
    good_ok: int = 0
    good_failed: int = 0
    wrong: int = 0
    garbage_sent: int = 0
    garbage_refused: int = 0
    garbage_accepted: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return (self.good_ok + self.good_failed + self.garbage_sent) / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"duration_s": round(self.duration_s, 1),
                "requests": self.good_ok + self.good_failed + self.garbage_sent,
                "requests_per_s": round(self.requests_per_s, 1), "good_ok": self.good_ok,
                "good_failed": self.good_failed, "wrong_answers": self.wrong, "garbage_sent": self.garbage_sent,
                "garbage_refused": self.garbage_refused, "garbage_accepted": self.garbage_accepted,
                "p50_ms": round(self.percentile(50), 1), "p99_ms": round(self.percentile(99), 1),
                "failures": self.failures[:5], "accepted_garbage": self.accepted[:5]}


def _close_enough(got: np.ndarray, ref: np.ndarray) -> bool:
    return got.shape == ref.shape and bool(np.allclose(got, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max())))


def run_load(served: Served, *, bytes_model: str, tensor_model: str, output: str, photos: dict[str, bytes],
             references: dict[str, np.ndarray], tensors: list[tuple[np.ndarray, np.ndarray]],
             garbage: list[tuple[str, str, Any]], threads: int = 8, garbage_threads: int = 2,
             duration_s: float = 20.0, tensor_input: str = "input") -> LoadResult:
    """``threads`` clients for ``duration_s``: ``garbage_threads`` of them cycle through ``garbage``,
    the others send ``photos`` (checked against ``references``) and ``tensors`` (input, expected)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    result = LoadResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s
    names = list(photos)

    def client(k: int):
        if k % 2:
            return httpclient, httpclient.InferenceServerClient(served.http_url, connection_timeout=60,
                                                                 network_timeout=60)
        return grpcclient, grpcclient.InferenceServerClient(served.grpc_url)

    def infer(mod: Any, c: Any, kind: str, payload: Any) -> np.ndarray:
        if kind == "bytes":
            arr = np.array(payload, dtype=object).reshape(-1, 1)
            inp = mod.InferInput("image", list(arr.shape), "BYTES")
            model = bytes_model
        else:
            arr = payload
            inp = mod.InferInput(tensor_input, list(arr.shape), np_to_triton_dtype(arr.dtype))
            model = tensor_model
        inp.set_data_from_numpy(arr)
        kwargs = {"client_timeout": 60} if mod is grpcclient else {}
        return c.infer(model, [inp], **kwargs).as_numpy(output)

    def good(k: int) -> None:
        mod, c = client(k)
        i = k
        try:
            while time.monotonic() < stop_at:
                i += 1
                if i % 4 == 3:
                    tensor, expected = tensors[i % len(tensors)]
                    kind, payload, ref = "tensor", tensor, expected
                else:
                    chosen = [names[(i + j) % len(names)] for j in range(1 + i % 3)]
                    kind, payload = "bytes", [photos[n] for n in chosen]
                    ref = np.stack([references[n] for n in chosen])
                t0 = time.perf_counter()
                try:
                    got = infer(mod, c, kind, payload)
                except InferenceServerException as exc:
                    with lock:
                        result.good_failed += 1
                        result.failures.append(f"{kind}: {exc}")
                    continue
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    result.latencies_ms.append(ms)
                    if _close_enough(np.asarray(got), ref):
                        result.good_ok += 1
                    else:
                        result.wrong += 1
                        result.failures.append(f"{kind}: wrong answer")
        finally:
            c.close()

    def bad(k: int) -> None:
        mod, c = client(k)
        i = k
        try:
            while time.monotonic() < stop_at:
                name, kind, payload = garbage[i % len(garbage)]
                i += 1
                try:
                    infer(mod, c, kind, payload)
                except InferenceServerException:
                    with lock:
                        result.garbage_sent += 1
                        result.garbage_refused += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - a client-side refusal (e.g. a size check) counts too
                    with lock:
                        result.garbage_sent += 1
                        result.garbage_refused += 1
                        result.failures.append(f"garbage {name}: client error {type(exc).__name__}")
                    continue
                with lock:
                    result.garbage_sent += 1
                    result.garbage_accepted += 1
                    result.accepted.append(name)
        finally:
            c.close()

    workers = [threading.Thread(target=bad if k < garbage_threads else good, args=(k,)) for k in range(threads)]
    t0 = time.monotonic()
    for t in workers:
        t.start()
    for t in workers:
        t.join(duration_s + 180)
    result.duration_s = time.monotonic() - t0
    return result


# -- the benchmark ----------------------------------------------------------------------------------


def _photos() -> dict[str, bytes]:
    import skimage.data
    from PIL import Image

    out = {}
    for name, fmt in (("astronaut", "JPEG"), ("coffee", "JPEG"), ("chelsea", "PNG"), ("rocket", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buf, format=fmt, quality=90)
        out[name] = buf.getvalue()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="18")
    ap.add_argument("--export-dir", default=None, help="an existing export (embedding head); default: export one")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--garbage-threads", type=int, default=2)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of good requests before the first RSS")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args(argv)

    from resnet_deploy.pipelines import Embedder
    from resnet_deploy.pipelines.triton import write_repository

    work = Path(tempfile.mkdtemp(prefix="triton-load-"))
    if args.export_dir:
        export_dir = Path(args.export_dir)
    else:
        from resnet_deploy.export import ExportConfig, export_model

        export_dir = work / "export"
        export_model(ExportConfig(variant=args.variant, head="embedding", output_dir=export_dir,
                                  exporter="torchscript", check_shapes=((1, 3, 64, 64),)))
    onnx = next(p for p in sorted(export_dir.glob("*.onnx")) if ".fp16." not in p.name and ".int8" not in p.name)
    repo = work / "repo"
    write_repository(export_dir, repo, name="m", max_batch_size=args.max_batch_size, max_queue_delay_us=2000,
                     runner_backend="onnxruntime", entries=("python", "bytes"))
    photos = _photos()
    with Embedder(onnx, backend="onnxruntime") as emb:
        references = dict(zip(photos, emb.embed(list(photos.values()))))
        rng = np.random.default_rng(0)
        inputs = [emb.prepare(photos["coffee"])[None], rng.standard_normal((2, 3, 96, 128), dtype=np.float32)]
        tensors = [(x, emb.embed_batch(x)) for x in inputs]
    served = start_triton_serve(repo)
    try:
        procs = served.processes()
        garbage = garbage_requests(photos["astronaut"], 64 << 20)
        warm = run_load(served, bytes_model="m_bytes", tensor_model="m_python", output="embedding", photos=photos,
                        references=references, tensors=tensors, garbage=[], threads=args.threads,
                        garbage_threads=0, duration_s=args.warmup)
        before = {name: memory_mb(pid) for name, pid in procs.items()}
        res = run_load(served, bytes_model="m_bytes", tensor_model="m_python", output="embedding", photos=photos,
                       references=references, tensors=tensors, garbage=garbage, threads=args.threads,
                       garbage_threads=args.garbage_threads, duration_s=args.duration)
        after = {name: memory_mb(pid) for name, pid in procs.items()}
    finally:
        code = served.interrupt()
    summary = res.summary()
    summary.update({"variant": args.variant, "threads": args.threads, "garbage_threads": args.garbage_threads,
                    "warmup_s": args.warmup, "warmup_good_ok": warm.good_ok,
                    "memory_mb_before": {k: {m: round(x) for m, x in v.items()} for k, v in before.items()},
                    "memory_mb_after": {k: {m: round(x) for m, x in v.items()} for k, v in after.items()},
                    "triton_serve_exit": code,
                    "cpu": _cpu_model(), "cpus": os.cpu_count()})
    print(json.dumps(summary, indent=2))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if res.wrong == 0 and res.good_failed == 0 and res.garbage_accepted == 0 else 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
