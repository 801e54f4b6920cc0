"""Launchers of the Triton kernels, registered as PyTorch custom operators.

``torch.ops.focalloss.softmax_focal_fwd`` and ``torch.ops.focalloss.sigmoid_focal_fwd`` return
``(loss, grad)``: the loss (a 0-d sum, or per position / per element) in the accumulation dtype
and the gradient of ``sum(scale * loss)`` in the input's dtype (an empty tensor when no gradient
is needed). As custom operators with fake (meta) implementations they are opaque nodes to
``torch.compile``: a compiled training step traces them without a graph break. They run on
CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter, used by
the tests).

``torch.ops.focalloss.scale_grad_`` multiplies a gradient in place by ``grad_output``.
"""

from __future__ import annotations

import itertools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .kernels import _scale_grad_kernel, _sigmoid_focal_fwd_kernel, _softmax_focal_fwd_kernel

_TILE = 4096  # elements of one (BLOCK_C, BLOCK_S) tile


def frame(t: Tensor, class_dim: bool) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """``((N, C, S), (stride_n, stride_c, stride_s))`` of a view, or None if the spatial dims
    cannot be flattened to one stride without a copy.

    ``class_dim``: the tensor has the class dimension 1 (logits, gradients, float targets);
    otherwise it is ``(N, *)`` (index targets), framed with ``C = 1``. ``(N, C)`` is framed as
    ``(1, C, N)`` and ``(N,)`` as ``(1, 1, N)``, so that positions are the long axis.
    """
    shape, strides = t.shape, t.stride()
    if t.dim() == 0:
        return (1, 1, 1), (0, 0, 0)
    if class_dim:
        if t.dim() == 1:
            return (1, 1, shape[0]), (0, 0, strides[0])
        if t.dim() == 2:
            return (1, shape[1], shape[0]), (0, strides[1], strides[0])
        spatial = list(zip(shape[2:], strides[2:], strict=True))
        head = (shape[0], shape[1]), (strides[0], strides[1])
    else:
        if t.dim() == 1:
            return (1, 1, shape[0]), (0, 0, strides[0])
        spatial = list(zip(shape[1:], strides[1:], strict=True))
        head = (shape[0], 1), (strides[0], 0)
    sizes = [(n, s) for n, s in spatial if n != 1]
    for (_, outer), (inner_n, inner) in itertools.pairwise(sizes):
        if outer != inner * inner_n:
            return None
    size = math.prod(n for n, _ in spatial)
    stride = sizes[-1][1] if sizes else 1
    return (head[0][0], head[0][1], size), (head[1][0], head[1][1], stride)


def framed(t: Tensor, class_dim: bool) -> tuple[Tensor, tuple[int, int, int], tuple[int, int, int]]:
    """The tensor and its frame; a view whose spatial dims do not flatten is made contiguous."""
    f = frame(t, class_dim)
    if f is None:
        t = t.contiguous()
        f = frame(t, class_dim)
        assert f is not None
    return t, f[0], f[1]


def _acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(num_classes: int, positions: int, class_chunk: int = 1024) -> tuple[int, int]:
    block_c = min(triton.next_power_of_2(max(num_classes, 1)), class_chunk)
    block_s = max(1, min(triton.next_power_of_2(max(positions, 1)), _TILE // block_c))
    return block_c, block_s


@torch.library.custom_op("focalloss::softmax_focal_fwd", mutates_args=())
def softmax_focal_fwd(
    input: Tensor,
    target: Tensor,
    coef: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    label_smoothing: float,
    ignore_index: int,
    has_ignore: bool,
    detach_modulator: bool,
    per_position: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Softmax focal loss with class-index targets (see the kernel for the math)."""
    x, (n, c, s), x_strides = framed(input, class_dim=True)
    t, _, (t_n, _, t_s) = framed(target, class_dim=False)
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    block_c, block_s = _blocks(c, s)
    grid = (triton.cdiv(s, block_s), n)
    if per_position:
        loss = torch.empty(target.shape, dtype=acc_dtype, device=input.device)
    else:
        loss = torch.empty(grid[1] * grid[0], dtype=acc_dtype, device=input.device)
    if need_grad:
        grad = torch.empty_like(x)  # the layout of the logits read: stores as coalesced as loads
        _, _, g_strides = framed(grad, class_dim=True)
    else:
        grad, g_strides = torch.empty(0, dtype=input.dtype, device=input.device), (0, 0, 0)
    _softmax_focal_fwd_kernel[grid](
        x,
        t,
        coef if coef is not None else x,
        grad_scale if grad_scale is not None else x,
        loss,
        grad,
        c,
        s,
        *x_strides,
        t_n,
        t_s,
        *g_strides,
        torch.tensor([gamma, label_smoothing], dtype=acc_dtype, device=input.device),
        int(ignore_index),
        HAS_COEF=coef is not None,
        HAS_IGNORE=has_ignore,
        HAS_SCALE=grad_scale is not None,
        GAMMA_ZERO=gamma == 0.0,
        DETACH=detach_modulator,
        SMOOTH=label_smoothing != 0.0,
        NEED_GRAD=need_grad,
        PER_POSITION=per_position,
        ACC=_acc(input.dtype),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
    )
    return (loss if per_position else loss.sum()), grad


@softmax_focal_fwd.register_fake
def _(input, target, coef, grad_scale, gamma, label_smoothing, ignore_index, has_ignore,
      detach_modulator, per_position, need_grad):  # fmt: skip
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    loss = input.new_empty(target.shape if per_position else (), dtype=acc_dtype)
    grad = torch.empty_like(input) if need_grad else input.new_empty(0)
    return loss, grad


@torch.library.custom_op("focalloss::sigmoid_focal_fwd", mutates_args=())
def sigmoid_focal_fwd(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    alpha_vector: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    alpha: float,
    alpha_mode: int,
    ignore_index: int,
    has_ignore: bool,
    detach_modulator: bool,
    per_element: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Sigmoid focal loss, float labels or class indices (see the kernel for the math)."""
    index = not target.is_floating_point()
    x, (n, c, s), x_strides = framed(input, class_dim=True)
    t, _, t_frame = framed(target, class_dim=not index)
    t_strides = (t_frame[0], 0, t_frame[2]) if index else t_frame
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    block_c, block_s = _blocks(c, s, class_chunk=64)
    grid = (triton.cdiv(s, block_s), n)

    def strides_of(w: Tensor | None) -> tuple[Tensor, tuple[int, int, int]]:
        if w is None:
            return x, (0, 0, 0)
        w, _, st = framed(w, class_dim=True)
        return w, st

    w, w_strides = strides_of(weight)
    pw, pw_strides = strides_of(pos_weight)
    if per_element:
        loss = torch.empty(input.shape, dtype=acc_dtype, device=input.device)
        _, _, l_strides = framed(loss, class_dim=True)
    else:
        loss = torch.empty(grid[0] * grid[1], dtype=acc_dtype, device=input.device)
        l_strides = (0, 0, 0)
    if need_grad:
        grad = torch.empty_like(x)
        _, _, g_strides = framed(grad, class_dim=True)
    else:
        grad, g_strides = torch.empty(0, dtype=input.dtype, device=input.device), (0, 0, 0)
    _sigmoid_focal_fwd_kernel[grid](
        x,
        t,
        w,
        pw,
        alpha_vector if alpha_vector is not None else x,
        grad_scale if grad_scale is not None else x,
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
        torch.tensor([gamma, alpha], dtype=acc_dtype, device=input.device),
        int(ignore_index),
        INDEX=index,
        HAS_W=weight is not None,
        HAS_PW=pos_weight is not None,
        ALPHA_MODE=alpha_mode,
        HAS_IGNORE=has_ignore,
        HAS_SCALE=grad_scale is not None,
        GAMMA_ZERO=gamma == 0.0,
        DETACH=detach_modulator,
        NEED_GRAD=need_grad,
        PER_ELEMENT=per_element,
        ACC=_acc(input.dtype),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
    )
    return (loss if per_element else loss.sum()), grad


@sigmoid_focal_fwd.register_fake
def _(input, target, weight, pos_weight, alpha_vector, grad_scale, gamma, alpha, alpha_mode,
      ignore_index, has_ignore, detach_modulator, per_element, need_grad):  # fmt: skip
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    loss = input.new_empty(input.shape if per_element else (), dtype=acc_dtype)
    grad = torch.empty_like(input) if need_grad else input.new_empty(0)
    return loss, grad


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
