"""Independent float64 references for the tests: plain composites differentiated by autograd.

Written straight from the formulas in the issues, with none of the library's code paths
(no closed-form gradient, no in-place tricks), so that a test comparing against them can fail.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def input_grad(loss: Tensor, x: Tensor, go: Tensor | None = None) -> Tensor:
    """``d(loss)/dx`` with ``go`` as the incoming gradient (ones when None)."""
    (g,) = torch.autograd.grad(loss, x, torch.ones_like(loss) if go is None else go)
    return g


def float64_logits(shape, seed: int = 0, scale: float = 3.0) -> Tensor:
    """Seeded float64 logits ``scale * N(0, 1)`` that require grad."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()


def alpha_balanced(loss: Tensor, t: Tensor, alpha, ndim: int) -> Tensor:
    """``alpha_t * loss`` with ``alpha_t = a t + (1 - a)(1 - t)``: ``alpha`` None or a negative
    number leaves the loss as it is; a 1-D tensor or list is per class along dim 1."""
    if alpha is None:
        return loss
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if a.dim() == 1:
        a = a.view((1, -1) + (1,) * (ndim - 2))
    if a.dim() > 0 or a.item() >= 0:
        loss = (a * t + (1 - a) * (1 - t)) * loss
    return loss


def _class_vector(value, num_classes: int) -> Tensor:
    if value is None:
        return torch.ones(num_classes, dtype=torch.float64)
    if isinstance(value, (int, float)):
        return torch.tensor([value, 1.0 - value], dtype=torch.float64)
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu()


def softmax_focal_ref(
    x: Tensor,
    t: Tensor,
    *,
    gamma: float = 2.0,
    alpha=None,
    weight=None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """sum_c w_c a_c q_ic (1 - p_ic)^gamma (-log p_ic), reduced as F.cross_entropy does.

    "mean" of an all-ignored batch is 0/0 = NaN here, as in F.cross_entropy.
    """
    x = x.double()
    if x.dim() == 1:
        x, t = x.unsqueeze(0), t.unsqueeze(0)
        squeeze = True
    else:
        squeeze = False
    num_classes = x.shape[1]
    shape = (1, num_classes) + (1,) * (x.dim() - 2)
    w = _class_vector(weight, num_classes).to(x.device)
    a = _class_vector(alpha, num_classes).to(x.device)
    lp = torch.log_softmax(x, dim=1)
    p = lp.exp()
    eps = label_smoothing
    if t.is_floating_point():
        q = (1 - eps) * t.double() + eps / num_classes
        valid = torch.ones(x.shape[:1] + x.shape[2:], dtype=torch.bool, device=x.device)
        divisor = torch.tensor(float(valid.numel()), dtype=torch.float64)
    else:
        t = t.long()
        valid = (
            t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        )
        safe = torch.where(valid, t, torch.zeros_like(t))
        onehot = F.one_hot(safe, num_classes).movedim(-1, 1).double()
        q = (1 - eps) * onehot + eps / num_classes
        divisor = (w[safe] * valid).sum()
    terms = (w * a).view(shape) * q * (1 - p) ** gamma * (-lp)
    loss = torch.where(valid, terms.sum(1), torch.zeros((), dtype=torch.float64))
    if reduction == "none":
        return loss.squeeze(0) if squeeze else loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / divisor


class SeedFocalLoss(nn.Module):
    """The seed module's behaviour (../shared/seeds/000_*), restated for the tests.

    Flattens (N, C, *) to (N*, C), drops ignored rows, takes log p_t, detaches p_t, multiplies
    log p_t by alpha[t] (a number a means [a, 1 - a]) and averages (size_average) or sums.
    """

    def __init__(self, gamma=0, alpha=None, size_average=True, ignore_index=None):
        super().__init__()
        self.gamma = gamma
        if isinstance(alpha, (int, float)):
            alpha = [alpha, 1 - alpha]
        # torch.Tensor(list): float32, as the seed stores it (cast to the input's type later)
        self.alpha = None if alpha is None else torch.tensor(alpha, dtype=torch.float32)
        self.size_average = size_average
        self.ignore_index = ignore_index

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        num_classes = x.shape[1]
        if x.dim() > 2:
            x = x.reshape(x.shape[0], num_classes, -1).transpose(1, 2).reshape(-1, num_classes)
        t = t.reshape(-1)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            x, t = x[keep], t[keep]
        log_pt = torch.log_softmax(x, dim=-1).gather(1, t[:, None]).squeeze(1)
        pt = log_pt.detach().exp()
        if self.alpha is not None:
            log_pt = log_pt * self.alpha.to(x)[t]
        loss = -((1 - pt) ** self.gamma) * log_pt
        return loss.mean() if self.size_average else loss.sum()


def sigmoid_focal_ref(
    x: Tensor,
    t: Tensor,
    *,
    gamma: float = 2.0,
    alpha=0.25,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """torchvision's formula in float64 (plus weight and pos_weight as in BCE-with-logits)."""
    x, t = x.double(), t.double()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(
        x, t, pos_weight=None if pos_weight is None else pos_weight.double(), reduction="none"
    )
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    loss = alpha_balanced(loss, t, alpha, x.dim())
    if weight is not None:
        loss = loss * weight.double()
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def one_hot_with_background(target: Tensor, num_classes: int) -> Tensor:
    """(N, *) indices in [0, C] -> (N, C, *) float64 labels; C is the all-negative background."""
    return F.one_hot(target, num_classes + 1)[..., :num_classes].movedim(-1, 1).double()
