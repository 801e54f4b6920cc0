"""The sigmoid focal loss on the PyTorch backend: closed form, and the differentiable composite."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._spec.sigmoid import SigmoidFocalSpec
from .common import chunk_slices, class_view, finish, focal_modulator, one_hot, reduce_composite
from .softmax import (
    gamma_of_steps,
    integer_schedule,
    poly_factor,
    poly_power,
    schedule_steps,
    scheduled_gamma,
    scheduled_modulator,
    select_gamma,
    stepped_power,
    tensor_power,
)


def forward(spec: SigmoidFocalSpec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The reduced loss of ``spec`` and the gradient of that loss w.r.t. ``spec.input``."""
    loss, grad = sigmoid_focal_forward(
        spec.input,
        spec.target,
        spec.ignored,
        spec.scale,
        _options(spec),
        elementwise=spec.reduction == "none",
        need_grad=need_grad,
    )
    return finish(loss, grad, spec, summed=True)


def _options(spec: SigmoidFocalSpec) -> SigmoidOptions:
    alpha = spec.alpha
    if isinstance(alpha, Tensor) and alpha.dim() == 1:
        alpha = class_view(alpha, spec.input.dim())
    return SigmoidOptions(
        alpha=alpha,
        weight=spec.weight,
        pos_weight=spec.pos_weight,
        gamma=spec.gamma,
        detach_modulator=spec.detach_modulator,
        compute_dtype=spec.compute_dtype,
        thresholds=spec.gamma_thresholds,
        values=spec.gamma_values,
        poly1=spec.poly1_epsilon,
    )


# Per element, with p = sigmoid(x), target t in [0, 1], pos_weight pw (1 when None):
#
#     ce   = pw * t * softplus(-x) + (1 - t) * softplus(x)        (BCE with logits)
#     u    = 1 - p_t = t * (1 - p) + (1 - t) * p,    m = u ** gamma
#     a_t  = alpha * t + (1 - alpha) * (1 - t)                    (1 when alpha is disabled)
#     loss = w * a_t * m * ce
#
# With du/dx = p (1 - p) (1 - 2t) and dce/dx = (1 - t) p - pw t (1 - p):
#
#     dloss/dx = w * a_t * m * (gamma * rho * (1 - 2t) * ce + dce/dx),   rho = p (1 - p) / u
#
# The textbook form has u ** (gamma - 1), infinite at u -> 0 for gamma < 1 (torchvision's NaN
# gradient). Here rho replaces it: p (1 - p) <= u for every t in [0, 1] (the difference is
# (p - t)^2 + t (1 - t) >= 0), so rho lies in [0, 1]; where u = 0 also p (1 - p) = 0 and the
# limit m * rho = 0 is used. 1 - p is sigmoid(-x), and both softplus terms are computed
# directly, so nothing cancels for saturated logits. ``detach_modulator`` drops the
# gamma * rho term.
#
# For class-index targets every element is a negative (t = 0: u = p, rho = 1 - p, ce =
# softplus(x)) except one per position, the target class, which is a positive (t = 1: u = 1 - p,
# rho = p, ce = pw * softplus(-x)). The negatives are computed over the logits, the positives
# per position with a gather, and written over the negatives with a scatter: no one-hot target.
#
# Poly-1 (e = poly1_epsilon) adds w * e * u ** (gamma + 1) (not alpha_t, not pos_weight), whose
# derivative is w * e * (gamma + 1) * u ** gamma * p (1 - p) (1 - 2t): bounded for every
# gamma >= 0 (u ** gamma without gamma + 1 when the modulator is detached). A GammaSchedule
# replaces the number gamma by a per-element tensor chosen from the detached
# p_t = p t + (1 - p)(1 - t); the formulas hold unchanged, gamma being a constant per element.


class SigmoidOptions(NamedTuple):
    alpha: Tensor | float | None  # scalar, or (1, C, 1, ...) per class; None: disabled
    weight: Tensor | None  # expanded to the input's shape (a view)
    pos_weight: Tensor | None  # expanded to the input's shape (a view)
    gamma: float
    detach_modulator: bool
    compute_dtype: torch.dtype
    thresholds: tuple[float, ...] = ()  # a GammaSchedule (gamma is then unused)
    values: tuple[float, ...] = ()
    poly1: float = 0.0


def sigmoid_focal_forward(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    options: SigmoidOptions,
    *,
    elementwise: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Sigmoid focal loss: elementwise loss (or its sum) and the gradient of ``sum(scale * loss)``.

    ``target`` is float of the input's shape, or int64 class indices of the input's shape
    without dim 1 (value C = background; ignored positions already replaced by a valid value
    and flagged in ``ignored``). Returns ``(loss, grad)``: the elementwise loss when
    ``elementwise`` else its sum (0-d), and the gradient or None.
    """
    index = target.dtype == torch.int64
    chunks = chunk_slices(input)
    if len(chunks) == 1:
        loss, grad = _sigmoid_chunk(input, target, ignored, grad_scale, options, need_grad)
        return (loss if elementwise else loss.sum()), grad
    # Elementwise work over cache-sized pieces: only the gradient (and the elementwise loss for
    # reduction="none") is a logits-sized buffer.
    dtype = options.compute_dtype
    loss = input.new_empty(input.shape, dtype=dtype) if elementwise else None
    grad = torch.empty_like(input, dtype=dtype) if need_grad else None
    sums = []
    for xs in chunks:
        ts = xs[:1] + xs[2:] if index else xs
        part_loss, part_grad = _sigmoid_chunk(
            input[xs],
            target[ts],
            None if ignored is None else ignored[xs[:1] + xs[2:]],
            grad_scale,
            _slice_options(options, xs),
            need_grad,
        )
        if loss is not None:
            loss[xs] = part_loss
        else:
            sums.append(part_loss.sum())
        if grad is not None:
            grad[xs] = part_grad
    if loss is None:
        loss = torch.stack(sums).sum()
    return loss, grad


def _slice_options(options: SigmoidOptions, xs: tuple[slice, ...]) -> SigmoidOptions:
    """The options of one piece: per-element tensors are sliced, per-class ones broadcast."""
    return options._replace(
        weight=None if options.weight is None else options.weight[xs],
        pos_weight=None if options.pos_weight is None else options.pos_weight[xs],
    )


def _sigmoid_chunk(
    x: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    opt: SigmoidOptions,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Elementwise loss and scaled gradient of one piece (0 at ignored positions)."""
    x = x.to(opt.compute_dtype)
    if target.dtype == torch.int64:
        loss, grad = _sigmoid_index_terms(x, target, opt, need_grad=need_grad)
    else:
        loss, grad = _sigmoid_float_terms(x, target, opt, need_grad=need_grad)
    if ignored is not None:
        mask = ignored.unsqueeze(1)
        loss = loss.masked_fill(mask, 0.0)
        if grad is not None:
            grad = grad.masked_fill(mask, 0.0)
    if grad is not None and grad_scale is not None:
        grad = grad * grad_scale
    return loss, grad


def _logistic(x: Tensor, neg: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(p, 1 - p, softplus(-x), softplus(x))`` with ``p = sigmoid(x)``, each computed
    directly (no ``1 - p``), so all four stay exact for saturated logits. ``-x`` goes into
    ``neg`` when given (the caller may reuse that buffer afterwards).

    PyTorch's fused ``sigmoid`` and ``softplus`` kernels compute the same values; the Triton
    kernels use the one-exp form."""
    neg = x.neg() if neg is None else torch.neg(x, out=neg)
    return torch.sigmoid(x), torch.sigmoid(neg), F.softplus(neg), F.softplus(x)


def _alpha_factors(alpha: Tensor | float | None) -> tuple[Tensor | float, Tensor | float]:
    """(factor of positives, factor of negatives): (alpha, 1 - alpha), or (1, 1)."""
    if alpha is None:
        return 1.0, 1.0
    return alpha, 1.0 - alpha


def _sigmoid_float_terms(
    x: Tensor, t: Tensor, opt: SigmoidOptions, *, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    t = t.to(x.dtype)
    gamma: float | Tensor = opt.gamma
    p, q, sp_pos, sp_neg = _logistic(x)  # q = 1 - p, sp_pos = -log p, sp_neg = -log(1 - p)
    t_neg = 1.0 - t
    if opt.pos_weight is not None:
        sp_pos.mul_(opt.pos_weight)
    ce = sp_pos.mul_(t).addcmul_(t_neg, sp_neg)
    u = torch.mul(t_neg, p).addcmul_(t, q)  # 1 - p_t
    power = None  # an integer schedule's u ** gamma (see stepped_power)
    if len(opt.thresholds) > 0:  # gamma per element from the detached p_t
        p_t = torch.mul(t, p).addcmul_(t_neg, q)
        if integer_schedule(opt.values):  # sp_neg is free once ce is formed
            steps = schedule_steps(p_t, opt.thresholds, out=p_t)
            power = stepped_power(u, steps, opt.values, out=sp_neg)
            gamma = gamma_of_steps(steps, opt.values, consume=True)
        else:
            gamma = select_gamma(p_t, opt.thresholds, opt.values)
    scheduled = isinstance(gamma, Tensor)
    pos_a, neg_a = _alpha_factors(opt.alpha)
    coef = t * pos_a + t_neg * neg_a if opt.alpha is not None else None
    if opt.weight is not None:
        coef = opt.weight.to(x.dtype) if coef is None else coef.mul_(opt.weight)
    if power is not None:
        m = power
    elif scheduled:
        m = tensor_power(u.clone(), gamma, 0.0 not in opt.values)
    else:
        m = None if gamma == 0.0 else (u.square() if gamma == 2.0 else u.pow(gamma))
    mp = None  # u ** gamma of the Poly-1 term
    if opt.poly1 != 0.0:
        mp = poly_power(u, gamma) if power is None else power.clone()
    wm = m if coef is None else (coef if m is None else m.mul_(coef))  # w * a_t * m
    loss = ce if wm is None else ce * wm
    if mp is not None:  # + e * w * u ** (gamma + 1)
        term = torch.mul(u, mp)
        if opt.weight is not None:
            term.mul_(opt.weight)
        loss = loss.add(term, alpha=opt.poly1)
    if not need_grad:
        return loss, None
    # dce/dx = (1 - t) p - pw t (1 - p)
    pw_t = t if opt.pos_weight is None else t * opt.pos_weight
    dce = torch.mul(t_neg, p).sub_(pw_t * q)
    if (scheduled or gamma != 0.0) and not opt.detach_modulator:
        rho = torch.mul(p, q).div_(u).nan_to_num_(nan=0.0)  # 0/0 where u = 0: limit 0
        dce.addcmul_(rho.mul_(t_neg - t).mul_(gamma), ce)
    grad = dce if wm is None else dce.mul_(wm)
    if mp is not None:  # + A * p (1 - p) (1 - 2t)
        factor = poly_factor(opt.poly1, mp, opt.weight, gamma, opt.detach_modulator)
        grad.addcmul_(factor, p.mul_(q).mul_(t_neg - t))
    return loss, grad


def _negative_terms(
    p: Tensor, q: Tensor, ce: Tensor, gamma: float, opt: SigmoidOptions, *, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Loss and gradient of every element as a negative: ``w * a_neg * p ** gamma * ce``."""
    _, neg_a = _alpha_factors(opt.alpha)
    x_like = p
    wm = None if gamma == 0.0 else (p.square() if gamma == 2.0 else p.pow(gamma))
    owned = wm is not None
    for factor in (neg_a if opt.alpha is not None else None, opt.weight):
        if factor is None:
            continue
        if owned:
            wm.mul_(factor)
        else:
            wm, owned = (factor if wm is None else wm * factor), wm is not None
    if wm is not None and not owned:
        # a fill, not torch.as_tensor(number, device=...): no host-to-device copy
        wm = (wm.to(x_like.dtype) if isinstance(wm, Tensor) else x_like.new_full((), wm)).expand_as(
            x_like
        )
    loss = ce if wm is None else ce * wm
    if not need_grad:
        return loss, None
    grad = p.clone() if gamma == 0.0 or opt.detach_modulator else q.mul_(ce).mul_(gamma).add_(p)
    if wm is not None:
        grad.mul_(wm)
    return loss, grad


def _negative_schedule(
    p: Tensor,
    q: Tensor,
    sp_pos: Tensor,
    ce: Tensor,
    opt: SigmoidOptions,
    steps: list[Tensor] | None,
    *,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """The negatives with a schedule (no Poly-1), in the passes of ``_negative_terms`` plus the
    selection of gamma: ``p ** gamma = exp(-gamma * softplus(-x))`` (``log p`` is at hand), or
    by multiplication for an integer schedule, and the gradient ``(p + q ce gamma) w a p **
    gamma``; ``steps`` are an integer schedule's (from ``q``, a negative's ``p_t``). ``p``,
    ``q``, ``sp_pos`` and the steps are used up."""
    neg_gamma = None
    if steps is not None:
        wm = stepped_power(p, steps, opt.values, out=sp_pos)  # log p is not needed
        if opt.alpha is not None:
            wm.mul_(_alpha_factors(opt.alpha)[1])
    else:
        neg_gamma = select_gamma(q, opt.thresholds, opt.values, sign=-1.0)
        if opt.alpha is None:
            wm = sp_pos.mul_(neg_gamma).exp_()  # p ** gamma
        else:  # (1 - alpha) p ** gamma = exp(log(1 - alpha) - gamma softplus(-x)): one pass less
            alpha = opt.alpha
            if isinstance(alpha, Tensor):
                log_a = torch.log1p(-alpha)
            else:  # a fill, not a host-to-device copy; alpha = 1 gives log 0 = -inf, a factor 0
                log_a = p.new_full((), math.log1p(-alpha) if alpha < 1.0 else -math.inf)
            wm = torch.addcmul(log_a, sp_pos, neg_gamma).exp_()
    if opt.weight is not None:
        wm.mul_(opt.weight)
    loss = ce * wm
    if not need_grad:
        return loss, None
    if opt.detach_modulator:
        return loss, p.mul_(wm)
    if neg_gamma is None:  # the integer schedule's gamma, from its steps
        gamma = gamma_of_steps(steps, opt.values, consume=True)  # type: ignore[arg-type]
        return loss, q.mul_(ce).mul_(gamma).add_(p).mul_(wm)
    return loss, p.sub_(q.mul_(ce).mul_(neg_gamma)).mul_(wm)


def _negative_extras(
    p: Tensor,
    q: Tensor,
    sp_pos: Tensor,
    ce: Tensor,
    gamma: float | Tensor,
    opt: SigmoidOptions,
    *,
    need_grad: bool,
    power: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The negatives with a schedule or Poly-1, with ``m = w * p ** gamma``:

    ``loss = m * (a ce + e p)``, ``grad = m * (q * (a gamma ce + e (gamma + 1) p) + a p)``
    (``m * p * (a + e q)`` when the modulator is detached or gamma is 0). A schedule's
    ``p ** gamma`` is ``power`` when given (an integer schedule's, owned), else
    ``exp(-gamma * softplus(-x))``: ``log p`` is at hand."""
    e = opt.poly1
    scheduled = isinstance(gamma, Tensor)
    if power is not None:
        m: Tensor | None = power
    elif scheduled:
        m = sp_pos.mul_(gamma).neg_().exp_()
    elif gamma == 0.0:
        m = None
    else:
        m = p.square() if gamma == 2.0 else p.pow(gamma)
    if opt.weight is not None:
        m = opt.weight if m is None else m.mul_(opt.weight)
    a = None if opt.alpha is None else _alpha_factors(opt.alpha)[1]
    inner = ce.clone() if a is None else ce * a
    if e != 0.0:
        inner.add_(p, alpha=e)
    loss = inner if m is None else inner.mul_(m)
    if not need_grad:
        return loss, None
    focal = scheduled or gamma != 0.0
    if focal and not opt.detach_modulator:
        if a is None or isinstance(a, Tensor) or isinstance(gamma, Tensor):
            grad = ce * gamma
            if a is not None:
                grad.mul_(a)
        else:
            grad = ce * (gamma * a)  # one pass for two numbers
        if e != 0.0:
            if scheduled:
                grad.addcmul_(p, gamma, value=e).add_(p, alpha=e)
            else:
                grad.add_(p, alpha=e * (gamma + 1.0))
        grad.mul_(q)
        if a is None:
            grad.add_(p)
        elif isinstance(a, Tensor):
            grad.addcmul_(p, a)
        else:
            grad.add_(p, alpha=a)
    else:
        grad = p.clone() if a is None else p * a
        if e != 0.0:
            grad.addcmul_(p, q, value=e)
    return loss, grad if m is None else grad.mul_(m)


def _sigmoid_index_terms(
    x: Tensor, target: Tensor, opt: SigmoidOptions, *, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    gamma: float | Tensor = opt.gamma
    num_classes = x.shape[1]
    pos_a, _ = _alpha_factors(opt.alpha)
    # Negatives (t = 0) everywhere: u = p, rho = 1 - p, ce = softplus(x), dce/dx = p.
    scheduled = len(opt.thresholds) > 0
    focal = scheduled or gamma != 0.0
    steps = None  # an integer schedule's steps at a negative's p_t = 1 - p
    if scheduled and integer_schedule(opt.values):
        scratch = torch.empty_like(x)  # -x, then the last step
        p, q, sp_pos, ce = _logistic(x, scratch)
        steps = schedule_steps(q, opt.thresholds, out=scratch)
    else:
        p, q, sp_pos, ce = _logistic(x)
    if scheduled and opt.poly1 == 0.0:
        loss, grad = _negative_schedule(p, q, sp_pos, ce, opt, steps, need_grad=need_grad)
    else:
        power = None
        if steps is not None:
            power = stepped_power(p, steps, opt.values, out=sp_pos)  # log p is not needed
            gamma = gamma_of_steps(steps, opt.values, consume=True)
        elif scheduled:
            gamma = select_gamma(q, opt.thresholds, opt.values)
        if opt.poly1 != 0.0:
            loss, grad = _negative_extras(
                p, q, sp_pos, ce, gamma, opt, need_grad=need_grad, power=power
            )
        else:
            loss, grad = _negative_terms(p, q, ce, gamma, opt, need_grad=need_grad)

    # Positives: the target class of each position (value C = background has none).
    is_pos = target < num_classes
    idx = target.clamp(max=num_classes - 1).unsqueeze(1)
    x_t = x.gather(1, idx)
    p_t, q_t, ce_t, _ = _logistic(x_t)
    gamma_t = gamma
    power_t = None  # an integer schedule's (1 - p_t) ** gamma
    if scheduled and integer_schedule(opt.values):
        steps_t = schedule_steps(p_t, opt.thresholds)
        power_t = stepped_power(q_t, steps_t, opt.values)
        gamma_t = gamma_of_steps(steps_t, opt.values, consume=True)
    elif scheduled:
        gamma_t = select_gamma(p_t, opt.thresholds, opt.values)
    pw_t = None if opt.pos_weight is None else opt.pos_weight.gather(1, idx).to(x.dtype)
    if pw_t is not None:
        ce_t = ce_t * pw_t
    if power_t is not None:
        wm_t = power_t
    elif scheduled:
        wm_t = tensor_power(q_t.clone(), gamma_t, 0.0 not in opt.values)
    else:
        wm_t = None if gamma == 0.0 else (q_t.square() if gamma == 2.0 else q_t.pow(gamma))
    if opt.alpha is not None:
        a_t = pos_a.expand_as(x).gather(1, idx) if isinstance(pos_a, Tensor) else pos_a
        wm_t = a_t if wm_t is None else wm_t * a_t
    w_t = None
    if opt.weight is not None:
        w_t = opt.weight.gather(1, idx).to(x.dtype)
        wm_t = w_t if wm_t is None else wm_t * w_t
    pos = is_pos.unsqueeze(1)
    loss_t = ce_t if wm_t is None else ce_t * wm_t
    poly_grad_t = None
    if opt.poly1 != 0.0:  # e * w * (1 - p) ** (gamma + 1); its derivative -A * p (1 - p)
        mp_t = poly_power(q_t, gamma_t) if power_t is None else power_t.clone()
        term_t = torch.mul(q_t, mp_t)
        if w_t is not None:
            term_t.mul_(w_t)
        loss_t = loss_t + opt.poly1 * term_t
        if need_grad:
            factor_t = poly_factor(opt.poly1, mp_t, w_t, gamma_t, opt.detach_modulator)
            poly_grad_t = factor_t.mul_(p_t).mul_(q_t).neg_()
    loss.scatter_(1, idx, torch.where(pos, loss_t, loss.gather(1, idx)))
    if grad is None:
        return loss, None
    # dce/dx = -pw (1 - p); the modulator adds -gamma * p * ce (rho = p, 1 - 2t = -1).
    grad_t = q_t if pw_t is None else q_t * pw_t
    if focal and not opt.detach_modulator:
        grad_t = grad_t + gamma_t * p_t * ce_t
    grad_t = grad_t.neg_() if wm_t is None else grad_t.mul_(wm_t).neg_()
    if poly_grad_t is not None:
        grad_t = grad_t + poly_grad_t
    grad.scatter_(1, idx, torch.where(pos, grad_t, grad.gather(1, idx)))
    return loss, grad


def composite(spec: SigmoidFocalSpec, input: Tensor) -> Tensor:
    """The sigmoid focal loss of ``spec``, reduced, from differentiable operations at
    ``input`` (index targets hold C, the background, at ignored positions)."""
    options, target, ignored = _options(spec), spec.target, spec.ignored
    x = input.to(options.compute_dtype)
    if ignored is not None:  # whatever ignored positions hold (NaN, inf) must not reach autograd
        x = torch.where(ignored.unsqueeze(1), 0.0, x)
    index = target.dtype == torch.int64  # class C (background) matches no output
    t = one_hot(target, x.shape[1], x.dtype) if index else target.to(x.dtype)
    # BCE from softplus terms, not F.binary_cross_entropy_with_logits: its backward,
    # sigmoid(x) - t, cancels to 0 for saturated x, where the exact derivative is 1 - p.
    positive = F.softplus(-x) if options.pos_weight is None else options.pos_weight * F.softplus(-x)
    ce = t * positive + (1.0 - t) * F.softplus(x)
    u = t * torch.sigmoid(-x) + (1.0 - t) * torch.sigmoid(x)  # 1 - p_t
    gamma: float | Tensor = options.gamma
    if len(options.thresholds) > 0:  # a constant of each element, from the detached p_t
        p_t = (t * torch.sigmoid(x) + (1.0 - t) * torch.sigmoid(-x)).detach()
        gamma = scheduled_gamma(p_t, options.thresholds, options.values)
        m = scheduled_modulator(u, gamma, options.detach_modulator)
    else:
        m = focal_modulator(u, options.gamma, options.detach_modulator)
    loss = ce if m is None else m * ce
    if options.alpha is not None:
        loss = (options.alpha * t + (1.0 - options.alpha) * (1.0 - t)) * loss
    if options.poly1 != 0.0:  # not multiplied by alpha; by weight (below)
        detach = options.detach_modulator
        term = u.pow(gamma).detach() * u if detach else u.pow(gamma + 1.0)
        loss = loss + options.poly1 * term
    if options.weight is not None:
        loss = options.weight * loss
    if ignored is not None:
        loss = torch.where(ignored.unsqueeze(1), 0.0, loss)
    return reduce_composite(loss, spec)
