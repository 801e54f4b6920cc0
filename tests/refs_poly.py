"""Float64 re-statements of Poly-1 (Leng et al. 2022) and of a piecewise-constant gamma
(FLSD-53, Mukhoti et al. 2020) on top of the focal losses, for tests/test_poly1.py,
tests/test_gamma_schedule.py and tests/triton_interp/test_poly_schedule.py.

Written from the formulas with plain autograd operations (textbook ``1 - P``, ``(1 - p) **
gamma``, ``F.binary_cross_entropy_with_logits``), none of the library's code paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gamma_of(p_t: Tensor, gamma) -> Tensor | float:
    """A number gamma, or ``(thresholds, values)``: values[k], k = #{thresholds <= p_t}."""
    if isinstance(gamma, (int, float)):
        return float(gamma)
    thresholds, values = gamma
    bounds = torch.tensor(thresholds, dtype=torch.float64, device=p_t.device)
    k = (p_t.detach().double().unsqueeze(-1) >= bounds).sum(-1)
    return torch.tensor(values, dtype=torch.float64, device=p_t.device)[k]


def softmax_ref(
    x: Tensor,
    t: Tensor,
    *,
    gamma=2.0,
    poly1: float = 0.0,
    alpha=None,
    weight=None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    detach: bool = False,
) -> Tensor:
    """``sum_c w_c a_c q_c (1 - p_c)^g (-log p_c) + e W (1 - P)^(g + 1)`` per position, with
    ``P = sum_c q_c p_c``, ``g`` the number or the schedule's value at the detached ``P``, ``W``
    the target's weight (``sum_c w_c target_c`` for probabilities, 1 without weight); reduced as
    ``F.cross_entropy`` (the same divisor with or without Poly-1)."""
    x = x.double()
    squeeze = x.dim() == 1
    if squeeze:
        x, t = x.unsqueeze(0), t.unsqueeze(0)
    num_classes = x.shape[1]
    view = (1, num_classes) + (1,) * (x.dim() - 2)
    w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight
    w = torch.as_tensor(w, dtype=torch.float64).to(x.device)
    a = torch.ones(num_classes, dtype=torch.float64) if alpha is None else alpha
    a = torch.as_tensor(a, dtype=torch.float64).to(x.device)
    lp = torch.log_softmax(x, 1)
    p = lp.exp()
    eps = label_smoothing
    if t.is_floating_point():
        raw = t.double()
        valid = torch.ones(x.shape[:1] + x.shape[2:], dtype=torch.bool, device=x.device)
        big_w = (raw * w.view(view)).sum(1) if weight is not None else torch.ones_like(p[:, 0])
        divisor = torch.tensor(float(valid.numel()), dtype=torch.float64)
    else:
        valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=bool)
        safe = torch.where(valid, t, 0)
        raw = F.one_hot(safe, num_classes).movedim(-1, 1).double()
        big_w = w[safe]
        divisor = (big_w * valid).sum()
    q = (1 - eps) * raw + eps / num_classes
    big_p = (q * p).sum(1)
    g = gamma_of(big_p, gamma)
    g_c = g.unsqueeze(1) if isinstance(g, Tensor) else g
    m = (1 - p) ** g_c
    if detach:
        m = m.detach()
    loss = -((w * a).view(view) * q * m * lp).sum(1)
    if poly1 != 0.0:
        u = 1 - big_p
        poly = (u**g).detach() * u if detach else u ** (g + 1)
        loss = loss + poly1 * big_w * poly
    loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss.squeeze(0) if squeeze else loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / divisor


def sigmoid_ref(
    x: Tensor,
    labels: Tensor,
    *,
    gamma=2.0,
    poly1: float = 0.0,
    alpha=0.25,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    keep: Tensor | None = None,
    reduction: str = "none",
    normalizer=None,
    detach: bool = False,
) -> Tensor:
    """``w (a_t (1 - p_t)^g ce + e (1 - p_t)^(g + 1))`` per element (torchvision's formula plus
    Poly-1), ``g`` the number or the schedule's value at the detached ``p_t``; ``labels`` are
    float, ``keep`` (broadcastable) masks ignored elements; ``"mean"`` divides by the kept
    elements or by ``max(normalizer, 1)``."""
    x, t = x.double(), labels.double()
    p = torch.sigmoid(x)
    pw = None if pos_weight is None else pos_weight.double()
    ce = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    g = gamma_of(p_t, gamma)
    m = (1 - p_t) ** g
    if detach:
        m = m.detach()
    loss = m * ce
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=torch.float64)
        if a.dim() == 1:
            a = a.view((1, -1) + (1,) * (x.dim() - 2))
        loss = (a * t + (1 - a) * (1 - t)) * loss
    if poly1 != 0.0:
        u = 1 - p_t
        poly = (u**g).detach() * u if detach else u ** (g + 1)
        loss = loss + poly1 * poly
    if weight is not None:
        loss = loss * weight.double()
    count = float(loss.numel())
    if keep is not None:
        keep = keep.expand_as(loss)
        loss = torch.where(keep, loss, 0.0)
        count = keep.sum().double()
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if normalizer is not None:
        return loss.sum() / max(float(normalizer), 1.0)
    return loss.sum() / count


def index_labels(target: Tensor, num_classes: int, ignore_index: int | None):
    """Class indices (``C`` = background) as float one-hot labels ``(N, C, *)`` and the kept
    mask ``(N, 1, *)``."""
    keep = (
        target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=bool)
    )
    safe = torch.where(keep, target, num_classes)
    labels = F.one_hot(safe, num_classes + 1)[..., :num_classes].movedim(-1, 1).double()
    return labels, keep.unsqueeze(1)
