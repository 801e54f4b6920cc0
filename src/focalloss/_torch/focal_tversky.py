"""The focal Tversky loss on the PyTorch backend: closed form, and the differentiable composite.

With probabilities ``p`` (softmax over dim 1, or sigmoid), targets ``g`` (one-hot, or the
given probabilities / labels) and the sums over the non-ignored positions ``i`` (of the batch,
or of each image)::

    TP_c = sum_i p_ic g_ic,  FN_c = sum_i (1 - p_ic) g_ic,  FP_c = sum_i p_ic (1 - g_ic)
    num_c = alpha FN_c + beta FP_c,   den_c = TP_c + num_c + smooth
    u_c = 1 - TI_c = num_c / den_c,   L_c = w_c u_c^gamma

``u`` is computed as ``num / den`` (no ``1 - TI`` cancellation), and each count is a sum of
non-negative terms (no ``G - TP`` cancellation between two large sums). Since
``d num_c / d p_ic = beta - (alpha + beta) g_ic`` and ``d den_c / d p_ic = beta + (1 - alpha
- beta) g_ic``, the derivative of ``L_c`` is affine in the target::

    dL_c/dp_ic = A_c + B_c g_ic,   k_c = w_c gamma u_c^(gamma - 1)
    A_c = k_c beta (TP_c + smooth) / den_c^2
    B_c = -k_c ((alpha + beta)(TP_c + smooth) + num_c) / den_c^2

so the gradient with respect to the logits is ``p q (A + B g)`` (sigmoid, ``q = 1 - p``) or,
through the softmax Jacobian, ``p_ic (A_c + B_c g_ic - sum_c' p_ic' (A_c' + B_c' g_ic'))``:
a second pass over the probabilities once the per-class sums are known. Where ``u_c = 0``
(a perfect class, or ``den_c = 0`` with ``smooth = 0``: no target and no prediction mass),
``TI_c = 1`` and ``k_c = 0`` (``u^gamma`` has a cusp there for ``gamma < 1``; its one-sided
derivative along any feasible direction is what the limit gives).

The per-class quantities are computed in float64 (they are ``C`` or ``N * C`` numbers); the
class-index counts are accumulated in float64 too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._spec.classification import FocalTverskySpec
from .common import finish, focal_modulator, one_hot, reduce_composite


def forward(spec: FocalTverskySpec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The reduced loss of ``spec`` and the gradient of that loss w.r.t. ``spec.input``."""
    x, dtype = spec.input, spec.compute_dtype
    num_classes = x.shape[1]
    p = torch.softmax(x, 1, dtype=dtype) if spec.softmax else torch.sigmoid(x.to(dtype))
    if spec.index:
        counts, hard = _index_counts(spec, p)
    else:
        counts, q = _float_counts(spec, p)
    tp, fn, fp = counts
    terms, coef_a, coef_b = _class_terms(spec, tp, fn, fp, need_grad)
    loss = terms.sum().to(dtype)
    if not need_grad:
        return finish(loss, None, spec, summed=True)
    shape = (-1 if spec.per_image else 1, num_classes) + (1,) * (x.dim() - 2)
    a, b = coef_a.to(dtype), coef_b.to(dtype)
    if spec.index:
        grad = _index_grad(spec, p, a, b, shape, hard)
    else:
        grad = _float_grad(spec, p, q, a, b, shape)
    return finish(loss, grad, spec, summed=True)


def _sum(values: Tensor, per_image: bool) -> Tensor:
    """Sums over the positions: ``(C,)``, or ``(N, C)`` per image."""
    dims = tuple(range(2, values.dim()))
    if not per_image:
        dims = (0, *dims)
    if not dims:  # (N, C) per image: each image is one position
        return values.clone()
    return values.sum(dims)


def _complement(spec: FocalTverskySpec, p: Tensor, x: Tensor) -> Tensor:
    """``1 - p``: ``sigmoid(-x)`` (exact) for the sigmoid, ``1 - p`` for the softmax."""
    if spec.softmax:
        return torch.sub(1.0, p)
    return torch.sigmoid(x.to(p.dtype).neg())


def _float_counts(
    spec: FocalTverskySpec, p: Tensor
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    g = spec.target.to(p.dtype)
    pg = p * g
    tp = _sum(pg, spec.per_image)
    fp = _sum(torch.sub(p, pg, out=pg), spec.per_image)  # p (1 - g)
    q = _complement(spec, p, spec.input)
    fn = _sum(torch.mul(q, g, out=pg), spec.per_image)
    return (tp, fn, fp), q


class _Hard:
    """What the class-index gradient needs from the counting pass: the target entries
    ``idx``, ``p`` there (0 at positions without a positive), and ``hit`` (1.0 where the
    position's target entry is counted, 0.0 elsewhere; None: everywhere)."""

    def __init__(self, idx: Tensor, p_t: Tensor, hit: Tensor | None) -> None:
        self.idx, self.p_t, self.hit = idx, p_t, hit


def _index_counts(spec: FocalTverskySpec, p: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], _Hard]:
    """Counts for class indices, without a one-hot target. ``p`` is left with 0 at the target
    entries (its sum over positions is then ``FP``) and at ignored positions; the target
    entries are returned.

    ``TP`` and the per-class target counts ``G`` are accumulated in float64 from the target
    entries (so ``FN = G - TP`` is exact to float64 rounding); ``FP`` is the sum of the other
    entries. Each step is one operation over the logits or the positions: on a CPU shared
    with other jobs every operation costs a wake-up of the worker threads, whatever its size.

    Ignored positions are zeroed with a masked fill (their logits may hold NaN or inf), except
    for the softmax on the CPU, where one in-place product with the 0/1 mask does it (a fill
    over a broadcast mask is several times slower there) and a non-finite count, the sign of
    NaN or inf at an ignored position, falls back to the fill (reading the counts on the host
    is no synchronisation on the CPU).
    """
    target, num_classes = spec.target, p.shape[1]
    mask = None if spec.ignored is None else spec.ignored.unsqueeze(1)
    weighted = False
    if spec.softmax:
        idx = target.unsqueeze(1)
        hit = None
        if mask is not None:
            hit = torch.logical_not(mask, out=p.new_empty(mask.shape))
            weighted = p.device.type == "cpu"
            if weighted:
                p.mul_(hit)  # NaN * 0 stays NaN: caught below
            else:
                p.masked_fill_(mask, 0.0)
        p_t = p.gather(1, idx)
        p.scatter_(1, idx, 0.0)  # (an ignored position's class-0 entry: 0 already)
    else:  # C is the background: no positive output at that position
        positive = target.unsqueeze(1) < num_classes
        if mask is not None:
            p.masked_fill_(mask, 0.0)
            positive &= ~mask
        hit = positive.to(p.dtype)
        idx = target.clamp(max=num_classes - 1).unsqueeze(1)
        p_t = p.gather(1, idx).mul_(hit)
        p.scatter_(1, idx, torch.where(positive, 0.0, p.gather(1, idx)))
    counts = _counts(p, idx, p_t, hit, spec.per_image)
    if weighted and not bool(torch.isfinite(torch.stack([c.sum() for c in counts])).all()):
        assert mask is not None
        p.masked_fill_(mask, 0.0)  # NaN or inf somewhere: zero the ignored positions, recount
        p_t.masked_fill_(mask, 0.0)
        counts = _counts(p, idx, p_t, hit, spec.per_image)
    return counts, _Hard(idx, p_t, hit)


def _counts(
    p: Tensor, idx: Tensor, p_t: Tensor, hit: Tensor | None, per_image: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(TP, FN, FP)`` from ``p`` (0 at the target entries), the target entries' ``p_t`` and
    their weights ``hit``."""
    n, num_classes = p.shape[:2]
    bins = idx.flatten(1)
    if per_image:
        bins = bins + torch.arange(n, device=idx.device).unsqueeze(1) * num_classes
    bins = bins.flatten()
    size = num_classes * (n if per_image else 1)
    tp = p.new_zeros(size, dtype=torch.float64)
    tp.index_add_(0, bins, p_t.flatten().to(torch.float64))
    if hit is not None:
        g = torch.zeros_like(tp).index_add_(0, bins, hit.flatten().to(torch.float64))
    elif bins.device.type == "cpu":  # (bincount sizes its output on the host elsewhere)
        g = torch.bincount(bins, minlength=size).to(torch.float64)
    else:
        g = torch.zeros_like(tp).index_add_(0, bins, torch.ones_like(tp).expand(bins.shape))
    if per_image:
        tp, g = tp.view(n, num_classes), g.view(n, num_classes)
    fp = _sum(p, per_image)
    return tp, g - tp, fp


def _class_terms(
    spec: FocalTverskySpec, tp: Tensor, fn: Tensor, fp: Tensor, need_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``w u^gamma`` per class (and image), and the gradient coefficients ``A``, ``B`` (with
    the ``"mean"`` factor), in float64."""
    tp, fn, fp = (v.to(torch.float64) for v in (tp, fn, fp))
    alpha, beta, gamma, smooth = spec.alpha, spec.beta, spec.gamma, spec.smooth
    num = fn * alpha + fp * beta
    tps = tp + smooth
    den = tps + num
    empty = den == 0  # (a comparison that NaN fails: a NaN count stays NaN)
    u = torch.where(empty, 0.0, num / torch.where(empty, 1.0, den))
    mod = u.pow(gamma)  # 0 ** gamma: 0 for gamma > 0, 1 for gamma = 0
    weight = None if spec.weight is None else spec.weight.to(torch.float64)
    terms = mod if weight is None else mod * weight
    if not need_grad:
        return terms, terms, terms
    perfect = u == 0
    k = torch.where(perfect, 0.0, mod * gamma / torch.where(perfect, 1.0, u))
    if weight is not None:
        k = k * weight
    if spec.scale is not None:
        k = k * spec.scale.to(torch.float64)
    k = k / torch.where(empty, 1.0, den).square()
    coef_a = k * (tps * beta)
    coef_b = -k * (tps * (alpha + beta) + num)
    return terms, coef_a, coef_b


def _class_dot(p: Tensor, a: Tensor, per_image: bool) -> Tensor:
    """``sum_c p_ic a_c`` per position, ``(N, *)`` (``a``: ``(C,)`` or ``(N, C)``)."""
    num_classes = p.shape[1]
    if p.dim() == 2:
        return p @ a if not per_image else (p * a).sum(1)
    if p.is_contiguous():
        rows = p.flatten(2)
        dot = torch.bmm(a.unsqueeze(1), rows).squeeze(1) if per_image else torch.matmul(a, rows)
        return dot.view(p.shape[:1] + p.shape[2:])
    view = a.view((-1, num_classes) + (1,) * (p.dim() - 2))
    return (p * view).sum(1)


def _index_grad(
    spec: FocalTverskySpec, p: Tensor, a: Tensor, b: Tensor, shape: tuple, hard: _Hard
) -> Tensor:
    """``p`` holds the probabilities with 0 at the target entries and at ignored positions;
    it becomes the gradient."""
    idx, p_t, hit = hard.idx, hard.p_t, hard.hit
    b_t = _gather_classes(b, idx, spec.per_image)  # B at the target entry, (N, 1, *)
    if hit is not None and not spec.softmax:
        b_t = b_t.mul_(hit)  # no B term where the entry is not a positive (the softmax's
        # ignored positions have p = 0, which cancels it)
    if spec.softmax:
        p.scatter_(1, idx, p_t)  # p again
    else:
        p.scatter_add_(1, idx, p_t)  # (entries of background positions were kept)
    a_view = a.view(shape)
    if not spec.softmax:  # p q (A + B g)
        grad = p.mul_(torch.sigmoid(spec.input.to(p.dtype).neg()))
        pq_t = grad.gather(1, idx)
        grad.mul_(a_view).scatter_add_(1, idx, pq_t.mul_(b_t))
        if spec.ignored is not None:  # p q with q NaN at an ignored position
            grad.masked_fill_(spec.ignored.unsqueeze(1), 0.0)
        return grad
    # Softmax: p_ic (A_c + B_c g_ic - dot_i), dot_i = sum_c p_ic A_c + p_it B_t.
    dot = _class_dot(p, a, spec.per_image).unsqueeze(1).addcmul_(b_t, p_t)
    _scale_by_coef_minus_dot(p, a_view, dot, idx, b_t, spec.per_image)
    return p


# Elements of the scratch buffer of the softmax gradient: larger inputs are done in groups of
# images that share one buffer, whose pages are then touched once (a fresh logits-sized buffer
# costs more in page faults on the CPU than the arithmetic).
_SCRATCH_ELEMENTS = 1 << 23


def _scale_by_coef_minus_dot(
    p: Tensor, a_view: Tensor, dot: Tensor, idx: Tensor, b_t: Tensor, per_image: bool
) -> None:
    """``p *= a + b_t onehot(idx) - dot`` in place (``a``: ``(1 or N, C, 1, ...)``; ``dot``,
    ``idx``, ``b_t``: ``(N, 1, ...)``)."""
    n = p.shape[0]
    group = max(1, _SCRATCH_ELEMENTS // max(p[0].numel(), 1)) if n else 1
    if group >= n:
        p.mul_((a_view - dot).scatter_add_(1, idx, b_t))
        return
    scratch = p.new_empty((group, *p.shape[1:]))
    for n0 in range(0, n, group):
        n1 = min(n0 + group, n)
        coef = a_view[n0:n1] if per_image else a_view
        buf = torch.sub(coef, dot[n0:n1], out=scratch[: n1 - n0])
        p[n0:n1].mul_(buf.scatter_add_(1, idx[n0:n1], b_t[n0:n1]))


def _gather_classes(values: Tensor, idx: Tensor, per_image: bool) -> Tensor:
    """``values[c]`` (or ``values[n, c]`` per image) at the class indices ``idx`` ``(N, 1, *)``."""
    if not per_image:
        return values[idx]
    return values.gather(1, idx.flatten(1)).view(idx.shape)


def _float_grad(
    spec: FocalTverskySpec, p: Tensor, q: Tensor, a: Tensor, b: Tensor, shape: tuple
) -> Tensor:
    g = spec.target.to(p.dtype)
    coef = torch.mul(g, b.view(shape)).add_(a.view(shape))  # A + B g
    if not spec.softmax:
        return coef.mul_(p).mul_(q)
    dot = torch.mul(p, coef).sum(1, keepdim=True)
    return coef.sub_(dot).mul_(p)


def composite(spec: FocalTverskySpec, input: Tensor) -> Tensor:
    """The focal Tversky loss of ``spec`` from differentiable operations at ``input``: the
    per-class (per-image) terms for ``reduction="none"``, reduced otherwise."""
    x = input.to(spec.compute_dtype)
    num_classes = x.shape[1]
    mask = None if spec.ignored is None else spec.ignored.unsqueeze(1)
    if mask is not None:  # whatever ignored positions hold (NaN, inf) must not reach autograd
        x = torch.where(mask, 0.0, x)
    p = torch.softmax(x, 1) if spec.softmax else torch.sigmoid(x)
    q = 1.0 - p if spec.softmax else torch.sigmoid(-x)
    g = one_hot(spec.target, num_classes, x.dtype) if spec.index else spec.target.to(x.dtype)
    if mask is not None:
        p, q, g = (torch.where(mask, 0.0, v) for v in (p, q, g))
    tp = _sum(p * g, spec.per_image)
    fn = _sum(q * g, spec.per_image)
    fp = _sum(p * (1.0 - g), spec.per_image)
    num = spec.alpha * fn + spec.beta * fp
    den = tp + num + spec.smooth
    empty = den == 0
    u = torch.where(empty, 0.0, num / torch.where(empty, 1.0, den))
    m = focal_modulator(u, spec.gamma, False)
    terms = u * 0.0 + 1.0 if m is None else m  # gamma = 0: 1, still a function of input
    if spec.weight is not None:
        terms = terms * spec.weight
    return reduce_composite(terms, spec)
