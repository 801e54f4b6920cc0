"""The softmax focal loss on the PyTorch backend: closed form, and the differentiable composite.

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

Poly-1 (``poly1_epsilon = e``) adds ``e * W * U ** (gamma + 1)`` per position, with
``U = sum_c q_c (1 - p_c)`` (``= 1 - p_t`` for hard targets; ``= 1 - sum_c q_c p_c`` whenever
``q`` sums to 1) and ``W`` the position's weight (``w_t``; ``sum_c w_c target_c`` for
probabilities; 1 without ``weight``). With ``dU/dz_j = p_j (P - q_j)``, ``P = sum_c q_c p_c``,
its gradient is ``A * p_j * (P - q_j)`` with ``A = e * W * (gamma + 1) * U ** gamma`` (``e * W
* U ** gamma`` when the modulator is detached): bounded for every ``gamma >= 0``. For class
indices (smoothed or not) that is ``A * (1 - eps) * p_t * (p_j - onehot_j)``, one more
per-position scalar of the ``s * (p - onehot)`` form.

A :class:`~focalloss.GammaSchedule` replaces the number ``gamma`` by a per-position tensor
chosen from the detached ``P`` (``p_t`` for hard targets); every formula above holds with it,
``gamma`` being a constant of each position. Per logit (the dense path), a schedule of small
integers (FLSD-53) forms ``(1 - p) ** gamma`` by multiplication and selects along its 0/1 steps
(``stepped_power``); other schedules use ``exp(gamma log(1 - p))``.

Large allocations dominate on the CPU (a fresh logits-sized buffer costs about three in-place
passes), so the code below reuses buffers it owns with in-place operations.
"""

from __future__ import annotations

import functools
import itertools
import struct
from typing import NamedTuple

import torch
from torch import Tensor

from .._spec.softmax import SoftmaxFocalSpec
from .common import (
    chunk_slices,
    class_view,
    finish,
    focal_modulator,
    nonfinite_ignored,
    one_hot,
    reduce_composite,
    zero_ignored_rows_,
)


def forward(spec: SoftmaxFocalSpec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The reduced loss of ``spec`` and the gradient of that loss w.r.t. ``spec.input``."""
    loss, grad = per_position(
        spec.input,
        spec.target,
        class_coef=spec.coef,
        ignored=spec.ignored,
        grad_scale=spec.scale,
        gamma=spec.gamma,
        label_smoothing=spec.label_smoothing,
        detach_modulator=spec.detach_modulator,
        need_grad=need_grad,
        compute_dtype=spec.compute_dtype,
        extras=Extras.of(spec),
    )
    return finish(loss, grad, spec)


class Extras(NamedTuple):
    """The options beyond the focal term: a gamma schedule and the Poly-1 term."""

    thresholds: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    poly1: float = 0.0
    poly_weight: Tensor | None = None  # (C,) weight of the Poly-1 term, None: 1

    @staticmethod
    def of(spec: SoftmaxFocalSpec) -> Extras:
        return Extras(
            spec.gamma_thresholds, spec.gamma_values, spec.poly1_epsilon, spec.poly_weight
        )

    @property
    def scheduled(self) -> bool:
        return len(self.thresholds) > 0

    @property
    def active(self) -> bool:
        return self.scheduled or self.poly1 != 0.0

    @property
    def zero_free(self) -> bool:
        """No piece of the schedule has gamma 0 (``tensor_power`` may take logarithms)."""
        return 0.0 not in self.values


NO_EXTRAS = Extras()


def scheduled_gamma(
    p_t: Tensor, thresholds: tuple[float, ...], values: tuple[float, ...], sign: float = 1.0
) -> Tensor:
    """The per-position (or per-element) gamma of a schedule at the detached ``p_t``:
    ``values[k]`` with ``k`` the number of thresholds ``<= p_t`` (NaN ``p_t``: ``values[0]``),
    times ``sign``. One comparison and one selection per threshold; the values are 0-d fills
    of ``p_t``'s dtype (no host-to-device copy)."""
    p_t = p_t.detach()
    gamma = p_t.new_full((), sign * values[0])
    for bound, value in zip(thresholds, values[1:], strict=True):
        gamma = torch.where(p_t >= bound, p_t.new_full((), sign * value), gamma)
    return gamma


def select_gamma(
    p_t: Tensor, thresholds: tuple[float, ...], values: tuple[float, ...], sign: float = 1.0
) -> Tensor:
    """``scheduled_gamma`` for the closed forms, in fast passes (a bool mask and ``where`` cost
    several times more on the CPU): each threshold is a 0/1 step written as floats by the
    comparison, and gamma is ``v_0 + sum_k (v_k - v_(k-1)) step_k`` where that sum is exact in
    the compute dtype (integer and half-integer values, FLSD-53), else selected by ``lerp``
    (exact at the weights 0 and 1)."""
    signed = tuple(sign * v for v in values)
    dtype = p_t.dtype
    if _exact_steps(signed, dtype == torch.float64):
        gamma = None
        for k, bound in enumerate(thresholds):
            step = torch.ge(p_t, bound, out=torch.empty_like(p_t))
            step.mul_(signed[k + 1] - signed[k])
            gamma = step.add_(signed[0]) if gamma is None else gamma.add_(step)
        assert gamma is not None
        return gamma
    gamma = torch.full_like(p_t, signed[0])
    for bound, value in zip(thresholds, signed[1:], strict=True):
        step = torch.ge(p_t, bound, out=torch.empty_like(p_t))
        gamma = torch.lerp(gamma, torch.full_like(p_t, value), step)
    return gamma


@functools.lru_cache(maxsize=64)
def _exact_steps(values: tuple[float, ...], double: bool) -> bool:
    """Whether ``v_0 + d_1 + ... + d_k`` (``d_j = v_j - v_(j-1)`` as a Python float) equals
    ``v_k`` exactly at every ``k``, in float64 (``double``) or float32 arithmetic, rounded as
    the tensor operations round. The steps of increasing thresholds turn on in order, so these
    partial sums are the only values ``select_gamma`` forms."""

    def rounded(x: float) -> float:
        return x if double else struct.unpack("f", struct.pack("f", x))[0]

    start = rounded(values[0])
    diffs = [rounded(b - a) for a, b in itertools.pairwise(values)]
    total = start
    for k, d in enumerate(diffs, start=1):
        total = rounded(total + d)
        if total != rounded(values[k]):
            return False
    return True


MAX_MULTIPLIED_POWER = 8  # integer schedule values up to this are powers by multiplication


@functools.lru_cache(maxsize=64)
def integer_schedule(values: tuple[float, ...]) -> bool:
    """Whether every value of a schedule is an integer in ``[0, MAX_MULTIPLIED_POWER]`` (FLSD-53:
    5 and 3). Then ``stepped_power`` forms ``u ** gamma`` with a few multiplications and one
    selection per threshold, several times cheaper on the CPU than ``exp(gamma log u)`` per
    element, and ``gamma_of_steps`` sums the values exactly (small integers)."""
    return all(v.is_integer() and 0.0 <= v <= MAX_MULTIPLIED_POWER for v in values)


def schedule_steps(
    p_t: Tensor, thresholds: tuple[float, ...], out: Tensor | None = None
) -> list[Tensor]:
    """One 0/1 step per threshold, ``p_t >= threshold`` written as floats by the comparison
    (a bool mask costs several times more on the CPU); NaN ``p_t`` gives 0 everywhere. The last
    step is written into ``out`` when given (a free buffer of ``p_t``'s shape, or ``p_t`` itself
    when the caller gives it up), the others into fresh tensors."""
    p_t = p_t.detach()
    last = len(thresholds) - 1
    return [
        torch.ge(p_t, bound, out=out if out is not None and k == last else torch.empty_like(p_t))
        for k, bound in enumerate(thresholds)
    ]


def gamma_of_steps(steps: list[Tensor], values: tuple[float, ...], consume: bool = False) -> Tensor:
    """The schedule's gamma from ``schedule_steps``: ``v_0 + sum_k (v_k - v_(k-1)) step_k``,
    exact for an ``integer_schedule``. A fresh tensor, or written over ``steps[0]`` with
    ``consume``; the other steps are left as they are."""
    first = steps[0]
    start = first.new_full((), values[0])
    alpha = values[1] - values[0]
    gamma = torch.add(start, first, alpha=alpha, out=first if consume else None)
    for k in range(1, len(steps)):
        gamma.add_(steps[k], alpha=values[k + 1] - values[k])
    return gamma


def _int_power(u: Tensor, n: int, out: Tensor | None = None) -> Tensor:
    """``u ** n`` for ``0 <= n <= 8`` by PyTorch's square and cube kernels and multiplication
    (``pow`` with another integer exponent takes the slow general path on the CPU); in ``out``
    when given, else a fresh tensor; ``u ** 0 = 1``."""
    if n <= 1:
        if out is None:
            return torch.ones_like(u) if n == 0 else u.clone()
        return out.fill_(1.0) if n == 0 else out.copy_(u)
    if n % 3 == 0:  # 3, 6
        result = torch.pow(u, 3, out=out) if out is not None else u.pow(3)
        return result.square_() if n == 6 else result
    result = torch.square(u, out=out) if out is not None else u.square()  # 2, 4, 5, 7, 8
    if n == 7:
        result.mul_(u).square_()  # u ** 6
    elif n >= 4:
        result.square_()  # u ** 4
    if n in (5, 7):
        result.mul_(u)
    if n == 8:
        result.square_()
    return result


def stepped_power(
    u: Tensor,
    steps: list[Tensor],
    values: tuple[float, ...],
    *,
    overwrite: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """``u ** values[k]`` per element, ``k`` the number of steps that are 1, for an
    ``integer_schedule`` (``steps`` broadcast to ``u``); ``u ** 0 = 1``, also at ``u = 0``.

    The result is in ``out`` when given (a buffer the caller no longer needs), else in a fresh
    tensor; ``u`` is written over only with ``overwrite``. The powers are formed by
    multiplication and ``lerp`` selects between them along the steps, exact at the weights 0
    and 1 (its ends are finite: ``0 <= u <= 1``). Fresh buffers cost more than the arithmetic
    on the CPU (page faults), so with one threshold the two powers share ``u`` and ``out``:
    FLSD-53 is ``D = u ** 2`` (in ``out``), ``L = u ** 3`` (in place when ``overwrite``),
    ``D = D L = u ** 5``, ``D = lerp(D, L, step)``."""
    exponents = [int(v) for v in values]
    if len(exponents) == 2:
        low, high = sorted(exponents)
        diff = _int_power(u, high - low, out=out)  # before u is written over
        if low == 1 and not overwrite:
            lower = u
        elif overwrite and low <= 3:
            lower = u.fill_(1.0) if low == 0 else (u if low == 1 else u.pow_(low))
        else:
            lower = _int_power(u, low)
        higher = diff.mul_(lower) if low != 0 else diff
        start, end = (higher, lower) if exponents[0] == high else (lower, higher)
        return torch.lerp(start, end, steps[0], out=higher)
    powers = {e: u if e == 1 else _int_power(u, e) for e in set(exponents)}
    m = torch.lerp(powers[exponents[0]], powers[exponents[1]], steps[0], out=out)
    for e, step in zip(exponents[2:], steps[1:], strict=True):
        m.lerp_(powers[e], step)
    return m


def scheduled_modulator(u: Tensor, gamma: Tensor, detach: bool) -> Tensor:
    """``u ** gamma`` for a tensor ``gamma`` (detached, ``>= 0``), differentiable in ``u`` with
    a zero derivative where ``u = 0`` (as ``common.focal_modulator``; ``0 ** 0 = 1``)."""
    positive = u > 0
    base = torch.where(positive, u, torch.ones_like(u))
    m = torch.where(positive, base.pow(gamma), (gamma == 0).to(u.dtype))
    return m.detach() if detach else m


def poly_power(u: Tensor, gamma: float | Tensor) -> Tensor:
    """``u ** gamma`` for the Poly-1 term (a fresh tensor; 1 for a number gamma of 0)."""
    if isinstance(gamma, Tensor):
        return u.pow(gamma)
    if gamma == 0.0:
        return torch.ones_like(u)
    return u.square() if gamma == 2.0 else u.pow(gamma)


def poly_factor(
    epsilon: float, mp: Tensor, weight: Tensor | None, gamma: float | Tensor, detach: bool
) -> Tensor:
    """``A = e * W * (gamma + 1) * U ** gamma`` (without ``gamma + 1`` when detached), in place
    on ``mp`` (``U ** gamma``)."""
    if weight is not None:
        mp.mul_(weight)
    if detach:
        return mp.mul_(epsilon)
    if isinstance(gamma, Tensor):
        return mp.mul_(gamma + 1.0).mul_(epsilon)
    return mp.mul_(epsilon * (gamma + 1.0))


def tensor_power(u: Tensor, gamma: Tensor, zero_free: bool) -> Tensor:
    """``u ** gamma`` in place for a tensor ``gamma``: as ``exp(gamma log u)`` when no gamma is
    0 (several times cheaper than ``pow`` with a tensor exponent on the CPU), else by ``pow``
    (``0 ** 0 = 1``, where ``exp(0 * log 0)`` would be NaN)."""
    return u.log_().mul_(gamma).exp_() if zero_free else u.pow_(gamma)


def hard_target_terms(
    lp_t: Tensor,
    gamma: float | Tensor,
    detach_modulator: bool,
    p_t: Tensor | None = None,
    zero_free: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per-position factors of the focal term of one class, from its log-probability ``lp_t``.

    Returns ``(nl, s, q)``: ``nl = m * lp`` (the loss term is ``-nl``), ``s = -g / k``
    ``= m * (1 - gamma * r)`` (``m`` when the modulator is detached; None for gamma = 0,
    where it is 1), and ``q = p - 1 = expm1(lp)``, all fresh tensors owned by the caller.
    ``gamma`` is a number, or a per-position tensor (a schedule); ``p_t = exp(lp_t)`` when the
    caller has it.
    """
    q = torch.expm1(lp_t)  # p - 1, exact near p = 1
    if isinstance(gamma, Tensor):
        m = tensor_power(q.neg(), gamma, zero_free)  # 0 ** 0 = 1 for a piece of gamma 0
    elif gamma == 0.0:
        return lp_t.clone(), None, q
    else:
        m = q.square() if gamma == 2.0 else (q.neg() if gamma == 1.0 else q.neg().pow_(gamma))
    nl = lp_t * m
    if detach_modulator:
        return nl, m, q
    # -r = p * lp / (p - 1) in [0, 1]; NaN only for p * lp = 0 at p = 1 (0/0, where m = 0)
    # or p = 0 with lp = -inf (0 * inf, limit 0): both become 0.
    s = lp_t.exp().mul_(lp_t) if p_t is None else torch.mul(p_t, lp_t)
    s.div_(q).nan_to_num_(nan=0.0)
    if isinstance(gamma, Tensor):
        return nl, s.mul_(gamma).add_(1.0).mul_(m), q
    return nl, torch.addcmul(m, s, m, value=gamma), q  # m (1 + gamma (-r))


def hard_poly_terms(
    lp_t: Tensor,
    gamma: float | Tensor,
    detach_modulator: bool,
    coef: Tensor | None,
    epsilon: float,
    weight_t: Tensor | None,
    need_grad: bool,
    p_t: Tensor | None = None,
    zero_free: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The focal and Poly-1 terms of a hard target together, in few per-position passes.

    With ``u = 1 - p_t = -q``, ``m = u ** gamma``, ``k = coef`` (1 when None), ``w = weight_t``:
    ``loss = -m (k lp + e w q)`` (``= -k m lp + e w u ** (gamma + 1)``) and the gradient's
    scalar ``s = m (k (1 + gamma r') + e w (gamma + 1) p_t)`` (``m (k + e w p_t)`` when the
    modulator is detached or gamma is 0), ``r' = p_t lp / (p_t - 1)`` as in
    ``hard_target_terms``. Returns ``(loss, s, q)``."""
    q = torch.expm1(lp_t)  # p - 1, exact near p = 1
    scheduled = isinstance(gamma, Tensor)
    if scheduled:
        m: Tensor | None = tensor_power(q.neg(), gamma, zero_free)
    elif gamma == 0.0:
        m = None
    else:
        m = q.square() if gamma == 2.0 else (q.neg() if gamma == 1.0 else q.neg().pow_(gamma))
    inner = lp_t.clone() if coef is None else lp_t * coef
    if weight_t is None:
        inner.add_(q, alpha=epsilon)
    else:
        inner.addcmul_(q, weight_t, value=epsilon)
    loss = (inner if m is None else inner.mul_(m)).neg_()
    if not need_grad:
        return loss, None, q
    p = lp_t.exp() if p_t is None else p_t
    ep = p * epsilon if weight_t is None else torch.mul(p, weight_t).mul_(epsilon)
    if m is None or detach_modulator:
        s = ep.add_(1.0) if coef is None else ep.add_(coef)
    else:
        s = torch.mul(p, lp_t).div_(q).nan_to_num_(nan=0.0).mul_(gamma).add_(1.0)
        if coef is not None:
            s.mul_(coef)
        if scheduled:
            s.addcmul_(ep, gamma).add_(ep)
        else:
            s.add_(ep, alpha=gamma + 1.0)
    return loss, s if m is None else s.mul_(m), q


def per_position(
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
    extras: Extras = NO_EXTRAS,
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
        extras: a gamma schedule (``gamma`` is then unused) and the Poly-1 term.

    Returns:
        ``(loss, grad)``: loss ``(N, *)`` in ``compute_dtype``, 0 at ignored positions;
        grad ``(N, C, *)`` in ``compute_dtype`` or None.
    """
    rows = input.movedim(1, -1) if input.dim() > 2 else input
    if input.dim() > 2 and rows.is_contiguous():
        # Classes innermost in memory (channels_last and the like): the same computation over
        # (positions, C) rows of a view reads the logits in place, and the gradient comes back
        # in the input's layout (no copy by log_softmax, none by autograd for a leaf).
        num_classes = input.shape[1]
        probabilities = target.dim() == input.dim()
        flat_target = target.movedim(1, -1) if probabilities else target
        loss, grad = per_position(
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
            extras=extras,
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
            extras,
        )
    options = dict(
        class_coef=class_coef,
        grad_scale=grad_scale,
        gamma=gamma,
        eps=label_smoothing,
        detach_modulator=detach_modulator,
        compute_dtype=compute_dtype,
        extras=extras,
    )
    chunks = chunk_slices(input)
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
    extras: Extras = NO_EXTRAS,
) -> tuple[Tensor, Tensor | None]:
    """Probability targets, or smoothed class indices: ``k_c`` is non-zero for every class.

    Writes ``k = K_dense + onehot(t) * hard_k``, where ``K_dense = w*a*((1-eps)*target + eps/C)``
    for probabilities and ``w*a*eps/C`` for indices, whose target class adds
    ``hard_k = (1 - eps) * w_t * a_t``. With ``ng = -g`` (see the module docstring) the gradient
    is ``p * sum_c ng - ng``; it is written into ``out`` when given. At most four buffers of the
    input's size live at once (the caller passes cache-sized pieces).
    """
    num_classes, ndim = input.shape[1], input.dim()
    wa = None if class_coef is None else class_view(class_coef, ndim)
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

    # Schedule and Poly-1: the target distribution q (probabilities) or log p_t (indices).
    p = None
    lp_t = q_dist = None
    if extras.active:
        if index is not None:
            lp_t = lp.gather(1, index).squeeze(1)
        else:
            q_dist = target.to(compute_dtype, copy=True)
            if eps != 0.0:
                q_dist.mul_(1.0 - eps).add_(eps / num_classes)
    focal_gamma: float | Tensor = gamma
    steps = None  # an integer schedule's 0/1 steps per position (see stepped_power)
    if extras.scheduled:  # gamma per position from the detached P = sum_c q_c p_c
        if lp_t is not None:
            big_p = lp_t.exp().mul_(1.0 - eps).add_(eps / num_classes)
        else:
            p = lp.exp()
            big_p = torch.mul(q_dist, p).sum(1)
        if integer_schedule(extras.values):
            steps = schedule_steps(big_p, extras.thresholds)  # kept for the modulator
            focal_gamma = gamma_of_steps(steps, extras.values)
        else:
            focal_gamma = select_gamma(big_p, extras.thresholds, extras.values)
    scheduled = isinstance(focal_gamma, Tensor)
    class_gamma = focal_gamma.unsqueeze(1) if scheduled else focal_gamma

    focal = scheduled or gamma != 0.0
    with_r = focal and need_grad and not detach_modulator
    if focal:
        km = torch.expm1(lp)  # p - 1, exact near p = 1
        if with_r:  # 1 - gamma * r, with -r = p * lp / (p - 1), 0 where it is 0/0 (see above)
            p = lp.exp() if p is None else p  # kept for the gradient
            c = torch.mul(p, lp).div_(km).nan_to_num_(nan=0.0).mul_(class_gamma).add_(1.0)
        km.neg_()
        if steps is not None:  # integer powers by multiplication, selected per position;
            # the gradient's buffer `out` is free until the end (km is dead by then)
            class_steps = [step.unsqueeze(1) for step in steps]
            km = stepped_power(km, class_steps, extras.values, overwrite=True, out=out)
        elif scheduled:  # the kernels' exp(gamma log(1 - p)) where no piece is 0 (tensor_power)
            tensor_power(km, class_gamma, extras.zero_free)
        elif gamma != 1.0:
            km.pow_(class_gamma)
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
    q_t = None
    if index is not None and eps != 1.0:
        if lp_t is None:
            lp_t = lp.gather(1, index).squeeze(1)
        hard_k = (1.0 - eps) * (
            class_coef[target] if class_coef is not None else torch.ones_like(lp_t)
        )
        nl, hard_s, q_t = hard_target_terms(
            lp_t, focal_gamma, detach_modulator, zero_free=extras.zero_free
        )
        loss.sub_(nl.mul_(hard_k))
        hard_ng = hard_k if hard_s is None else hard_s.mul_(hard_k)

    if extras.poly1 != 0.0:
        # U = sum_c q_c (1 - p_c); W = w_t (indices) or sum_c w_c target_c (probabilities).
        poly_w = extras.poly_weight
        if index is not None:
            q_t = torch.expm1(lp_t) if q_t is None else q_t
            big_u = q_t.neg().mul_(1.0 - eps).add_(eps * (num_classes - 1) / num_classes)
            weight_t = None if poly_w is None else poly_w[target]
        else:
            big_u = torch.expm1(lp).neg_().mul_(q_dist).sum(1)
            weight_t = None
            if poly_w is not None:
                weight_t = (target.to(compute_dtype) * class_view(poly_w, ndim)).sum(1)
        mp = poly_power(big_u, focal_gamma)
        term = torch.mul(big_u, mp)  # U ** (gamma + 1)
        if weight_t is not None:
            term.mul_(weight_t)
        loss.add_(term, alpha=extras.poly1)
        if need_grad:
            factor = poly_factor(extras.poly1, mp, weight_t, focal_gamma, detach_modulator)
            if index is not None:
                if eps != 1.0:  # A (1 - eps) p_t (p - onehot): a share of the target's scalar
                    share = factor.mul_(lp_t.exp()).mul_(1.0 - eps)
                    hard_ng = hard_ng.add_(share)  # type: ignore[union-attr]
            else:  # dU/dz_j = p_j (P - q_j): ng_j gains A q_j p_j, its sum A P
                p = lp.exp() if p is None else p
                ng = ng.add_(q_dist.mul_(p).mul_(factor.unsqueeze(1)))  # type: ignore[union-attr]

    unfinished = None
    if ignored is not None:
        unfinished = nonfinite_ignored(loss, ignored) if need_grad else None
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
        zero_ignored_rows_(grad, unfinished)
    return loss, grad


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
    extras: Extras = NO_EXTRAS,
) -> tuple[Tensor, Tensor | None]:
    """Hard (index) targets without smoothing: all focal factors are per-position scalars."""
    index = target.unsqueeze(1)
    lp = torch.log_softmax(input, dim=1, dtype=compute_dtype)
    lp_t = lp.gather(1, index).squeeze(1)
    unfinished = None
    if ignored is not None and need_grad:
        unfinished = nonfinite_ignored(lp_t, ignored)
    focal_gamma: float | Tensor = gamma
    p_t = None
    if extras.scheduled:
        p_t = lp_t.exp()
        focal_gamma = select_gamma(p_t, extras.thresholds, extras.values)
    coef = class_coef[target] if class_coef is not None else None
    if extras.poly1 != 0.0:  # + e * w_t * (1 - p_t) ** (gamma + 1), folded into s
        weight_t = None if extras.poly_weight is None else extras.poly_weight[target]
        loss, s, q = hard_poly_terms(
            lp_t,
            focal_gamma,
            detach_modulator,
            coef,
            extras.poly1,
            weight_t,
            need_grad,
            p_t,
            extras.zero_free,
        )
        coef = None  # s holds it
    else:
        nl, s, q = hard_target_terms(lp_t, focal_gamma, detach_modulator, p_t, extras.zero_free)
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
    grad = lp.exp_().mul_(s)  # the log-softmax buffer becomes the gradient
    grad.scatter_(1, index, q.unsqueeze(1).mul_(s))
    if unfinished is not None:
        zero_ignored_rows_(grad, unfinished)
    return loss, grad


def composite(spec: SoftmaxFocalSpec, input: Tensor) -> Tensor:
    """The softmax focal loss of ``spec``, reduced, from differentiable operations at ``input``
    (``spec.input`` or a tensor of its shape; see ``focalloss._torch.common``)."""
    target, ignored, class_coef = spec.target, spec.ignored, spec.coef
    gamma, label_smoothing = spec.gamma, spec.label_smoothing
    dtype = spec.compute_dtype
    x = input.to(dtype)
    if ignored is not None:  # whatever ignored positions hold (NaN, inf) must not reach autograd
        x = torch.where(ignored.unsqueeze(1), 0.0, x)
    lp = torch.log_softmax(x, dim=1)
    num_classes = lp.shape[1]
    q = target.to(dtype) if target.is_floating_point() else one_hot(target, num_classes, dtype)
    if label_smoothing != 0.0:
        q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
    q_dist = q
    if class_coef is not None:
        q = q * class_view(class_coef.to(dtype), lp.dim())
    one_minus_p = -torch.expm1(lp)
    # A class without target mass contributes 0, also where it is masked with a -inf logit
    # (0 * -inf would be NaN): log p is replaced there before the product, so that no NaN
    # reaches the backward pass either.
    lp_used = torch.where(q != 0, lp, 0.0)
    focal_gamma: float | Tensor = gamma
    if spec.scheduled:  # a constant of each position, from the detached P = sum_c q_c p_c
        big_p = (q_dist * lp.exp()).sum(1).detach()
        focal_gamma = scheduled_gamma(big_p, spec.gamma_thresholds, spec.gamma_values)
        m = scheduled_modulator(one_minus_p, focal_gamma.unsqueeze(1), spec.detach_modulator)
    else:
        m = focal_modulator(one_minus_p, gamma, spec.detach_modulator)
    terms = q * lp_used if m is None else q * m * lp_used
    loss = -terms.sum(1)
    if spec.poly1_epsilon != 0.0:
        big_u = (q_dist * one_minus_p).sum(1)
        if spec.detach_modulator:
            mp = big_u.pow(focal_gamma).detach()
            term = mp * big_u
        else:
            term = big_u.pow(focal_gamma + 1.0)
        if spec.poly_weight is not None:
            w = spec.poly_weight.to(dtype)
            if target.is_floating_point():
                term = term * (target.to(dtype) * class_view(w, lp.dim())).sum(1)
            else:
                term = term * w[target]
        loss = loss + spec.poly1_epsilon * term
    if ignored is not None:
        loss = torch.where(ignored, 0.0, loss)
    return reduce_composite(loss, spec)
