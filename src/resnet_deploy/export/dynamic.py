"""The seed's fix as a tool: make a fixed-size ResNet head work at any input size.

The code the seed walks through ends with ``self.avgpool = nn.AvgPool2d(7, stride=1)`` and
``x = x.view(x.size(0), -1)``. At 224x224 the stem and four stages shrink the map
224 -> 112 (conv1, stride 2) -> 56 (maxpool) -> 56 -> 28 -> 14 -> 7 (layer1..4), and a 7x7 pool
leaves 1x1, so ``view`` yields ``(N, 512 * expansion)`` for ``fc``. At 320x320 layer4 leaves 10x10,
the 7x7 pool leaves 4x4, ``view`` yields ``(N, 16 * 2048)`` and ``fc`` fails; below 193 px the map
is smaller than the kernel and the pool itself fails. Adaptive pooling to 1x1 computes exactly
the same numbers at 224 and the right ones everywhere else.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

log = logging.getLogger(__name__)


def _is_fixed_global_pool(module: nn.Module) -> bool:
    if not isinstance(module, nn.AvgPool2d):
        return False
    pad = module.padding if isinstance(module.padding, tuple) else (module.padding, module.padding)
    return not any(pad) and not module.ceil_mode


def make_dynamic(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every fixed ``nn.AvgPool2d`` head replaced by ``AdaptiveAvgPool2d(1)``.

    A head is the ``avgpool`` attribute of the model (torchvision's and the seed's name) or any
    ``nn.AvgPool2d`` that feeds the classifier. Models that already pool adaptively come back
    unchanged. ``x.view(x.size(0), -1)`` after the pool then sees ``(N, C, 1, 1)`` at every size.
    """
    model = model if inplace else copy.deepcopy(model)
    replaced = []
    for name, module in list(model.named_modules()):
        if name.split(".")[-1] not in ("avgpool", "global_pool", "pool") or not _is_fixed_global_pool(module):
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.split(".")[-1], nn.AdaptiveAvgPool2d((1, 1)))
        replaced.append(f"{name}: AvgPool2d(kernel_size={module.kernel_size}) -> AdaptiveAvgPool2d(1)")
    for line in replaced:
        log.info("make_dynamic: %s", line)
    return model
