"""Issue #11, items 2 and 3: the reproductions of the issue as a probe over the real CLI.

    python benchmarks/integrity_probe.py [SUBSTRING ...]     # all cases, or those whose name matches

Each case prints PASS/FAIL with what it saw (exit codes, seconds, what is left on disk). Cases:
kill -9 of a re-export at four stages, a re-export without --fp16, stale temporaries, a tampered
artifact, a killed calibrate, checks that must fail before the slow stages, an unreachable Ray
cluster, and SIGINT on export, local and Ray embed, calibrate and bench. Set NEWFLAGS=1 to pass
--ray-timeout 5 (the option does not exist before the fix). Work files go to a temporary folder.
"""
import hashlib, json, os, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path

WT = Path(os.environ.get("WT", Path(__file__).resolve().parents[1]))
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(WT / "src"), "RESNET_DEPLOY_PROGRESS": "0"}
ROOT = Path(tempfile.mkdtemp(prefix="integrity-probe-"))
CLI = [PY, "-m", "resnet_deploy.cli.main"]
only = sys.argv[1:]
results = {}

def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()

def consistent(d, strict=True):
    """(ok, why): every listed file matches; no model file unlisted; no temp files."""
    d = Path(d)
    m = d / "manifest.json"
    if not m.is_file(): return False, "no manifest"
    data = json.loads(m.read_text())
    listed = set()
    for a in data["artifacts"]:
        p = d / a["path"]; listed.add(p.name)
        if not p.is_file(): return False, f"listed {a['path']} missing"
        if sha(p) != a["sha256"]: return False, f"sha mismatch {a['path']}"
    for f in d.iterdir():
        if strict and f.name.endswith((".onnx", ".engine")) and f.name not in listed: return False, f"unlisted {f.name}"
        if f.name.endswith(".tmp"): return False, f"temp {f.name}"
    for key in data.get("parity", {}):
        if key in ("fp32", "fp16") and not any(a.get("precision") == key and a["path"].endswith(".onnx") for a in data["artifacts"]):
            return False, f"parity {key} without artifact"
    return True, f"seed {json.loads(m.read_text()).get('weights', {}).get('seed', '?')}"

def export(out, *extra, kill_at=None, sig=signal.SIGKILL):
    cmd = CLI + ["export", "--variant", "18", "--exporter", "torchscript", "--check-shapes", "1x3x64x64", "--output", str(out), *extra]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_at is None:
        o, e = p.communicate(); return p.returncode, e
    for line in p.stderr:
        if kill_at in line:
            p.send_signal(sig); break
    t0 = time.time(); rc = p.wait(); return rc, time.time() - t0

def case(name, fn):
    if only and not any(o in name for o in only): return
    try: ok, why = fn()
    except Exception as exc: ok, why = False, f"{type(exc).__name__}: {exc}"
    results[name] = ok
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {why}", flush=True)

def base(name, *extra):
    X = ROOT / name
    rc, e = export(X, "--fp16", *extra)
    assert rc == 0, e[-500:]
    return X

def kill_case(marker):
    def f():
        X = base("k" + str(abs(hash(marker)) % 1000))
        rc, _ = export(X, "--fp16", "--seed", "1", kill_at=marker)
        return consistent(X)
    return f

for m in ["export ONNX", "verify FP32 ONNX against PyTorch ...", "convert to FP16 ONNX ...", "verify FP16 ONNX"]:
    case(f"2.kill -9 at '{m}'", kill_case(m))

def no_fp16():
    X = base("nofp16")
    rc, e = export(X)
    ok, why = consistent(X)
    stale = (X / "resnet18.fp16.onnx").exists()
    return ok and not stale and rc == 0, f"{why}; stale fp16 present={stale}"
case("2.re-export without --fp16 leaves no FP16", no_fp16)

def tmp_cleanup():
    X = base("tmpclean")
    (X / ".resnet18.onnx.abc123.tmp").write_bytes(b"x" * 100)
    rc, e = export(X, "--fp16")
    left = [f.name for f in X.parent.iterdir() if f.name.startswith(".tmpclean")] + [f.name for f in X.iterdir() if f.name.endswith(".tmp")]
    return rc == 0 and not left, f"left {left}"
case("2.stale .tmp removed by next run", tmp_cleanup)

def verify_cli():
    X = base("tamper")
    f = X / "resnet18.onnx"
    raw = bytearray(f.read_bytes()); raw[-1] ^= 1; f.write_bytes(bytes(raw))
    outs = []
    for cmd in (["check", str(f), "--shapes", "1x3x64x64"], ["infer", "--model", str(f), "/dev/null"]):
        r = subprocess.run(CLI + cmd, env=ENV, capture_output=True, text=True)
        outs.append((r.returncode, r.stderr.strip().splitlines()[-1:] if r.stderr else []))
    ok = all(rc == 2 and any("sha256" in l for l in e) for rc, e in outs)
    return ok, str(outs)[:300]
case("2.check/infer refuse tampered artifact", verify_cli)

def calib_kill():
    X = base("calib")
    cmd = CLI + ["calibrate", str(X / "resnet18.onnx"), "--calib-data", "synthetic:40", "--calib-size", "24", "--holdout", "8", "--int8-target", "both", "--calib-method", "minmax", "--shape", "8x3x64x64"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True); assert r.returncode == 0, r.stderr[-400:]
    # now redo with another method, kill during quantize of second target
    p = subprocess.Popen(cmd[:-6] + ["--calib-method", "percentile", "--recalibrate", "--shape", "8x3x64x64", "--int8-target", "both"], env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        if "quantize to INT8 Q/DQ (tensorrt)" in line and "done" in line:
            p.kill(); break
    p.wait()
    return consistent(X, strict=False)
case("2.calibrate killed mid-way keeps manifest consistent", calib_kill)

# ---- validation before slow stages
def timed(cmd, cwd=None):
    t0 = time.time(); r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=cwd); return r, time.time() - t0

def empty_calib():
    E = ROOT / "empty"; E.mkdir(); X = ROOT / "ecal"
    r, dt = timed(CLI + ["export", "--variant", "18", "--int8", "--calib-data", str(E), "--output", str(X)])
    # startup of the CLI itself (imports) is the floor: measure it
    r0, dt0 = timed(CLI + ["export", "--variant", "nope", "--output", str(X)])
    return r.returncode == 2 and not X.exists() and dt - dt0 < 1.0, f"rc {r.returncode}, {dt:.1f}s (cli floor {dt0:.1f}s), X exists={X.exists()}: {r.stderr.strip()[-150:]}"
case("2.--int8 --calib-data EMPTY fails fast", empty_calib)

def fast_fail(name, args, pre=None):
    def f():
        X = ROOT / name
        if pre: pre(X)
        r0, dt0 = timed(CLI + ["export", "--variant", "nope", "--output", str(ROOT / "zz")])
        r, dt = timed(CLI + ["export", "--variant", "18", "--output", str(X), *args])
        tb = "Traceback" in r.stderr
        return r.returncode == 2 and not tb and dt - dt0 < 1.0, f"rc {r.returncode}, {dt:.1f}s (floor {dt0:.1f}s) {r.stderr.strip()[-160:]}"
    return f
case("2.output is a file fails fast", fast_fail("isfile", [], pre=lambda X: X.write_text("x")))
def ro(X):
    X.mkdir(); os.chmod(X, 0o555)
case("2.output parent is a file fails fast", fast_fail("pfile/sub", [], pre=lambda X: X.parent.write_text("x")))
case("2.--engine always without TensorRT fails fast", fast_fail("always", ["--fp16", "--engine", "always"]))
case("2.bad engine profile fails fast", fast_fail("prof", ["--fp16", "--min-shape", "8x3x224x224", "--opt-shape", "1x3x224x224", "--max-shape", "4x3x224x224"]))
case("2.bad calib option fails fast", fast_fail("holdout", ["--int8", "--calib-data", "synthetic", "--holdout", "1"]))
case("2.bad calib shape fails fast", fast_fail("cshape", ["--int8", "--calib-data", "synthetic", "--calib-shape", "8x3x64x96"]))

# ---- hangs
def ray_bad():
    out = ROOT / "r.parquet"
    photos = ROOT / "photos"; photos.mkdir(exist_ok=True)
    from PIL import Image; import numpy as np
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / "a.jpg")
    t0 = time.time()
    try:
        r = subprocess.run(CLI + ["embed", "--model", "18", str(photos), "--output", str(out), "--executor", "ray", "--ray-address", "127.0.0.1:1", *(["--ray-timeout", "5"] if os.environ.get("NEWFLAGS") else [])], env=ENV, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        return False, f"still running after 90 s; output exists={out.exists()}"
    dt = time.time() - t0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    return r.returncode == 2 and not out.exists() and len(lines) == 1, f"rc {r.returncode} in {dt:.0f}s, exists={out.exists()}, {len(lines)} lines: {lines[-1:] }"
case("3.ray bad address times out", ray_bad)

def ray_wait_sigint():
    out = ROOT / "r2.parquet"
    p = subprocess.Popen(CLI + ["embed", "--model", "18", str(ROOT / "photos"), "--output", str(out), "--executor", "ray",
                                "--ray-address", "127.0.0.1:1"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(12)  # imports done, Ray (or the probe) retrying
    p.send_signal(signal.SIGINT); t0 = time.time()
    try: rc = p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait(); return False, "not ended 60 s after SIGINT"
    dt = time.time() - t0
    return rc == 130 and dt < 5 and not out.exists(), f"rc {rc} after {dt:.1f}s, output exists={out.exists()}"
case("3.SIGINT while connecting to an unreachable Ray cluster", ray_wait_sigint)

def sigint(name, cmd, marker, check=None):
    def f():
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in p.stderr:
            if marker in line: break
        time.sleep(0.5)
        p.send_signal(signal.SIGINT); t0 = time.time()
        try: rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait(); return False, "not ended 30 s after SIGINT"
        dt = time.time() - t0
        extra = check() if check else (True, "")
        return rc == 130 and dt < 5 and extra[0], f"rc {rc} after {dt:.1f}s {extra[1]}"
    return f

X = ROOT / "sig-export"
case("3.SIGINT export", sigint("export", CLI + ["export", "--variant", "50", "--output", str(X)], "export ONNX", check=lambda: (not X.exists() or consistent(X)[0], f"X exists={X.exists()}")))

def many_photos(n=400):
    d = ROOT / "many"
    if not d.exists():
        d.mkdir()
        from PIL import Image; import numpy as np
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return d

def emb_check(out):
    def c():
        if not out.exists(): return True, "no output"
        side = Path(str(out) + ".json")
        import numpy as np
        arr = np.load(out)
        paths = json.loads(side.read_text())["paths"] if side.exists() else []
        return len(arr) == len(paths), f"{len(arr)} rows, {len(paths)} paths"
    return c

EOUT = ROOT / "emb.npy"
case("3.SIGINT embed local", sigint("embed", CLI + ["embed", "--model", "50", str(many_photos()), "--output", str(EOUT), "--batch-size", "8", "--checkpoint-every", "1"], "backend", check=emb_check(EOUT)))
case("3.SIGINT embed ray", sigint("embed-ray", CLI + ["embed", "-v", "--model", "50", str(many_photos()), "--output", str(ROOT / "ray.parquet"), "--executor", "ray", "--batch-size", "8"], "Ray:"))
def calib_sig():
    X = base("calsig")
    return sigint("calibrate", CLI + ["calibrate", str(X / "resnet18.onnx"), "--calib-data", "synthetic:3000", "--calib-size", "2900", "--shape", "8x3x224x224"], "calibrate (", check=lambda: consistent(X))()
case("3.SIGINT calibrate", calib_sig)
case("3.SIGINT bench", sigint("bench", CLI + ["bench", "--variant", "50", "--backends", "torch,onnxruntime", "--duration", "60", "--batch-sizes", "8", "--workdir", str(ROOT / "benchwd")], "bench"))

shutil.rmtree(ROOT, ignore_errors=True)
print("SUMMARY", sum(results.values()), "/", len(results))
for k, v in results.items(): print(("PASS " if v else "FAIL ") + k)
