# ruff: noqa: N803
"""Triton kernel of :func:`focalloss.linear_focal_loss`: loss and logits gradient of one chunk.

The chunk's logits ``z`` ``(n, V)`` come from the matmul ``x W^T + b``; one program per row
reads them (three passes over the classes at most: online logsumexp, the smoothed part's sums,
the gradient) and overwrites them in place with their gradient (Liger-Kernel's approach), which
the caller then contracts with ``W`` and ``x``. The math is the one of
``focalloss._linear_torch`` (its docstring derives it):

    y = c tanh(z / c) (softcap; else y = z),  lp = y - logsumexp(y),  p = exp(lp)
    loss = -sum_c k_c m_c lp_c - h m_t lp_t + e1 w_t (1 - P)^(gamma+1) + lam lse^2
    dloss/dy = p (S + b + zl) - ng - b onehot(t),    dloss/dz = dloss/dy (1 - tanh^2(z / c))

with the target entry written as ``p_t (S + zl) - ng_t + b (p_t - 1)``, ``p_t - 1`` from
``expm1`` (no cancellation where ``p_t`` rounds to 1), ``u = p lp / (p - 1)`` in [0, 1] (0 where
it is 0/0) and ``(1 - p)^gamma = exp(gamma log(1 - p))`` (exactly 0 at ``1 - p = 0``).
A gamma schedule (``SCHEDULE_K`` thresholds, in the parameters after ``z_loss``: the
thresholds, then the ``SCHEDULE_K + 1`` values) makes ``gamma`` a per-row value chosen from the
detached ``P = (1 - eps) p_t + eps / V`` by the softmax kernels' helper (``_scheduled_gamma``),
once per program after the logsumexp; ``SCHEDULE_K = 0`` compiles to the kernel without it.
``tanh`` and ``1 - tanh^2`` come from ``e = exp(-2|x|)``: ``tanh|x| = -expm1(-2|x|) / (1 + e)``
and ``1 - tanh^2 = 4e / (1 + e)^2``, both exact for small and large ``|x|``. The loss math runs
in float32 (float64 for float64 logits); the gradient is stored in the logits' dtype.

This module imports ``triton``: it is imported only when the Triton path runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._spec import constant_vector
from .kernels import _focal_power, _scheduled_gamma


@triton.jit
def _expm1(x):
    """exp(x) - 1 without cancellation near 0 (Kahan)."""
    u = tl.exp(x)
    um1 = u - 1.0
    safe_log = tl.where(u == 1.0, 1.0, tl.log(u))
    return tl.where(u == 1.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / safe_log))


@triton.jit
def _softcap(z, cap):
    """(cap * tanh(z / cap), 1 - tanh(z / cap)^2)."""
    a = tl.abs(z / cap)
    em = _expm1(-2.0 * a)  # e - 1, in (-1, 0]
    e = em + 1.0
    t = -em / (1.0 + e)
    t = tl.where(z < 0, -t, t)
    return cap * t, 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _linear_focal_rows_kernel(
    z_ptr,
    stride_z,
    t_ptr,
    coef_ptr,
    w_ptr,
    scale_ptr,
    loss_ptr,
    V,
    params_ptr,  # [gamma, eps, poly1, softcap, z_loss, thresholds..., values...] (acc. dtype)
    ignore_index,
    HAS_COEF: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    SCALE_MODE: tl.constexpr,  # 0: none, 1: one value, 2: one per row
    GAMMA_ZERO: tl.constexpr,
    SMOOTH: tl.constexpr,
    POLY: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ZLOSS: tl.constexpr,
    SCHEDULE_K: tl.constexpr,  # thresholds of a gamma schedule (0: the number gamma)
    NEED_GRAD: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    gamma = tl.load(params_ptr).to(ACC)
    eps = tl.load(params_ptr + 1).to(ACC)
    poly = tl.load(params_ptr + 2).to(ACC)
    cap = tl.load(params_ptr + 3).to(ACC)
    lam = tl.load(params_ptr + 4).to(ACC)
    neg_inf = float("-inf")

    # Pass 1: online max and sum of exponentials -> logsumexp.
    run_max = tl.max(tl.full([BLOCK_V], neg_inf, ACC), axis=0)
    run_sum = tl.sum(tl.zeros([BLOCK_V], ACC), axis=0)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < V
        y = tl.load(z_row + offs, mask=mask, other=0.0).to(ACC)
        if SOFTCAP:
            y, _ = _softcap(y, cap)
        y = tl.where(mask, y, neg_inf)
        new_max = tl.maximum(run_max, tl.max(y, axis=0))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(y - new_max), axis=0)
        run_max = new_max
    lse = run_max + tl.log(run_sum)

    # The target class.
    t = tl.load(t_ptr + row).to(tl.int64)
    valid = t != ignore_index
    if HAS_IGNORE:
        t = tl.where(valid, t, 0)
    y_t = tl.load(z_row + t).to(ACC)
    if SOFTCAP:
        y_t, _ = _softcap(y_t, cap)
    lp_t = y_t - lse
    q_t = _expm1(lp_t)  # p_t - 1
    p_t = tl.exp(lp_t)
    SCHEDULED: tl.constexpr = SCHEDULE_K > 0
    if SCHEDULED:  # gamma of this row, from the detached P = (1 - eps) p_t + eps / V
        p_sel = p_t
        if SMOOTH:
            p_sel = p_t * (1.0 - eps) + eps / V
        # The helper reads the thresholds from its pointer + 3: here they start at params[5].
        gamma = _scheduled_gamma(params_ptr + 2, p_sel, SCHEDULE_K, ACC)
    coef_t = 1.0
    if HAS_COEF:
        coef_t = tl.load(coef_ptr + t).to(ACC)
    hard_k = coef_t * (1.0 - eps)
    m_t = _focal_power(-q_t, gamma, GAMMA_ZERO, SCHEDULED)
    loss = -hard_k * m_t * lp_t
    if GAMMA_ZERO:
        b = hard_k * m_t
    else:
        u_t = tl.where((q_t == 0.0) | (p_t == 0.0), 0.0, p_t * lp_t / q_t)
        b = hard_k * m_t * (1.0 + gamma * u_t)
    if POLY:
        w_t = 1.0
        if HAS_W:
            w_t = tl.load(w_ptr + t).to(ACC)
        one_minus = -q_t * (1.0 - eps) + eps * (V - 1) / V
        mp = _focal_power(one_minus, gamma, GAMMA_ZERO, SCHEDULED)
        loss += poly * w_t * mp * one_minus
        b += poly * w_t * (gamma + 1.0) * (1.0 - eps) * mp * p_t
    zl = 0.0
    if ZLOSS:
        loss += lam * lse * lse
        zl = 2.0 * lam * lse

    # Pass 2 (smoothing): the smoothed part k_c = eps / V * coef_c over every class.
    total = 0.0
    if SMOOTH:
        dense = tl.zeros([BLOCK_V], ACC)
        ng_sum = tl.zeros([BLOCK_V], ACC)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            mask = offs < V
            y = tl.load(z_row + offs, mask=mask, other=0.0).to(ACC)
            if SOFTCAP:
                y, _ = _softcap(y, cap)
            lp = y - lse
            q = _expm1(lp)
            k = eps / V
            if HAS_COEF:
                k = k * tl.load(coef_ptr + offs, mask=mask, other=0.0).to(ACC)
            km = tl.where(mask, k * _focal_power(-q, gamma, GAMMA_ZERO, SCHEDULED), 0.0)
            dense += km * lp
            if GAMMA_ZERO:
                ng_sum += km
            else:
                p = tl.exp(lp)
                u = tl.where((q == 0.0) | (p == 0.0), 0.0, p * lp / q)
                ng_sum += km * (1.0 + gamma * u)
        loss -= tl.sum(dense, axis=0)
        total = tl.sum(ng_sum, axis=0)

    if HAS_IGNORE:
        loss = tl.where(valid, loss, 0.0)
    tl.store(loss_ptr + row, loss)

    if NEED_GRAD:
        scale = 1.0
        if SCALE_MODE == 1:
            scale = tl.load(scale_ptr).to(ACC)
        if SCALE_MODE == 2:
            scale = tl.load(scale_ptr + row).to(ACC)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            mask = offs < V
            y = tl.load(z_row + offs, mask=mask, other=0.0).to(ACC)
            if SOFTCAP:
                y, chain = _softcap(y, cap)
            lp = y - lse
            p = tl.exp(lp)
            is_t = offs == t
            g = p * (total + zl) + tl.where(is_t, b * q_t, b * p)
            if SMOOTH:
                q = _expm1(lp)
                k = eps / V
                if HAS_COEF:
                    k = k * tl.load(coef_ptr + offs, mask=mask, other=0.0).to(ACC)
                km = k * _focal_power(-q, gamma, GAMMA_ZERO, SCHEDULED)
                if GAMMA_ZERO:
                    g -= km
                else:
                    u = tl.where((q == 0.0) | (p == 0.0), 0.0, p * lp / q)
                    g -= km * (1.0 + gamma * u)
            if SOFTCAP:
                g = g * chain
            g = g * scale
            if HAS_IGNORE:  # where, not a zero scale: an ignored row's logits may be anything
                g = tl.where(valid, g, 0.0)
            tl.store(z_row + offs, g.to(z_ptr.dtype.element_ty), mask=mask)


def linear_focal_rows_(
    z: Tensor,
    target: Tensor,
    class_coef: Tensor | None,
    target_weight: Tensor | None,
    scale: Tensor | None,
    spec,
    need_grad: bool,
) -> Tensor:
    """Per-row loss of the chunk logits ``z`` ``(n, V)`` (contiguous rows); with ``need_grad``
    ``z`` is overwritten by the gradient of ``sum(scale * loss)``. ``scale`` is 0-d or one
    value per row (None: 1); ``spec`` is a ``focalloss._linear_torch.Spec``."""
    n, num_classes = z.shape
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    loss = torch.empty(n, dtype=acc, device=z.device)
    if n == 0:
        return loss
    assert z.stride(1) == 1
    # The scalars as a cached device vector (float64 when computing in float64, which Triton's
    # scalar arguments would round to float32); no host-to-device copy after the first call.
    params = constant_vector(
        # gamma is NaN with a schedule (unused then): 0.0 keeps the cache key equal to itself
        (0.0 if spec.scheduled else spec.gamma, spec.eps, spec.poly1, spec.softcap or 1.0)
        + (spec.z_loss,)
        + ((*spec.thresholds, *spec.values) if spec.scheduled else ()),
        z.device,
        acc,
    )
    scale_mode = 0 if scale is None else (1 if scale.dim() == 0 else 2)
    if scale is not None:
        scale = scale.to(acc).contiguous()
    block = min(triton.next_power_of_2(num_classes), 4096 if z.is_cuda else 1024)
    _linear_focal_rows_kernel[(n,)](
        z,
        z.stride(0),
        target.contiguous(),
        class_coef if class_coef is not None else params,
        target_weight if target_weight is not None else params,
        scale if scale is not None else params,
        loss,
        num_classes,
        params,
        int(spec.ignore_index),
        HAS_COEF=class_coef is not None,
        HAS_W=target_weight is not None,
        HAS_IGNORE=spec.has_ignore,
        SCALE_MODE=scale_mode,
        GAMMA_ZERO=not spec.scheduled and spec.gamma == 0.0,
        SMOOTH=spec.eps != 0.0,
        POLY=spec.poly1 != 0.0,
        SOFTCAP=spec.softcap != 0.0,
        ZLOSS=spec.z_loss != 0.0,
        SCHEDULE_K=len(spec.thresholds),
        NEED_GRAD=need_grad,
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_V=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return loss
