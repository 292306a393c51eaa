"""Run the Triton server that ships in the ``nvidia-pytriton`` wheel on a model repository.

The wheel carries a ``tritonserver`` binary with the Python backend (no ONNX Runtime, TensorRT or
OpenVINO backends: those come with NVIDIA's containers). This module finds the binary, its shared
libraries and the backend stub built for this Python version, prepares a backend directory with
that stub, starts the server on the Python-backend models of a repository, waits until it is ready,
and turns a failed start (a port in use, a model that does not load) into a
:class:`~resnet_deploy.errors.UsageError` quoting Triton's own log line.

The server is locked by default: model control is off (``--model-control-mode=none``: the models
are loaded once, from a directory of links to the chosen entries, and the load/unload API is
refused) and the admin APIs (model-repository, model-config, shared-memory, trace, logging) are
restricted behind a header whose value is a random secret of this run, never printed. Only
``ServerConfig(allow_model_control=True)`` opens model control (``--model-control-mode=explicit``
and the model-repository and model-config APIs). It listens on loopback unless told otherwise.

    with TritonServer(ServerConfig("triton-repo", http_port=8000, grpc_port=8001)) as server:
        print(server.http_url, server.models)
"""

from __future__ import annotations

import collections
import importlib.util
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import MissingDependencyError, ResnetDeployError, UsageError
from .repository import list_models

log = logging.getLogger(__name__)

#: Triton log lines that are expected on a machine without a GPU and never the cause of a failure.
BENIGN = ("CudaDriverHelper has not been initialized", "Unable to allocate pinned system memory",
          "CUDA memory pool disabled", "failed to enable peer access", "Unable to get CUDA device count")
_GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([\w.]+:\d+)\]\s?(.*)$")
READY_MARKERS = ("Started HTTPService at", "Started GRPCInferenceService at")

#: Triton's admin APIs, closed by default (restricted behind a header nobody is told). Inference,
#: health, metadata and statistics stay open.
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "trace", "logging")
#: What ``allow_model_control`` opens of them.
MODEL_CONTROL_APIS = ("model-repository", "model-config")
#: The header Triton checks on a restricted API; its value is a random secret per run.
ADMIN_HEADER = "resnet-deploy-admin-key"


class ServerError(ResnetDeployError):
    """The server stopped on its own while it was serving (exit code 2, like other failures)."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the parts of the ``nvidia-pytriton`` server are."""

    binary: Path
    libs: Path
    python_backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python version
    python_version: str


def find_distribution(python_version: str | None = None) -> TritonDistribution:
    """Locate the server in the installed ``nvidia-pytriton`` wheel (without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("nvidia-pytriton", "resnet-deploy triton-serve (the local Triton server)",
                                     "triton")
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file():
        raise UsageError(f"the nvidia-pytriton package at '{root}' has no server binary at '{binary}'; reinstall "
                         "it with `pip install --force-reinstall nvidia-pytriton`")
    libs = root.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        libs = dist / "external_libs"  # an editable install of pytriton
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs = dist / "python_backend_stubs"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise UsageError(f"nvidia-pytriton has no Python backend stub for Python {version} (it has: "
                         f"{', '.join(have) or 'none'}); run resnet-deploy from one of those Python versions")
    backend = dist / "backends" / "python"
    if not (backend / "libtriton_python.so").is_file():
        raise UsageError(f"nvidia-pytriton has no Python backend at '{backend}'")
    return TritonDistribution(binary, libs, backend, stub, version)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on ``port`` now (connections in TIME_WAIT do not count)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests and ``--http-port 0``)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address ``host`` names, or UsageError unless it is an IP address this machine can listen on."""
    try:
        address = ipaddress.ip_address(str(host).strip("[]"))
    except ValueError:
        hint = " (for loopback pass 127.0.0.1)" if str(host).lower() == "localhost" else ""
        raise UsageError(f"--host '{host}' is not an IP address{hint}; pass an address of this machine: 127.0.0.1 "
                         "(loopback, the default) or 0.0.0.0 (every interface)") from None
    with socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(address), 0))
        except OSError as exc:
            raise UsageError(f"--host '{host}' is not an address of this machine ({exc.strerror or exc}); pass "
                             "127.0.0.1 (loopback, the default), 0.0.0.0 (every interface) or one of this "
                             "machine's addresses") from None
    return address


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, ports: dict[str, int | None], allow_model_control: bool) -> str | None:
    """What a server on ``host`` exposes beyond this machine's own processes (None on loopback
    without model control): the line ``triton-serve`` warns with."""
    open_ports = ", ".join(f"{name} port {port}" for name, port in ports.items() if port is not None)
    control = ("model control (load and unload: anyone who reaches it can load a Python model, that is run code "
               "as this user)")
    if is_loopback(host):
        if not allow_model_control:
            return None
        return f"--allow-model-control opens {control} to every process on this machine ({open_ports})"
    exposed = "inference, health, metadata and statistics" + (", and " + control if allow_model_control else "")
    return (f"--host {host} is not loopback: {exposed} are reachable from other hosts on {open_ports}, without "
            "authentication or TLS; put it behind a proxy that authenticates, or keep the default 127.0.0.1")


@dataclass
class ServerConfig:
    """How ``resnet-deploy triton-serve`` starts the server."""

    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int | None = 8002  # None: no metrics endpoint
    host: str = "127.0.0.1"
    models: tuple[str, ...] | None = None  # None: every Python-backend model of the repository
    startup_timeout_s: float = 300.0
    #: seconds Triton lets in-flight requests finish after a stop request; stop() kills it 2 s later
    exit_timeout_s: int = 3
    #: open model control (``--model-control-mode=explicit``, model-repository and model-config APIs)
    allow_model_control: bool = False
    #: seconds between readiness checks while serving
    watch_interval_s: float = 2.0
    log_file: Path | None = None  # keep Triton's log here (else in a temporary directory removed on stop)
    log_verbose: int = 0
    #: directories put first on the backend stub's ``sys.path`` (one holding ``numpy<2``: see
    #: :func:`stub_site_dirs`); None: ``$RESNET_DEPLOY_TRITON_STUB_SITE`` or ``<sys.prefix>/triton-stub-site``
    stub_site: tuple[Path, ...] | None = None
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        if self.stub_site is not None:
            self.stub_site = tuple(Path(p) for p in self.stub_site)
        if self.log_file is not None:
            self.log_file = Path(self.log_file)
        if self.models is not None:
            self.models = tuple(self.models)

    def validate(self) -> None:
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port}
        if self.metrics_port is not None:
            ports["--metrics-port"] = self.metrics_port
        for flag, port in ports.items():
            if not 0 <= int(port) <= 65535:
                raise UsageError(f"{flag} must be within 0..65535, got {port}")
        nonzero = [p for p in ports.values() if p]
        if len(set(nonzero)) != len(nonzero):
            raise UsageError(f"the HTTP, gRPC and metrics ports must differ, got {', '.join(map(str, ports.values()))}")
        if not self.startup_timeout_s > 0:
            raise UsageError(f"--startup-timeout must be > 0, got {self.startup_timeout_s}")
        if not 0 <= self.exit_timeout_s <= 3600:
            raise UsageError(f"the exit timeout must be within 0..3600 s, got {self.exit_timeout_s}")
        check_host(self.host)
        if not self.repository.is_dir():
            raise UsageError(f"model repository '{self.repository}' does not exist; write one with "
                             "`resnet-deploy triton-repo EXPORT_DIR --output REPO`")


def parse_log_line(line: str) -> tuple[str, str, str] | None:
    """``E1128 12:10:30.341957 8013 main.cc:257] "failed to start ..."`` -> (level, source, message)."""
    m = _GLOG.match(line.strip())
    if not m:
        return None
    msg = m.group(3).strip()
    if len(msg) >= 2 and msg[0] == '"' and msg[-1] == '"':
        msg = msg[1:-1].strip()
    return m.group(1), m.group(2), msg


def failure_lines(lines: list[str]) -> list[str]:
    """The log lines that say why the server stopped, most specific first: model load failures,
    then services that could not start (a port in use), then the last error."""
    errors = []
    for line in lines:
        parsed = parse_log_line(line)
        if parsed and parsed[0] in "EF" and not any(b in parsed[2] for b in BENIGN):
            errors.append((parsed, line.strip()))
    loads = [line for (lvl, src, msg), line in errors if "failed to load '" in msg]
    if loads:
        return list(dict.fromkeys(loads))
    services = [line for (lvl, src, msg), line in errors
                if src.startswith("main.cc") or "already in use" in msg or "failed to start" in msg.lower()]
    if services:
        return services[-2:]
    if errors:
        return [errors[-1][1]]
    plain = [line.strip() for line in lines if line.strip() and parse_log_line(line) is None]
    return plain[-3:]  # e.g. the dynamic loader's "error while loading shared libraries"


def _hint(lines: list[str]) -> str:
    text = " ".join(lines)
    if "already in use" in text or "Address already in use" in text:
        return "; choose other ports with --http-port/--grpc-port/--metrics-port (or --no-metrics)"
    if "failed to load '" in text:
        return "; fix the model (or leave it out with --model) and start again"
    return ""


STUB_SITE_ENV = "RESNET_DEPLOY_TRITON_STUB_SITE"
STUB_SITE_DIRNAME = "triton-stub-site"


def stub_site_dirs(configured: tuple[Path, ...] | None = None) -> tuple[Path, ...]:
    """Directories to put first on the backend stub's ``sys.path``: ``configured``, else
    ``$RESNET_DEPLOY_TRITON_STUB_SITE`` (``os.pathsep``-separated), else ``<sys.prefix>/triton-stub-site``
    when it exists."""
    if configured is not None:
        dirs = tuple(configured)
    elif os.environ.get(STUB_SITE_ENV):
        dirs = tuple(Path(p) for p in os.environ[STUB_SITE_ENV].split(os.pathsep) if p)
    else:
        default = Path(sys.prefix) / STUB_SITE_DIRNAME
        dirs = (default,) if default.is_dir() else ()
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise UsageError(f"stub site director{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)} do"
                         f"{'' if len(missing) > 1 else 'es'} not exist")
    return dirs


def _numpy_version_in(dirs: tuple[Path, ...]) -> str:
    """The NumPy version the stub will import: the first of ``dirs`` holding numpy, else this one's."""
    from importlib import metadata

    for d in dirs:
        for dist in metadata.distributions(path=[str(d)]):
            if (dist.metadata.get("Name") or "").lower() == "numpy":
                return dist.version
    import numpy

    return numpy.__version__


def stub_numpy_requirement() -> str | None:
    """nvidia-pytriton's NumPy pin (``numpy<2.0.0,>=1.21`` for 0.7): its stubs are built against it."""
    from importlib import metadata

    try:
        reqs = metadata.requires("nvidia-pytriton") or []
    except metadata.PackageNotFoundError:
        return None
    return next((r.split(";")[0].strip() for r in reqs if r.lower().startswith("numpy")), None)


def check_stub_numpy(dirs: tuple[Path, ...]) -> str:
    """Raise UsageError when the stub would import a NumPy its build does not support.

    nvidia-pytriton 0.7's stub is compiled against NumPy 1.x; under NumPy 2 it hands the model
    tensors with the wrong layout (seen: "output tensor shape does not match", and the first byte of
    a BYTES tensor repeated), so this is refused up front rather than served wrong."""
    version = _numpy_version_in(dirs)
    req = stub_numpy_requirement()
    if req and "<2" in req.replace(" ", "") and int(version.split(".")[0]) >= 2:
        target = dirs[0] if dirs else Path(sys.prefix) / STUB_SITE_DIRNAME
        raise UsageError(
            f"the Triton Python backend stub in nvidia-pytriton is built against NumPy 1.x ({req}) and passes "
            f"wrong tensors to the model under NumPy {version}, which this environment has. Give the stub its own "
            f"NumPy without changing this environment: `{sys.executable} -m pip install --target {target} "
            f"'numpy<2'` (then it is used automatically), or pass --stub-site DIR / set ${STUB_SITE_ENV}")
    return version


def _site_paths() -> list[str]:
    """This interpreter's import path without the standard library: what the stub must see too."""
    stdlib = {os.path.realpath(p) for k in ("stdlib", "platstdlib")
              for p in (sysconfig.get_paths().get(k), sysconfig.get_paths(vars={"base": sys.base_prefix,
                                                                                  "platbase": sys.base_prefix}).get(k))
              if p}
    out = []
    for p in sys.path:
        if not p or p.endswith(".zip") or not os.path.isdir(p):
            continue
        real = os.path.realpath(p)
        if real in stdlib or (any(real.startswith(s + os.sep) for s in stdlib) and "site-packages" not in real):
            continue
        if real not in out:
            out.append(real)
    return out


def make_stub_env(root: Path, first: tuple[Path, ...]) -> Path:
    """A minimal virtual environment at ``root`` for the backend stub's embedded Python: it finds its
    prefix from the first ``python3`` on PATH (``root/bin/python3``, next to a ``pyvenv.cfg``), and one
    ``.pth`` file gives it ``first`` followed by this interpreter's own import path. Returns ``root/bin``."""
    base = Path(getattr(sys, "_base_executable", "") or sys.executable)
    if not base.is_file():
        base = Path(sys.executable)
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python3").symlink_to(base.resolve())
    version = ".".join(map(str, sys.version_info[:3]))
    (root / "pyvenv.cfg").write_text(f"home = {base.resolve().parent}\ninclude-system-site-packages = false\n"
                                     f"version = {version}\n")
    site = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    site.mkdir(parents=True)
    lines = [str(p.resolve()) for p in first] + [p for p in _site_paths() if p not in {str(x) for x in first}]
    (site / "00-resnet-deploy.pth").write_text("\n".join(lines) + "\n")
    return bindir


class TritonServer:
    """The ``nvidia-pytriton`` server on one repository, as a subprocess in its own process group.

    ``start()`` returns once every requested model is ready; ``serve_forever()`` watches readiness
    (``unready`` records each model that stopped being ready); ``stop()`` asks the server to shut down
    (SIGINT: in-flight requests finish) and kills it 2 s after ``exit_timeout_s``.
    """

    def __init__(self, cfg: ServerConfig, distribution: TritonDistribution | None = None) -> None:
        self.cfg = cfg
        self._dist = distribution
        self.proc: subprocess.Popen | None = None
        self.models: list[str] = []
        self.skipped: dict[str, str] = {}
        self._workdir: Path | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=5000)
        self._lines_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._log_handle: Any = None
        self.http_port = cfg.http_port
        self.grpc_port = cfg.grpc_port
        self.metrics_port = cfg.metrics_port
        self._stub_site: tuple[Path, ...] = ()
        self._stub_bin: Path | None = None
        self.stub_numpy: str | None = None
        #: model -> why it stopped being ready while serving (HTTP status of its readiness check)
        self.unready: dict[str, str] = {}
        self._stubs_at_start: dict[str, int] = {}  # model -> Python backend stub processes when ready
        self._admin_key = secrets.token_urlsafe(32)  # never printed: closes the restricted APIs

    @property
    def _client_host(self) -> str:
        """Where a client on this machine reaches the server (a wildcard bind is reached on loopback)."""
        host = self.cfg.host.strip("[]")
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host

    # -- endpoints -------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        if self.cfg.log_file is not None:
            return self.cfg.log_file
        return None if self._workdir is None else self._workdir / "triton.log"

    def log_lines(self) -> list[str]:
        with self._lines_lock:
            return list(self._lines)

    # -- lifecycle -------------------------------------------------------------------------------------
    def _choose_models(self) -> list[str]:
        available = list_models(self.cfg.repository)
        by_name = {m["name"]: m for m in available}
        if self.cfg.models is not None:
            unknown = [m for m in self.cfg.models if m not in by_name]
            if unknown:
                raise UsageError(f"no model {', '.join(repr(u) for u in unknown)} in '{self.cfg.repository}'; it has: "
                                 f"{', '.join(by_name) or 'nothing'}")
            native = [m for m in self.cfg.models if not by_name[m]["servable"]]
            if native:
                raise UsageError(f"{', '.join(native)} cannot run on the nvidia-pytriton server, which carries only "
                                 "the Python backend (" + "; ".join(f"{m}: {by_name[m]['reason']}" for m in native)
                                 + "); serve them with NVIDIA's Triton container (see docs/pipelines.md)")
            return list(self.cfg.models)
        chosen = [m["name"] for m in available if m["servable"]]
        self.skipped = {m["name"]: m["reason"] for m in available if not m["servable"]}
        if not chosen:
            raise UsageError(f"'{self.cfg.repository}' has no Python-backend model, the only kind the nvidia-pytriton "
                             "server runs; write one with `resnet-deploy triton-repo` (its python and bytes entries)")
        for name, why in self.skipped.items():
            log.info("not loading %s: %s", name, why)
        return chosen

    def _prepare(self, dist: TritonDistribution) -> Path:
        work = Path(tempfile.mkdtemp(prefix="resnet-deploy-triton-"))
        backend = work / "backends" / "python"
        backend.mkdir(parents=True)
        for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(dist.python_backend / f, backend / f)
        shutil.copy2(dist.stub, backend / "triton_python_backend_stub")
        self._stub_bin = make_stub_env(work / "stub-env", self._stub_site)
        if not self.cfg.allow_model_control:
            # Model control off: Triton loads every model of its repository, so it gets a directory
            # holding links to the chosen entries only.
            view = work / "models"
            view.mkdir()
            by_name = {m["name"]: Path(m["directory"]) for m in list_models(self.cfg.repository)}
            for name in self.models:
                (view / by_name[name].name).symlink_to(by_name[name].resolve(), target_is_directory=True)
        return work

    def _env(self, dist: TritonDistribution) -> dict[str, str]:
        env = dict(os.environ)
        libdirs = [str(dist.libs)]
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and any(Path(libdir).glob(f"libpython{dist.python_version}*.so*")):
            libdirs.append(libdir)  # the stub links libpython; a non-system Python keeps it here
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
        # The stub embeds Python, which finds its prefix (and a pyvenv.cfg) from the first `python3`
        # on PATH (it ignores PYTHONPATH): the stub environment's bin goes first.
        env["PATH"] = os.pathsep.join([str(self._stub_bin), env.get("PATH", "")])
        # glibc raises its mmap threshold after a large block is freed (up to 32 MB), so the buffers of
        # one big request are later served from the heap and never given back; a fixed threshold
        # keeps large buffers in mmap, returned to the system when freed.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
        return env

    def _command(self, dist: TritonDistribution, work: Path) -> list[str]:
        c = self.cfg
        host = c.host.strip("[]")
        repository = c.repository.resolve() if c.allow_model_control else work / "models"
        cmd = [str(dist.binary), f"--model-repository={repository}",
               f"--backend-directory={work / 'backends'}", f"--http-address={host}",
               f"--http-port={self.http_port}", f"--grpc-address={host}", f"--grpc-port={self.grpc_port}",
               f"--model-control-mode={'explicit' if c.allow_model_control else 'none'}",
               "--strict-readiness=true", "--exit-on-error=true",
               # no request objects kept for reuse: each would keep the buffers of the largest request
               # it carried (measured: 1.2 GB kept after a few 192 MB requests; 0.1-0.2 GB without)
               "--grpc-infer-allocation-pool-size=0",
               f"--exit-timeout-secs={int(c.exit_timeout_s)}", "--log-info=true", f"--log-verbose={c.log_verbose}"]
        closed = [a for a in ADMIN_APIS if not (c.allow_model_control and a in MODEL_CONTROL_APIS)]
        restriction = f"{','.join(closed)}:{ADMIN_HEADER}={self._admin_key}"
        cmd += [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += ["--allow-metrics=true", "--allow-gpu-metrics=false", f"--metrics-address={c.host}",
                    f"--metrics-port={self.metrics_port}"]
        if c.allow_model_control:
            cmd += [f"--load-model={m}" for m in self.models]
        return cmd + list(c.extra_args)

    def start(self) -> "TritonServer":
        if self.proc is not None:
            raise UsageError("this server is already started")
        self.cfg.validate()
        dist = self._dist or find_distribution()
        self._stub_site = stub_site_dirs(self.cfg.stub_site)
        self.stub_numpy = check_stub_numpy(self._stub_site)
        self.models = self._choose_models()
        warning = exposure_warning(self.cfg.host, {"HTTP": self.cfg.http_port, "gRPC": self.cfg.grpc_port,
                                                   "metrics": self.cfg.metrics_port}, self.cfg.allow_model_control)
        if warning:
            log.warning("%s", warning)
        if self.http_port == 0:
            self.http_port = free_port(self.cfg.host)
        if self.grpc_port == 0:
            self.grpc_port = free_port(self.cfg.host)
        if self.metrics_port == 0:
            self.metrics_port = free_port(self.cfg.host)
        self._workdir = self._prepare(dist)
        log_path = self.log_path
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        cmd = self._command(dist, self._workdir)
        log.info("starting Triton: %s", " ".join(cmd).replace(self._admin_key, "<secret>"))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self._env(dist), cwd=self._workdir, start_new_session=True)
        self._reader = threading.Thread(target=self._read_output, name="triton-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._stubs_at_start = {m: len(pids) for m, pids in self.stub_processes().items()}
        log.info("Triton ready: HTTP %s, gRPC %s, models %s", self.http_url, self.grpc_url, ", ".join(self.models))
        return self

    def stub_processes(self) -> dict[str, list[int]]:
        """``{model: [pid, ...]}``: the Python backend stub processes (one per model instance) among
        the server's children, from ``/proc`` (empty where there is none)."""
        out: dict[str, list[int]] = {m: [] for m in self.models}
        if self.proc is None or not os.path.isdir("/proc"):
            return out
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
                if int(stat.rsplit(")", 1)[1].split()[1]) != self.proc.pid or stat.rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except (OSError, ValueError, IndexError):
                continue
            script = next((a for a in args[1:2] if a.endswith("model.py")), None)
            if script is not None:
                model = Path(script).parent.parent.name
                if model in out:
                    out[model].append(int(entry))
        return out

    def _read_output(self) -> None:
        proc = self.proc
        if proc is None or proc.stdout is None:
            return
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self._lines_lock:
                self._lines.append(line)
            if self._log_handle is not None:
                try:
                    self._log_handle.write(line + "\n")
                    self._log_handle.flush()
                except ValueError:  # closed by stop()
                    pass
            log.debug("triton: %s", line)

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def _started_services(self) -> bool:
        text = "\n".join(self.log_lines())
        return all(m in text for m in READY_MARKERS)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while True:
            code = self.proc.poll() if self.proc is not None else -1
            if code is not None:
                self._join_reader(2.0)
                raise UsageError(self.failure_message(code))
            # Our own log must show the services started: another server already on the port answers too.
            if self._started_services() and self._get("/v2/health/ready") == 200 and \
                    all(self._get(f"/v2/models/{m}/ready") == 200 for m in self.models):
                return
            if time.monotonic() > deadline:
                tail = "\n  ".join(self.log_lines()[-10:])
                raise UsageError(f"Triton was not ready after {self.cfg.startup_timeout_s:.0f}s (raise "
                                 f"--startup-timeout); its last log lines:\n  {tail}")
            time.sleep(0.2)

    def _join_reader(self, timeout: float) -> None:
        if self._reader is not None:
            self._reader.join(timeout)

    def failure_message(self, exit_code: int | None) -> str:
        lines = failure_lines(self.log_lines())
        where = f" (full log: {self.cfg.log_file})" if self.cfg.log_file else ""
        if not lines:
            return f"Triton exited with code {exit_code} before it was ready and logged no error{where}"
        quoted = "\n  ".join(lines)
        return f"Triton exited with code {exit_code} before it was ready{_hint(lines)}{where}. Triton said:\n  {quoted}"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits (or ``timeout``); its exit code, or None if still running."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def check_models(self) -> dict[str, str]:
        """Readiness of each served model now: ``{model: reason}`` for those not ready (a model
        unloaded, or one of its Python backend processes gone). Records them in ``unready``; returns
        the new ones."""
        new = {}
        stubs = self.stub_processes() if self._stubs_at_start else {}
        for m in self.models:
            if m in self.unready:
                continue
            code = self._get(f"/v2/models/{m}/ready")
            why = None
            if code != 200:
                why = f"readiness check answered HTTP {code}" if code else "readiness check got no answer"
            elif len(stubs.get(m, ())) < self._stubs_at_start.get(m, 0):
                # Triton 2.51 still answers "ready" for a model whose backend process died, and fails
                # every request to it ("Stub process ... is not healthy")
                why = (f"{self._stubs_at_start[m] - len(stubs.get(m, ()))} of its {self._stubs_at_start[m]} Python "
                       "backend processes exited")
            if why is not None:
                self.unready[m] = why
                new[m] = why
        return new

    def serve_forever(self, on_unready: Any = None, on_serving: Any = None) -> str:
        """Block until SIGINT/SIGTERM (then stop cleanly) or until the server dies on its own
        (raises :class:`ServerError` quoting its log), checking every ``watch_interval_s`` that each
        model is still ready: a model that is not is logged, recorded in ``unready`` and passed to
        ``on_unready(model, reason)``. ``on_serving()`` is called once the signal handlers are in
        place (the moment to tell a user that Ctrl-C stops it). Returns the name of the signal."""
        got: list[int] = []
        stop_event = threading.Event()

        def handler(signum: int, _frame: Any) -> None:
            got.append(signum)
            stop_event.set()

        previous = {}
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        next_check = time.monotonic() + self.cfg.watch_interval_s
        try:
            if on_serving is not None:
                on_serving()
            while not stop_event.wait(0.25):
                if self.is_running() and time.monotonic() >= next_check:
                    for model, why in self.check_models().items():
                        log.warning("model %s is no longer ready (%s)", model, why)
                        if on_unready is not None:
                            on_unready(model, why)
                    next_check = time.monotonic() + self.cfg.watch_interval_s
                if stop_event.is_set():
                    break
                if not self.is_running():
                    code = self.proc.poll() if self.proc is not None else None
                    self._join_reader(2.0)
                    lines = failure_lines(self.log_lines())
                    self._cleanup()
                    raise ServerError(f"Triton stopped on its own (exit code {code})"
                                      + (": " + "\n  ".join(lines) if lines else ""))
        except KeyboardInterrupt:  # a handler was not installed (not the main thread)
            got.append(signal.SIGINT)
        finally:
            for sig, prev in previous.items():
                signal.signal(sig, prev)
            if self.is_running():
                self.stop()
        return signal.Signals(got[0]).name if got else "exit"

    def stop(self, timeout: float | None = None) -> int | None:
        """Ask Triton to stop (SIGINT), wait up to ``timeout`` (default: exit timeout + 2 s), then kill
        its process group (at once on a second Ctrl-C). Returns its exit code."""
        proc = self.proc
        code = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout if timeout is not None else self.cfg.exit_timeout_s + 2)
                except subprocess.TimeoutExpired:
                    log.warning("Triton did not stop in time; killing it")
                except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                    log.warning("killing Triton")
            self._kill_group(proc)
            code = proc.poll()
            self._join_reader(5.0)
            if proc.stdout is not None:
                proc.stdout.close()
        self._cleanup()
        return code

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        """Kill what is left of the server's own process group (its backend stubs)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(10)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # pragma: no cover - SIGKILL is not ignorable
            pass

    def _cleanup(self) -> None:
        if self._log_handle is not None:
            try:
                self._log_handle.close()
            except OSError:
                pass
            self._log_handle = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- facts -----------------------------------------------------------------------------------------
    def statistics(self, model: str) -> dict[str, Any]:
        """Triton's ``/v2/models/{model}/stats`` for ``model``."""
        return model_statistics(self.http_url, model)


def model_statistics(http_url: str, model: str) -> dict[str, Any]:
    """Triton's statistics of ``model`` (``/v2/models/{model}/stats``) from the server at ``http_url``."""
    import json

    with urllib.request.urlopen(f"{http_url.rstrip('/')}/v2/models/{model}/stats", timeout=10) as r:
        data = json.loads(r.read())
    stats = data.get("model_stats") or [{}]
    return stats[0]


def batch_histogram(stats: dict[str, Any]) -> dict[int, int]:
    """``{batch size: executions}`` from a model's statistics (what the dynamic batcher formed)."""
    out: dict[int, int] = {}
    for b in stats.get("batch_stats") or ():
        n = int(b.get("compute_infer", {}).get("count", 0))
        if n:
            out[int(b.get("batch_size", 0))] = n
    return out


__all__ = ["ADMIN_APIS", "MODEL_CONTROL_APIS", "STUB_SITE_ENV", "ServerConfig", "ServerError", "TritonDistribution",
           "TritonServer", "batch_histogram", "check_host", "check_stub_numpy", "exposure_warning", "failure_lines",
           "find_distribution", "free_port", "is_loopback", "make_stub_env", "model_statistics", "parse_log_line",
           "port_is_free", "stub_site_dirs"]
