"""Specs and preparation of the detection losses: varifocal, quality focal, distribution focal.

Canonical forms the backends consume:

* VFL and QFL targets are either dense float scores of the input's shape (``score`` None), or
  int64 class indices ``(N, *)`` for ``(N, C, *)`` logits with ``C`` (background) at ignored
  positions, plus ``score``: the quality score at the labelled class, ``(N, *)`` in the compute
  dtype, 0 wherever no class is labelled (background, ignored). Index + score is the dense
  target ``onehot(target) * score`` without the one-hot.
* DFL targets are continuous offsets ``(N, *)`` in ``[0, n]`` for ``(N, n + 1, *)`` logits, in
  the compute dtype, 0 at ignored positions.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Real

import torch
from torch import Tensor

from .. import _validation as V
from .._engine import Spec
from . import check_common, compute_dtype_of, full, index_target, layout_for, mean_scale
from .sigmoid import elementwise_weight


@dataclasses.dataclass(frozen=True)
class VarifocalSpec(Spec):
    """Varifocal loss (Zhang et al. 2021), elementwise over ``input``.

    Attributes:
        target: dense float scores of the input's shape (any floating dtype), or int64 class
            indices ``(N, *)`` with ``C`` (background) at ignored positions.
        score: None (dense targets), or the ``(N, *)`` compute-dtype score of the labelled
            class, 0 where no class is labelled.
        ignored: bool ``(N, *)`` mask of ignored positions (index targets), or None.
        weight: None, or a view of the input's shape in the compute dtype.
        alpha, gamma, iou_weighted, detach_modulator: as in ``varifocal_loss``.
    """

    family = "varifocal"

    target: Tensor
    score: Tensor | None
    ignored: Tensor | None
    weight: Tensor | None
    alpha: float
    gamma: float
    iou_weighted: bool
    detach_modulator: bool


@dataclasses.dataclass(frozen=True)
class QualityFocalSpec(Spec):
    """Quality focal loss (Li et al. 2020): elementwise terms summed over classes per position.

    Attributes:
        target, score, ignored: as in :class:`VarifocalSpec`.
        weight: None, or a per-position view of shape ``(N, *)`` in the compute dtype.
        beta, detach_modulator: as in ``quality_focal_loss``.
    """

    family = "quality_focal"

    target: Tensor
    score: Tensor | None
    ignored: Tensor | None
    weight: Tensor | None
    beta: float
    detach_modulator: bool


@dataclasses.dataclass(frozen=True)
class DistributionFocalSpec(Spec):
    """Distribution focal loss (Li et al. 2020): a softmax over ``n + 1`` bins along dim 1.

    Attributes:
        target: ``(N, *)`` offsets in ``[0, n]`` in the compute dtype (0 at ignored positions).
        ignored: bool ``(N, *)`` mask, or None.
        weight: None, or a per-position view of shape ``(N, *)`` in the compute dtype.
    """

    family = "distribution_focal"

    target: Tensor
    ignored: Tensor | None
    weight: Tensor | None


# --------------------------------------------------------------------------------------------
# Varifocal and quality focal loss
# --------------------------------------------------------------------------------------------


def prepare_varifocal(
    input: Tensor,
    target: Tensor,
    score: Tensor | None,
    *,
    alpha: float,
    gamma: float,
    iou_weighted: bool,
    weight: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    normalizer: float | Tensor | None,
    detach_modulator: bool,
    backend: str,
) -> VarifocalSpec:
    check_common(input, target, reduction, backend, detach_modulator, ignore_index)
    alpha = _nonnegative("alpha", alpha)
    gamma = _nonnegative("gamma", gamma)
    if not isinstance(iou_weighted, bool):
        raise TypeError(f"iou_weighted: expected a bool, got {iou_weighted!r}")
    target, score, ignored, kept = _score_target(
        input, target, score, ignore_index, weight, normalizer, reduction
    )
    classes = input.shape[1] if score is not None else 1
    divisor = full(input, float(input.numel())) if kept is None else kept * classes
    return VarifocalSpec(
        input=input,
        reduction=reduction,  # type: ignore[arg-type]
        scale=_scale(reduction, divisor, normalizer, input),
        layout=layout_for(reduction, elementwise=True),  # type: ignore[arg-type]
        squeeze=False,
        target=target,
        score=score,
        ignored=ignored,
        weight=elementwise_weight("weight", weight, input),
        alpha=alpha,
        gamma=gamma,
        iou_weighted=iou_weighted,
        detach_modulator=detach_modulator,
    )


def prepare_quality_focal(
    input: Tensor,
    target: Tensor,
    score: Tensor | None,
    *,
    beta: float,
    weight: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    normalizer: float | Tensor | None,
    detach_modulator: bool,
    backend: str,
) -> QualityFocalSpec:
    check_common(input, target, reduction, backend, detach_modulator, ignore_index)
    beta = _nonnegative("beta", beta)
    if input.dim() < 2:
        raise ValueError(
            f"input: expected logits (N, C) or (N, C, d1, ...) (the loss sums over the classes "
            f"of dim 1), got shape {tuple(input.shape)}"
        )
    target, score, ignored, kept = _score_target(
        input, target, score, ignore_index, weight, normalizer, reduction
    )
    positions = _positions(input)
    divisor = full(input, float(math.prod(positions))) if kept is None else kept
    return QualityFocalSpec(
        input=input,
        reduction=reduction,  # type: ignore[arg-type]
        scale=_scale(reduction, divisor, normalizer, input),
        layout=layout_for(reduction, elementwise=False),  # type: ignore[arg-type]
        squeeze=False,
        target=target,
        score=score,
        ignored=ignored,
        weight=position_weight(weight, input),
        beta=beta,
        detach_modulator=detach_modulator,
    )


def _score_target(
    input: Tensor,
    target: Tensor,
    score: Tensor | None,
    ignore_index: int | None,
    weight: object,
    normalizer: object,
    reduction: str,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``(target, score, ignored, kept positions)`` in canonical form (see the module
    docstring); ``kept`` is None for dense targets (every element counts)."""
    V.check_constants(target=target, score=score, weight=weight, normalizer=normalizer)
    V.check_normalizer_reduction(normalizer, reduction)
    if input.dim() == 0:
        raise ValueError("input: expected logits with at least one dimension, got a 0-d tensor")
    if input.dim() >= 2 and input.shape[1] == 0:
        raise ValueError(f"input: expected at least one class along dim 1, got shape "
                         f"{tuple(input.shape)}")  # fmt: skip
    index_shape = _positions(input) if input.dim() >= 2 else None
    if score is None:
        if tuple(target.shape) == tuple(input.shape) and target.is_floating_point():
            if ignore_index is not None:
                raise ValueError(
                    f"ignore_index: only applies to class-index targets (with score); with "
                    f"dense float targets drop the elements or give them weight 0 (got "
                    f"ignore_index={ignore_index})"
                )
            V.check_unit_range("target", target, what="quality scores")
            return target, None, None, None
        if index_shape is not None and tuple(target.shape) == index_shape:
            raise ValueError(
                f"score: class-index targets of shape {index_shape} need the quality score of "
                f"each position's labelled class: pass score= a float tensor of the target's "
                f"shape (or give dense float scores of the input's shape as target)"
            )
        if tuple(target.shape) == tuple(input.shape):
            raise TypeError(
                f"target: dense targets of the input's shape {tuple(input.shape)} must be "
                f"floating-point quality scores in [0, 1], got dtype {target.dtype}"
            )
        also = f" or class indices of shape {index_shape} with score" if index_shape else ""
        raise ValueError(
            f"target: expected dense scores of shape {tuple(input.shape)}{also} for input of "
            f"shape {tuple(input.shape)}, got shape {tuple(target.shape)}"
        )

    V.check_tensor("score", score)
    V.check_same_device("score", score, input)
    if index_shape is None:
        raise ValueError(
            f"score: class-index targets need (N, C, ...) logits, got input of shape "
            f"{tuple(input.shape)}"
        )
    if tuple(target.shape) != index_shape:
        raise ValueError(
            f"target: with score, expected class indices of shape {index_shape} (the input's "
            f"shape without dim 1) for input of shape {tuple(input.shape)}, got shape "
            f"{tuple(target.shape)}"
        )
    if not V.is_integer_tensor(target):
        raise TypeError(
            f"target: with score, class indices must have an integer dtype, got dtype "
            f"{target.dtype} (dense float scores of the input's shape take score=None)"
        )
    if not score.is_floating_point():
        raise TypeError(f"score: expected a floating-point tensor, got dtype {score.dtype}")
    if tuple(score.shape) != index_shape:
        raise ValueError(
            f"score: expected the target's shape {index_shape}, got shape {tuple(score.shape)}"
        )
    num_classes = input.shape[1]
    target, ignored = index_target(target, ignore_index, num_classes, num_classes + 1,
                                   fill=num_classes)  # fmt: skip
    labelled = target < num_classes  # ignored positions hold C: not labelled
    dtype = compute_dtype_of(input)
    score = torch.where(labelled, score.detach().to(dtype), 0.0)
    V.check_unit_range("score", score, what="quality scores of the labelled classes")
    positions = target.numel()
    if ignored is None:
        kept = full(input, float(positions))
    else:
        kept = positions - ignored.sum(dtype=dtype)
    return target, score, ignored, kept


def _positions(input: Tensor) -> tuple[int, ...]:
    return tuple(input.shape[:1] + input.shape[2:])


def _scale(
    reduction: str, divisor: Tensor, normalizer: float | Tensor | None, input: Tensor
) -> Tensor | None:
    """The ``"mean"`` factor: ``1 / divisor``, or ``1 / max(normalizer, 1)`` (mmdet's heads
    clamp their ``avg_factor`` to at least 1 before passing it)."""
    if reduction != "mean":
        return None
    if normalizer is not None:
        divisor = V.check_normalizer(normalizer, input, compute_dtype_of(input))
    return mean_scale(divisor, False, clamp=normalizer is not None)


def _nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a real number >= 0, got {type(value).__name__}")
    number = float(value)
    if not (number >= 0 and number < math.inf):  # comparisons: NaN fails both
        raise ValueError(f"{name}: expected a finite number >= 0, got {number}")
    return number


def position_weight(weight: Tensor | None, input: Tensor) -> Tensor | None:
    """A per-position weight as a view of shape ``(N, *)`` (the input's without dim 1) in the
    compute dtype; any shape that broadcasts to it."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight: expected a tensor or None, got {type(weight).__name__}")
    V.check_tensor("weight", weight)
    V.check_same_device("weight", weight, input)
    if not weight.is_floating_point():
        raise TypeError(f"weight: expected a floating-point tensor, got dtype {weight.dtype}")
    shape = _positions(input)
    try:
        broadcast = torch.broadcast_shapes(weight.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(
            f"weight: expected one factor per position, a shape that broadcasts to {shape} "
            f"(the input's shape {tuple(input.shape)} without dim 1), got {tuple(weight.shape)}"
        )
    if V.reads_values(weight):
        bad = ~(weight >= 0) | ~torch.isfinite(weight)
        if bool(bad.any()):
            raise ValueError(f"weight: expected finite values >= 0, got {weight[bad][0].item()}")
    return weight.detach().to(compute_dtype_of(input)).expand(shape)


# --------------------------------------------------------------------------------------------
# Distribution focal loss
# --------------------------------------------------------------------------------------------


def prepare_distribution_focal(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    normalizer: float | Tensor | None,
    backend: str,
) -> DistributionFocalSpec:
    check_common(input, target, reduction, backend, False, ignore_index)
    V.check_constants(target=target, weight=weight, normalizer=normalizer)
    V.check_normalizer_reduction(normalizer, reduction)
    if input.dim() < 2 or input.shape[1] < 2:
        raise ValueError(
            f"input: expected logits over n + 1 >= 2 bins along dim 1, (M, n + 1) or "
            f"(N, n + 1, d1, ...), got shape {tuple(input.shape)}"
        )
    n = input.shape[1] - 1
    shape = _positions(input)
    if tuple(target.shape) != shape:
        raise ValueError(
            f"target: expected one offset per position, shape {shape} (the input's shape "
            f"{tuple(input.shape)} without dim 1), got shape {tuple(target.shape)}"
        )
    if not target.is_floating_point():
        raise TypeError(
            f"target: expected continuous offsets in [0, {n}] as a floating-point tensor, got "
            f"dtype {target.dtype} (convert with target.float())"
        )
    if ignore_index is not None and 0 <= ignore_index <= n:
        raise ValueError(
            f"ignore_index: must lie outside the valid targets [0, {n}] (n + 1 = {n + 1} bins), "
            f"got {ignore_index}; use a negative value such as -1"
        )
    dtype = compute_dtype_of(input)
    y = target.detach().to(dtype)
    ignored = None if ignore_index is None else target == ignore_index
    if V.reads_values(y):
        _check_offsets(y, ignored, n, ignore_index)
    elif not V.value_checks_enabled() or y.device.type == "meta":
        # Checks off: a target outside [0, n] (NaN included) is ignored, as an out-of-range
        # class index is; no backend reads a bin outside the logits.
        outside = ~((y >= 0) & (y <= n))
        ignored = outside if ignored is None else ignored | outside
    if ignored is not None:
        y = y.masked_fill(ignored, 0.0)
    positions = math.prod(shape)
    if ignored is None:
        divisor = full(input, float(positions))
    else:
        divisor = positions - ignored.sum(dtype=dtype)
    return DistributionFocalSpec(
        input=input,
        reduction=reduction,  # type: ignore[arg-type]
        scale=_scale(reduction, divisor, normalizer, input),
        layout=layout_for(reduction, elementwise=False),  # type: ignore[arg-type]
        squeeze=False,
        target=y,
        ignored=ignored,
        weight=position_weight(weight, input),
    )


def _check_offsets(y: Tensor, ignored: Tensor | None, n: int, ignore_index: int | None) -> None:
    """DFL targets finite and in ``[0, n]`` except at ignored positions (a value check)."""
    values = y if ignored is None else y.masked_fill(ignored, 0.0)
    low, high = torch.stack(torch.aminmax(values)).tolist()  # NaN propagates: fails both
    if not (low >= 0 and high <= n):
        first = values[~((values >= 0) & (values <= n))][0].item()
        extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(
            f"target: offsets must be finite and lie in [0, {n}]{extra} for n + 1 = {n + 1} "
            f"bins, got {first}"
        )
