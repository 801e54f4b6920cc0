"""Plain-PyTorch math of the focal losses: forward value and closed-form gradient.

This is the PyTorch backend (CPU, and CUDA without Triton) and the math the kernels follow.

Softmax focal loss
------------------
For one position with logits ``z`` (C values), ``lp = log_softmax(z)``, ``p = exp(lp)`` and a
non-negative coefficient ``k_c`` per class (``k_c = w_c * a_c * q_c``, with ``q`` the one-hot
or smoothed or soft target), the loss is::

    L = sum_c k_c * m_c * (-lp_c),        m_c = (1 - p_c) ** gamma

Its exact gradient follows from ``dp_c/dz_j = p_c (delta_cj - p_j)``::

    g_c   = k_c * p_c * dL_c/dp_c = k_c * m_c * (gamma * r_c - 1),   r_c = p_c * lp_c / (1 - p_c)
    dL/dz_j = g_j - p_j * sum_c g_c

Numerical choices:

* ``1 - p`` is ``-expm1(lp)``: exact even when ``p`` rounds to 1 in floating point, where
  ``1 - exp(lp)`` would cancel to 0 and make ``(1 - p) ** gamma`` wrong for small gamma.
* The textbook derivative contains ``(1 - p) ** (gamma - 1)``, which is infinite at ``p -> 1``
  for ``0 < gamma < 1`` (the seed code's NaN). Folding ``p / (1 - p)`` into ``r`` instead keeps
  every factor bounded: ``r = p * log(p) / (1 - p)`` lies in ``[-1, 0]`` (limit -1 at p -> 1,
  0 at p -> 0). Where ``1 - p`` is exactly 0, ``m`` is 0 for gamma > 0 and the ``gamma * r``
  term vanishes for gamma = 0, so ``r`` only has to be finite there: 0 is used.
* ``detach_modulator`` (the seed module's behaviour) treats ``m`` as a constant: ``g_c`` becomes
  ``-k_c * m_c``.
* For hard targets only the target class has ``k_c != 0``, so every factor above is a
  per-position scalar and the gradient is ``s * (p - onehot)`` with ``s = -g_t >= 0``: one
  exponential over the logits, computed in place in the log-softmax buffer.

Large allocations dominate on the CPU (a fresh logits-sized buffer costs about three in-place
passes), so the code below reuses buffers it owns with in-place operations.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _class_view(v: Tensor, ndim: int) -> Tensor:
    """A ``(C,)`` vector as ``(1, C, 1, ..., 1)`` for broadcasting over ``(N, C, *)``."""
    return v.view((1, -1) + (1,) * (ndim - 2))


def hard_target_terms(
    lp_t: Tensor, gamma: float, detach_modulator: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per-position factors of the focal term of one class, from its log-probability ``lp_t``.

    Returns ``(nl, s, q)``: ``nl = m * lp`` (the loss term is ``-nl``), ``s = -g / k``
    ``= m * (1 - gamma * r)`` (``m`` when the modulator is detached; None for gamma = 0,
    where it is 1), and ``q = p - 1 = expm1(lp)``, all fresh tensors owned by the caller.
    """
    q = torch.expm1(lp_t)  # p - 1, exact near p = 1
    if gamma == 0.0:
        return lp_t.clone(), None, q
    m = q.neg() if gamma == 1.0 else q.neg().pow_(gamma)
    nl = lp_t * m
    if detach_modulator:
        return nl, m, q
    # -r = p * lp / (p - 1) in [0, 1]; NaN only for p * lp = 0 at p = 1 (0/0, where m = 0)
    # or p = 0 with lp = -inf (0 * inf, limit 0): both become 0.
    s = lp_t.exp().mul_(lp_t).div_(q).nan_to_num_(nan=0.0)
    return nl, s.mul_(gamma).add_(1.0).mul_(m), q


def softmax_focal_forward(
    input: Tensor,
    target: Tensor,
    *,
    class_coef: Tensor | None,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    label_smoothing: float,
    detach_modulator: bool,
    need_grad: bool,
    compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """Per-position softmax focal loss and, when asked, its gradient.

    Args:
        input: ``(N, C, *)`` logits, any float dtype and layout.
        target: ``(N, *)`` int64 class indices with ignored positions already replaced by a
            valid class, or ``(N, C, *)`` class probabilities.
        class_coef: ``(C,)`` product ``weight * alpha`` in ``compute_dtype``, or None.
        ignored: ``(N, *)`` bool mask of ignored positions, or None (none ignored).
        grad_scale: 0-d factor applied to every position's gradient (``1 / divisor`` for
            ``reduction="mean"``), or None for 1.
        need_grad: also return ``dloss/dinput`` of ``sum(grad_scale * loss)``.

    Returns:
        ``(loss, grad)``: loss ``(N, *)`` in ``compute_dtype``, 0 at ignored positions;
        grad ``(N, C, *)`` in ``compute_dtype`` or None.
    """
    num_classes = input.shape[1]
    lp = torch.log_softmax(input, dim=1, dtype=compute_dtype)
    if target.dtype == torch.int64 and label_smoothing == 0.0:
        return _hard_forward(
            lp, target, class_coef, ignored, grad_scale, gamma, detach_modulator, need_grad
        )

    # Dense part: k_c = K[c] for every class. Probability targets: K = w*a*((1-eps) t + eps/C).
    # Smoothed index targets: K = w*a*eps/C here, plus the (1-eps)*w_t*a_t hard part below.
    eps = label_smoothing
    if target.dtype == torch.int64:
        dense_k: Tensor | float = eps / num_classes
        if class_coef is not None:
            dense_k = _class_view(class_coef * (eps / num_classes), input.dim())
        hard_k = lp_t = None
        if eps != 1.0:
            lp_t = lp.gather(1, target.unsqueeze(1)).squeeze(1)
            hard_k = (1.0 - eps) * (
                class_coef[target] if class_coef is not None else torch.ones_like(lp_t)
            )
    else:
        dense_k = target.to(compute_dtype, copy=True)
        if eps != 0.0:
            dense_k.mul_(1.0 - eps).add_(eps / num_classes)
        if class_coef is not None:
            dense_k.mul_(_class_view(class_coef, input.dim()))
        hard_k = lp_t = None

    modulated = gamma != 0.0
    with_r = modulated and need_grad and not detach_modulator
    p = lp.exp() if need_grad else None
    if modulated:
        omp = torch.expm1(lp).neg_()  # 1 - p without cancellation
        if with_r:  # t = gamma * r - 1, r = p * lp / (1 - p), 0 where p == 1 (see above)
            t = torch.mul(p, lp).div_(omp).nan_to_num_(nan=0.0).mul_(gamma).sub_(1.0)
        km = omp.pow_(gamma).mul_(dense_k)  # k * m, reusing the 1 - p buffer
    else:
        km = dense_k  # m = 1
    loss = lp.mul_(km).sum(1).neg_()  # lp is not needed below: reuse it

    if hard_k is not None:
        assert lp_t is not None
        nl, hard_s, _ = hard_target_terms(lp_t, gamma, detach_modulator)
        loss.sub_(nl.mul_(hard_k))
    if ignored is not None:
        loss.masked_fill_(ignored, 0.0)
    if not need_grad:
        return loss, None

    assert p is not None
    if with_r:
        g = t.mul_(km)
    elif isinstance(km, Tensor) and km.shape == lp.shape:  # a buffer owned here
        g = km.neg_()
    elif isinstance(km, Tensor):  # per-class vector
        g = torch.empty_like(lp).copy_(km).neg_()
    else:
        g = torch.full_like(lp, -km)
    if hard_k is not None:  # g_t += k_t * g_t(hard) = -hard_k * s
        hard_g = hard_k.neg_() if hard_s is None else hard_s.mul_(hard_k).neg_()
        g.scatter_add_(1, target.unsqueeze(1), hard_g.unsqueeze(1))
    # dL/dz = g - p * sum_c g
    g.sub_(p.mul_(g.sum(1, keepdim=True)))
    if ignored is not None:
        scale = (~ignored).to(g.dtype)
        g.mul_((scale if grad_scale is None else scale.mul_(grad_scale)).unsqueeze(1))
    elif grad_scale is not None:
        g.mul_(grad_scale)
    return loss, g


def _hard_forward(
    lp: Tensor,
    target: Tensor,
    class_coef: Tensor | None,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    detach_modulator: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Hard (index) targets without smoothing: all focal factors are per-position scalars."""
    index = target.unsqueeze(1)
    lp_t = lp.gather(1, index).squeeze(1)
    nl, s, q = hard_target_terms(lp_t, gamma, detach_modulator)
    coef = class_coef[target] if class_coef is not None else None
    loss = nl.neg_() if coef is None else nl.mul_(coef).neg_()
    if ignored is not None:
        loss.masked_fill_(ignored, 0.0)
    if not need_grad:
        return loss, None

    # dL/dz = s * (p - onehot(t)) with s = -k_t * g_t >= 0 per position; the target entry
    # s * (p_t - 1) uses q = expm1(lp_t), free of cancellation.
    if s is None:
        s = torch.ones_like(lp_t) if coef is None else coef
    elif coef is not None:
        s.mul_(coef)
    if grad_scale is not None:
        s = s * grad_scale
    if ignored is not None:
        s = s.masked_fill(ignored, 0.0)  # also keeps non-finite values of ignored positions out
    s = s.unsqueeze(1)
    if torch.compiler.is_compiling():
        # One fusable expression for inductor instead of an in-place scatter.
        classes = torch.arange(lp.shape[1], device=lp.device).view(
            (1, -1) + (1,) * (lp.dim() - 2)
        )
        return loss, torch.where(classes == index, q.unsqueeze(1), lp.exp()) * s
    grad = lp.exp_().mul_(s)  # the log-softmax buffer becomes the gradient
    grad.scatter_(1, index, q.unsqueeze(1).mul_(s))
    return loss, grad
