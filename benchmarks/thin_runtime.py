"""What the thin runtime saves (issue 12): the code before the change against this checkout, in one
interleaved run.

* installed size: the dependency closure of the base install before (torch, onnx, onnxscript,
  onnxruntime, NumPy, Pillow, tqdm) and after (NumPy, Pillow, tqdm + the ``onnxruntime`` extra),
  summed from the installed files' sizes; and ``du`` of a real runtime-only venv built here
  (``pip install '.[onnxruntime]'``) against the full ``make setup`` venv this script runs in;
* Embedder cold start: a fresh process that imports the Embedder and loads
  ``resnet50-embedding.onnx`` (ONNX Runtime): import time, time to ready, RSS and peak RSS once
  ready; then it embeds the same pictures, and the rows of every configuration must be
  bit-identical;
* the RSS of a Triton Python-model instance (the ``bytes`` entry on the nvidia-pytriton server): the
  backend stub process, once the model is ready;
* the start-up of a Ray embed job on a local cluster: ``resnet-deploy embed --executor ray`` on 4
  pictures, wall time of the whole command (Ray start, actor start, the few rows).

"before" is a directory holding the earlier ``src/`` and ``pyproject.toml`` (for example
``git archive <commit> src pyproject.toml | tar -x -C /tmp/before``); it runs in this same venv with
``PYTHONPATH`` pointing at its ``src``.

    python benchmarks/thin_runtime.py --before /tmp/before --workdir /tmp/thin-bench --rounds 5 \\
        --out-json benchmarks/results/thin_runtime.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 4

COLD_START = r"""
import json, sys, time
t0 = time.perf_counter()
from resnet_deploy.pipelines.embedder import Embedder
t1 = time.perf_counter()
emb = Embedder(sys.argv[1], backend="onnxruntime")
dim = emb.dim
t2 = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kb = lambda key: int(status[key].split()[0])
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "rss_mb": kb("VmRSS") / 1024, "hwm_mb": kb("VmHWM") / 1024,
                  "torch_loaded": "torch" in sys.modules, "onnx_loaded": "onnx" in sys.modules}), flush=True)
import numpy as np
np.save(sys.argv[2], emb.embed(sys.argv[3:]))
emb.close()
"""


def mb(n: float) -> float:
    return round(n / 2**20, 1)


# -- sizes -------------------------------------------------------------------------------------------

def closure(requirements: list[str]) -> dict[str, int]:
    """Installed distributions that ``requirements`` pull in (markers of extras not followed), with the
    bytes of their installed files, as found in this environment."""
    from packaging.requirements import Requirement

    sizes: dict[str, int] = {}
    todo = list(requirements)
    while todo:
        req = Requirement(todo.pop())
        name = req.name.lower().replace("_", "-")
        if name in sizes or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        total = 0
        for f in dist.files or ():
            try:
                total += os.stat(dist.locate_file(f)).st_size
            except OSError:
                pass
        sizes[name] = total
        for sub in req.extras:  # e.g. ray[data]
            todo += [r for r in dist.requires or () if f'extra == "{sub}"' in r.replace("'", '"')]
        todo += [r for r in dist.requires or () if "extra ==" not in r]
    return sizes


def project(pyproject: Path) -> dict:
    return tomllib.loads(pyproject.read_text())["project"]


def expand(extras: dict[str, list[str]], names: list[str]) -> list[str]:
    """Requirements of ``names`` extras, self-references (``resnet-deploy[a,b]``) expanded."""
    out: list[str] = []
    for name in names:
        for req in extras.get(name, []):
            m = re.match(r"resnet-deploy\[(.+)\]", req)
            out += expand(extras, m.group(1).split(",")) if m else [req]
    return out


def du(path: Path) -> int:
    r = subprocess.run(["du", "-sb", "--dereference-args", str(path)], capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def runtime_venv(workdir: Path) -> Path:
    """A venv with only ``.[onnxruntime]`` (NumPy, Pillow, ONNX Runtime at this environment's versions)."""
    venv = workdir / "runtime-venv"
    if (venv / "bin" / "resnet-deploy").exists():
        return venv
    pkg = workdir / "pkg"
    shutil.rmtree(pkg, ignore_errors=True)
    pkg.mkdir(parents=True)
    shutil.copy2(ROOT / "pyproject.toml", pkg)
    shutil.copy2(ROOT / "README.md", pkg)
    shutil.copytree(ROOT / "src", pkg / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pins = workdir / "constraints.txt"
    pins.write_text("".join(f"{n}=={importlib.metadata.version(n)}\n" for n in ("numpy", "pillow", "onnxruntime")))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-c", str(pins), f"{pkg}[onnxruntime]"], check=True, env=env)
    return venv


def sizes(before: Path, thin: Path) -> dict:
    old, new = project(before / "pyproject.toml"), project(ROOT / "pyproject.toml")
    extras = new["optional-dependencies"]
    base_before = closure(old["dependencies"])
    base_after = closure(new["dependencies"] + extras["onnxruntime"])
    full = closure(new["dependencies"] + expand(extras, ["dev"]))
    top = sorted(base_before.items(), key=lambda kv: -kv[1])[:8]
    return {
        "closure_mb": {"before_base": mb(sum(base_before.values())),
                       "after_base_onnxruntime": mb(sum(base_after.values())), "full_dev": mb(sum(full.values()))},
        "closure_packages": {"before_base": sorted(base_before), "after_base_onnxruntime": sorted(base_after)},
        "largest_before_mb": {k: mb(v) for k, v in top},
        "venv_du_mb": {"runtime_only": mb(du(thin)), "full_make_setup": mb(du(Path(sys.prefix)))},
    }


# -- processes ---------------------------------------------------------------------------------------

def env_for(src: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    env["RESNET_DEPLOY_PROGRESS"] = "0"
    return env


def cold_start(python: Path, src: Path | None, onnx: Path, images: list[Path], rows_out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(python), "-c", COLD_START, str(onnx), str(rows_out), *map(str, images)],
                            env=env_for(src), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    ready = time.perf_counter() - t0
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"cold start failed ({python}, {src}): {err[-2000:]}")
    return {"ready_s": ready, **json.loads(line)}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def triton_instance_rss(src: Path, export_dir: Path, workdir: Path, tag: str) -> dict:
    from resnet_deploy.pipelines.triton.server import free_port

    repo = workdir / f"triton-{tag}"
    shutil.rmtree(repo, ignore_errors=True)
    env = env_for(src)
    subprocess.run([sys.executable, "-m", "resnet_deploy.cli.main", "triton-repo", str(export_dir), "-o", str(repo),
                    "--name", "r50", "--entries", "bytes", "--runner-backend", "onnxruntime", "-q"],
                   env=env, check=True)
    http, grpc = free_port(), free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli.main", "triton-serve", str(repo), "--http-port",
                             str(http), "--grpc-port", str(grpc), "--no-metrics"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C to stop" in line:
            break
    ready = time.perf_counter() - t0
    stubs = [p for p in _descendants(proc.pid)
             if "triton_python_backend_stub" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    rss = [_rss_mb(p) for p in stubs]
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
    if not rss:
        raise RuntimeError("no Python-backend stub found:\n" + "".join(lines[-30:]))
    return {"ready_s": ready, "instances": len(rss), "instance_rss_mb": rss}


def ray_startup(src: Path, onnx: Path, images: Path, workdir: Path, tag: str) -> float:
    out = workdir / f"ray-{tag}.parquet"
    for p in (out, Path(str(out) + ".parts")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    env = dict(env_for(src), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "resnet_deploy.cli.main", "embed", str(images), "--model", str(onnx), "-o",
                    str(out), "--backend", "onnxruntime", "--executor", "ray", "--num-actors", "1", "-q"],
                   env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


# -- main --------------------------------------------------------------------------------------------

def export_r50(workdir: Path) -> Path:
    out = workdir / "resnet50-embedding"
    onnx = out / "resnet50-embedding.onnx"
    if not onnx.is_file():
        subprocess.run([sys.executable, "-m", "resnet_deploy.cli.main", "export", "--variant", "50", "--head",
                        "embedding", "--output", str(out), "-q"], env=env_for(ROOT / "src"), check=True)
    return onnx


def make_images(folder: Path) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(IMAGES):
        p = folder / f"{i}.jpg"
        if not p.is_file():
            Image.fromarray(rng.integers(0, 256, (300 + 20 * i, 400, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def summary(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="directory with the earlier src/ and pyproject.toml")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/thin-runtime-bench"))
    ap.add_argument("--rounds", type=int, default=5, help="cold starts per configuration (interleaved)")
    ap.add_argument("--ray-rounds", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated: triton, ray")
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    before_src, after_src = args.before.resolve() / "src", ROOT / "src"

    thin = runtime_venv(work)
    onnx = export_r50(work)
    images = make_images(work / "images")
    result: dict = {"machine": {"cpu": platform.processor() or _cpu_model(), "cpus": os.cpu_count(),
                                "python": platform.python_version(), "loaded": os.getloadavg()},
                    "sizes": sizes(args.before, thin)}

    configs = {"before": (Path(sys.executable), before_src), "after": (Path(sys.executable), after_src),
               "after-runtime-venv": (thin / "bin" / "python", None)}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(args.rounds + 1):  # round 0 warms the page cache and is dropped
        for name, (python, src) in configs.items():
            res = cold_start(python, src, onnx, images, work / f"rows-{name}.npy")
            if r:
                runs[name].append(res)
    import numpy as np

    rows = {name: np.load(work / f"rows-{name}.npy") for name in configs}
    result["cold_start"] = {name: {"median_ready_s": summary(rs, "ready_s"), "median_import_s": summary(rs, "import_s"),
                                   "median_load_s": summary(rs, "load_s"), "median_rss_mb": summary(rs, "rss_mb"),
                                   "median_peak_rss_mb": summary(rs, "hwm_mb"), "torch_loaded": rs[0]["torch_loaded"],
                                   "onnx_loaded": rs[0]["onnx_loaded"], "runs": rs} for name, rs in runs.items()}
    result["rows_bit_identical"] = all(np.array_equal(rows["before"], v) for v in rows.values())

    if "triton" not in skip:
        result["triton"] = {tag: triton_instance_rss(src, onnx.parent, work, tag)
                            for tag, src in (("before", before_src), ("after", after_src))}
    if "ray" not in skip:
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.ray_rounds):
            for tag, src in (("before", before_src), ("after", after_src)):
                times[tag].append(ray_startup(src, onnx, work / "images", work, tag))
        result["ray_embed_s"] = {tag: {"median": round(statistics.median(t), 2), "runs": [round(x, 2) for x in t]}
                                 for tag, t in times.items()}
    result["machine"]["loaded_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(text + "\n")
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
