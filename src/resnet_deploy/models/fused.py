"""Fused preprocessing for export: ``/255``, mean/std normalization and NHWC -> NCHW inside the graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .transforms import Preprocessing


class FusedPreprocess(nn.Module):
    """``model`` taking uint8 NHWC images that are already resized and cropped: ``/255``, mean/std
    normalization and NHWC -> NCHW happen inside the graph, so a runner moves a quarter of the bytes.

    Feed it :func:`~resnet_deploy.models.preprocessing.preprocess_uint8` output (stacked). The mean
    and std come from ``prep``.
    """

    def __init__(self, model: nn.Module, prep: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32).div(255.0)
        return self.model((x - self.mean) / self.std)


__all__ = ["FusedPreprocess"]
