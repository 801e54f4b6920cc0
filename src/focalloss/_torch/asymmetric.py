"""The asymmetric loss on the PyTorch backend: closed form, and the differentiable composite.

Per element, with ``p = sigmoid(x)``, ``q = 1 - p = sigmoid(-x)``, the shifted probability
``p_m = max(p - clip, 0)`` and target ``t`` in [0, 1]::

    A = q^gp * softplus(-x)                    (-log p = softplus(-x))
    B = p_m^gn * (-log(1 - p_m))                (clip > 0; 1 - p_m = q + clip where p_m > 0)
    B = p^gn * softplus(x)                      (clip = 0: -log(1 - p) = softplus(x))
    loss = t * A + (1 - t) * B

No eps clamp anywhere: ``softplus`` is exact for saturated logits, and with ``clip > 0`` the
negative log is at most ``-log(clip)``. Derivatives (``dp/dx = p q``, ``dq/dx = -p q``)::

    dA/dx = -q^gp * (q + gp * p * softplus(-x))
    dB/dx = p q * p_m^(gn - 1) * (gn * nce + p_m / (q + clip))       (clip > 0, gn >= 1)
          = p q * p_m^gn * (gn * nce / p_m + 1 / (q + clip)) [p_m > 0]  (clip > 0, gn < 1)
    dB/dx = p^gn * (p + gn * q * softplus(x))                          (clip = 0)

with ``nce = -log(1 - p_m)``. The textbook ``q^(gp - 1)`` and ``p^(gn - 1)`` (infinite at 0
for exponents below 1) cancel against ``dq/dx`` and ``dp/dx``; ``nce / p_m`` lies in
``[1, -log(clip) / (1 - clip)]``. ``detach_modulator`` drops the terms that differentiate the
modulators (the ``gp`` and ``gn`` terms).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._spec.classification import AsymmetricSpec
from .common import finish, focal_modulator, one_hot, reduce_composite
from .elementwise import elementwise_forward, scatter_positives, softplus


def forward(spec: AsymmetricSpec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The reduced loss of ``spec`` and the gradient of that loss w.r.t. ``spec.input``."""
    gp, gn, clip, detach = spec.gamma_pos, spec.gamma_neg, spec.clip, spec.detach_modulator

    def terms(x: Tensor, target: Tensor, need: bool) -> tuple[Tensor, Tensor | None]:
        if target.is_floating_point():
            return _float_terms(x, target.to(x.dtype), gp, gn, clip, detach, need)
        p = torch.sigmoid(x)
        q = torch.sigmoid(x.neg()) if need else None
        loss, grad = _negative(x, p, q, gn, clip, detach, need)

        def positive(x_t: Tensor) -> tuple[Tensor, Tensor | None]:
            neg = x_t.neg()
            return _positive(
                torch.sigmoid(x_t), torch.sigmoid(neg), softplus(neg), gp, detach, need
            )

        scatter_positives(loss, grad, target, positive, x)
        return loss, grad

    loss, grad = elementwise_forward(spec, terms, need_grad)
    return finish(loss, grad, spec, summed=True)


def _power(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` as a fresh tensor (``exponent > 0``)."""
    if exponent == 1.0:
        return base.clone()
    if exponent == 2.0:
        return base.square()
    if exponent == 3.0:
        return base.square().mul_(base)
    if exponent == 4.0:
        return base.square().square_()
    return base.pow(exponent)


def _positive(
    p: Tensor,
    q: Tensor,
    sp: Tensor,
    gp: float,
    detach: bool,
    need_grad: bool,
    owns_q: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``A = q^gp softplus(-x)`` and ``dA/dx`` from ``p``, ``q = 1 - p``, ``sp = -log p``
    (``sp`` is consumed; ``q`` too when ``owns_q``; ``p`` is only read)."""
    if gp == 0.0:
        if not need_grad:
            return sp, None
        return sp, (q.neg_() if owns_q else q.neg())
    m = _power(q, gp)
    if not need_grad:
        return sp.mul_(m), None
    if detach:
        return sp.mul_(m), q.mul(m).neg_()
    grad = torch.mul(p, sp).mul_(gp).add_(q).mul_(m).neg_()  # -(q + gp p sp) q^gp
    return sp.mul_(m), grad


def _negative(
    x: Tensor, p: Tensor, q: Tensor | None, gn: float, clip: float, detach: bool, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """``B`` and ``dB/dx`` from ``p`` (consumed) and ``q = 1 - p`` (only read; None when
    ``clip > 0`` and no gradient is needed)."""
    if clip == 0.0:
        sp = softplus(x)  # -log(1 - p)
        if gn == 0.0:
            return sp, (p if need_grad else None)
        m = _power(p, gn)
        loss = torch.mul(sp, m)
        if not need_grad:
            return loss, None
        if detach:
            return loss, p.mul_(m)
        assert q is not None
        return loss, sp.mul_(q).mul_(gn).add_(p).mul_(m)  # p^gn (p + gn q softplus(x))
    pm = torch.sub(p, clip).clamp_(min=0.0)
    nce = torch.neg(pm).log1p_().neg_()  # -log(1 - p_m): 0 where p <= clip
    m1 = None  # p_m^(gn - 1) for gn > 1
    if gn == 0.0:
        loss = nce
    elif gn == 1.0:
        loss = torch.mul(nce, pm)
    elif gn > 1.0:
        m1 = _power(pm, gn - 1.0)
        loss = torch.mul(nce, m1).mul_(pm)
    else:
        loss = torch.mul(nce, _power(pm, gn))
    if not need_grad:
        return loss, None
    assert q is not None
    pq = p.mul_(q)
    qc = torch.add(q, clip)  # 1 - p_m where p_m > 0
    if gn >= 1.0 and not detach:
        # p q p_m^(gn - 1) (gn nce + p_m / (q + clip)): 0 where p_m = 0 (nce = p_m = 0)
        grad = torch.div(pm, qc, out=qc).add_(nce, alpha=gn).mul_(pq)
        return loss, (grad if m1 is None else grad.mul_(m1))
    # gn < 1, or the modulator detached: p q p_m^gn (gn nce / p_m + 1 / (q + clip)) [p_m > 0]
    inner = qc.reciprocal_()
    if gn != 0.0 and not detach:
        inner.add_(torch.div(nce, pm).nan_to_num_(nan=0.0), alpha=gn)  # 0/0 where p_m = 0
    if gn != 0.0:
        inner.mul_(_power(pm, gn))
    return loss, inner.mul_(pq).masked_fill_(pm == 0, 0.0)


def _float_terms(
    x: Tensor, t: Tensor, gp: float, gn: float, clip: float, detach: bool, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """``t A + (1 - t) B`` and its derivative; ``p``, ``q`` and ``-log p`` computed once."""
    neg = x.neg()
    q = torch.sigmoid(neg)
    sp_pos = softplus(neg)  # -log p
    p = torch.sigmoid(x)
    if gp == 0.0:  # the positive part needs only q (taken last, in place)
        loss, grad = _negative(x, p, q, gn, clip, detach, need_grad)
        loss_pos, grad_pos = _positive(p, q, sp_pos, gp, detach, need_grad)
    else:  # the positive part reads p, which the negative part consumes
        loss_pos, grad_pos = _positive(p, q, sp_pos, gp, detach, need_grad, owns_q=False)
        loss, grad = _negative(x, p, q, gn, clip, detach, need_grad)
    loss = loss.lerp_(loss_pos, t)  # t A + (1 - t) B
    if grad is not None:
        assert grad_pos is not None
        grad = grad.lerp_(grad_pos, t)
    return loss, grad


def composite(spec: AsymmetricSpec, input: Tensor) -> Tensor:
    """The asymmetric loss of ``spec``, reduced, from differentiable operations at ``input``."""
    target, ignored = spec.target, spec.ignored
    x = input.to(spec.compute_dtype)
    if ignored is not None:  # whatever ignored positions hold (NaN, inf) must not reach autograd
        x = torch.where(ignored.unsqueeze(1), 0.0, x)
    index = not target.is_floating_point()
    t = one_hot(target, x.shape[1], x.dtype) if index else target.to(x.dtype)
    detach = spec.detach_modulator
    positive = softplus(-x)
    m_pos = focal_modulator(torch.sigmoid(-x), spec.gamma_pos, detach)
    if m_pos is not None:
        positive = m_pos * positive
    if spec.clip == 0.0:
        shifted = torch.sigmoid(x)
        negative = softplus(x)
    else:
        p = torch.sigmoid(x)
        above = p > spec.clip
        shifted = torch.where(above, p - spec.clip, 0.0)
        negative = -torch.log1p(-shifted)
    m_neg = focal_modulator(shifted, spec.gamma_neg, detach)
    if m_neg is not None:
        negative = m_neg * negative
    loss = t * positive + (1.0 - t) * negative
    if spec.weight is not None:
        loss = spec.weight * loss
    if ignored is not None:
        loss = torch.where(ignored.unsqueeze(1), 0.0, loss)
    return reduce_composite(loss, spec)
