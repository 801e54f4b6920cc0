"""The driver of the elementwise sigmoid-type losses (asymmetric loss, FL*) on the PyTorch
backend: cache-sized pieces, ignored positions, the ``"mean"`` factor and the weight.

A family supplies ``terms(x, target, need_grad) -> (loss, grad)`` for one piece: ``x`` in the
compute dtype, ``target`` float labels of ``x``'s shape or int64 class indices of its shape
without dim 1 (value ``C`` = background). It returns the elementwise loss and its derivative
with respect to ``x`` (unweighted, unscaled); fresh tensors the driver may modify in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import chunk_slices

Terms = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]


def elementwise_forward(spec, terms: Terms, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Elementwise loss (``reduction="none"``) or its sum, and the gradient of
    ``sum(scale * loss)``, in the compute dtype (the caller's ``finish`` converts)."""
    input, target, ignored = spec.input, spec.target, spec.ignored
    index = not target.is_floating_point()
    elementwise = spec.reduction == "none"
    chunks = chunk_slices(input)
    if len(chunks) == 1:
        loss, grad = _piece(spec, terms, input, target, ignored, spec.weight, need_grad)
        return (loss if elementwise else loss.sum()), grad
    dtype = spec.compute_dtype
    loss = input.new_empty(input.shape, dtype=dtype) if elementwise else None
    grad = torch.empty_like(input, dtype=dtype) if need_grad else None
    sums = []
    for xs in chunks:
        ps = xs[:1] + xs[2:]
        part_loss, part_grad = _piece(
            spec,
            terms,
            input[xs],
            target[ps] if index else target[xs],
            None if ignored is None else ignored[ps],
            None if spec.weight is None else spec.weight[xs],
            need_grad,
        )
        if loss is not None:
            loss[xs] = part_loss
        else:
            sums.append(part_loss.sum())
        if grad is not None:
            grad[xs] = part_grad
    if loss is None:
        loss = torch.stack(sums).sum()
    return loss, grad


def _piece(
    spec,
    terms: Terms,
    x: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    weight: Tensor | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    loss, grad = terms(x.to(spec.compute_dtype), target, need_grad)
    if weight is not None:
        loss = loss.mul_(weight)
        if grad is not None:
            grad = grad.mul_(weight)
    if ignored is not None:  # masked_fill, not a product: ignored logits may be NaN or inf
        mask = ignored.unsqueeze(1)
        loss = loss.masked_fill_(mask, 0.0)
        if grad is not None:
            grad = grad.masked_fill_(mask, 0.0)
    if grad is not None and spec.scale is not None:
        grad = grad.mul_(spec.scale)
    return loss, grad


def scatter_positives(
    loss: Tensor,
    grad: Tensor | None,
    target: Tensor,
    positive: Callable[[Tensor], tuple[Tensor, Tensor | None]],
    x: Tensor,
) -> None:
    """Overwrite, in place, the entries of the target class of each position (class indices:
    one positive per position, none for the background ``C``) with the positive terms.

    ``loss`` and ``grad`` hold the negative terms everywhere; ``positive(x_t)`` returns the
    positive loss and derivative at the gathered logits ``x_t`` ``(N, 1, *)``.
    """
    num_classes = x.shape[1]
    is_pos = (target < num_classes).unsqueeze(1)
    idx = target.clamp(max=num_classes - 1).unsqueeze(1)
    loss_t, grad_t = positive(x.gather(1, idx))
    loss.scatter_(1, idx, torch.where(is_pos, loss_t, loss.gather(1, idx)))
    if grad is not None and grad_t is not None:
        grad.scatter_(1, idx, torch.where(is_pos, grad_t, grad.gather(1, idx)))


def softplus(v: Tensor) -> Tensor:
    """``log(1 + exp(v))``, exact in float64 too: ``F.softplus`` returns ``v`` itself above its
    default threshold 20, ``e^-20 ~ 2e-9`` short of the value (below float32's resolution, not
    float64's); above 40 the difference is below float64's resolution as well."""
    return F.softplus(v, beta=1.0, threshold=40.0)
