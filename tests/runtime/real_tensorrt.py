"""NVIDIA's real TensorRT Python bindings on a machine without a GPU or libnvinfer.

The bindings wheels (``tensorrt-cuXX-bindings``, ~1.3 MB each) hold the compiled module; the
libraries they link against come from NVIDIA's own index, which is out of reach here. The module
needs only nine C symbols from libnvinfer, libnvinfer_plugin and libnvonnxparser, so a stand-in
library built with ``cc`` provides them: every factory returns NULL, as the real ones do when CUDA
cannot start, so ``trt.Builder(logger)`` raises the same ``TypeError: ... returned nullptr`` as on a
host without a GPU, while every class, enum, property and pybind signature is the real one.

Everything goes to a cache outside the virtualenv (``$RESNET_DEPLOY_TEST_CACHE``, default
``~/.cache/resnet-deploy-test``) and is reused across runs: the wheels (``pip install --target``),
the stand-in libraries, and a JSON description of each module's surface (``surface()``).

    python tests/runtime/real_tensorrt.py dump TARGET_DIR OUT.json   (run with the stand-in on LD_LIBRARY_PATH)
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

#: key -> (pip requirement, libnvinfer soname major)
VERSIONS: dict[str, tuple[str, str]] = {
    "10.13": ("tensorrt-cu12-bindings==10.13.*", "10"),
    "11.4-cu13": ("tensorrt-cu13-bindings==11.4.0.106", "11"),
    "11.4-cu12": ("tensorrt-cu12-bindings==11.4.0.106", "11"),
}
CUDA_BINDINGS = "cuda-bindings>=12.9,<14 cuda-pathfinder"  # cuda-python's runtime (answers 35 without a driver)

STANDIN_C = r"""
/* Stand-in for libnvinfer / libnvinfer_plugin / libnvonnxparser: the nine symbols the TensorRT Python
   bindings link against. Factories return NULL, as the real ones do when CUDA cannot start. */
#include <stddef.h>
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *getPluginRegistry(void) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *name_space) { return 0; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
"""
LIBS = ("nvinfer", "nvinfer_plugin", "nvonnxparser")
# what NVIDIA's `tensorrt-cuXX` package installs as `tensorrt`: the bindings under their import name
SHIM = "from tensorrt_bindings import *  # noqa: F401,F403\nfrom tensorrt_bindings import __version__  # noqa: F401\n"


class Unavailable(Exception):
    """The real bindings cannot be had here (no registry, no C compiler); the message says why."""


def cache_dir() -> Path:
    d = Path(os.environ.get("RESNET_DEPLOY_TEST_CACHE") or Path.home() / ".cache" / "resnet-deploy-test")
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_FAILED: dict[str, str] = {}  # requirement -> why, so an unreachable registry is asked once per process


def _pip_target(name: str, requirement: str, timeout: float = 240) -> Path:
    """``pip install --no-deps --target`` once into the cache; later calls reuse the directory."""
    if requirement in _FAILED:
        raise Unavailable(_FAILED[requirement])
    try:
        return _pip_install(name, requirement, timeout)
    except Unavailable as exc:
        _FAILED[requirement] = str(exc)
        raise


def _pip_install(name: str, requirement: str, timeout: float) -> Path:
    target = cache_dir() / name
    done = target / ".complete"
    with _locked(cache_dir() / f".{name}.lock"):
        if done.is_file() and done.read_text() == requirement:
            return target
        tmp = cache_dir() / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
               "--timeout", "20", "--retries", "1", "--target", str(tmp), *requirement.split(" ")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"pip install {requirement} took over {timeout:.0f}s (registry unreachable?)")
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise Unavailable(f"pip install {requirement} failed (registry unreachable?): {last}")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        done.write_text(requirement)
    return target


def bindings(key: str) -> Path:
    """The directory holding ``tensorrt_bindings`` (and a ``tensorrt`` shim) for ``VERSIONS[key]``."""
    requirement, _ = VERSIONS[key]
    target = _pip_target(f"trt-{key}", requirement)
    shim = target / "tensorrt" / "__init__.py"
    if not shim.is_file():
        shim.parent.mkdir(exist_ok=True)
        shim.write_text(SHIM)
    return target


def cuda_bindings() -> Path:
    """cuda-python's ``cuda.bindings`` (no driver here: every call answers cudaErrorInsufficientDriver)."""
    return _pip_target("cuda-bindings", CUDA_BINDINGS)


def standin_libs(major: str) -> Path:
    """A directory with ``libnvinfer.so.<major>``, ``libnvinfer_plugin.so.<major>``, ``libnvonnxparser.so.<major>``."""
    digest = hashlib.sha256(STANDIN_C.encode()).hexdigest()[:12]
    out = cache_dir() / f"standin-{major}-{digest}"
    if all((out / f"lib{lib}.so.{major}").is_file() for lib in LIBS):
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise Unavailable("no C compiler (cc) to build the stand-in libnvinfer")
    with _locked(cache_dir() / ".standin.lock"):
        out.mkdir(exist_ok=True)
        src = out / "standin.c"
        src.write_text(STANDIN_C)
        for lib in LIBS:
            so = out / f"lib{lib}.so.{major}"
            tmp = out / f".{so.name}.tmp"
            proc = subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp), f"-Wl,-soname,{so.name}", str(src)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise Unavailable(f"cc could not build the stand-in {so.name}: {proc.stderr.strip()[-300:]}")
            tmp.rename(so)
    return out


def environment(key: str, *, extra_path: list[Path] | None = None) -> dict[str, str]:
    """Environment for a subprocess that imports the real ``tensorrt`` of ``VERSIONS[key]``."""
    target = bindings(key)
    libs = standin_libs(VERSIONS[key][1])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    paths = [str(target), *(str(p) for p in extra_path or []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def load_in_process(key: str) -> Any:
    """Import the real module into this process (the stand-in is preloaded by soname). One version per
    process: pybind11 refuses to register the same C++ types twice."""
    import ctypes

    libs = standin_libs(VERSIONS[key][1])
    for lib in LIBS:
        ctypes.CDLL(str(libs / f"lib{lib}.so.{VERSIONS[key][1]}"), mode=ctypes.RTLD_GLOBAL)
    loaded = sys.modules.get("tensorrt_bindings")
    target = str(bindings(key))
    if loaded is not None:
        if not str(loaded.__file__).startswith(target):
            raise RuntimeError(f"another TensorRT version is already loaded here: {loaded.__file__}")
        return loaded
    sys.path.insert(0, target)
    try:
        import tensorrt_bindings
    finally:
        sys.path.remove(target)
    return tensorrt_bindings


def surface(key: str) -> dict[str, Any]:
    """The real module's surface (see ``describe``), computed once per version and dumper, then cached."""
    target = bindings(key)
    me = Path(__file__).read_bytes()
    stamp = hashlib.sha256(me + (target / ".complete").read_bytes()).hexdigest()[:12]
    path = cache_dir() / f"surface-{key}-{stamp}.json"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        proc = subprocess.run([sys.executable, __file__, "dump", str(target), str(tmp)], env=environment(key),
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"describing TensorRT {key} failed: {proc.stderr.strip()[-800:]}")
        tmp.rename(path)
    return json.loads(path.read_text())


# -- the dumper (runs in the subprocess) -------------------------------------------------------------
_SIG = re.compile(r"^(?:\d+\.\s+)?(\w+)\((.*)\)(?:\s*->\s*(.+))?$")


def split_params(text: str) -> list[str]:
    """Top-level comma split of a pybind parameter list (defaults may hold brackets and ``<...: 0>``)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def parse_signatures(name: str, doc: str | None) -> list[dict[str, Any]]:
    """pybind11's docstring signatures (one per overload): params ``{name, kind, default}`` and the
    return type's last dotted component (``IHostMemory``; ``None`` for none)."""
    sigs = []
    for line in (doc or "").splitlines():
        m = _SIG.match(line.strip())
        if not m or m.group(1) != name or m.group(2) == "*args, **kwargs":
            continue
        params = []
        for p in split_params(m.group(2)):
            kind = "var" if p.startswith("*") else "normal"
            pname = p.lstrip("*").split(":", 1)[0].split("=", 1)[0].strip()
            params.append({"name": pname, "kind": kind if not p.startswith("**") else "varkw",
                           "default": " = " in p or p.endswith("=None")})
        ret = (m.group(3) or "").strip()
        ret_name = re.split(r"[.:]", re.sub(r"^typing\.Optional\[(.*)\]$", r"\1", ret))[-1].strip(" ]") if ret else None
        sigs.append({"params": params, "returns": ret_name, "optional_return": ret.startswith("typing.Optional")
                     or ret.endswith("| None")})
    return sigs


def describe(trt: Any) -> dict[str, Any]:
    """``{name: description}`` for every public attribute of the module. Classes list their members
    (method signatures, properties and whether they can be set, nested classes), enums their members
    with values, functions their signatures."""

    def member(cls: Any, name: str, value: Any) -> dict[str, Any]:
        raw = None
        for klass in getattr(cls, "__mro__", [cls]):
            if name in getattr(klass, "__dict__", {}):
                raw = klass.__dict__[name]
                break
        if isinstance(raw, property):
            return {"kind": "property", "settable": raw.fset is not None}
        if isinstance(value, type):
            return describe_class(value)
        if type(value).__name__ in ("instancemethod", "builtin_function_or_method", "method_descriptor",
                                    "function", "staticmethod") or isinstance(raw, staticmethod) or callable(value):
            return {"kind": "method", "static": isinstance(raw, staticmethod),
                    "signatures": parse_signatures(name, getattr(value, "__doc__", None))}
        if type(value) is cls and hasattr(cls, "__members__"):
            return {"kind": "enum_value", "value": int(value)}
        return {"kind": "value", "type": type(value).__name__}

    def describe_class(cls: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "enum" if hasattr(cls, "__members__") else "class",
                               "bases": [b.__name__ for b in cls.__mro__[1:] if b is not object],
                               "members": {}}
        if out["kind"] == "enum":
            out["values"] = {n: int(v) for n, v in cls.__members__.items()}
        init = cls.__dict__.get("__init__")
        out["init"] = parse_signatures("__init__", getattr(init, "__doc__", None)) if init is not None else []
        if init is not None:
            out["members"]["__init__"] = {"kind": "method", "static": False, "signatures": out["init"]}
        for name in dir(cls):
            if name.startswith("_"):
                continue
            try:
                value = getattr(cls, name)
            except Exception:  # noqa: BLE001 - a property that needs an instance
                value = None
            if isinstance(value, type) and value is cls:
                continue
            out["members"][name] = member(cls, name, value)
        return out

    result: dict[str, Any] = {"__version__": {"kind": "value", "type": "str"}}
    for name in dir(trt):
        if name.startswith("_"):
            continue
        value = getattr(trt, name)
        if isinstance(value, type):
            result[name] = describe_class(value)
        elif inspect.isfunction(value):  # pure Python (nptype, ...): its own signature
            params = [{"name": p.name, "kind": {p.VAR_POSITIONAL: "var", p.VAR_KEYWORD: "varkw"}.get(p.kind, "normal"),
                       "default": p.default is not p.empty} for p in inspect.signature(value).parameters.values()]
            result[name] = {"kind": "function", "signatures": [{"params": params, "returns": None,
                                                                 "optional_return": False}], "python": True}
        elif callable(value):
            result[name] = {"kind": "function", "signatures": parse_signatures(name, value.__doc__)}
        else:
            result[name] = {"kind": "value", "type": type(value).__name__}
    return result


def _dump(target: str, out: str) -> None:
    sys.path.insert(0, target)
    import importlib.metadata as md

    import tensorrt_bindings as trt

    dists = sorted({d.metadata["Name"] for d in md.distributions(path=[target]) if d.metadata["Name"]})
    data = {"version": trt.__version__, "distributions": dists, "module": describe(trt)}
    Path(out).write_text(json.dumps(data, indent=1, sort_keys=True))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "dump":
        _dump(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: real_tensorrt.py dump TARGET_DIR OUT.json")
