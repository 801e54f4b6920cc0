# ruff: noqa: N803
"""Triton kernels of the detection losses and their launchers (``torch.ops.focalloss.*``).

``quality_sigmoid_fwd`` computes the varifocal (``mode=0``) or the quality focal (``mode=1``)
loss: elementwise sigmoid terms like ``sigmoid_focal_loss``, over the same ``(N, C, S)`` frames
(see ``focalloss._triton.kernels``), against dense float scores or class indices plus a score
per position (the one-hot is formed in registers). ``distribution_focal_fwd`` computes the
distribution focal loss: an online-logsumexp softmax over the ``n + 1`` bins of each position,
then the two picked bins. Both return ``(loss, grad)``: the loss (0-d sum, per element or per
position) in the accumulation dtype and the gradient of ``sum(scale * loss)`` in the input's
dtype, in one launch. The math is the one of ``focalloss._torch.detection`` (see its
docstring), term by term.

Floats reach the kernels through a small device tensor written by fills (float64 inputs must
not see a float32 rounding of ``alpha``/``gamma``); nothing reads a tensor on the host.
Reductions write one partial sum per program: the same launch gives bit-identical results.
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
from .ops import _acc, _acc_dtype, _mask_frame, _params

VARIFOCAL, QUALITY_FOCAL = 0, 1
# How the loss is returned: a sum per program, per element (VFL "none"), per position.
SUM, PER_ELEMENT, PER_POSITION = 0, 1, 2


@triton.jit
def _quality_sigmoid_fwd_kernel(
    x_ptr,
    t_ptr,  # dense scores (N, C, S), or class indices (N, S) (INDEX)
    s_ptr,  # the labelled class's score (N, S) (INDEX)
    w_ptr,
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
    stride_sn,
    stride_ss,
    stride_wn,
    stride_wc,
    stride_ws,
    stride_gn,
    stride_gc,
    stride_gs,
    stride_ln,
    stride_lc,
    stride_ls,
    ignored_ptr,
    stride_mn,
    stride_ms,
    params_ptr,  # [alpha, exponent (gamma or beta)] in the accumulation dtype
    MODE: tl.constexpr,  # 0: varifocal, 1: quality focal
    INDEX: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    EXP_ZERO: tl.constexpr,
    DETACH: tl.constexpr,
    IOU: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    OUT: tl.constexpr,  # 0: sum, 1: per element, 2: per position
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid, n, offs_s, in_s = _position_tile(S, BLOCK_S)
    alpha = tl.load(params_ptr).to(ACC)
    exponent = tl.load(params_ptr + 1).to(ACC)
    valid = in_s
    if INDEX:
        target = tl.load(t_ptr + n * stride_tn + offs_s * stride_ts, mask=in_s, other=0)
        target = target.to(tl.int64)
        score = tl.load(s_ptr + n * stride_sn + offs_s * stride_ss, mask=in_s, other=0.0)
        score = score.to(ACC)
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
            t = tl.where(offs_c[:, None] == target[None, :], score[None, :], 0.0).to(ACC)
        else:
            t = _class_block(t_ptr, stride_tn, stride_tc, stride_ts, n, offs_c, offs_s, mask, ACC)
        # p, 1 - p, softplus(-x), softplus(x) from e = exp(-|x|), each without cancellation.
        e = tl.exp(-tl.abs(x))
        log_term = _log1p(e)
        big = 1.0 / (1.0 + e)
        small = e * big
        p = tl.where(x >= 0, big, small)
        q = tl.where(x >= 0, small, big)
        sp_pos = tl.maximum(-x, 0.0) + log_term
        sp_neg = tl.maximum(x, 0.0) + log_term
        ce = t * sp_pos + (1.0 - t) * sp_neg
        dce = (1.0 - t) * p - t * q
        if MODE == 0:
            m = alpha * _modulator(p, exponent, EXP_ZERO)  # p^gamma
            positive = t > 0.0
            f = t if IOU else tl.full(t.shape, 1.0, ACC)
            loss = tl.where(positive, f * ce, m * sp_neg)
            if NEED_GRAD:
                inner = p if DETACH or EXP_ZERO else p + exponent * q * sp_neg
                g = tl.where(positive, f * dce, m * inner)
        else:
            if EXP_ZERO:
                loss = ce
                g = dce
            else:
                # d = p - t is dce: exact at t = 0 (p) and t = 1 (-q).
                m = _modulator(tl.abs(dce), exponent, EXP_ZERO)  # |d|^beta, 0 at d = 0
                loss = m * ce
                g = dce
                if not DETACH:
                    nonzero = dce != 0.0
                    r = tl.where(nonzero, p * q / tl.where(nonzero, dce, 1.0), 0.0)
                    g += exponent * ce * r
                g = g * m
        if HAS_W:
            w = tl.load(
                w_ptr + n * stride_wn + offs_c[:, None] * stride_wc + offs_s[None, :] * stride_ws,
                mask=mask,
                other=0.0,
            ).to(ACC)
            loss = loss * w
            if NEED_GRAD:
                g = g * w
        loss = tl.where(mask & valid[None, :], loss, 0.0)
        if OUT == 1:
            ptrs = (
                loss_ptr + n * stride_ln + offs_c[:, None] * stride_lc + offs_s[None, :] * stride_ls
            )
            tl.store(ptrs, loss, mask=mask)
        else:
            partial += tl.sum(loss, axis=0)
        if NEED_GRAD:
            # where, not only the zero scale: an ignored position's logits may be NaN or inf.
            g = tl.where(valid[None, :], g * scale[None, :], 0.0)
            ptrs = (
                grad_ptr + n * stride_gn + offs_c[:, None] * stride_gc + offs_s[None, :] * stride_gs
            )
            tl.store(ptrs, g.to(grad_ptr.dtype.element_ty), mask=mask)
    if OUT == 2:
        tl.store(loss_ptr + n * S + offs_s, partial, mask=in_s)
    if OUT == 0:
        tl.store(loss_ptr + pid, tl.sum(partial, axis=0))


@triton.jit
def _distribution_focal_fwd_kernel(
    x_ptr,
    y_ptr,  # offsets (N, S) in [0, n] in the accumulation dtype (0 at ignored positions)
    w_ptr,
    scale_ptr,
    loss_ptr,
    grad_ptr,
    C,  # n + 1 bins
    S,
    stride_xn,
    stride_xc,
    stride_xs,
    stride_yn,
    stride_ys,
    stride_wn,
    stride_ws,
    stride_gn,
    stride_gc,
    stride_gs,
    ignored_ptr,
    stride_mn,
    stride_ms,
    HAS_W: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    PER_POSITION: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid, n, offs_s, in_s = _position_tile(S, BLOCK_S)
    x_row = x_ptr + n * stride_xn + offs_s * stride_xs
    neg_inf = float("-inf")

    # Online max and sum of exponentials over the bins -> logsumexp.
    run_max = tl.full([BLOCK_S], neg_inf, ACC)
    run_sum = tl.zeros([BLOCK_S], ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask = (offs_c < C)[:, None] & in_s[None, :]
        x = tl.load(x_row[None, :] + offs_c[:, None] * stride_xc, mask=mask, other=neg_inf)
        x = x.to(ACC)
        new_max = tl.maximum(run_max, tl.max(x, axis=0))
        shift = tl.where(new_max == neg_inf, 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(x - shift[None, :]), axis=0)
        run_max = new_max
    lse = tl.where(run_max == neg_inf, 0.0, run_max) + tl.log(run_sum)

    # The two bins around the target: l = min(floor(y), n - 1), weights l + 1 - y and y - l.
    y = tl.load(y_ptr + n * stride_yn + offs_s * stride_ys, mask=in_s, other=0.0).to(ACC)
    valid = in_s
    if HAS_IGNORE:
        valid = _not_ignored(valid, ignored_ptr, stride_mn, stride_ms, n, offs_s, in_s)
    left_f = tl.minimum(tl.maximum(tl.floor(y), 0.0), C - 2.0)
    left = left_f.to(tl.int64)
    w_r = y - left_f
    w_l = 1.0 - w_r
    x_l = tl.load(x_row + left * stride_xc, mask=in_s, other=0.0).to(ACC)
    x_r = tl.load(x_row + (left + 1) * stride_xc, mask=in_s, other=0.0).to(ACC)
    loss = -(
        tl.where(w_l == 0.0, 0.0, w_l * (x_l - lse)) + tl.where(w_r == 0.0, 0.0, w_r * (x_r - lse))
    )
    if HAS_W:
        w = tl.load(w_ptr + n * stride_wn + offs_s * stride_ws, mask=in_s, other=0.0).to(ACC)
        loss = loss * w
    loss = tl.where(valid, loss, 0.0)
    if PER_POSITION:
        tl.store(loss_ptr + n * S + offs_s, loss, mask=in_s)
    else:
        tl.store(loss_ptr + pid, tl.sum(loss, axis=0))

    if NEED_GRAD:
        scale = _position_scale(valid, scale_ptr, HAS_SCALE, ACC)
        if HAS_W:
            scale = scale * w
        g_row = grad_ptr + n * stride_gn + offs_s * stride_gs
        for c0 in range(0, C, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mask = (offs_c < C)[:, None] & in_s[None, :]
            x = tl.load(x_row[None, :] + offs_c[:, None] * stride_xc, mask=mask, other=0.0)
            g = tl.exp(x.to(ACC) - lse[None, :])
            g -= tl.where(offs_c[:, None] == left[None, :], w_l[None, :], 0.0)
            g -= tl.where(offs_c[:, None] == left[None, :] + 1, w_r[None, :], 0.0)
            g = tl.where(valid[None, :], g * scale[None, :], 0.0)
            ptrs = g_row[None, :] + offs_c[:, None] * stride_gc
            tl.store(ptrs, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _elementwise_frame(w: Tensor | None, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    if w is None:
        return x, (0, 0, 0)
    w, _, strides = framed(w, class_dim=True)
    return w, strides


def _position_frame(w: Tensor | None, x: Tensor) -> tuple[Tensor, int, int]:
    if w is None:
        return x, 0, 0
    w, _, (w_n, _, w_s) = framed(w, class_dim=False)
    return w, w_n, w_s


@torch.library.custom_op("focalloss::quality_sigmoid_fwd", mutates_args=())
def quality_sigmoid_fwd(
    input: Tensor,
    target: Tensor,
    score: Tensor | None,
    ignored: Tensor | None,
    weight: Tensor | None,
    scale: Tensor | None,
    mode: int,
    alpha: float,
    exponent: float,
    iou_weighted: bool,
    detach_modulator: bool,
    out: int,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Varifocal (mode 0) or quality focal (mode 1) loss; ``weight`` is elementwise (a view of
    the input's shape: QFL's per-position weight arrives expanded along dim 1)."""
    index = score is not None
    x, (n, c, s), x_strides = framed(input, class_dim=True)
    t, _, t_frame = framed(target, class_dim=not index)
    t_strides = (t_frame[0], 0, t_frame[2]) if index else t_frame
    if index:
        sc, _, (s_n, _, s_s) = framed(score, class_dim=False)
    else:
        sc, s_n, s_s = x, 0, 0
    mask, m_n, m_s = _mask_frame(ignored, x)
    w, w_strides = _elementwise_frame(weight, x)
    block_c, block_s = blocks(c, s, class_chunk=64)
    launch = grid(n, s, block_s)
    acc_dtype = _acc_dtype(input)
    l_strides = (0, 0, 0)
    if out == PER_ELEMENT:
        loss = grad_buffer(input, dtype=acc_dtype)
        _, _, l_strides = framed(loss, class_dim=True)
    elif out == PER_POSITION:
        loss = input.new_empty(input.shape[:1] + input.shape[2:], dtype=acc_dtype)
    else:
        loss = input.new_empty(launch[0], dtype=acc_dtype)
    grad, g_strides = framed_grad(input, need_grad)
    _quality_sigmoid_fwd_kernel[launch](
        x,
        t,
        sc,
        w,
        scale if scale is not None else x,
        loss,
        grad,
        c,
        s,
        *x_strides,
        *t_strides,
        s_n,
        s_s,
        *w_strides,
        *g_strides,
        *l_strides,
        mask,
        m_n,
        m_s,
        _params(input, alpha, exponent),
        MODE=mode,
        INDEX=index,
        HAS_W=weight is not None,
        HAS_IGNORE=ignored is not None,
        HAS_SCALE=scale is not None,
        EXP_ZERO=exponent == 0.0,
        DETACH=detach_modulator,
        IOU=iou_weighted,
        NEED_GRAD=need_grad,
        OUT=out,
        ACC=_acc(input.dtype),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
    )
    return (loss.sum() if out == SUM else loss), grad


@quality_sigmoid_fwd.register_fake
def _(input, target, score, ignored, weight, scale, mode, alpha, exponent, iou_weighted,
      detach_modulator, out, need_grad):  # fmt: skip
    acc_dtype = _acc_dtype(input)
    if out == PER_ELEMENT:
        loss = grad_buffer(input, dtype=acc_dtype)
    elif out == PER_POSITION:
        loss = input.new_empty(input.shape[:1] + input.shape[2:], dtype=acc_dtype)
    else:
        loss = input.new_empty((), dtype=acc_dtype)
    return loss, grad_buffer(input) if need_grad else input.new_empty(0)


@torch.library.custom_op("focalloss::distribution_focal_fwd", mutates_args=())
def distribution_focal_fwd(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    weight: Tensor | None,
    scale: Tensor | None,
    per_position: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Distribution focal loss over the bins of dim 1 (``target``: offsets, compute dtype)."""
    x, (n, c, s), x_strides = framed(input, class_dim=True)
    y, _, (y_n, _, y_s) = framed(target, class_dim=False)
    mask, m_n, m_s = _mask_frame(ignored, x)
    w, w_n, w_s = _position_frame(weight, x)
    block_c, block_s = blocks(c, s)
    launch = grid(n, s, block_s)
    acc_dtype = _acc_dtype(input)
    if per_position:
        loss = input.new_empty(target.shape, dtype=acc_dtype)
    else:
        loss = input.new_empty(launch[0], dtype=acc_dtype)
    grad, g_strides = framed_grad(input, need_grad)
    _distribution_focal_fwd_kernel[launch](
        x,
        y,
        w,
        scale if scale is not None else x,
        loss,
        grad,
        c,
        s,
        *x_strides,
        y_n,
        y_s,
        w_n,
        w_s,
        *g_strides,
        mask,
        m_n,
        m_s,
        HAS_W=weight is not None,
        HAS_IGNORE=ignored is not None,
        HAS_SCALE=scale is not None,
        NEED_GRAD=need_grad,
        PER_POSITION=per_position,
        ACC=_acc(input.dtype),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
    )
    return (loss if per_position else loss.sum()), grad


@distribution_focal_fwd.register_fake
def _(input, target, ignored, weight, scale, per_position, need_grad):
    loss = input.new_empty(target.shape if per_position else (), dtype=_acc_dtype(input))
    return loss, grad_buffer(input) if need_grad else input.new_empty(0)
