"""Heads: logits (the classifier) or the pooled embedding, optionally L2-normalized."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .registry import HEADS


class EmbeddingModel(nn.Module):
    """The network up to global pooling: ``(N, 3, H, W) -> (N, num_features)``."""

    def __init__(self, model: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        x = torch.flatten(m.avgpool(x), 1)
        if self.normalize:
            x = torch.nn.functional.normalize(x, p=2.0, dim=1, eps=1e-12)
        return x


class NormalizedLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.normalize(self.model(x), p=2.0, dim=1, eps=1e-12)


def wrap_head(model: nn.Module, head: str = "logits", normalize: bool = False) -> nn.Module:
    """Return ``model`` with the requested head (``logits`` or ``embedding``)."""
    if head not in HEADS:
        raise UsageError(f"unknown head '{head}'; choose one of: {', '.join(HEADS)}")
    if head == "embedding":
        return EmbeddingModel(model, normalize=normalize).eval()
    if normalize:
        raise UsageError("--normalize applies to --head embedding only")
    return model
