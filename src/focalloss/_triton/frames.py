"""How the Triton kernels see a tensor: an ``(N, C, S)`` frame of element strides, and the
launch grid. Plain Python (no triton import), so the rules are testable anywhere.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

TILE = 4096  # elements of one (BLOCK_C, BLOCK_S) tile


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
    if not sizes:  # no spatial extent, e.g. (N, C, 1): positions are the batch, (1, C, N)
        return (1, head[0][1], head[0][0]), (0, head[1][1], head[1][0])
    for (_, outer), (inner_n, inner) in itertools.pairwise(sizes):
        if outer != inner * inner_n:
            return None
    size = math.prod(n for n, _ in spatial)
    stride = sizes[-1][1]
    return (head[0][0], head[0][1], size), (head[1][0], head[1][1], stride)


def framed(t: Tensor, class_dim: bool) -> tuple[Tensor, tuple[int, int, int], tuple[int, int, int]]:
    """The tensor and its frame; a view whose spatial dims do not flatten is made contiguous."""
    f = frame(t, class_dim)
    if f is None:
        t = t.contiguous()
        f = frame(t, class_dim)
        assert f is not None
    return t, f[0], f[1]


def grad_buffer(input: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The gradient buffer a kernel writes: the input's strides when the input can be framed
    (``empty_like`` keeps a dense layout such as channels_last, and makes a strided slice
    contiguous), contiguous otherwise (the kernel then reads a contiguous copy). The real
    launchers and the fake implementations both call this, so compiled code sees the strides
    the kernels produce."""
    if frame(input, class_dim=True) is None:
        return input.new_empty(input.shape, dtype=dtype)
    return torch.empty_like(input, dtype=dtype)


def framed_grad(input: Tensor, need_grad: bool) -> tuple[Tensor, tuple[int, int, int]]:
    """The gradient buffer of a launch and its frame strides; without ``need_grad`` an empty
    placeholder the kernel never touches."""
    if not need_grad:
        return input.new_empty(0), (0, 0, 0)
    grad = grad_buffer(input)
    return grad, framed(grad, class_dim=True)[2]


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def blocks(num_classes: int, positions: int, class_chunk: int = 1024) -> tuple[int, int]:
    """``(BLOCK_C, BLOCK_S)``: classes per chunk (a power of two up to ``class_chunk``) and
    positions per program, so that one tile holds about ``TILE`` elements."""
    block_c = min(next_power_of_2(max(num_classes, 1)), class_chunk)
    block_s = max(1, min(next_power_of_2(max(positions, 1)), TILE // block_c))
    return block_c, block_s


def grid(n: int, s: int, block_s: int) -> tuple[int]:
    """One program per (n, block of positions), all on grid axis 0 (CUDA allows 2**31 - 1
    programs there; axes 1 and 2 stop at 65535). The kernels split the program id back."""
    return (n * math.ceil(s / block_s),)
