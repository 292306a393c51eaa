"""The PyTorch reference runner: a model from ``resnet_deploy.models`` with its weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from .base import Runner, RunnerInfo, TensorSpec

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    """Run an ``nn.Module`` (NCHW float32 in, float32 out) on CPU or CUDA.

    ``precision='fp16'`` casts the model to half (CUDA); ``'bf16'`` runs CPU autocast (AMX-BF16).
    """

    def __init__(self, model: nn.Module, *, device: str = "cpu", precision: str = "fp32",
                 output_name: str = "logits", threads: int | None = None, compile: bool = False,
                 label: str | None = None) -> None:
        if precision not in _DTYPES:
            raise UsageError(f"unknown precision '{precision}' for torch; choose one of: {', '.join(_DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"device '{device}' requested but torch sees no CUDA device "
                             f"(torch {torch.__version__})")
        from ..options import check_threads

        threads = check_threads(threads)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.precision = precision
        self._autocast = precision == "bf16" and self.device.type == "cpu"
        model = model.eval().to(self.device)
        if precision == "fp16" or (precision == "bf16" and not self._autocast):
            model = model.to(_DTYPES[precision])
        self.model = torch.compile(model) if compile else model
        self.inputs = [TensorSpec("input", np.dtype(np.float32), ("batch", 3, "height", "width"))]
        self.outputs = [TensorSpec(output_name, np.dtype(np.float32), ("batch", "?"))]
        self.info = RunnerInfo(backend="torch", device=str(self.device), precision=precision, artifact=label,
                               details={"torch": torch.__version__, "compiled": bool(compile),
                                        "threads": torch.get_num_threads()})

    @classmethod
    def from_variant(cls, variant: str, *, weights: Any = "random", num_classes: int | None = None,
                     head: str = "logits", normalize: bool = False, **kwargs: Any) -> "TorchRunner":
        from ..models.heads import wrap_head
        from ..models import create_model

        model, winfo = create_model(variant, weights=weights, num_classes=num_classes)
        runner = cls(wrap_head(model, head, normalize), output_name="embedding" if head == "embedding"
                     else "logits", label=f"{variant} ({winfo.source})", **kwargs)
        runner.weights_info = winfo
        return runner

    def _infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        x = feeds[self.inputs[0].name]
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        t = t.to(self.device, non_blocking=True)
        if self.precision in ("fp16",) or (self.precision == "bf16" and not self._autocast):
            t = t.to(_DTYPES[self.precision])
        with torch.inference_mode():
            if self._autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = self.model(t)
            else:
                y = self.model(t)
        return {self.outputs[0].name: y.float().cpu().numpy()}

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
