"""How far from the hardware limit: the work of each variant, this CPU's peak, and the fraction reached.

**Work.** Multiply-accumulates (MACs) of one image: every convolution contributes
``Cout * Hout * Wout * (Cin / groups) * kh * kw`` and the classifier ``in_features * out_features``
(batch norm, ReLU, pooling and the residual adds are under 1 % and left out, as in torchvision's
published figures: ResNet-50 at 224x224 is 4.09 GMACs). ``variant_macs`` counts them with forward
hooks on a model built on the ``meta`` device (shapes only, no memory, no arithmetic);
``onnx_macs`` counts the same from an ONNX graph (Conv, QLinearConv, ConvInteger, Gemm, MatMul) for
artifacts whose variant is unknown. Cost is almost proportional to pixels: 448x448 is 4x 224x224.

**Peak.** ``cores x clock x MACs per cycle per core`` for the instruction set the precision can use
(1 MAC = 2 FLOP). Per core and cycle:

===============================  =====  ======  ======  ==============================================
ISA                               FP32   BF16    INT8    basis
===============================  =====  ======  ======  ==============================================
AVX-512, Intel (2 FMA units)        32     64     128    16 fp32 lanes x 2 FMA ports; VDPBF16PS 2 and
                                                         VPDPBUSD 4 products per 32-bit lane at the FMA rate
AVX-512 on AMD Zen 4                16     32      64    512-bit ops run as 2 x 256 bit on 2 FMA pipes
AVX-512 on AMD Zen 5                32     64     128    native 512-bit datapath, 2 FMA pipes
AVX2 + FMA (no AVX-512)             16      -     (64)   2 x 256-bit FMA; INT8 only with AVX-VNNI
AMX (Intel, Sapphire Rapids +)       -    512    1024    TMUL: 1024 BF16 / 2048 INT8 ops per cycle
===============================  =====  ======  ======  ==============================================

Assumptions, written down because they move the fractions: an Intel AVX-512 part has two FMA units
(true for Xeon Gold 6xxx/Platinum and later; Silver/Bronze and client parts have one: halve the
figure); the dot-product instructions (VNNI, AVX512-BF16) issue at the FMA rate; without native
BF16 the BF16 peak is the FP32 one (the data is converted and computed in FP32); without VNNI or AMX
there is no INT8 figure. The clock is the highest one the system reports (cpufreq max, else
``lscpu``'s max MHz, else ``/proc/cpuinfo``'s "cpu MHz", which in a VM is the nominal clock);
sustained all-core AVX-512 clocks can be lower, so the fractions are, if anything, optimistic.
``RESNET_DEPLOY_CPU_GHZ`` or ``--cpu-ghz`` overrides it. In a VM each vCPU counts as a core when
the guest sees one thread per core, although the host may back two vCPUs by one physical core.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import UsageError

log = logging.getLogger(__name__)

#: Flags that decide the peaks (a subset of /proc/cpuinfo's ``flags``).
RELEVANT_FLAGS = ("avx", "fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
GHZ_ENV = "RESNET_DEPLOY_CPU_GHZ"


# -- work ------------------------------------------------------------------------------------------
def count_macs(module: Any, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass of ``module`` on a zero batch of ``input_shape`` (hooks on Conv/Linear).

    Runs on whatever device the module's parameters are on; a model built under
    ``torch.device("meta")`` gives the count without allocating or computing anything.
    """
    import torch
    from torch import nn

    total = 0

    def conv_hook(m: Any, _inp: Any, out: Any) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: Any, _inp: Any, out: Any) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            module(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return int(total)


@functools.lru_cache(maxsize=None)
def variant_macs(variant: str, height: int = 224, width: int = 224, num_classes: int = 1000,
                 head: str = "logits") -> int:
    """MACs of one ``height x width`` image through ``variant`` (shapes only, on the meta device)."""
    import torch

    from ..models import resolve_variant
    from ..models.heads import wrap_head

    spec = resolve_variant(variant)
    _check_size(height, width)
    with torch.device("meta"):
        model = spec.build(num_classes=num_classes)
    return count_macs(wrap_head(model.eval(), head), (1, 3, int(height), int(width)))


def _check_size(height: int, width: int) -> None:
    if height < 32 or width < 32:
        raise UsageError(f"input size {height}x{width} is too small: ResNet downsamples by 32, so height and width "
                         "must be at least 32")


@functools.lru_cache(maxsize=64)
def onnx_macs(path: str, height: int, width: int) -> int | None:
    """MACs of one ``height x width`` image through an ONNX graph, or None when shapes stay unknown."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if not inputs:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) == 4:
        nchw = dims[1].HasField("dim_value") and dims[1].dim_value == 3
        fixed = (1, 3, height, width) if nchw else (1, height, width, 3)
        for d, v in zip(dims, fixed):
            d.ClearField("dim_param")
            d.dim_value = v
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - a foreign graph shape inference cannot handle
        log.debug("shape inference failed on %s: %s", path, exc)
        return None
    shapes: dict[str, list[int]] = dict(inits)
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
    weight_index = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
    left_index = {"Gemm": 0, "MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}
    total = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type in weight_index:
            w = shapes.get(node.input[weight_index[node.op_type]])
            if not out or not w or 0 in out or 0 in w:
                return None
            total += math.prod(out) * math.prod(w[1:])
        elif node.op_type in left_index:
            a = shapes.get(node.input[left_index[node.op_type]])
            if not out or not a or 0 in out or 0 in a:
                return None
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
            total += math.prod(out) * k
    return int(total)


# -- this CPU --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuInfo:
    """What the peak depends on: vendor and family (the microarchitecture), flags, cores, clock."""

    model_name: str
    vendor: str
    family: int | None
    model: int | None
    logical_cpus: int  # usable by this process (its affinity mask)
    threads_per_core: int
    flags: frozenset[str] = field(default_factory=frozenset)
    ghz: float | None = None
    ghz_source: str = "unknown"

    @property
    def physical_cores(self) -> int:
        return max(1, self.logical_cpus // max(1, self.threads_per_core))

    @property
    def microarchitecture(self) -> str:
        f = self.flags
        if self.vendor == "AuthenticAMD":
            if self.family == 0x1A:
                return "AMD Zen 5"
            if self.family == 0x19:
                return "AMD Zen 4" if "avx512f" in f else "AMD Zen 3"
            if self.family == 0x17:
                return "AMD Zen/Zen 2"
            return f"AMD family {self.family}"
        if self.vendor == "GenuineIntel":
            if "amx_tile" in f:
                return "Intel with AMX (Sapphire Rapids or later)"
            if "avx512f" in f:
                return "Intel with AVX-512"
            return "Intel"
        return self.vendor or "unknown"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = sorted(self.flags)
        d["physical_cores"] = self.physical_cores
        d["microarchitecture"] = self.microarchitecture
        return d


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _max_ghz_sysfs() -> float | None:
    p = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(p.read_text().strip()) / 1e6
    except (OSError, ValueError):
        return None


def _max_ghz_lscpu() -> float | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.MULTILINE)
    return float(m.group(1)) / 1e3 if m else None


def detect_cpu(ghz: float | None = None, *, cpuinfo_text: str | None = None) -> CpuInfo:
    """Read this machine's CPU (Linux /proc/cpuinfo); ``ghz`` overrides the clock.

    ``cpuinfo_text`` parses that text instead (another machine's /proc/cpuinfo): the clock then
    comes from it alone, not from this machine's cpufreq or ``lscpu``.
    """
    probe = cpuinfo_text is None
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo_text = ""
    info = _cpuinfo_fields(cpuinfo_text)
    flags = frozenset(info.get("flags", "").split()) & frozenset(RELEVANT_FLAGS)

    def as_int(key: str) -> int | None:
        try:
            return int(info[key], 0)
        except (KeyError, ValueError):
            return None

    siblings, cores = as_int("siblings"), as_int("cpu cores")
    tpc = max(1, siblings // cores) if siblings and cores else 1
    source = "unknown"
    env = os.environ.get(GHZ_ENV)
    if ghz is not None:
        source = "given (--cpu-ghz)"
    elif env:
        try:
            ghz, source = float(env), f"given ({GHZ_ENV})"
        except ValueError as exc:
            raise UsageError(f"{GHZ_ENV} must be a number of GHz, got '{env}'") from exc
    else:
        ghz, source = (_max_ghz_sysfs() if probe else None), "cpufreq cpuinfo_max_freq"
        if ghz is None and probe:
            ghz, source = _max_ghz_lscpu(), "lscpu CPU max MHz"
        if ghz is None and "cpu MHz" in info:
            try:
                ghz, source = float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz (nominal; boost unknown)"
            except ValueError:
                ghz = None
    if ghz is not None and ghz <= 0:
        raise UsageError(f"CPU clock must be > 0 GHz, got {ghz}")
    return CpuInfo(model_name=info.get("model name", "unknown"), vendor=info.get("vendor_id", ""),
                   family=as_int("cpu family"), model=as_int("model"), logical_cpus=usable_cpus(),
                   threads_per_core=tpc, flags=flags, ghz=ghz, ghz_source=source if ghz is not None else "unknown")


# -- peak ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Peak:
    """The most MACs per second a precision can reach on ``cores`` cores of this CPU."""

    precision: str
    isa: str
    macs_per_cycle: int  # per core
    cores: int
    ghz: float
    basis: str

    @property
    def gmacs_per_s(self) -> float:
        return self.macs_per_cycle * self.cores * self.ghz

    @property
    def gflops(self) -> float:
        return 2 * self.gmacs_per_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gmacs_per_s": round(self.gmacs_per_s, 1), "gflops": round(self.gflops, 1)}


def _fp32_rate(cpu: CpuInfo) -> tuple[int, str, str]:
    f = cpu.flags
    if "avx512f" in f:
        arch = cpu.microarchitecture
        if arch == "AMD Zen 4":
            return 16, "AVX-512 (Zen 4: 2 x 256-bit FMA)", "512-bit ops double-pumped on two 256-bit FMA pipes"
        if arch == "AMD Zen 5":
            return 32, "AVX-512 (Zen 5: 2 x 512-bit FMA)", "native 512-bit datapath, two FMA pipes"
        return 32, "AVX-512 (2 FMA units)", "16 fp32 lanes x 2 FMA units (assumed: Xeon Gold 6xxx/Platinum)"
    if "avx2" in f and "fma" in f:
        return 16, "AVX2+FMA", "8 fp32 lanes x 2 FMA units"
    if "avx" in f:
        return 8, "AVX", "8 fp32 lanes, separate multiply and add"
    return 4, "SSE", "4 fp32 lanes"


def cpu_peak(cpu: CpuInfo, precision: str, cores: int | None = None) -> Peak | None:
    """The peak for ``precision`` (fp32, bf16, fp16, int8) on ``cores`` (default: all) cores, or None
    when this CPU has no instructions for it or its clock is unknown."""
    if cpu.ghz is None:
        return None
    n = cores or cpu.physical_cores
    fp32, isa, basis = _fp32_rate(cpu)
    f = cpu.flags
    if precision == "fp32":
        return Peak("fp32", isa, fp32, n, cpu.ghz, basis)
    if precision == "bf16":
        if "amx_bf16" in f:
            return Peak("bf16", "AMX-BF16", 512, n, cpu.ghz, "TMUL: 1024 BF16 ops (512 MACs) per cycle per core")
        if "avx512_bf16" in f:
            return Peak("bf16", "AVX512-BF16", 2 * fp32, n, cpu.ghz, "VDPBF16PS: 2 bf16 products per fp32 lane")
        return Peak("bf16", f"{isa} (no native BF16)", fp32, n, cpu.ghz, "bf16 converted and computed in fp32")
    if precision == "fp16":
        if "amx_fp16" in f:
            return Peak("fp16", "AMX-FP16", 512, n, cpu.ghz, "TMUL: 1024 FP16 ops (512 MACs) per cycle per core")
        if "avx512_fp16" in f:
            return Peak("fp16", "AVX512-FP16", 2 * fp32, n, cpu.ghz, "32 fp16 lanes per 512-bit FMA")
        return None
    if precision == "int8":
        if "amx_int8" in f:
            return Peak("int8", "AMX-INT8", 1024, n, cpu.ghz, "TMUL: 2048 INT8 ops (1024 MACs) per cycle per core")
        if "avx512_vnni" in f or "avx_vnni" in f:
            name = "AVX512-VNNI" if "avx512_vnni" in f else "AVX-VNNI"
            return Peak("int8", name, 4 * fp32, n, cpu.ghz, "VPDPBUSD: 4 int8 products per 32-bit lane")
        return None
    raise UsageError(f"unknown precision '{precision}'; choose one of: fp32, bf16, fp16, int8")


def cpu_peaks(cpu: CpuInfo, cores: int | None = None) -> dict[str, Peak]:
    """Every precision this CPU has a peak for."""
    out = {}
    for p in ("fp32", "bf16", "fp16", "int8"):
        peak = cpu_peak(cpu, p, cores)
        if peak is not None:
            out[p] = peak
    return out


def fraction_of_peak(macs_per_image: float, images_per_s: float, peak: Peak) -> float:
    """Achieved MACs per second over the peak (0..1; above 1 means the peak assumptions are wrong)."""
    return macs_per_image * images_per_s / (peak.gmacs_per_s * 1e9)


def gmacs_table(variants: Iterable[str], sizes: Iterable[int]) -> list[dict[str, Any]]:
    """GMACs per image of each variant at each square size (for RESULTS.md)."""
    sizes = list(sizes)
    rows = []
    for v in variants:
        row: dict[str, Any] = {"variant": v}
        for s in sizes:
            row[f"{s}x{s}"] = round(variant_macs(v, s, s) / 1e9, 3)
        rows.append(row)
    return rows
