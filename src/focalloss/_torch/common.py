"""Terms the PyTorch backend's loss families share."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Elements of one piece of the chunked paths: the temporaries of a piece stay in cache.
CHUNK_ELEMENTS = 1 << 18


def class_view(v: Tensor, ndim: int) -> Tensor:
    """A ``(C,)`` vector as ``(1, C, 1, ..., 1)`` for broadcasting over ``(N, C, *)``."""
    return v.view((1, -1) + (1,) * (ndim - 2))


def chunk_slices(input: Tensor) -> list[tuple[slice, ...]]:
    """Index tuples that split ``(N, C, *)`` along N, then along dim 2, into cache-sized parts."""
    total = input.numel()
    if total <= 2 * CHUNK_ELEMENTS:
        return [(slice(None),)]
    per_row = total // input.shape[0]
    if per_row <= CHUNK_ELEMENTS or input.dim() < 3:
        step = max(1, CHUNK_ELEMENTS // per_row)
        return [(slice(n, n + step),) for n in range(0, input.shape[0], step)]
    per_slab = per_row // input.shape[2]
    step = max(1, CHUNK_ELEMENTS // per_slab)
    return [
        (slice(n, n + 1), slice(None), slice(d, d + step))
        for n in range(input.shape[0])
        for d in range(0, input.shape[2], step)
    ]


def nonfinite_ignored(values: Tensor, ignored: Tensor) -> Tensor | None:
    """Ignored positions whose per-position ``values`` are not finite (None: certainly none).

    On the CPU, where reading a value is no synchronisation, one reduction usually settles it:
    a finite sum means every value is finite (inf - inf is NaN). On other devices the mask is
    built without reading it on the host.
    """
    if values.device.type == "cpu" and math.isfinite(values.sum().item()):
        return None
    return ignored & ~torch.isfinite(values)


def zero_ignored_rows_(grad: Tensor, rows: Tensor) -> Tensor:
    """Zero the gradient of ``rows``: ignored positions whose logits are not finite.

    An ignored position's gradient is its terms times a zero scale, which leaves NaN where its
    logits are NaN or infinite (0 * NaN). ``rows`` flags every such position (a superset: a
    non-finite logit makes the position's log-softmax, hence its loss, non-finite). On the CPU
    the fill runs only when there is one; on other devices it runs unconditionally rather than
    synchronise with the host to find out.
    """
    if grad.device.type != "cpu" or bool(rows.any()):
        grad.masked_fill_(rows.unsqueeze(1), 0.0)
    return grad


def finish(
    loss: Tensor, grad: Tensor | None, spec, summed: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Reduce per-position (or per-element) losses as ``spec`` asks (``summed``: the sum is
    taken already), apply the ``"mean"`` factor, and give the gradient the input's dtype."""
    if spec.reduction != "none":
        loss = loss if summed else loss.sum()
        if spec.reduction == "mean":
            loss = loss * spec.scale
    if grad is not None and grad.dtype != spec.input.dtype:
        grad = grad.to(spec.input.dtype)
    return loss, grad


# Differentiable composites: the same losses from plain autograd operations
# ---------------------------------------------------------------------------
#
# The closed-form paths compute the gradient themselves, which autograd cannot differentiate
# again. Each family's ``composite`` states the same loss with ordinary differentiable
# operations, for what needs a graph of the gradient: double backward (create_graph=True,
# gradient penalties, Hessian-vector products) and torch.func transforms (grad, jacrev,
# hessian, vmap). They cost several logits-sized buffers; the training path never uses them.
#
# One numerical point: the derivative of u ** gamma is infinite at u = 0 for 0 < gamma < 1.
# The focal term multiplies it by -log p, which vanishes there, so the exact first derivative
# is finite; ``focal_modulator`` gives autograd a zero derivative at u = 0 exactly, and a
# finite base everywhere (the "double where"), so that the first derivative equals the closed
# form's. Second derivatives there are genuinely infinite for 0 < gamma < 1.


def focal_modulator(u: Tensor, gamma: float, detach: bool) -> Tensor | None:
    """``u ** gamma`` (None for gamma = 0), with a finite derivative where ``u = 0``."""
    if gamma == 0.0:
        return None
    positive = u > 0
    base = torch.where(positive, u, torch.ones_like(u))
    m = torch.where(positive, base.pow(gamma), torch.zeros_like(u))
    return m.detach() if detach else m


def one_hot(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(N, *)`` indices -> ``(N, C, *)`` one-hot by comparison (``F.one_hot`` reads the
    values to check them, which ``vmap`` does not allow)."""
    classes = class_view(torch.arange(num_classes, device=target.device), target.dim() + 1)
    return (target.unsqueeze(1) == classes).to(dtype)


def reduce_composite(loss: Tensor, spec) -> Tensor:
    if spec.reduction == "none":
        return loss
    total = loss.sum()
    return total * spec.scale if spec.reduction == "mean" else total
