# ruff: noqa: N803, SIM108  (Triton: upper-case constexpr parameters; static if-blocks)
"""Triton kernels of the asymmetric loss and FL*: loss and input gradient in one launch.

One elementwise kernel serves both (``LOSS`` selects the terms); it reads the logits, the
target (float labels, or class indices compared with the class of each element), the
elementwise weight and the ignored mask through the ``(N, C, S)`` frames of
``focalloss._triton.frames`` (any layout, int64 offsets, a 1-D grid), and writes the loss
(per element, or one partial sum per program: no atomics, bit-identical reruns) and the
gradient of ``sum(scale * loss)`` in the input's dtype. The math is the one of
``focalloss._torch.asymmetric`` and ``focalloss._torch.focal_star`` (see their docstrings):

asymmetric, with ``p``, ``q = 1 - p``, ``p_m = max(p - clip, 0)``::

    A = q^gp softplus(-x),                   dA/dx = -q^gp (q + gp p softplus(-x))
    B = p_m^gn (-log(1 - p_m))   (clip > 0), dB/dx = p q p_m^gn (gn nce / p_m + 1 / (q + clip))
    B = p^gn softplus(x)         (clip = 0), dB/dx = p^gn (p + gn q softplus(x))
    loss = t A + (1 - t) B (class indices: the one term of the element)

FL*, with ``z = gamma x (2t - 1) + beta``::

    loss = a_t softplus(-z) / gamma,    dloss/dx = -a_t (2t - 1) sigmoid(-z)

``p``, ``q``, ``softplus(+-x)`` come from ``e = exp(-|x|)`` without cancellation; powers are
``exp(k log(base))`` (exactly 0 at base 0), ``log1p`` is Kahan's form (this Triton has none).
Floats reach the kernel through a small device tensor written by fills (float64 inputs must
not see a float32-rounded parameter). The launchers are ``torch.library`` custom operators
with fake implementations whose gradient strides come from ``frames.grad_buffer``.

This module imports ``triton``: it is imported only when the Triton path runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .frames import blocks, framed, framed_grad, grad_buffer, grid
from .kernels import (
    _class_block,
    _log1p,
    _modulator,
    _not_ignored,
    _position_scale,
    _position_tile,
)
from .ops import _acc, _acc_dtype, _params


@triton.jit
def _classification_fwd_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    alpha_ptr,
    scale_ptr,
    loss_ptr,
    grad_ptr,
    C,
    S,
    stride_xn,
    stride_xc,
    stride_xs,
    stride_tn,
    stride_tc,
    stride_ts,
    stride_wn,
    stride_wc,
    stride_ws,
    stride_gn,
    stride_gc,
    stride_gs,
    stride_ln,
    stride_lc,
    stride_ls,
    ignored_ptr,  # the ignored mask, framed like an index target (read when HAS_IGNORE)
    stride_mn,
    stride_ms,
    params_ptr,  # asymmetric: [gamma_pos, gamma_neg, clip]; FL*: [gamma, beta, alpha]
    LOSS: tl.constexpr,  # 0: asymmetric, 1: FL*
    INDEX: tl.constexpr,
    HAS_W: tl.constexpr,
    ALPHA_MODE: tl.constexpr,  # FL*: 0 none, 1 scalar, 2 per class
    HAS_IGNORE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ZERO_POS: tl.constexpr,  # asymmetric: gamma_pos == 0
    ZERO_NEG: tl.constexpr,  # asymmetric: gamma_neg == 0
    CLIP: tl.constexpr,  # asymmetric: clip > 0
    DETACH: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    PER_ELEMENT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid, n, offs_s, in_s = _position_tile(S, BLOCK_S)
    param0 = tl.load(params_ptr).to(ACC)
    param1 = tl.load(params_ptr + 1).to(ACC)
    param2 = tl.load(params_ptr + 2).to(ACC)
    valid = in_s
    if INDEX:
        target = tl.load(t_ptr + n * stride_tn + offs_s * stride_ts, mask=in_s, other=0)
        target = target.to(tl.int64)
        if HAS_IGNORE:
            valid = _not_ignored(valid, ignored_ptr, stride_mn, stride_ms, n, offs_s, in_s)
    scale = _position_scale(valid, scale_ptr, HAS_SCALE, ACC)
    partial = tl.zeros([BLOCK_S], ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        in_c = offs_c < C
        mask = in_c[:, None] & in_s[None, :]
        x = _class_block(x_ptr, stride_xn, stride_xc, stride_xs, n, offs_c, offs_s, mask, ACC)
        if INDEX:
            t = tl.where(offs_c[:, None] == target[None, :], 1.0, 0.0).to(ACC)
        else:
            t = _class_block(t_ptr, stride_tn, stride_tc, stride_ts, n, offs_c, offs_s, mask, ACC)
        if LOSS == 0:
            gp = param0
            gn = param1
            clip = param2
            e = tl.exp(-tl.abs(x))
            log_term = _log1p(e)
            big = 1.0 / (1.0 + e)
            small = e * big
            p = tl.where(x >= 0, big, small)
            q = tl.where(x >= 0, small, big)
            sp_pos = tl.maximum(-x, 0.0) + log_term  # -log p
            m_pos = _modulator(q, gp, ZERO_POS)
            loss_a = m_pos * sp_pos
            if CLIP:
                pm = p - clip
                pm = tl.where(pm < 0.0, 0.0, pm)  # (not maximum: NaN must stay NaN)
                nce = -_log1p(-pm)  # -log(1 - p_m), at most -log(clip)
                m_neg = _modulator(pm, gn, ZERO_NEG)
                loss_b = m_neg * nce
            else:
                sp_neg = tl.maximum(x, 0.0) + log_term  # -log(1 - p)
                m_neg = _modulator(p, gn, ZERO_NEG)
                loss_b = m_neg * sp_neg
            if INDEX:  # t is exactly 0 or 1: pick the term
                loss = tl.where(t > 0.0, loss_a, loss_b)
            else:
                loss = t * loss_a + (1.0 - t) * loss_b
        else:
            gamma = param0
            beta = param1
            alpha = param2
            sign = 2.0 * t - 1.0
            z = gamma * (x * sign) + beta
            ez = tl.exp(-tl.abs(z))
            sp = tl.maximum(-z, 0.0) + _log1p(ez)  # softplus(-z) = -log sigmoid(z)
            sig_neg = tl.where(z >= 0, ez / (1.0 + ez), 1.0 / (1.0 + ez))  # sigmoid(-z)
            a_t = tl.full(x.shape, 1.0, ACC)
            if ALPHA_MODE == 1:
                a_t = alpha * t + (1.0 - alpha) * (1.0 - t)
            if ALPHA_MODE == 2:
                a = tl.load(alpha_ptr + offs_c, mask=in_c, other=0.0).to(ACC)[:, None]
                a_t = a * t + (1.0 - a) * (1.0 - t)
            loss = a_t * sp / gamma
        w = tl.full(x.shape, 1.0, ACC)
        if HAS_W:
            w = tl.load(
                w_ptr + n * stride_wn + offs_c[:, None] * stride_wc + offs_s[None, :] * stride_ws,
                mask=mask,
                other=0.0,
            ).to(ACC)
        loss = tl.where(mask & valid[None, :], w * loss, 0.0)
        if PER_ELEMENT:
            ptrs = (
                loss_ptr + n * stride_ln + offs_c[:, None] * stride_lc + offs_s[None, :] * stride_ls
            )
            tl.store(ptrs, loss, mask=mask)
        else:
            partial += tl.sum(loss, axis=0)
        if NEED_GRAD:
            if LOSS == 0:
                if DETACH or ZERO_POS:
                    grad_a = -m_pos * q
                else:
                    grad_a = -m_pos * (q + gp * p * sp_pos)
                if CLIP:
                    inner = 1.0 / (q + clip)
                    if not (DETACH or ZERO_NEG):
                        live = pm > 0.0
                        inner += gn * tl.where(live, nce / tl.where(live, pm, 1.0), 0.0)
                    grad_b = tl.where(pm == 0.0, 0.0, p * q * m_neg * inner)
                else:
                    if DETACH or ZERO_NEG:
                        grad_b = m_neg * p
                    else:
                        grad_b = m_neg * (p + gn * q * sp_neg)
                if INDEX:
                    g = tl.where(t > 0.0, grad_a, grad_b)
                else:
                    g = t * grad_a + (1.0 - t) * grad_b
            else:
                g = -a_t * sign * sig_neg
            # where, not only the zero scale: an ignored position's logits may be NaN or inf
            g = tl.where(valid[None, :], w * g * scale[None, :], 0.0)
            ptrs = (
                grad_ptr + n * stride_gn + offs_c[:, None] * stride_gc + offs_s[None, :] * stride_gs
            )
            tl.store(ptrs, g.to(grad_ptr.dtype.element_ty), mask=mask)
    if not PER_ELEMENT:
        tl.store(loss_ptr + pid, tl.sum(partial, axis=0))


def _launch(
    loss_kind: int,
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    weight: Tensor | None,
    alpha_vector: Tensor | None,
    scale: Tensor | None,
    params: tuple[float, float, float],
    flags: dict[str, object],
    per_element: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    index = not target.is_floating_point()
    x, (n, c, s), x_strides = framed(input, class_dim=True)
    t, _, t_frame = framed(target, class_dim=not index)
    t_strides = (t_frame[0], 0, t_frame[2]) if index else t_frame
    if ignored is None:
        mask, m_n, m_s = x, 0, 0
    else:
        mask, _, (m_n, _, m_s) = framed(ignored.view(torch.uint8), class_dim=False)
    if weight is None:
        w, w_strides = x, (0, 0, 0)
    else:
        w, _, w_strides = framed(weight, class_dim=True)
    block_c, block_s = blocks(c, s, class_chunk=64)
    launch = grid(n, s, block_s)
    acc_dtype = _acc_dtype(input)
    if per_element:
        loss = grad_buffer(input, dtype=acc_dtype)
        _, _, l_strides = framed(loss, class_dim=True)
    else:
        loss = input.new_empty(launch[0], dtype=acc_dtype)
        l_strides = (0, 0, 0)
    grad, g_strides = framed_grad(input, need_grad)
    _classification_fwd_kernel[launch](
        x,
        t,
        w,
        alpha_vector if alpha_vector is not None else x,
        scale if scale is not None else x,
        loss,
        grad,
        c,
        s,
        *x_strides,
        *t_strides,
        *w_strides,
        *g_strides,
        *l_strides,
        mask,
        m_n,
        m_s,
        _params(input, *params),
        LOSS=loss_kind,
        INDEX=index,
        HAS_W=weight is not None,
        HAS_IGNORE=ignored is not None,
        HAS_SCALE=scale is not None,
        NEED_GRAD=need_grad,
        PER_ELEMENT=per_element,
        ACC=_acc(input.dtype),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        **flags,
    )
    return (loss if per_element else loss.sum()), grad


def _fake(input: Tensor, per_element: bool, need_grad: bool) -> tuple[Tensor, Tensor]:
    acc_dtype = _acc_dtype(input)
    loss = (
        grad_buffer(input, dtype=acc_dtype) if per_element else input.new_empty((), dtype=acc_dtype)
    )
    return loss, grad_buffer(input) if need_grad else input.new_empty(0)


@torch.library.custom_op("focalloss::asymmetric_fwd", mutates_args=())
def asymmetric_fwd(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    weight: Tensor | None,
    scale: Tensor | None,
    gamma_pos: float,
    gamma_neg: float,
    clip: float,
    detach_modulator: bool,
    per_element: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Asymmetric loss, float labels or class indices (see the kernel for the math)."""
    flags = dict(
        ALPHA_MODE=0,
        ZERO_POS=gamma_pos == 0.0,
        ZERO_NEG=gamma_neg == 0.0,
        CLIP=clip > 0.0,
        DETACH=detach_modulator,
    )
    return _launch(
        0,
        input,
        target,
        ignored,
        weight,
        None,
        scale,
        (gamma_pos, gamma_neg, clip),
        flags,
        per_element,
        need_grad,
    )


@asymmetric_fwd.register_fake
def _(input, target, ignored, weight, scale, gamma_pos, gamma_neg, clip, detach_modulator,
      per_element, need_grad):  # fmt: skip
    return _fake(input, per_element, need_grad)


@torch.library.custom_op("focalloss::focal_star_fwd", mutates_args=())
def focal_star_fwd(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    weight: Tensor | None,
    alpha_vector: Tensor | None,
    scale: Tensor | None,
    gamma: float,
    beta: float,
    alpha: float,
    alpha_mode: int,
    per_element: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    """FL*, float labels or class indices (see the kernel for the math)."""
    flags = dict(ALPHA_MODE=alpha_mode, ZERO_POS=False, ZERO_NEG=False, CLIP=False, DETACH=False)
    return _launch(
        1,
        input,
        target,
        ignored,
        weight,
        alpha_vector,
        scale,
        (gamma, beta, alpha),
        flags,
        per_element,
        need_grad,
    )


@focal_star_fwd.register_fake
def _(input, target, ignored, weight, alpha_vector, scale, gamma, beta, alpha, alpha_mode,
      per_element, need_grad):  # fmt: skip
    return _fake(input, per_element, need_grad)
