"""A fake clock and a fake runner whose every call takes a scripted time, so the harness's
statistics can be checked exactly."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import pytest

from resnet_deploy.bench.harness import Target
from resnet_deploy.runtime.base import Runner, RunnerInfo, TensorSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRunner(Runner):
    """Each ``infer`` advances the clock by the next duration (seconds) of ``durations``, or by
    ``per_image * batch`` when ``durations`` is a number; every call is logged."""

    def __init__(self, clock: FakeClock, durations: Iterable[float] | float, log: list, name: str = "fake",
                 shape: tuple = ("batch", 3, "height", "width"), precision: str = "fp32",
                 fail_batch: int | None = None) -> None:
        self.fail_batch = fail_batch
        self.clock = clock
        self.per_image = durations if isinstance(durations, (int, float)) else None
        self.durations = None if self.per_image is not None else iter(durations)
        self.log = log
        self.name_ = name
        self.inputs = [TensorSpec("input", np.dtype(np.float32), shape)]
        self.outputs = [TensorSpec("logits", np.dtype(np.float32), ("batch", 10))]
        self.info = RunnerInfo(backend="fake", precision=precision, details={"threads": 1})
        self.closed = False
        self.synced = 0

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        x = feeds["input"]
        if x.shape[0] == self.fail_batch:
            raise RuntimeError(f"out of memory at batch {x.shape[0]}")
        step = self.per_image * x.shape[0] if self.per_image is not None else next(self.durations)
        self.clock.advance(step)
        self.log.append(("infer", self.name_, x.shape[0], x.shape[2]))
        return {"logits": np.zeros((x.shape[0], 10), np.float32)}

    def synchronize(self) -> None:
        self.synced += 1
        self.log.append(("sync", self.name_))

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def make_target(fake_clock) -> Callable[..., tuple[Target, list]]:
    """``make_target(label, durations, **runner_kwargs) -> (Target, call log)``."""

    def make(label: str, durations: Iterable[float] | float, log: list | None = None, **kwargs: Any):
        log = [] if log is None else log
        holder: dict[str, FakeRunner] = {}

        def factory() -> FakeRunner:
            holder["runner"] = FakeRunner(fake_clock, durations, log, name=label, **kwargs)
            return holder["runner"]

        target = Target(label=label, backend="fake", precision=kwargs.get("precision", "fp32"), make=factory,
                        variant="18")
        target.holder = holder  # type: ignore[attr-defined]
        return target, log

    return make
