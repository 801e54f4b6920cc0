"""FL* on the PyTorch backend: closed form, and the differentiable composite.

Per element, with target ``t`` in [0, 1], ``x_t = x (2t - 1)`` and ``z = gamma x_t + beta``::

    loss = a_t * softplus(-z) / gamma              (-log sigmoid(z) = softplus(-z))
    dloss/dx = -a_t * (2t - 1) * sigmoid(-z)

with ``a_t = alpha t + (1 - alpha)(1 - t)`` (1 when alpha is disabled). Both factors are
computed directly from ``z`` (softplus and sigmoid of large arguments are exact), so the loss
and its gradient are finite for every finite logit. For class indices the negatives
(``t = 0``: ``z = beta - gamma x``) are computed over the logits and the positive of each
position (``z = gamma x + beta``) is gathered and scattered: no one-hot target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._spec.classification import FocalStarSpec
from .common import class_view, finish, one_hot, reduce_composite
from .elementwise import elementwise_forward, scatter_positives, softplus


def _alpha(spec: FocalStarSpec) -> Tensor | float | None:
    alpha = spec.alpha
    if isinstance(alpha, Tensor) and alpha.dim() == 1:
        return class_view(alpha, spec.input.dim())
    return alpha


def forward(spec: FocalStarSpec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The reduced loss of ``spec`` and the gradient of that loss w.r.t. ``spec.input``."""
    gamma, beta, alpha = spec.gamma, spec.beta, _alpha(spec)

    def terms(x: Tensor, target: Tensor, need: bool) -> tuple[Tensor, Tensor | None]:
        if target.is_floating_point():
            return _float_terms(x, target.to(x.dtype), gamma, beta, alpha, need)
        # Negatives: z = beta - gamma x; loss = softplus(gamma x - beta) / gamma.
        nz = torch.mul(x, gamma).sub_(beta)  # -z
        neg_a = None if alpha is None else 1.0 - alpha
        loss = softplus(nz).mul_(1.0 / gamma)
        grad = torch.sigmoid(nz) if need else None  # -(2t - 1) sigmoid(-z) with t = 0
        if neg_a is not None:
            loss.mul_(neg_a)
            if grad is not None:
                grad.mul_(neg_a)

        def positive(x_t: Tensor) -> tuple[Tensor, Tensor | None]:
            nz_t = torch.mul(x_t, -gamma).sub_(beta)  # -z = -(gamma x + beta)
            loss_t = softplus(nz_t).mul_(1.0 / gamma)
            grad_t = torch.sigmoid(nz_t).neg_() if need else None
            if alpha is not None:
                a_t = alpha
                if isinstance(alpha, Tensor) and alpha.dim() > 0:
                    idx = target.clamp(max=x.shape[1] - 1).unsqueeze(1)
                    a_t = alpha.expand_as(x).gather(1, idx)
                loss_t = loss_t.mul_(a_t)
                if grad_t is not None:
                    grad_t = grad_t.mul_(a_t)
            return loss_t, grad_t

        scatter_positives(loss, grad, target, positive, x)
        return loss, grad

    loss, grad = elementwise_forward(spec, terms, need_grad)
    return finish(loss, grad, spec, summed=True)


def _float_terms(
    x: Tensor, t: Tensor, gamma: float, beta: float, alpha: Tensor | float | None, need: bool
) -> tuple[Tensor, Tensor | None]:
    sign = torch.mul(t, 2.0).sub_(1.0)  # 2t - 1
    nz = torch.mul(x, sign).mul_(-gamma).sub_(beta)  # -z
    loss = softplus(nz).mul_(1.0 / gamma)
    grad = torch.sigmoid(nz).mul_(sign).neg_() if need else None
    if alpha is not None:
        a_t = torch.mul(t, alpha).add_((1.0 - alpha) * (1.0 - t))
        loss.mul_(a_t)
        if grad is not None:
            grad.mul_(a_t)
    return loss, grad


def composite(spec: FocalStarSpec, input: Tensor) -> Tensor:
    """FL* of ``spec``, reduced, from differentiable operations at ``input``."""
    target, ignored, alpha = spec.target, spec.ignored, _alpha(spec)
    x = input.to(spec.compute_dtype)
    if ignored is not None:  # whatever ignored positions hold (NaN, inf) must not reach autograd
        x = torch.where(ignored.unsqueeze(1), 0.0, x)
    index = not target.is_floating_point()
    t = one_hot(target, x.shape[1], x.dtype) if index else target.to(x.dtype)
    z = spec.gamma * (x * (2.0 * t - 1.0)) + spec.beta
    loss = -F.logsigmoid(z) / spec.gamma
    if alpha is not None:
        loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
    if spec.weight is not None:
        loss = spec.weight * loss
    if ignored is not None:
        loss = torch.where(ignored.unsqueeze(1), 0.0, loss)
    return reduce_composite(loss, spec)
