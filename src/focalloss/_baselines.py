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


def torchvision_style_sigmoid_focal_loss(
    input: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """torchvision.ops.sigmoid_focal_loss's formula as a plain autograd composite, "mean"."""
    p = torch.sigmoid(input)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(input, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def one_hot_background(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(N, *) indices in [0, C] -> (N, C, *) labels, C = background: what index targets avoid."""
    onehot = torch.nn.functional.one_hot(index, num_classes + 1)[..., :num_classes]
    return onehot.movedim(-1, 1).to(dtype)
