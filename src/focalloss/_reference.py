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

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class HardGradParts(NamedTuple):
    """What the hard-target gradient ``s * (p - onehot(t))`` is built from, per position.

    Used under ``torch.compile``: saving these (the logits are alive anyway) instead of a
    logits-sized gradient lets inductor fuse the gradient, its ``grad_output`` scaling and its
    cast into one kernel that reads the logits once and writes the gradient once.
    """

    x: Tensor  # (N, C, *) logits in the compute dtype
    lse: Tensor  # (N, 1, *) logsumexp over classes
    index: Tensor  # (N, 1, *) target class
    q: Tensor  # (N, 1, *) p_t - 1, from expm1(lp_t)
    s: Tensor  # (N, 1, *) gradient scale, >= 0, 0 at ignored positions

    def gradient(self, scale: Tensor | None = None) -> Tensor:
        """``s * scale * (p - onehot(t))``; ``scale`` is 0-d or broadcasts like ``s``."""
        classes = torch.arange(self.x.shape[1], device=self.x.device)
        classes = classes.view((1, -1) + (1,) * (self.x.dim() - 2))
        p = torch.exp(self.x - self.lse)
        s = self.s if scale is None else self.s * scale
        # s = 0 (ignored positions) gives exactly 0, also where the logits are NaN or inf.
        return torch.where(s == 0, 0.0, torch.where(classes == self.index, self.q, p) * s)


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
    m = q.square() if gamma == 2.0 else (q.neg() if gamma == 1.0 else q.neg().pow_(gamma))
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
    rows = input.movedim(1, -1)
    if input.dim() > 2 and rows.is_contiguous() and not torch.compiler.is_compiling():
        # Classes innermost in memory (channels_last and the like): the same computation over
        # (positions, C) rows of a view reads the logits in place, and the gradient comes back
        # in the input's layout (no copy by log_softmax, none by autograd for a leaf).
        num_classes = input.shape[1]
        probabilities = target.dim() == input.dim()
        flat_target = target.movedim(1, -1) if probabilities else target
        loss, grad = softmax_focal_forward(
            rows.view(-1, num_classes),
            flat_target.reshape((-1, num_classes) if probabilities else (-1,)),
            class_coef=class_coef,
            ignored=None if ignored is None else ignored.reshape(-1),
            grad_scale=grad_scale,
            gamma=gamma,
            label_smoothing=label_smoothing,
            detach_modulator=detach_modulator,
            need_grad=need_grad,
            compute_dtype=compute_dtype,
        )
        grad = None if grad is None else grad.view(rows.shape).movedim(-1, 1)
        return loss.view(rows.shape[:-1]), grad
    if target.dtype == torch.int64 and label_smoothing == 0.0:
        return _hard_forward(
            input,
            target,
            class_coef,
            ignored,
            grad_scale,
            gamma,
            detach_modulator,
            need_grad,
            compute_dtype,
        )
    options = dict(
        class_coef=class_coef,
        grad_scale=grad_scale,
        gamma=gamma,
        eps=label_smoothing,
        detach_modulator=detach_modulator,
        compute_dtype=compute_dtype,
    )
    chunks = _chunk_slices(input)
    if len(chunks) == 1:
        return _dense_forward(input, target, ignored, need_grad=need_grad, **options)
    # Dense targets touch every logit several times: run them over cache-sized pieces so the
    # temporaries stay in cache and only the gradient is a logits-sized buffer.
    probabilities = target.dim() == input.dim()
    loss = input.new_empty(input.shape[:1] + input.shape[2:], dtype=compute_dtype)
    grad = torch.empty_like(input, dtype=compute_dtype) if need_grad else None
    for xs in chunks:
        ps = xs if probabilities else xs[:1] + xs[2:]
        part_loss, _ = _dense_forward(
            input[xs],
            target[ps],
            None if ignored is None else ignored[xs[:1] + xs[2:]],
            need_grad=need_grad,
            out=None if grad is None else grad[xs],
            **options,
        )
        loss[xs[:1] + xs[2:]] = part_loss
    return loss, grad


_CHUNK_ELEMENTS = 1 << 18


def _chunk_slices(input: Tensor) -> list[tuple[slice, ...]]:
    """Index tuples that split ``(N, C, *)`` along N, then along dim 2, into cache-sized parts."""
    total = input.numel()
    if total <= 2 * _CHUNK_ELEMENTS or torch.compiler.is_compiling():
        return [(slice(None),)]
    per_row = total // input.shape[0]
    if per_row <= _CHUNK_ELEMENTS or input.dim() < 3:
        step = max(1, _CHUNK_ELEMENTS // per_row)
        return [(slice(n, n + step),) for n in range(0, input.shape[0], step)]
    per_slab = per_row // input.shape[2]
    step = max(1, _CHUNK_ELEMENTS // per_slab)
    return [
        (slice(n, n + 1), slice(None), slice(d, d + step))
        for n in range(input.shape[0])
        for d in range(0, input.shape[2], step)
    ]


def _dense_forward(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    *,
    class_coef: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    eps: float,
    detach_modulator: bool,
    compute_dtype: torch.dtype,
    need_grad: bool,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Probability targets, or smoothed class indices: ``k_c`` is non-zero for every class.

    Writes ``k = K_dense + onehot(t) * hard_k``, where ``K_dense = w*a*((1-eps)*target + eps/C)``
    for probabilities and ``w*a*eps/C`` for indices, whose target class adds
    ``hard_k = (1 - eps) * w_t * a_t``. With ``ng = -g`` (see the module docstring) the gradient
    is ``p * sum_c ng - ng``; it is written into ``out`` when given. At most four buffers of the
    input's size live at once (the caller passes cache-sized pieces).
    """
    num_classes, ndim = input.shape[1], input.dim()
    wa = None if class_coef is None else _class_view(class_coef, ndim)
    lp = torch.log_softmax(input, dim=1, dtype=compute_dtype)

    index = target.unsqueeze(1) if target.dtype == torch.int64 else None
    if index is not None:
        dense_k: Tensor | float = eps / num_classes if wa is None else wa * (eps / num_classes)
    else:
        dense_k = target.to(compute_dtype, copy=True)
        if eps != 0.0:
            dense_k.mul_(1.0 - eps).add_(eps / num_classes)
        if wa is not None:
            dense_k.mul_(wa)

    with_r = gamma != 0.0 and need_grad and not detach_modulator
    p = None
    if gamma != 0.0:
        km = torch.expm1(lp)  # p - 1, exact near p = 1
        if with_r:  # 1 - gamma * r, with -r = p * lp / (p - 1), 0 where it is 0/0 (see above)
            p = lp.exp()  # kept for the gradient
            c = torch.mul(p, lp).div_(km).nan_to_num_(nan=0.0).mul_(gamma).add_(1.0)
        km.neg_()
        if gamma != 1.0:
            km.pow_(gamma)
        km.mul_(dense_k)  # k * m
    else:
        km = dense_k  # m = 1
    if with_r:
        ng = c.mul_(km)  # -g = k * m * (1 - gamma * r)
        loss = km.mul_(lp).sum(1).neg_()
    else:
        ng = km  # -g = k * m
        loss = (lp * km).sum(1).neg_()
        if loss.dim() < ndim - 1:  # k * m was a per-class vector: broadcast the sum
            loss = loss.expand(lp.shape[:1] + lp.shape[2:]).clone()

    hard_ng = None
    if index is not None and eps != 1.0:
        lp_t = lp.gather(1, index).squeeze(1)
        hard_k = (1.0 - eps) * (
            class_coef[target] if class_coef is not None else torch.ones_like(lp_t)
        )
        nl, hard_s, _ = hard_target_terms(lp_t, gamma, detach_modulator)
        loss.sub_(nl.mul_(hard_k))
        hard_ng = hard_k if hard_s is None else hard_s.mul_(hard_k)
    unfinished = None
    if ignored is not None:
        unfinished = _nonfinite_ignored(loss, ignored) if need_grad else None
        loss.masked_fill_(ignored, 0.0)
    if not need_grad:
        return loss, None

    # dL/dz = p * S - ng with S = sum_c ng (the hard part adds hard_ng at the target class),
    # each position scaled by its share of the reduction (0 where ignored).
    total = ng.sum(1) if isinstance(ng, Tensor) else lp.new_tensor(ng * num_classes)
    if hard_ng is not None:
        total = hard_ng + total
    scale = grad_scale
    if ignored is not None:
        scale = (~ignored).to(lp.dtype)
        scale = scale if grad_scale is None else scale.mul_(grad_scale)
    if scale is not None:
        total = total * scale
        class_scale = scale.unsqueeze(1) if scale.dim() else scale
        if isinstance(ng, Tensor) and ng.shape == lp.shape:
            ng = ng.mul_(class_scale)
        else:
            ng = ng * class_scale
        if hard_ng is not None:
            hard_ng = hard_ng * scale
    p = lp.exp_() if p is None else p
    p.mul_(total.unsqueeze(1) if total.dim() else total)
    grad = torch.sub(p, ng, out=out) if out is not None else p.sub_(ng)
    if hard_ng is not None:
        grad.scatter_add_(1, index, hard_ng.neg().unsqueeze(1))
    if unfinished is not None:
        _zero_ignored_rows_(grad, unfinished)
    return loss, grad


def _nonfinite_ignored(values: Tensor, ignored: Tensor) -> Tensor | None:
    """Ignored positions whose per-position ``values`` are not finite (None: certainly none).

    In eager mode on the CPU one reduction usually settles it: a finite sum means every value
    is finite (inf - inf is NaN). Elsewhere the mask is built without reading it on the host.
    """
    eager_cpu = not torch.compiler.is_compiling() and values.device.type == "cpu"
    if eager_cpu and math.isfinite(values.sum().item()):
        return None
    return ignored & ~torch.isfinite(values)


def _zero_ignored_rows_(grad: Tensor, rows: Tensor) -> Tensor:
    """Zero the gradient of ``rows``: ignored positions whose logits are not finite.

    An ignored position's gradient is its terms times a zero scale, which leaves NaN where its
    logits are NaN or infinite (0 * NaN). ``rows`` flags every such position (a superset: a
    non-finite logit makes the position's log-softmax, hence its loss or ``lp_t``, non-finite).
    In eager mode on the CPU the fill runs only when there is one; elsewhere it runs
    unconditionally rather than synchronise with the host to find out (under ``torch.compile``
    it fuses into the gradient's kernel).
    """
    if torch.compiler.is_compiling() or grad.device.type != "cpu" or bool(rows.any()):
        grad.masked_fill_(rows.unsqueeze(1), 0.0)
    return grad


def _hard_forward(
    input: Tensor,
    target: Tensor,
    class_coef: Tensor | None,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    detach_modulator: bool,
    need_grad: bool,
    compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """Hard (index) targets without smoothing: all focal factors are per-position scalars."""
    index = target.unsqueeze(1)
    compiling = torch.compiler.is_compiling()
    if compiling:
        # For inductor: a logsumexp reduction and one fused gradient expression that reads the
        # logits again, instead of a materialised log-softmax buffer.
        x = input.to(compute_dtype)
        lse = torch.logsumexp(x, dim=1, keepdim=True)
        lp_t = (x.gather(1, index) - lse).squeeze(1)
    else:
        lp = torch.log_softmax(input, dim=1, dtype=compute_dtype)
        lp_t = lp.gather(1, index).squeeze(1)
    unfinished = None
    if ignored is not None and need_grad:
        unfinished = _nonfinite_ignored(lp_t, ignored)
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
    if compiling:  # the gradient is built in backward, where grad_output joins ``s``
        return loss, HardGradParts(x, lse, index, q.unsqueeze(1), s)
    grad = lp.exp_().mul_(s)  # the log-softmax buffer becomes the gradient
    grad.scatter_(1, index, q.unsqueeze(1).mul_(s))
    if unfinished is not None:
        _zero_ignored_rows_(grad, unfinished)
    return loss, grad


# --------------------------------------------------------------------------------------------
# Sigmoid focal loss
# --------------------------------------------------------------------------------------------
#
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


class SigmoidOptions(NamedTuple):
    alpha: Tensor | float | None  # scalar, or (1, C, 1, ...) per class; None: disabled
    weight: Tensor | None  # expanded to the input's shape (a view)
    pos_weight: Tensor | None  # expanded to the input's shape (a view)
    gamma: float
    detach_modulator: bool
    compute_dtype: torch.dtype


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
    chunks = _chunk_slices(input)
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


def _logistic(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(p, 1 - p, softplus(-x), softplus(x))`` with ``p = sigmoid(x)``, from one ``exp`` and
    one ``log1p``: with ``e = exp(-|x|)`` (never overflows), ``softplus(+-x) = relu(+-x) +
    log1p(e)`` and ``sigmoid(|x|) = 1 / (1 + e)``, ``sigmoid(-|x|) = e / (1 + e)``. Each value
    is computed directly (no ``1 - p``), so all four stay exact for saturated logits.

    That form is for inductor, which fuses it into one kernel; eager PyTorch runs fewer, fused
    kernels with ``sigmoid`` and ``softplus`` (the same values)."""
    if not torch.compiler.is_compiling():
        neg = x.neg()
        return torch.sigmoid(x), torch.sigmoid(neg), F.softplus(neg), F.softplus(x)
    e = torch.exp(-x.abs())
    log_term = torch.log1p(e)
    big = torch.reciprocal(1.0 + e)  # sigmoid(|x|)
    small = e * big  # sigmoid(-|x|)
    positive = x >= 0
    p = torch.where(positive, big, small)
    q = torch.where(positive, small, big)
    return p, q, torch.relu(-x) + log_term, torch.relu(x) + log_term


def _alpha_factors(alpha: Tensor | float | None) -> tuple[Tensor | float, Tensor | float]:
    """(factor of positives, factor of negatives): (alpha, 1 - alpha), or (1, 1)."""
    if alpha is None:
        return 1.0, 1.0
    return alpha, 1.0 - alpha


def _sigmoid_float_terms(
    x: Tensor, t: Tensor, opt: SigmoidOptions, *, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    t = t.to(x.dtype)
    gamma = opt.gamma
    p, q, sp_pos, sp_neg = _logistic(x)  # q = 1 - p, sp_pos = -log p, sp_neg = -log(1 - p)
    t_neg = 1.0 - t
    if opt.pos_weight is not None:
        sp_pos.mul_(opt.pos_weight)
    ce = sp_pos.mul_(t).addcmul_(t_neg, sp_neg)
    u = torch.mul(t_neg, p).addcmul_(t, q)  # 1 - p_t
    pos_a, neg_a = _alpha_factors(opt.alpha)
    coef = t * pos_a + t_neg * neg_a if opt.alpha is not None else None
    if opt.weight is not None:
        coef = opt.weight.to(x.dtype) if coef is None else coef.mul_(opt.weight)
    m = None if gamma == 0.0 else (u.square() if gamma == 2.0 else u.pow(gamma))
    wm = m if coef is None else (coef if m is None else m.mul_(coef))  # w * a_t * m
    loss = ce if wm is None else ce * wm
    if not need_grad:
        return loss, None
    # dce/dx = (1 - t) p - pw t (1 - p)
    pw_t = t if opt.pos_weight is None else t * opt.pos_weight
    dce = torch.mul(t_neg, p).sub_(pw_t * q)
    if gamma != 0.0 and not opt.detach_modulator:
        rho = torch.mul(p, q).div_(u).nan_to_num_(nan=0.0)  # 0/0 where u = 0: limit 0
        dce.addcmul_(rho.mul_(t_neg - t).mul_(gamma), ce)
    return loss, dce if wm is None else dce.mul_(wm)


def _sigmoid_index_terms(
    x: Tensor, target: Tensor, opt: SigmoidOptions, *, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    gamma = opt.gamma
    num_classes = x.shape[1]
    pos_a, neg_a = _alpha_factors(opt.alpha)
    # Negatives (t = 0) everywhere: u = p, rho = 1 - p, ce = softplus(x), dce/dx = p.
    p, q, _, ce = _logistic(x)
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
        wm = torch.as_tensor(wm, dtype=x.dtype, device=x.device).expand_as(x)
    loss = ce if wm is None else ce * wm
    grad = None
    if need_grad:
        grad = p.clone() if gamma == 0.0 or opt.detach_modulator else None
        if grad is None:
            grad = q.mul_(ce).mul_(gamma).add_(p)
        if wm is not None:
            grad.mul_(wm)

    # Positives: the target class of each position (value C = background has none).
    is_pos = target < num_classes
    idx = target.clamp(max=num_classes - 1).unsqueeze(1)
    x_t = x.gather(1, idx)
    p_t, q_t, ce_t, _ = _logistic(x_t)
    pw_t = None if opt.pos_weight is None else opt.pos_weight.gather(1, idx).to(x.dtype)
    if pw_t is not None:
        ce_t = ce_t * pw_t
    wm_t = None if gamma == 0.0 else (q_t.square() if gamma == 2.0 else q_t.pow(gamma))
    if opt.alpha is not None:
        a_t = pos_a.expand_as(x).gather(1, idx) if isinstance(pos_a, Tensor) else pos_a
        wm_t = a_t if wm_t is None else wm_t * a_t
    if opt.weight is not None:
        w_t = opt.weight.gather(1, idx).to(x.dtype)
        wm_t = w_t if wm_t is None else wm_t * w_t
    pos = is_pos.unsqueeze(1)
    loss_t = ce_t if wm_t is None else ce_t * wm_t
    loss.scatter_(1, idx, torch.where(pos, loss_t, loss.gather(1, idx)))
    if grad is None:
        return loss, None
    # dce/dx = -pw (1 - p); the modulator adds -gamma * p * ce (rho = p, 1 - 2t = -1).
    grad_t = q_t if pw_t is None else q_t * pw_t
    if gamma != 0.0 and not opt.detach_modulator:
        grad_t = grad_t + gamma * p_t * ce_t
    grad_t = grad_t.neg_() if wm_t is None else grad_t.mul_(wm_t).neg_()
    grad.scatter_(1, idx, torch.where(pos, grad_t, grad.gather(1, idx)))
    return loss, grad


# --------------------------------------------------------------------------------------------
# Differentiable composites: the same losses from plain autograd operations
# --------------------------------------------------------------------------------------------
#
# The closed-form paths above compute the gradient themselves, which autograd cannot
# differentiate again. These composites state the same loss with ordinary differentiable
# operations, for what needs a graph of the gradient: double backward (create_graph=True,
# gradient penalties, Hessian-vector products) and torch.func transforms (grad, jacrev,
# hessian, vmap). They cost several logits-sized buffers; the training path never uses them.
#
# One numerical point: the derivative of u ** gamma is infinite at u = 0 for 0 < gamma < 1.
# The focal term multiplies it by -log p, which vanishes there, so the exact first derivative
# is finite; ``_focal_modulator`` gives autograd a zero derivative at u = 0 exactly, and a
# finite base everywhere (the "double where"), so that the first derivative equals the closed
# form's. Second derivatives there are genuinely infinite for 0 < gamma < 1.


def _focal_modulator(u: Tensor, gamma: float, detach: bool) -> Tensor | None:
    """``u ** gamma`` (None for gamma = 0), with a finite derivative where ``u = 0``."""
    if gamma == 0.0:
        return None
    positive = u > 0
    base = torch.where(positive, u, torch.ones_like(u))
    m = torch.where(positive, base.pow(gamma), torch.zeros_like(u))
    return m.detach() if detach else m


def _one_hot(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(N, *)`` indices -> ``(N, C, *)`` one-hot by comparison (``F.one_hot`` reads the
    values to check them, which ``vmap`` does not allow)."""
    classes = _class_view(torch.arange(num_classes, device=target.device), target.dim() + 1)
    return (target.unsqueeze(1) == classes).to(dtype)


def _reduce_composite(loss: Tensor, grad_scale: Tensor | None, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    total = loss.sum()
    return total * grad_scale if reduction == "mean" else total


def softmax_focal_composite(
    input: Tensor,
    target: Tensor,
    class_coef: Tensor | None,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    label_smoothing: float,
    detach_modulator: bool,
    reduction: str,
) -> Tensor:
    """The softmax focal loss, reduced, from differentiable operations (arguments as for the
    closed-form path: ``target`` holds a valid class at ignored positions)."""
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(dtype)
    if ignored is not None:  # whatever ignored positions hold (NaN, inf) must not reach autograd
        x = torch.where(ignored.unsqueeze(1), 0.0, x)
    lp = torch.log_softmax(x, dim=1)
    num_classes = lp.shape[1]
    q = target.to(dtype) if target.is_floating_point() else _one_hot(target, num_classes, dtype)
    if label_smoothing != 0.0:
        q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
    if class_coef is not None:
        q = q * _class_view(class_coef.to(dtype), lp.dim())
    # A class without target mass contributes 0, also where it is masked with a -inf logit
    # (0 * -inf would be NaN): log p is replaced there before the product, so that no NaN
    # reaches the backward pass either.
    lp_used = torch.where(q != 0, lp, 0.0)
    m = _focal_modulator(-torch.expm1(lp), gamma, detach_modulator)
    terms = q * lp_used if m is None else q * m * lp_used
    loss = -terms.sum(1)
    if ignored is not None:
        loss = torch.where(ignored, 0.0, loss)
    return _reduce_composite(loss, grad_scale, reduction)


def sigmoid_focal_composite(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    options: SigmoidOptions,
    reduction: str,
) -> Tensor:
    """The sigmoid focal loss, reduced, from differentiable operations (arguments as for the
    closed-form path: index targets hold C, the background, at ignored positions)."""
    x = input.to(options.compute_dtype)
    if ignored is not None:  # whatever ignored positions hold (NaN, inf) must not reach autograd
        x = torch.where(ignored.unsqueeze(1), 0.0, x)
    index = target.dtype == torch.int64  # class C (background) matches no output
    t = _one_hot(target, x.shape[1], x.dtype) if index else target.to(x.dtype)
    # BCE from softplus terms, not F.binary_cross_entropy_with_logits: its backward,
    # sigmoid(x) - t, cancels to 0 for saturated x, where the exact derivative is 1 - p.
    positive = F.softplus(-x) if options.pos_weight is None else options.pos_weight * F.softplus(-x)
    ce = t * positive + (1.0 - t) * F.softplus(x)
    u = t * torch.sigmoid(-x) + (1.0 - t) * torch.sigmoid(x)  # 1 - p_t
    m = _focal_modulator(u, options.gamma, options.detach_modulator)
    loss = ce if m is None else m * ce
    if options.alpha is not None:
        loss = (options.alpha * t + (1.0 - options.alpha) * (1.0 - t)) * loss
    if options.weight is not None:
        loss = options.weight * loss
    if ignored is not None:
        loss = torch.where(ignored.unsqueeze(1), 0.0, loss)
    return _reduce_composite(loss, grad_scale, reduction)
