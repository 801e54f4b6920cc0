"""Launchers of the Triton kernels, registered as PyTorch custom operators.

``torch.ops.focalloss.softmax_focal_fwd`` and ``torch.ops.focalloss.sigmoid_focal_fwd`` take a
spec's tensors and options and return ``(loss, grad)``: the loss (a 0-d sum, or per position /
per element) in the accumulation dtype and the gradient of ``sum(scale * loss)`` in the input's
dtype (an empty tensor when no gradient is needed). As custom operators with fake (meta)
implementations they are opaque nodes to ``torch.compile``. They run on CUDA tensors, and on
CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter, used by the tests).

Nothing here reads a tensor on the host or builds one from Python data: ``gamma`` and the
other floats reach the kernels through a small device tensor written by fills (a Python float
argument would be rounded to float32, which float64 inputs must not see): ``[gamma, second,
poly1_epsilon, thresholds..., values...]``, the last two the pieces of a gamma schedule (empty
for a number gamma), whose count is a compile-time constant of the kernel.

``scale_grad_`` multiplies a gradient in place by ``grad_output``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .frames import blocks, framed, framed_grad, grad_buffer, grid
from .kernels import _scale_grad_kernel, _sigmoid_focal_fwd_kernel, _softmax_focal_fwd_kernel


def _acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_dtype(input: Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _params(input: Tensor, *values: float) -> Tensor:
    """Floats as a device tensor of the accumulation dtype, written by fills."""
    params = input.new_empty(len(values), dtype=_acc_dtype(input))
    for i, value in enumerate(values):
        params[i].fill_(value)
    return params


def _mask_frame(ignored: Tensor | None, x: Tensor) -> tuple[Tensor, int, int]:
    if ignored is None:
        return x, 0, 0
    mask, _, (m_n, _, m_s) = framed(ignored.view(torch.uint8), class_dim=False)
    return mask, m_n, m_s


def _schedule(thresholds: list[float], values: list[float]) -> tuple[float, ...]:
    """The parameters of a schedule: thresholds then values (none for a number gamma)."""
    return (*thresholds, *values) if len(thresholds) > 0 else ()


@torch.library.custom_op("focalloss::softmax_focal_fwd", mutates_args=())
def softmax_focal_fwd(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    coef: Tensor | None,
    scale: Tensor | None,
    gamma: float,
    label_smoothing: float,
    detach_modulator: bool,
    per_position: bool,
    need_grad: bool,
    poly_weight: Tensor | None = None,
    poly1: float = 0.0,
    thresholds: list[float] | None = None,
    values: list[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Softmax focal loss with class-index targets (see the kernel for the math)."""
    thresholds, values = thresholds or [], values or []
    x, (n, c, s), x_strides = framed(input, class_dim=True)
    t, _, (t_n, _, t_s) = framed(target, class_dim=False)
    mask, m_n, m_s = _mask_frame(ignored, x)
    block_c, block_s = blocks(c, s)
    launch = grid(n, s, block_s)
    acc_dtype = _acc_dtype(input)
    if per_position:
        loss = input.new_empty(target.shape, dtype=acc_dtype)
    else:
        loss = input.new_empty(launch[0], dtype=acc_dtype)
    grad, g_strides = framed_grad(input, need_grad)
    _softmax_focal_fwd_kernel[launch](
        x,
        t,
        coef if coef is not None else x,
        scale if scale is not None else x,
        loss,
        grad,
        c,
        s,
        *x_strides,
        t_n,
        t_s,
        mask,
        m_n,
        m_s,
        *g_strides,
        _params(input, gamma, label_smoothing, poly1, *_schedule(thresholds, values)),
        poly_weight if poly_weight is not None else x,
        HAS_COEF=coef is not None,
        HAS_IGNORE=ignored is not None,
        HAS_SCALE=scale is not None,
        GAMMA_ZERO=len(thresholds) == 0 and gamma == 0.0,
        DETACH=detach_modulator,
        SMOOTH=label_smoothing != 0.0,
        NEED_GRAD=need_grad,
        PER_POSITION=per_position,
        ACC=_acc(input.dtype),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        POLY=poly1 != 0.0,
        HAS_POLY_W=poly1 != 0.0 and poly_weight is not None,
        SCHEDULE_K=len(thresholds),
    )
    return (loss if per_position else loss.sum()), grad


@softmax_focal_fwd.register_fake
def _(input, target, ignored, coef, scale, gamma, label_smoothing, detach_modulator,
      per_position, need_grad, poly_weight=None, poly1=0.0, thresholds=None,
      values=None):  # fmt: skip
    loss = input.new_empty(target.shape if per_position else (), dtype=_acc_dtype(input))
    return loss, grad_buffer(input) if need_grad else input.new_empty(0)


@torch.library.custom_op("focalloss::sigmoid_focal_fwd", mutates_args=())
def sigmoid_focal_fwd(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    alpha_vector: Tensor | None,
    scale: Tensor | None,
    gamma: float,
    alpha: float,
    alpha_mode: int,
    detach_modulator: bool,
    per_element: bool,
    need_grad: bool,
    poly1: float = 0.0,
    thresholds: list[float] | None = None,
    values: list[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Sigmoid focal loss, float labels or class indices (see the kernel for the math)."""
    thresholds, values = thresholds or [], values or []
    index = not target.is_floating_point()
    x, (n, c, s), x_strides = framed(input, class_dim=True)
    t, _, t_frame = framed(target, class_dim=not index)
    t_strides = (t_frame[0], 0, t_frame[2]) if index else t_frame
    mask, m_n, m_s = _mask_frame(ignored, x)
    block_c, block_s = blocks(c, s, class_chunk=64)
    launch = grid(n, s, block_s)
    acc_dtype = _acc_dtype(input)

    def strides_of(w: Tensor | None) -> tuple[Tensor, tuple[int, int, int]]:
        if w is None:
            return x, (0, 0, 0)
        w, _, st = framed(w, class_dim=True)
        return w, st

    w, w_strides = strides_of(weight)
    pw, pw_strides = strides_of(pos_weight)
    if per_element:
        loss = grad_buffer(input, dtype=acc_dtype)
        _, _, l_strides = framed(loss, class_dim=True)
    else:
        loss = input.new_empty(launch[0], dtype=acc_dtype)
        l_strides = (0, 0, 0)
    grad, g_strides = framed_grad(input, need_grad)
    _sigmoid_focal_fwd_kernel[launch](
        x,
        t,
        w,
        pw,
        alpha_vector if alpha_vector is not None else x,
        scale if scale is not None else x,
        loss,
        grad,
        c,
        s,
        *x_strides,
        *t_strides,
        *w_strides,
        *pw_strides,
        *g_strides,
        *l_strides,
        mask,
        m_n,
        m_s,
        _params(input, gamma, alpha, poly1, *_schedule(thresholds, values)),
        INDEX=index,
        HAS_W=weight is not None,
        HAS_PW=pos_weight is not None,
        ALPHA_MODE=alpha_mode,
        HAS_IGNORE=ignored is not None,
        HAS_SCALE=scale is not None,
        GAMMA_ZERO=len(thresholds) == 0 and gamma == 0.0,
        DETACH=detach_modulator,
        NEED_GRAD=need_grad,
        PER_ELEMENT=per_element,
        ACC=_acc(input.dtype),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        POLY=poly1 != 0.0,
        SCHEDULE_K=len(thresholds),
    )
    return (loss if per_element else loss.sum()), grad


@sigmoid_focal_fwd.register_fake
def _(input, target, ignored, weight, pos_weight, alpha_vector, scale, gamma, alpha, alpha_mode,
      detach_modulator, per_element, need_grad, poly1=0.0, thresholds=None,
      values=None):  # fmt: skip
    acc_dtype = _acc_dtype(input)
    loss = (
        grad_buffer(input, dtype=acc_dtype) if per_element else input.new_empty((), dtype=acc_dtype)
    )
    return loss, grad_buffer(input) if need_grad else input.new_empty(0)


def scale_grad_(grad: Tensor, grad_output: Tensor, per_position: bool) -> Tensor:
    """``grad *= grad_output`` in place (``grad_output`` 0-d, or per position of ``(N, C, *)``);
    a scalar of exactly 1 is skipped inside the kernel, without a host synchronisation."""
    if not grad.is_contiguous():
        return grad.mul_(grad_output.unsqueeze(1) if per_position else grad_output)
    go = grad_output.contiguous()
    numel = grad.numel()
    classes = grad.shape[1] if per_position and grad.dim() > 1 else 1
    inner = numel // (grad.shape[0] * classes) if per_position and grad.numel() else 1
    block = 1024
    _scale_grad_kernel[(triton.cdiv(numel, block),)](
        grad, go, numel, inner, classes, PER_POSITION=per_position, BLOCK=block
    )
    return grad
