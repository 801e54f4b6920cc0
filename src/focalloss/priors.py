"""Classifier bias initialisation for focal-loss training (RetinaNet's prior)."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = ["init_prior_bias_", "prior_bias"]


def prior_bias(prior: float = 0.01) -> float:
    r"""The bias ``b`` with ``sigmoid(b) = prior``: ``b = -log((1 - prior) / prior)``.

    Lin et al. initialise the last classification layer of a one-stage detector so that every
    anchor starts with foreground probability ``prior`` (0.01): otherwise the ~100k easy
    background anchors dominate the loss in the first iterations and training diverges.

    Example:
        >>> from focalloss import prior_bias
        >>> round(prior_bias(0.01), 4)
        -4.5951
    """
    if isinstance(prior, bool) or not isinstance(prior, Real):
        raise TypeError(f"prior: expected a number in (0, 1), got {type(prior).__name__}")
    prior = float(prior)
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior: expected a number in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)


def init_prior_bias_(bias: Tensor, prior: float = 0.01) -> Tensor:
    """Fill a classifier bias in place with :func:`prior_bias` and return it.

    Example:
        >>> import torch
        >>> from focalloss import init_prior_bias_
        >>> head = torch.nn.Conv2d(256, 9 * 80, kernel_size=3, padding=1)
        >>> _ = init_prior_bias_(head.bias, prior=0.01)
        >>> round(torch.sigmoid(head.bias).mean().item(), 6)
        0.01
    """
    if not isinstance(bias, Tensor):
        raise TypeError(f"bias: expected a tensor (e.g. layer.bias), got {type(bias).__name__}")
    if not bias.is_floating_point():
        raise TypeError(f"bias: expected a floating-point tensor, got dtype {bias.dtype}")
    value = prior_bias(prior)
    with torch.no_grad():
        bias.fill_(value)
    return bias
