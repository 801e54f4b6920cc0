"""Per-class weights for imbalanced data."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

__all__ = ["class_balanced_weights"]


def class_balanced_weights(counts: Sequence[int | float] | Tensor, beta: float = 0.9999) -> Tensor:
    r"""Class-balanced weights of Cui et al. (2019), from each class's number of samples.

    The *effective number* of ``n`` samples is ``(1 - beta**n) / (1 - beta)``; each class gets
    the inverse, ``w_c = (1 - beta) / (1 - beta**n_c)``, normalised so that the weights sum to
    the number of classes. ``beta = 0`` gives equal weights, ``beta -> 1`` inverse frequency.
    Use the result as ``weight`` or ``alpha`` of :func:`focalloss.focal_loss`, or as per-class
    ``weight`` of :func:`focalloss.sigmoid_focal_loss` (shaped to broadcast along the class
    dimension, e.g. ``w.view(-1, 1, 1)`` for ``(N, C, H, W)`` logits).

    Args:
        counts: ``C`` non-negative sample (or pixel) counts; each must be > 0.
        beta: in [0, 1). Default: 0.9999.

    Returns:
        A float32 tensor of ``C`` weights summing to ``C`` (on the device of ``counts`` when it
        is a tensor).

    Example:
        >>> from focalloss import class_balanced_weights
        >>> class_balanced_weights([1000, 10], beta=0.99)
        tensor([0.1746, 1.8254])
    """
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise TypeError(f"beta: expected a number in [0, 1), got {type(beta).__name__}")
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta: expected a number in [0, 1), got {beta}")
    if isinstance(counts, Tensor):
        n = counts.detach().to(torch.float64)
    elif isinstance(counts, Sequence) and not isinstance(counts, str):
        n = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    else:
        raise TypeError(f"counts: expected a sequence or 1-D tensor, got {type(counts).__name__}")
    if n.dim() != 1 or n.numel() == 0:
        raise ValueError(f"counts: expected a non-empty 1-D sequence, got shape {tuple(n.shape)}")
    bad = ~(n > 0) | ~torch.isfinite(n)
    if bool(bad.any()):
        c = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"counts: every class needs a finite count > 0, got {n[c].item()} for class {c} "
            f"(drop unused classes, or give them a count of 1)"
        )
    if beta == 0.0:
        w = torch.ones_like(n)
    else:
        # 1 - beta**n = -expm1(n * log(beta)), exact for beta close to 1 and large n.
        w = (1.0 - beta) / -torch.expm1(n * torch.log(torch.tensor(beta, dtype=torch.float64)))
    w = w * (n.numel() / w.sum())
    return w.to(torch.float32)
