"""The timing loop: configurations, warmup, interleaved rounds, synchronized iterations.

A *target* is one thing to time (a runner factory: ``onnxruntime:fp32``, ``torch:bf16``...); a
*configuration* is a target at one batch size and one input size. How each is measured:

1. Every runner is opened and every input batch is made (seeded, in the runner's dtype and
   layout) before any timing; a target whose package is missing, or that fails to load, is
   skipped with a note.
2. Warmup, per configuration: ``--warmup`` iterations or seconds (at least one iteration: the first
   call is where lazy work happens, e.g. ``torch.compile`` or shape-specialized kernels).
3. Timed rounds: the configurations run one after the other, ``rounds`` times, in an order rotated
   by one each round, so that a slow spell of a noisy machine spreads over all of them instead of
   favouring whichever ran first. Each block starts with ``round_warmup`` untimed iterations (the
   caches were just used by another backend) and is followed by a short pause (``pause_s``) so
   that the spinning thread pool of the previous backend is idle before the next one is timed.
4. Each iteration is ``runner.infer(batch)`` followed by ``runner.synchronize()``, timed with
   ``time.perf_counter``: no asynchronous launch is ever timed alone. On CUDA targets the device
   compute time is taken as well, from CUDA events (see ``Measurement.timed``).
5. Peak host memory per configuration is the process's peak RSS over its blocks: the kernel's
   high-water mark (``VmHWM``), reset before each block through ``/proc/self/clear_refs``. It is
   the whole process (all opened runners' weights included), not one runner's share.
6. Competition: the CPU time other processes (and the hypervisor) took while each configuration
   was timed, in cores (``CpuMeter``); a warning when it exceeds a tenth of the CPUs. Backends that
   split each layer across OpenMP threads (PyTorch eager) slow down far more than in proportion
   when a core is taken away, so a busy machine can turn a ratio around.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ResnetDeployError, UsageError
from ..progress import bar
from ..runtime.base import Runner
from .limits import usable_cpus
from .stats import LatencyStats

log = logging.getLogger(__name__)

Clock = Callable[[], float]
#: Backends whose runner accepts a torch tensor already on its device (for CUDA-event timing).
TORCH_BACKENDS = ("torch", "torch-compile")

TIMED_HOST = ("end to end: runner.infer() of a batch already in host memory (input validation, the backend "
              "call, outputs returned as numpy arrays) + synchronize(); no image decoding or preprocessing")
TIMED_CUDA = ("end to end: host batch -> device copy, compute, outputs copied back to host, synchronized; "
              "device: CUDA events around the forward of a batch already on the GPU (includes the small "
              "copy of the outputs back), or the runner's own compute time (last_compute_ms)")


@dataclass(frozen=True)
class Warmup:
    """Untimed work before the timed rounds: at least ``iterations`` and at least ``seconds``."""

    iterations: int = 0
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str | int | float) -> "Warmup":
        """``10`` -> 10 iterations; ``200ms``, ``2s``, ``0.5s`` -> a time."""
        s = str(text).strip().lower()
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)", s)
        if m:
            value = float(m.group(1))
            return cls(seconds=value / 1e3 if m.group(2) == "ms" else value)
        if s.isdigit():
            return cls(iterations=int(s))
        raise UsageError(f"bad warmup '{text}': give iterations (e.g. 10) or a time (e.g. 200ms, 2s)")

    def describe(self) -> str:
        parts = ([f"{self.iterations} iterations"] if self.iterations else []) + \
            ([f"{self.seconds:g} s"] if self.seconds else [])
        return " and ".join(parts) or "1 iteration"


@dataclass(frozen=True)
class BenchConfig:
    """How to measure. ``iterations`` and ``duration_s`` are minimums per configuration, over all
    rounds (like trtexec's ``--iterations`` and ``--duration``): both must be met."""

    batch_sizes: tuple[int, ...] = (1,)
    shapes: tuple[tuple[int, int], ...] = ((224, 224),)
    warmup: Warmup = field(default_factory=lambda: Warmup(seconds=0.2))
    iterations: int = 10
    duration_s: float = 3.0
    rounds: int = 3
    round_warmup: int = 1
    pause_s: float = 0.05
    cv_warn: float = 0.05
    seed: int = 0
    threads: int | None = None  # recorded here; the target factories apply it
    device_timing: bool = True

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise UsageError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if not self.shapes:
            raise UsageError("give at least one input size (e.g. 224x224)")
        for h, w in self.shapes:
            if h < 32 or w < 32:
                raise UsageError(f"input size {h}x{w} is too small: ResNet downsamples by 32, so height and width "
                                 "must be at least 32")
        if self.iterations < 0 or self.duration_s < 0:
            raise UsageError("iterations and duration must be >= 0")
        if self.iterations == 0 and self.duration_s == 0:
            raise UsageError("nothing to time: give iterations >= 1 or a duration > 0")
        if self.rounds < 1:
            raise UsageError(f"rounds must be >= 1, got {self.rounds}")
        if self.round_warmup < 0 or self.pause_s < 0:
            raise UsageError("round warmup and pause must be >= 0")
        if self.cv_warn <= 0:
            raise UsageError(f"the coefficient-of-variation warning threshold must be > 0, got {self.cv_warn}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")

    def round_plan(self) -> list[tuple[int, float]]:
        """(minimum iterations, minimum seconds) of each round; rounds with neither are dropped."""
        base, extra = divmod(self.iterations, self.rounds)
        plan = [(base + (1 if r < extra else 0), self.duration_s / self.rounds) for r in range(self.rounds)]
        return [(n, s) for n, s in plan if n > 0 or s > 0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["warmup"] = {"iterations": self.warmup.iterations, "seconds": self.warmup.seconds}
        d["batch_sizes"] = list(self.batch_sizes)
        d["shapes"] = [f"{h}x{w}" for h, w in self.shapes]
        return d


@dataclass
class Target:
    """One thing to time: how to open its runner and how to name it."""

    label: str
    backend: str
    precision: str
    make: Callable[[], Runner]
    device: str = "cpu"
    variant: str | None = None
    artifact: str | None = None


@dataclass
class Measurement:
    """The result of one configuration (a target at one batch size and input size)."""

    label: str
    backend: str
    precision: str  # as requested
    precision_used: str  # what the runner reports it runs
    device: str
    batch: int
    height: int
    width: int
    stats: LatencyStats
    timed: str
    round_medians_ms: list[float]
    warmup_iterations: int
    device_stats: LatencyStats | None = None
    peak_rss_mb: float | None = None
    rss_scope: str = "process peak during this configuration"
    other_cpu_cores: float | None = None  # CPU used by other processes (and the hypervisor) while timing
    gpu_mem_mb: float | None = None
    variant: str | None = None
    artifact: str | None = None
    runner: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # filled by bench.limits / bench.report
    gmacs_per_image: float | None = None
    achieved_gmacs_per_s: float | None = None
    peak: dict[str, Any] | None = None
    fraction_of_peak: float | None = None
    speedup: float | None = None

    @property
    def shape(self) -> str:
        return f"{self.height}x{self.width}"

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("stats", "device_stats")}
        d["latency_ms"] = {k: v for k, v in self.stats.to_dict().items() if k not in ("n", "batch", "throughput")}
        d["iterations"] = self.stats.n
        d["throughput_ips"] = self.stats.throughput
        d["device_latency_ms"] = None if self.device_stats is None else {
            k: v for k, v in self.device_stats.to_dict().items() if k not in ("n", "batch", "throughput")}
        return d


@dataclass
class BenchResult:
    config: BenchConfig
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped and why
    environment: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None

    @property
    def warnings(self) -> list[str]:
        return [f"{m.label} b{m.batch} {m.shape}: {w}" for m in self.measurements for w in m.warnings]


# -- memory ----------------------------------------------------------------------------------------
class HostMemory:
    """Peak RSS of this process: ``VmHWM``, resettable through ``/proc/self/clear_refs`` (Linux >= 4.0).
    Elsewhere ``ru_maxrss``, which only grows: the scope then says so."""

    def __init__(self) -> None:
        self.resettable = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._reset()

    @property
    def scope(self) -> str:
        return ("process peak during this configuration" if self.resettable
                else "process peak since start (this system cannot reset it)")

    def peak_mb(self) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        except (OSError, ValueError):  # pragma: no cover
            return None


class CpuMeter:
    """How much CPU *other* processes took while we timed: the machine's busy time (``/proc/stat``,
    steal time included: a hypervisor giving the core to another VM) minus this process's own CPU
    time (all its threads, spinning ones too), per second of wall time. 0 on a quiet machine; 1.0
    means one core's worth of competition."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = self._busy() is not None

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(fields) < 5:
            return None
        return float(sum(fields) - fields[3] - fields[4])  # all but idle and iowait

    def sample(self) -> tuple[float, float, float] | None:
        busy = self._busy() if self.available else None
        if busy is None:
            return None
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), busy / self.hz, r.ru_utime + r.ru_stime

    @staticmethod
    def others(a: tuple[float, float, float] | None, b: tuple[float, float, float] | None) -> tuple[float, float]:
        """(CPU seconds used by others, wall seconds) between two samples."""
        if a is None or b is None:
            return 0.0, 0.0
        return max(0.0, (b[1] - a[1]) - (b[2] - a[2])), b[0] - a[0]


def _gpu_used_mb() -> float | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    except Exception:  # noqa: BLE001 - memory is informative only
        return None


# -- inputs ----------------------------------------------------------------------------------------
def make_input(runner: Runner, batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A seeded batch in the runner's input dtype and layout (NCHW float, or NHWC uint8)."""
    spec = runner.input
    rng = np.random.default_rng([seed, batch, height, width])
    dims = spec.shape
    nhwc = len(dims) == 4 and dims[-1] == 3 and dims[1] != 3
    shape = (batch, height, width, 3) if nhwc else (batch, 3, height, width)
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "ui":
        return rng.integers(0, 256, size=shape).astype(dtype)
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)


# -- the loop --------------------------------------------------------------------------------------
@dataclass
class _Slot:
    target: Target
    runner: Runner
    batch: int
    height: int
    width: int
    batch_data: Any
    device_timer: "_DeviceTimer | None" = None
    times: list[float] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)
    warmup_iterations: int = 0
    peak_rss_mb: float | None = None
    gpu_mem_mb: float | None = None
    others_cpu_s: float = 0.0
    others_wall_s: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.target.label} b{self.batch} {self.height}x{self.width}"

    def step(self) -> None:
        self.runner.infer(self.batch_data)
        self.runner.synchronize()


class _DeviceTimer:
    """Device compute time of one iteration on a CUDA target.

    A runner that measures its own compute (``last_compute_ms``, e.g. from events around the
    engine's enqueue) is read after each timed iteration; a torch runner is timed with CUDA events
    around a forward of a batch already staged on its device.
    """

    def __init__(self, runner: Runner, batch_data: Any, device: str) -> None:
        self.runner = runner
        self.own = hasattr(runner, "last_compute_ms")
        self.staged = None
        if not self.own:
            import torch

            self.torch = torch
            self.staged = torch.from_numpy(np.ascontiguousarray(batch_data)).to(device)

    def after_iteration(self) -> float | None:
        if self.own:
            value = getattr(self.runner, "last_compute_ms", None)
            return float(value) if value is not None else None
        return None

    def measure(self) -> float:
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.runner.infer(self.staged)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


def _open(targets: Sequence[Target], notes: list[str]) -> list[tuple[Target, Runner]]:
    opened = []
    for t in targets:
        try:
            runner = t.make()
        except ResnetDeployError as exc:
            notes.append(f"{t.label}: skipped: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a peer that cannot load is skipped, not fatal
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            notes.append(f"{t.label}: skipped: {type(exc).__name__}: {first}")
            log.debug("opening %s failed", t.label, exc_info=True)
            continue
        opened.append((t, runner))
    return opened


def _slots(opened: list[tuple[Target, Runner]], cfg: BenchConfig, notes: list[str]) -> list[_Slot]:
    slots = []
    for target, runner in opened:
        for h, w in cfg.shapes:
            for b in cfg.batch_sizes:
                data = make_input(runner, int(b), int(h), int(w), cfg.seed)
                try:
                    runner.input.validate(data)
                except UsageError as exc:
                    notes.append(f"{target.label} b{b} {h}x{w}: skipped: {exc}")
                    continue
                slots.append(_Slot(target, runner, int(b), int(h), int(w), data))
    return slots


def _warm(slot: _Slot, cfg: BenchConfig, clock: Clock) -> None:
    t0 = clock()
    n = 0
    while n < max(1, cfg.warmup.iterations) or clock() - t0 < cfg.warmup.seconds:
        slot.step()
        n += 1
    slot.warmup_iterations = n
    if (cfg.device_timing and slot.target.device.startswith("cuda")
            and (hasattr(slot.runner, "last_compute_ms") or slot.target.backend in TORCH_BACKENDS)):
        slot.device_timer = _DeviceTimer(slot.runner, slot.batch_data, slot.target.device)
        if slot.device_timer.staged is not None:
            slot.device_timer.measure()  # warm the staged path as well


def _block(slot: _Slot, n_min: int, s_min: float, cfg: BenchConfig, clock: Clock, memory: HostMemory,
           meter: CpuMeter) -> None:
    memory.reset()
    for _ in range(cfg.round_warmup):
        slot.step()
    times: list[float] = []
    before = meter.sample()
    start = clock()
    while len(times) < n_min or clock() - start < s_min:
        t0 = clock()
        slot.runner.infer(slot.batch_data)
        slot.runner.synchronize()
        times.append(clock() - t0)
        if slot.device_timer is not None:
            own = slot.device_timer.after_iteration()
            if own is not None:
                slot.device_ms.append(own)
    cpu_s, wall_s = meter.others(before, meter.sample())
    slot.others_cpu_s += cpu_s
    slot.others_wall_s += wall_s
    if slot.device_timer is not None and slot.device_timer.staged is not None:
        slot.device_ms.extend(slot.device_timer.measure() for _ in times)
    slot.times.extend(times)
    slot.round_medians_ms.append(float(np.median(times)) * 1e3)
    peak = memory.peak_mb()
    if peak is not None:
        slot.peak_rss_mb = max(slot.peak_rss_mb or 0.0, peak)
    if slot.target.device.startswith("cuda"):
        used = _gpu_used_mb()
        if used is not None:
            slot.gpu_mem_mb = max(slot.gpu_mem_mb or 0.0, used)


#: Below this much timed wall time the /proc/stat tick (10 ms per CPU) makes the estimate meaningless.
MIN_METER_WALL_S = 0.2


def _measurement(slot: _Slot, cfg: BenchConfig, memory: HostMemory, cpus: int) -> Measurement:
    t, r = slot.target, slot.runner
    stats = LatencyStats.from_seconds(slot.times, slot.batch)
    dev = LatencyStats.from_milliseconds(slot.device_ms, slot.batch) if slot.device_ms else None
    m = Measurement(label=t.label, backend=t.backend, precision=t.precision,
                    precision_used=getattr(r.info, "precision", t.precision), device=t.device, batch=slot.batch,
                    height=slot.height, width=slot.width, stats=stats,
                    timed=TIMED_CUDA if t.device.startswith("cuda") else TIMED_HOST,
                    round_medians_ms=[round(x, 4) for x in slot.round_medians_ms],
                    warmup_iterations=slot.warmup_iterations, device_stats=dev, peak_rss_mb=slot.peak_rss_mb,
                    rss_scope=memory.scope, gpu_mem_mb=slot.gpu_mem_mb, variant=t.variant,
                    artifact=t.artifact or (None if t.backend in TORCH_BACKENDS else r.info.artifact),
                    runner=r.info.to_dict())
    if slot.others_wall_s >= MIN_METER_WALL_S:
        m.other_cpu_cores = round(slot.others_cpu_s / slot.others_wall_s, 3)
        if m.other_cpu_cores > 0.1 * cpus:
            m.warnings.append(f"other processes used {m.other_cpu_cores:.2f} of {cpus} CPUs while this was timed: its "
                              "times include waiting for a core")
    if stats.cv > cfg.cv_warn:
        m.warnings.append(f"high coefficient of variation {stats.cv:.1%} (> {cfg.cv_warn:.0%}): the machine is "
                          "noisy or the run too short; compare medians and ratios, not single numbers")
    if len(slot.round_medians_ms) > 1:
        lo, hi = min(slot.round_medians_ms), max(slot.round_medians_ms)
        if lo > 0 and hi / lo - 1 > 2 * cfg.cv_warn:
            m.warnings.append(f"round medians differ by {hi / lo - 1:.0%} ({lo:.2f}..{hi:.2f} ms): conditions "
                              "changed during the run")
    if t.device.startswith("cuda") and dev is None and cfg.device_timing:
        m.warnings.append("no device compute time: this runner neither exposes last_compute_ms nor accepts a "
                          "torch tensor on its device")
    return m


def run_benchmark(targets: Sequence[Target], config: BenchConfig, *, clock: Clock = time.perf_counter,
                  sleep: Callable[[float], None] = time.sleep) -> BenchResult:
    """Time every target at every batch size and input size of ``config``; see the module docstring.

    ``clock`` and ``sleep`` are injectable so that tests can drive the loop with a fake clock.
    Raises UsageError when nothing at all could be measured (the notes say why).
    """
    if not targets:
        raise UsageError("nothing to benchmark: no targets")
    labels = [t.label for t in targets]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise UsageError(f"duplicate benchmark targets: {', '.join(dupes)}")
    result = BenchResult(config=config)
    memory = HostMemory()
    meter = CpuMeter()
    cpus = usable_cpus()
    opened = _open(targets, result.notes)
    try:
        slots = _slots(opened, config, result.notes)
        plan = config.round_plan()
        total = len(slots) * (1 + len(plan))
        with bar(total=total, desc="bench", unit="block") as progress:
            live: list[_Slot] = []
            for slot in slots:
                progress.set_description(f"warmup {slot.name}")
                try:
                    _warm(slot, config, clock)
                except Exception as exc:  # noqa: BLE001 - one failing configuration does not end the run
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    result.notes.append(f"{slot.name}: skipped: warmup failed: {type(exc).__name__}: {first}")
                    log.debug("warmup of %s failed", slot.name, exc_info=True)
                    progress.update(1 + len(plan))
                    continue
                live.append(slot)
                progress.update(1)
            for r, (n_min, s_min) in enumerate(plan):
                k = r % len(live) if live else 0
                for slot in live[k:] + live[:k]:
                    progress.set_description(f"round {r + 1}/{len(plan)} {slot.name}")
                    _block(slot, n_min, s_min, config, clock, memory, meter)
                    progress.update(1)
                    if config.pause_s:
                        sleep(config.pause_s)
        result.measurements = [_measurement(s, config, memory, cpus) for s in live]
    finally:
        for _, runner in opened:
            try:
                runner.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("closing %s failed", runner, exc_info=True)
    if not result.measurements:
        raise UsageError("nothing was measured: " + ("; ".join(result.notes) or "no configuration"))
    for w in result.warnings:
        log.debug("%s", w)
    return result
