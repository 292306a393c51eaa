"""Latency benchmarks measured the way trtexec measures, with every backend and its peers side by side.

    from resnet_deploy.bench import BenchConfig, Selection, benchmark
    from resnet_deploy.bench.report import format_table

    result = benchmark(Selection(variant="50", backends=("torch", "onnxruntime")),
                       BenchConfig(batch_sizes=(1, 8)))
    print(format_table(result))

``harness`` times (warmup, interleaved rounds, synchronized iterations), ``stats`` summarizes,
``peers`` decides what to time, ``limits`` says how far from the hardware's peak each result is,
``report`` and ``plot`` write it down.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from ..errors import UsageError
from .harness import BenchConfig, BenchResult, Measurement, Target, Warmup, run_benchmark
from .limits import CpuInfo
from .peers import BACKENDS, PRECISIONS, Plan, Selection, plan_targets
from .stats import LatencyStats, percentile

log = logging.getLogger(__name__)


def benchmark(selection: Selection, config: BenchConfig | None = None, *, cpu: CpuInfo | None = None,
              baseline: str | None = None) -> BenchResult:
    """Plan, time and annotate: the complete result (environment, speedups, fraction of peak).

    Without ``selection.workdir`` the exported artifacts go to a temporary directory, removed
    afterwards.
    """
    from .report import finalize

    config = config or BenchConfig()
    if config.threads is None and selection.threads is not None:
        config = replace(config, threads=selection.threads)
    elif selection.threads is None and config.threads is not None:
        selection = replace(selection, threads=config.threads)
    elif selection.threads != config.threads:
        raise UsageError(f"threads differ: {selection.threads} in the selection, {config.threads} in the config")
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-bench-") as tmp:
        if selection.workdir is None:
            selection = replace(selection, workdir=Path(tmp))
        plan = plan_targets(selection)
        if not plan.targets:
            raise UsageError("nothing to benchmark: " + "; ".join(plan.notes))
        labels = [t.label for t in plan.targets]
        if baseline is not None and baseline not in labels:
            raise UsageError(f"baseline '{baseline}' is not among the targets; choose one of: {', '.join(labels)}")
        result = run_benchmark(plan.targets, config)
        result.notes[:0] = plan.notes
        return finalize(result, cpu=cpu, threads=config.threads, baseline=baseline)


__all__ = ["BACKENDS", "PRECISIONS", "BenchConfig", "BenchResult", "CpuInfo", "LatencyStats", "Measurement", "Plan",
           "Selection", "Target", "Warmup", "benchmark", "percentile", "plan_targets", "run_benchmark"]
