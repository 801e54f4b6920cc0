"""Baselines the benchmark compares against, restated in plain PyTorch.

These re-state the *behaviour* of widely copied implementations (the seed project's module,
torchvision's formula) so that their speed and memory can be measured in the same process;
they are not used by the library itself.
"""

from __future__ import annotations

import torch
from torch import Tensor


def seed_style_focal_loss(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """The seed module's computation: transposed copy, boolean masking, detached ``p_t``."""
    num_classes = input.shape[1]
    if input.dim() > 2:
        input = input.reshape(input.shape[0], num_classes, -1).transpose(1, 2)
        input = input.contiguous().view(-1, num_classes)
    target = target.reshape(-1, 1)
    if ignore_index is not None:
        keep = target[:, 0] != ignore_index
        input, target = input[keep], target[keep]
    log_pt = torch.log_softmax(input, dim=-1).gather(1, target).view(-1)
    pt = log_pt.detach().exp()
    if alpha is not None:
        log_pt = log_pt * alpha.to(input).gather(0, target.view(-1))
    return (-((1 - pt) ** gamma) * log_pt).mean()
