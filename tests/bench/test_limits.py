from __future__ import annotations

import pytest

from resnet_deploy.bench.limits import (CpuInfo, Peak, count_macs, cpu_peak, cpu_peaks, detect_cpu, fraction_of_peak,
                                        gmacs_table, onnx_macs, variant_macs)
from resnet_deploy.errors import UsageError
from resnet_deploy.models import VARIANTS

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
cpu MHz\t\t: 2596.146
siblings\t: 2
cpu cores\t: 2
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
"""

SPR = """processor : 0
vendor_id : GenuineIntel
cpu family : 6
model : 143
model name : Intel(R) Xeon(R) Platinum 8480+
cpu MHz : 2000.000
siblings : 112
cpu cores : 56
flags : avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8
"""

HASWELL = """vendor_id : GenuineIntel
cpu family : 6
model name : Intel(R) Xeon(R) CPU E5-2680 v3
cpu MHz : 2500.000
flags : avx fma avx2
"""


def test_resnet50_at_224_is_4_09_gmacs():
    assert variant_macs("50", 224, 224) / 1e9 == pytest.approx(4.09, rel=2e-3)


def test_work_grows_with_the_pixels():
    base = variant_macs("50", 224, 224)
    assert variant_macs("50", 448, 448) / base == pytest.approx(4.0, rel=2e-3)  # 4x the pixels
    assert variant_macs("resnet50", 224, 448) / base == pytest.approx(2.0, rel=2e-3)


def test_every_variant_matches_torchvisions_published_figure():
    for name, spec in VARIANTS.items():
        assert variant_macs(name, 224, 224) / 1e9 == pytest.approx(spec.gmacs_224, rel=5e-3), name


def test_count_macs_of_a_tiny_network():
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 5))
    macs = count_macs(net, (1, 3, 4, 4))
    expected = 8 * 16 * 3 * 9 + 8 * 16 * 2 * 9 + 128 * 5
    assert macs == expected
    assert count_macs(net, (2, 3, 4, 4)) == 2 * expected
    assert all(not m._forward_hooks for m in net.modules())  # hooks removed
    with torch.device("meta"):
        meta = nn.Conv2d(3, 4, 1)
    assert count_macs(meta, (1, 3, 10, 10)) == 4 * 100 * 3


def test_too_small_an_input_is_a_usage_error():
    with pytest.raises(UsageError, match="at least 32"):
        variant_macs("18", 16, 224)


def test_onnx_count_equals_the_model_count(resnet18_onnx):
    for h, w in ((64, 64), (96, 128)):
        assert onnx_macs(str(resnet18_onnx), h, w) == variant_macs("18", h, w)


def test_zen4_peaks_follow_its_256_bit_datapath():
    cpu = detect_cpu(cpuinfo_text=ZEN4)
    assert cpu.microarchitecture == "AMD Zen 4"
    assert cpu.threads_per_core == 1
    assert cpu.ghz == pytest.approx(2.596146) and "cpu MHz" in cpu.ghz_source
    peaks = cpu_peaks(cpu, cores=2)
    assert peaks["fp32"].macs_per_cycle == 16
    assert peaks["bf16"].macs_per_cycle == 32 and peaks["bf16"].isa == "AVX512-BF16"
    assert peaks["int8"].macs_per_cycle == 64 and peaks["int8"].isa == "AVX512-VNNI"
    assert "fp16" not in peaks
    p = peaks["fp32"]
    assert p.gmacs_per_s == pytest.approx(16 * 2 * p.ghz)
    assert p.gflops == pytest.approx(2 * p.gmacs_per_s)


def test_amx_peaks_and_explicit_clock():
    cpu = detect_cpu(3.0, cpuinfo_text=SPR)
    assert cpu.ghz == 3.0 and cpu.ghz_source == "given (--cpu-ghz)"
    assert cpu.threads_per_core == 2
    assert cpu_peak(cpu, "fp32", 1).macs_per_cycle == 32
    assert cpu_peak(cpu, "bf16", 1).macs_per_cycle == 512
    assert cpu_peak(cpu, "int8", 1).macs_per_cycle == 1024
    assert cpu_peak(cpu, "fp16", 1).isa == "AVX512-FP16"  # AMX-FP16 arrives with Granite Rapids
    assert cpu_peak(cpu, "int8", 4).gmacs_per_s == pytest.approx(1024 * 4 * 3.0)


def test_without_vnni_there_is_no_int8_peak_and_bf16_is_fp32(monkeypatch):
    monkeypatch.setenv("RESNET_DEPLOY_CPU_GHZ", "2.5")
    cpu = detect_cpu(cpuinfo_text=HASWELL)
    assert cpu.ghz_source == "given (RESNET_DEPLOY_CPU_GHZ)"
    assert cpu_peak(cpu, "int8") is None
    assert cpu_peak(cpu, "bf16").macs_per_cycle == cpu_peak(cpu, "fp32").macs_per_cycle == 16
    with pytest.raises(UsageError, match="precision"):
        cpu_peak(cpu, "int4")


def test_unknown_clock_gives_no_peak():
    cpu = CpuInfo(model_name="x", vendor="GenuineIntel", family=6, model=1, logical_cpus=4, threads_per_core=1,
                  flags=frozenset({"avx2", "fma"}), ghz=None)
    assert cpu_peaks(cpu) == {}


def test_fraction_of_peak():
    peak = Peak("fp32", "AVX2+FMA", 16, 2, 2.5, "")
    # 80 GMAC/s peak; 4.09 GMACs per image at 10 images/s is 40.9 GMAC/s
    assert fraction_of_peak(4.09e9, 10.0, peak) == pytest.approx(40.9 / 80)


def test_this_machine_is_detected():
    cpu = detect_cpu()
    assert cpu.logical_cpus >= 1 and cpu.physical_cores >= 1
    d = cpu.to_dict()
    assert {"model_name", "flags", "ghz", "ghz_source", "microarchitecture", "physical_cores"} <= set(d)


def test_gmacs_table_rows():
    rows = gmacs_table(["18", "50"], [224, 448])
    assert rows[1]["variant"] == "50" and rows[1]["224x224"] == pytest.approx(4.089, abs=1e-3)
    assert rows[0]["448x448"] == pytest.approx(4 * rows[0]["224x224"], rel=5e-3)
