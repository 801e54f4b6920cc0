"""The sigmoid focal loss spec and its preparation (shared by the function and the module)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from numbers import Real

from torch import Tensor

from .. import _validation as V
from .._engine import Spec
from ..schedules import GammaSchedule
from . import (
    check_common,
    check_vector_values,
    class_vector,
    compute_dtype_of,
    full,
    index_target,
    layout_for,
    mean_scale,
)
from .softmax import check_gamma_or_schedule, check_poly1_epsilon


@dataclasses.dataclass(frozen=True)
class SigmoidFocalSpec(Spec):
    """Sigmoid focal loss, elementwise over ``input``.

    Attributes:
        target: float labels of the input's shape, or int64 class indices ``(N, *)`` for
            ``(N, C, *)`` logits, with ``C`` (background: all outputs negative) at ignored
            positions. A binary integer mask for ``C == 1`` arrives here already as indices
            (1 -> class 0, 0 -> background 1).
        ignored: bool ``(N, *)`` mask of ignored positions (index targets), or None.
        alpha: None (disabled), a float (positives ``a``, negatives ``1 - a``), a 0-d tensor
            (the same, from a module's buffer) or a contiguous ``(C,)`` tensor (per class,
            along dim 1), in the compute dtype.
        weight, pos_weight: None, or views of the input's shape (stride 0 where broadcast) in
            the compute dtype.
        gamma, detach_modulator: as in ``sigmoid_focal_loss``; ``gamma`` is NaN when a
            schedule is given (a schedule of one value arrives as its number).
        gamma_thresholds, gamma_values: a :class:`~focalloss.GammaSchedule` of at least two
            pieces as plain tuples of floats (empty for a constant ``gamma``).
        poly1_epsilon: the Poly-1 coefficient (0: no Poly-1 term).
    """

    family = "sigmoid_focal"

    target: Tensor
    ignored: Tensor | None
    alpha: float | Tensor | None
    weight: Tensor | None
    pos_weight: Tensor | None
    gamma: float
    detach_modulator: bool
    gamma_thresholds: tuple[float, ...] = ()
    gamma_values: tuple[float, ...] = ()
    poly1_epsilon: float = 0.0

    @property
    def index(self) -> bool:
        return not self.target.is_floating_point()

    @property
    def scheduled(self) -> bool:
        return len(self.gamma_thresholds) > 0


def prepare(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float | GammaSchedule,
    alpha: float | Sequence[float] | Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    normalizer: float | Tensor | None,
    detach_modulator: bool,
    backend: str,
    sync_normalizer: bool,
    poly1_epsilon: float = 0.0,
) -> SigmoidFocalSpec:
    check_common(input, target, reduction, backend, detach_modulator, ignore_index)
    gamma, thresholds, values = check_gamma_or_schedule(gamma)
    poly1_epsilon = check_poly1_epsilon(poly1_epsilon)
    V.check_constants(
        target=target, alpha=alpha, weight=weight, pos_weight=pos_weight, normalizer=normalizer
    )
    V.check_sync_normalizer(sync_normalizer, reduction)
    V.check_normalizer_reduction(normalizer, reduction)

    kind = _target_kind(input, target)
    if kind == "float" and ignore_index is not None:
        raise ValueError(
            f"ignore_index: only applies to class-index targets; with float targets drop the "
            f"elements or give them weight 0 (got ignore_index={ignore_index})"
        )
    ignored = None
    if kind == "float":
        V.check_unit_range("target", target)
        divisor = full(input, float(target.numel()))
    else:
        num_classes = input.shape[1]
        if kind == "mask":
            target = _mask_as_indices(input, target, ignore_index)
        target, ignored = index_target(
            target, ignore_index, num_classes, num_classes + 1, fill=num_classes
        )
        count = target.numel() * num_classes
        if ignored is None:
            divisor = full(input, float(count))
        else:
            divisor = count - ignored.sum(dtype=compute_dtype_of(input)) * num_classes

    scale = None
    if reduction == "mean":
        if normalizer is not None:
            divisor = V.check_normalizer(normalizer, input, compute_dtype_of(input))
        scale = mean_scale(divisor, sync_normalizer, clamp=normalizer is not None)
    return SigmoidFocalSpec(
        input=input,
        reduction=reduction,  # type: ignore[arg-type]
        scale=scale,
        layout=layout_for(reduction, elementwise=True),  # type: ignore[arg-type]
        squeeze=False,
        target=target,
        ignored=ignored,
        alpha=_alpha(alpha, input),
        weight=elementwise_weight("weight", weight, input),
        pos_weight=elementwise_weight("pos_weight", pos_weight, input),
        gamma=gamma,
        detach_modulator=detach_modulator,
        gamma_thresholds=thresholds,
        gamma_values=values,
        poly1_epsilon=poly1_epsilon,
    )


def _target_kind(input: Tensor, target: Tensor) -> str:
    """``"float"`` labels, ``"index"`` class indices, or a binary integer ``"mask"`` (C == 1)."""
    index_shape = tuple(input.shape[:1] + input.shape[2:]) if input.dim() >= 2 else None
    binary = input.dim() >= 2 and input.shape[1] == 1
    if target.shape == input.shape:
        if target.is_floating_point():
            return "float"
        if binary and V.is_integer_tensor(target):
            return "mask"
        raise TypeError(
            f"target: labels of the input's shape {tuple(input.shape)} must be floating "
            f"point (binary or soft labels in [0, 1]), got dtype {target.dtype} (convert "
            f"with target.float(); class indices have shape input.shape without dim 1)"
        )
    if index_shape is not None and tuple(target.shape) == index_shape:
        if not V.is_integer_tensor(target):
            raise TypeError(
                f"target: class indices of shape {tuple(target.shape)} must have an integer "
                f"dtype, got dtype {target.dtype}"
            )
        return "mask" if binary else "index"
    also = f" or class indices of shape {index_shape}" if index_shape is not None else ""
    raise ValueError(
        f"target: expected labels of shape {tuple(input.shape)}{also} for input of shape "
        f"{tuple(input.shape)}, got shape {tuple(target.shape)}"
    )


def _mask_as_indices(input: Tensor, target: Tensor, ignore_index: int | None) -> Tensor:
    """A binary integer mask for one output (``C == 1``) as class indices: 1 (positive) is
    class 0, 0 (negative) is the background class 1; ``ignore_index`` stays as it is.

    With value checks on, any other value is an error; with them off it becomes an index
    outside ``[0, 1]`` and is treated as ignored, like an out-of-range class index.
    """
    if ignore_index in (0, 1):
        raise ValueError(
            f"ignore_index: with one output (C == 1) an integer target is a binary mask whose "
            f"values 0 and 1 are labels, so ignore_index cannot be {ignore_index}; use another "
            f"value (e.g. -1 or 255)"
        )
    if target.dim() == input.dim():
        target = target.squeeze(1)
    target = target.long()
    if V.reads_values(target):
        allowed = (target == 0) | (target == 1)
        if ignore_index is not None:
            allowed |= target == ignore_index
        if not bool(allowed.all()):
            bad = target[~allowed].flatten()[0].item()
            extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
            raise ValueError(
                f"target: with one output (C == 1) an integer target is a binary mask of 0 "
                f"(negative) and 1 (positive){extra}, got {bad}; for soft labels pass a "
                f"floating-point target"
            )
    flipped = 1 - target  # 1 -> 0 (the class), 0 -> 1 (background); others leave [0, 1]
    if ignore_index is None:
        return flipped
    return flipped.masked_fill(target == ignore_index, ignore_index)


def _alpha(alpha: float | Sequence[float] | Tensor | None, input: Tensor) -> float | Tensor | None:
    if alpha is None:
        return None
    if isinstance(alpha, Real) and not isinstance(alpha, bool):
        value = float(alpha)
        if value < 0:  # torchvision's convention: a negative alpha disables the factor
            return None
        return V.check_unit_interval("alpha", value)
    if isinstance(alpha, Tensor) and alpha.dim() == 0:  # a module's scalar buffer
        V.check_tensor("alpha", alpha)
        V.check_same_device("alpha", alpha, input)
        if not alpha.is_floating_point():
            raise TypeError(f"alpha: expected a floating-point tensor, got dtype {alpha.dtype}")
        check_vector_values("alpha", alpha, upper=1.0)
        return alpha.detach().to(compute_dtype_of(input))
    if input.dim() < 2:
        raise ValueError(
            f"alpha: per-class factors need (N, C, ...) logits, got input of shape "
            f"{tuple(input.shape)}; pass a single number"
        )
    return class_vector("alpha", alpha, input.shape[1], input, upper=1.0)


def elementwise_weight(name: str, value: Tensor | None, input: Tensor) -> Tensor | None:
    """A weight as a view of the input's shape in the compute dtype.

    A 1-D tensor of length ``C`` for ``(N, C, *)`` logits is one value per
    class along dim 1, like ``alpha``; any other shape broadcasts to the input as in
    ``F.binary_cross_entropy_with_logits`` (which would line a ``(C,)`` tensor up with the
    last dimension instead).
    """
    if value is None:
        return None
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a tensor or None, got {type(value).__name__}")
    if input.dim() >= 2 and value.dim() == 1 and value.shape[0] == input.shape[1]:
        vector = class_vector(name, value, input.shape[1], input, upper=float("inf"))
        shape = (1, -1) + (1,) * (input.dim() - 2)
        return vector.view(shape).expand(input.shape)
    return V.broadcast_weight(name, value, input, compute_dtype_of(input))
