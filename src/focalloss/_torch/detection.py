"""The detection losses on the PyTorch backend: varifocal (VFL), quality focal (QFL) and
distribution focal (DFL) loss, each as a closed form (``forward``) and a differentiable
composite (``composite``). ``varifocal``, ``quality_focal`` and ``distribution_focal`` are the
objects ``focalloss._torch.FAMILIES`` maps the specs' families to.

VFL and QFL, per element with ``p = sigmoid(x)``, ``q = 1 - p`` (computed as ``sigmoid(-x)``),
target score ``t`` in [0, 1], ``ce = BCE(x, t) = t softplus(-x) + (1 - t) softplus(x)`` and
``dce = dce/dx = (1 - t) p - t q`` (= ``p - t``, written so that nothing cancels):

VFL (Zhang et al. 2021)::

    loss = f * ce                         t > 0, f = t (iou_weighted) or 1
    loss = alpha * p^gamma * ce           t = 0 (ce = softplus(x))
    grad = f * dce                        t > 0
    grad = alpha * p^gamma * (p + gamma * q * softplus(x))     t = 0

Only ``t = 0`` carries the modulator ``|p - t|^gamma = p^gamma``, whose derivative
``gamma p^gamma q`` is bounded for every ``gamma >= 0``: VFL has no singular point.

QFL (Li et al. 2020), ``d = p - t`` (computed as ``dce``, so ``t = 1`` gives ``-q`` and
``t = 0`` gives ``p`` exactly), ``m = |d|^beta``::

    loss = m * ce
    grad = m * (dce + beta * ce * r),     r = p q / d   (0 where d = 0)

``m * r = sign(d) |d|^(beta - 1) p q`` is the derivative of the modulator. For hard targets it
is bounded (``t = 0``: ``r = q``; ``t = 1``: ``r = -p``), so saturated logits give finite,
exact gradients for every ``beta >= 0``. For a soft target ``0 < t < 1`` and ``0 < beta < 1``
the true derivative is unbounded as ``p -> t`` (``|d|^(beta - 1)``): the closed form is exact
wherever ``p != t`` in the compute dtype, and finite there, since a nonzero ``|d|`` is at least
about an ulp of ``p q``-sized terms (``|r|`` below about ``2**24`` in float32); where
``p == t`` exactly it takes the value 0 (the one-sided derivatives are -inf and +inf there;
the loss has its minimum 0 at that point). For ``beta > 1`` the derivative at ``p == t`` is
0; for ``beta = 1`` 0 is taken between the one-sided values.

Class-index targets (score at the labelled class, 0 elsewhere): every element is first computed
as a negative (``t = 0``: no target read), then the labelled class of each position is
recomputed from its gathered logit and score and written back with a scatter; no one-hot.

DFL (Li et al. 2020), per position with ``l = min(floor(y), n - 1)``, ``w_r = y - l``,
``w_l = 1 - w_r`` and ``ls = log_softmax(x)``::

    loss = -(w_l * ls_l + w_r * ls_{l+1})         (= CE(x, l) w_l + CE(x, l + 1) w_r)
    grad = softmax(x) - w_l * e_l - w_r * e_{l+1}

``y = n`` gives ``l = n - 1``, ``w_r = 1``: ``CE(x, n)``. A term with a zero weight is dropped,
not multiplied (a ``-inf`` logit there gives no NaN).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from .._spec.detection import DistributionFocalSpec, QualityFocalSpec, VarifocalSpec
from .common import finish, one_hot, reduce_composite
from .sigmoid import _logistic

# --------------------------------------------------------------------------------------------
# Elementwise terms (compute dtype), loss and unscaled gradient
# --------------------------------------------------------------------------------------------


def _power(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` (0 ** e = 0 for e > 0, 1 for e = 0)."""
    return base.square() if exponent == 2.0 else base.pow(exponent)


def _negative_terms(
    x: Tensor,
    scale: float,
    exponent: float,
    detach: bool,
    need_grad: bool,
    out: tuple[Tensor | None, Tensor | None] = (None, None),
) -> tuple[Tensor, Tensor | None]:
    """Elements whose target is 0: ``scale * p^exponent * softplus(x)`` and its derivative
    ``scale * p^exponent * (p + exponent * q * softplus(x))`` (VFL: scale alpha, exponent
    gamma; QFL: scale 1, exponent beta). ``out``: buffers for the loss and the gradient (the
    slices of the whole input's buffers that this piece fills), or None."""
    p, q, ce = torch.sigmoid(x), torch.sigmoid(x.neg()), F.softplus(x)  # no softplus(-x)
    m = _power(p, exponent)
    if scale != 1.0:
        m.mul_(scale)
    loss = torch.mul(m, ce, out=out[0])
    if not need_grad:
        return loss, None
    if exponent == 0.0 or detach:
        return loss, torch.mul(p, m, out=out[1])
    return loss, torch.mul(q, ce, out=out[1]).mul_(exponent).add_(p).mul_(m)


def _varifocal_terms(
    x: Tensor,
    t: Tensor,
    spec: VarifocalSpec,
    need_grad: bool,
    out: tuple[Tensor | None, Tensor | None] = (None, None),
) -> tuple[Tensor, Tensor | None]:
    """VFL of every element of ``x`` against score ``t`` (same shape, or broadcast).

    With ``k = f`` (``t > 0``) or ``alpha p^gamma`` (``t = 0``, where ``ce = softplus(x)`` and
    ``dce = p``): ``loss = k ce`` and ``grad = k (dce + [t = 0] gamma q ce)``.
    """
    p, q, sp_pos, sp_neg = _logistic(x)
    t_neg = 1.0 - t
    ce = sp_pos.mul_(t).addcmul_(t_neg, sp_neg)
    positive = t > 0
    m = spec.alpha if spec.gamma == 0.0 else _power(p, spec.gamma).mul_(spec.alpha)
    k = torch.where(positive, t if spec.iou_weighted else 1.0, m)
    loss = torch.mul(k, ce, out=out[0])
    if not need_grad:
        return loss, None
    dce = torch.mul(t_neg, p, out=out[1]).sub_(t * q)
    if spec.gamma != 0.0 and not spec.detach_modulator:
        dce.addcmul_(q.masked_fill_(positive, 0.0), ce, value=spec.gamma)
    return loss, dce.mul_(k)


def _quality_terms(
    x: Tensor,
    t: Tensor,
    spec: QualityFocalSpec,
    need_grad: bool,
    out: tuple[Tensor | None, Tensor | None] = (None, None),
) -> tuple[Tensor, Tensor | None]:
    """QFL of every element of ``x`` against score ``t`` (same shape, or broadcast).

    ``d = p - t`` is ``dce = (1 - t) p - t q``: exact at ``t = 0`` (``p``) and ``t = 1``
    (``-q``). ``r = p q / d`` is finite wherever ``d != 0`` (``|d|`` is at least about an ulp
    of ``p q``-sized terms) and set to 0 where ``d = 0`` (0/0 or x/0).
    """
    p, q, sp_pos, sp_neg = _logistic(x)
    t_neg = 1.0 - t
    ce = sp_pos.mul_(t).addcmul_(t_neg, sp_neg)
    d = torch.mul(t_neg, p, out=out[1] if need_grad else None).sub_(t * q)  # p - t = dce/dx
    if spec.beta == 0.0:
        return ce, d if need_grad else None
    m = d.square() if spec.beta == 2.0 else d.abs().pow_(spec.beta)
    loss = m * ce
    if not need_grad:
        return loss, None
    if not spec.detach_modulator:
        r = p.mul_(q).div_(d).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        d = d.addcmul_(r, ce, value=spec.beta)
    return loss, d.mul_(m)


# --------------------------------------------------------------------------------------------
# The shared driver of VFL and QFL: cache-sized pieces, index or dense targets
# --------------------------------------------------------------------------------------------

# Elements of one piece: its temporaries (4 MB each in float32) stay in the last-level cache,
# and a (200000, 80) input takes 16 pieces. Smaller pieces cost more operator launches (and,
# with several threads on a busy CPU, more synchronisations), larger ones leave the cache.
PIECE_ELEMENTS = 1 << 20


def _pieces(input: Tensor) -> list[tuple[slice, ...]]:
    """Index tuples that split ``input`` along dim 0, then along dim 2, into pieces of about
    ``PIECE_ELEMENTS`` elements (one piece when it is at most twice that)."""
    total = input.numel()
    if total <= 2 * PIECE_ELEMENTS:
        return [(slice(None),)]
    rows = input.shape[0]
    per_row = total // rows
    if per_row <= PIECE_ELEMENTS or input.dim() < 3:
        step = max(1, PIECE_ELEMENTS // per_row)
        return [(slice(n, n + step),) for n in range(0, rows, step)]
    per_slab = per_row // input.shape[2]
    step = max(1, PIECE_ELEMENTS // per_slab)
    return [
        (slice(n, n + 1), slice(None), slice(d, d + step))
        for n in range(rows)
        for d in range(0, input.shape[2], step)
    ]


def _sigmoid_family_forward(
    spec: VarifocalSpec | QualityFocalSpec, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    input = spec.input
    dtype = spec.compute_dtype
    vfl = isinstance(spec, VarifocalSpec)
    chunks = _pieces(input)
    if len(chunks) == 1:
        loss, grad = _piece(spec, (slice(None),), need_grad, None, None)
        return finish(loss if spec.reduction == "none" else loss.sum(), grad, spec, summed=True)
    # Each piece writes its gradient (and its "none" loss) into its slice of these buffers.
    elementwise = spec.reduction == "none"
    loss_shape = input.shape if vfl else tuple(input.shape[:1] + input.shape[2:])
    loss = input.new_empty(loss_shape, dtype=dtype) if elementwise else None
    grad = torch.empty_like(input, dtype=dtype) if need_grad else None
    sums = []
    for xs in chunks:
        loss_out = None if loss is None else loss[xs if vfl else xs[:1] + xs[2:]]
        part_loss, _ = _piece(spec, xs, need_grad, loss_out, None if grad is None else grad[xs])
        if loss is None:
            sums.append(part_loss.sum())
    return finish(torch.stack(sums).sum() if loss is None else loss, grad, spec, summed=True)


def _piece(
    spec: VarifocalSpec | QualityFocalSpec,
    xs: tuple[slice, ...],
    need_grad: bool,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Loss (elementwise for VFL, per position for QFL) and scaled gradient of one piece,
    written into ``loss_out`` and ``grad_out`` when given (slices of the whole buffers)."""
    vfl = isinstance(spec, VarifocalSpec)
    terms = _varifocal_terms if vfl else _quality_terms
    ps = xs[:1] + xs[2:]  # the positions of the piece
    x = spec.input[xs].to(spec.compute_dtype)
    out = (loss_out if vfl else None, grad_out)
    if spec.score is None:
        target = spec.target[xs].to(x.dtype)
        loss, grad = terms(x, target, spec, need_grad, out)  # type: ignore[arg-type]
    else:
        if vfl:
            scale, exponent = spec.alpha, spec.gamma  # type: ignore[union-attr]
        else:
            scale, exponent = 1.0, spec.beta  # type: ignore[union-attr]
        loss, grad = _negative_terms(x, scale, exponent, spec.detach_modulator, need_grad, out)
        # The labelled class of each position (value C = background has none).
        num_classes = x.shape[1]
        target = spec.target[ps]
        labelled = (target < num_classes).unsqueeze(1)
        idx = target.clamp(max=num_classes - 1).unsqueeze(1)
        score = spec.score[ps].unsqueeze(1)
        loss_t, grad_t = terms(x.gather(1, idx), score, spec, need_grad)  # type: ignore[arg-type]
        loss.scatter_(1, idx, torch.where(labelled, loss_t, loss.gather(1, idx)))
        if grad is not None:
            assert grad_t is not None
            grad.scatter_(1, idx, torch.where(labelled, grad_t, grad.gather(1, idx)))
    # From here on, in place (the buffers may be the slices of the whole input's).
    if spec.weight is not None:
        if vfl:
            w = spec.weight[xs]
            loss.mul_(w)
            if grad is not None:
                grad.mul_(w)
        else:
            w = spec.weight[ps]
            if grad is not None:
                grad.mul_(w.unsqueeze(1))
    if not vfl:
        loss = torch.sum(loss, 1, out=loss_out)
        if spec.weight is not None:
            loss.mul_(w)
    if spec.ignored is not None:
        mask = spec.ignored[ps]
        loss.masked_fill_(mask.unsqueeze(1) if vfl else mask, 0.0)
        if grad is not None:
            grad.masked_fill_(mask.unsqueeze(1), 0.0)
    if grad is not None and spec.scale is not None:
        grad.mul_(spec.scale)
    return loss, grad


def _varifocal_forward(spec: VarifocalSpec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    return _sigmoid_family_forward(spec, need_grad)


def _quality_forward(spec: QualityFocalSpec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    return _sigmoid_family_forward(spec, need_grad)


# --------------------------------------------------------------------------------------------
# Distribution focal loss
# --------------------------------------------------------------------------------------------


def _bins(spec: DistributionFocalSpec) -> tuple[Tensor, Tensor]:
    """``(bins, negated weights)``, both ``(N, 2, *)``: the bins ``l, l + 1`` (int64) around
    each target and ``-(l + 1 - y), -(y - l)``. Few operations: each one over the positions
    is a launch (and a thread synchronisation), which a busy CPU makes expensive."""
    n = spec.input.shape[1] - 1
    y = spec.target  # in [0, n] (0 at ignored positions): truncation is floor
    left = y.long().clamp_(max=n - 1).unsqueeze(1)
    w_r = (y.unsqueeze(1) - left).to(y.dtype)
    pair = torch.arange(2, device=y.device).view((1, 2) + (1,) * (y.dim() - 1))
    sign = pair.to(y.dtype)  # [0, 1] -> base [-1, 0] + [1, -1] * w_r
    negated = torch.addcmul(sign - 1.0, 1.0 - 2.0 * sign, w_r)
    return left + pair, negated


def _picked_loss(ls: Tensor, bins: Tensor, negated: Tensor) -> Tensor:
    """``-(w_l ls_l + w_r ls_{l+1})`` per position; a term with weight 0 is dropped, not
    multiplied (an unused bin may hold -inf)."""
    terms = negated * ls.gather(1, bins)
    return torch.where(negated == 0, 0.0, terms).sum(1)


def _distribution_forward(
    spec: DistributionFocalSpec, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    x = spec.input.to(spec.compute_dtype)
    bins, negated = _bins(spec)
    ls = torch.log_softmax(x, dim=1)
    loss = _picked_loss(ls, bins, negated)
    if spec.weight is not None:
        loss = loss.mul_(spec.weight)
    if spec.ignored is not None:
        loss = loss.masked_fill_(spec.ignored, 0.0)
    grad = None
    if need_grad:
        grad = ls.exp_().scatter_add_(1, bins, negated)  # softmax - the two-bin target
        factor = spec.scale  # one pass for the "mean" factor and the weights together
        if spec.weight is not None:
            w = spec.weight.unsqueeze(1)
            factor = w if factor is None else w * factor
        if factor is not None:
            grad = grad.mul_(factor)
        if spec.ignored is not None:
            grad = grad.masked_fill_(spec.ignored.unsqueeze(1), 0.0)
    return finish(loss if spec.reduction == "none" else loss.sum(), grad, spec, summed=True)


# --------------------------------------------------------------------------------------------
# Differentiable composites (double backward, torch.func)
# --------------------------------------------------------------------------------------------
#
# Modulators are written through logarithms where the target is hard: p^gamma is
# exp(-gamma * softplus(-x)), whose derivative gamma * q * p^gamma autograd forms without the
# overflowing p^(gamma - 1); |p - 1|^beta is exp(-beta * softplus(x)). A soft target's |d|^beta
# goes through a "double where": a safe base where d = 0, and the value 0 there, so the first
# derivative equals the closed form's (0 at p == t).


def _sanitised(spec, input: Tensor) -> Tensor:
    x = input.to(spec.compute_dtype)
    if spec.ignored is not None:  # ignored logits (NaN, inf) must not reach autograd
        x = torch.where(spec.ignored.unsqueeze(1), 0.0, x)
    return x


def _dense_score(spec: VarifocalSpec | QualityFocalSpec, x: Tensor) -> Tensor:
    if spec.score is None:
        return spec.target.to(x.dtype)
    return one_hot(spec.target, x.shape[1], x.dtype) * spec.score.unsqueeze(1)


def _finish_composite(spec, loss: Tensor, per_position: bool) -> Tensor:
    if spec.ignored is not None:
        mask = spec.ignored if per_position else spec.ignored.unsqueeze(1)
        loss = torch.where(mask, 0.0, loss)
    return reduce_composite(loss, spec)


def _varifocal_composite(spec: VarifocalSpec, input: Tensor) -> Tensor:
    x = _sanitised(spec, input)
    t = _dense_score(spec, x)
    ce = t * F.softplus(-x) + (1.0 - t) * F.softplus(x)
    m = torch.exp(-spec.gamma * F.softplus(-x))  # p^gamma
    if spec.detach_modulator:
        m = m.detach()
    f = t if spec.iou_weighted else torch.ones_like(t)
    loss = torch.where(t > 0, f, spec.alpha * m) * ce
    if spec.weight is not None:
        loss = spec.weight * loss
    return _finish_composite(spec, loss, per_position=False)


def _quality_composite(spec: QualityFocalSpec, input: Tensor) -> Tensor:
    x = _sanitised(spec, input)
    t = _dense_score(spec, x)
    ce = t * F.softplus(-x) + (1.0 - t) * F.softplus(x)
    loss = ce
    if spec.beta != 0.0:
        zero, one = t == 0, t == 1
        d = torch.where(x >= 0, (1.0 - t) - torch.sigmoid(-x), torch.sigmoid(x) - t)
        soft_nonzero = ~(zero | one) & (d != 0)
        log_general = torch.log(torch.where(soft_nonzero, d.abs(), 1.0))
        log_abs = torch.where(zero, -F.softplus(-x), torch.where(one, -F.softplus(x), log_general))
        m = torch.exp(spec.beta * log_abs)
        m = torch.where(zero | one | soft_nonzero, m, 0.0)
        if spec.detach_modulator:
            m = m.detach()
        loss = m * ce
    loss = loss.sum(1)
    if spec.weight is not None:
        loss = spec.weight * loss
    return _finish_composite(spec, loss, per_position=True)


def _distribution_composite(spec: DistributionFocalSpec, input: Tensor) -> Tensor:
    x = _sanitised(spec, input)
    bins, negated = _bins(spec)
    loss = _picked_loss(torch.log_softmax(x, dim=1), bins, negated)
    if spec.weight is not None:
        loss = spec.weight * loss
    return _finish_composite(spec, loss, per_position=True)


varifocal = SimpleNamespace(forward=_varifocal_forward, composite=_varifocal_composite)
quality_focal = SimpleNamespace(forward=_quality_forward, composite=_quality_composite)
distribution_focal = SimpleNamespace(
    forward=_distribution_forward, composite=_distribution_composite
)
