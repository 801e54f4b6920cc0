"""The softmax focal loss spec and its preparation (shared by ``focal_loss`` and ``FocalLoss``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from numbers import Real

from torch import Tensor

from .. import _validation as V
from .._engine import Spec
from ..schedules import GammaSchedule
from . import (
    check_common,
    class_vector,
    compute_dtype_of,
    constant_vector,
    count_scale,
    index_target,
    layout_for,
    mean_scale,
    product,
)


@dataclasses.dataclass(frozen=True)
class SoftmaxFocalSpec(Spec):
    """Softmax focal loss over dim 1 of ``input`` ``(N, C, *)``.

    Attributes:
        target: int64 class indices ``(N, *)`` with a valid class (0) at ignored positions,
            or class probabilities of the input's shape (any floating dtype).
        ignored: bool ``(N, *)`` mask of ignored positions, or None (none ignored).
        coef: ``(C,)`` contiguous ``weight * alpha`` in the compute dtype, or None.
        gamma, label_smoothing, detach_modulator: as in ``focal_loss``; ``gamma`` is NaN when
            a schedule is given (a schedule of one value arrives as its number).
        gamma_thresholds, gamma_values: a :class:`~focalloss.GammaSchedule` of at least two
            pieces as plain tuples of floats (empty for a constant ``gamma``).
        poly1_epsilon: the Poly-1 coefficient (0: no Poly-1 term).
        poly_weight: ``(C,)`` contiguous ``weight`` (without ``alpha``) in the compute dtype
            when ``poly1_epsilon != 0`` and a weight is given, else None.
    """

    family = "softmax_focal"

    target: Tensor
    ignored: Tensor | None
    coef: Tensor | None
    gamma: float
    label_smoothing: float
    detach_modulator: bool
    gamma_thresholds: tuple[float, ...] = ()
    gamma_values: tuple[float, ...] = ()
    poly1_epsilon: float = 0.0
    poly_weight: Tensor | None = None

    @property
    def probabilities(self) -> bool:
        return self.target.is_floating_point()

    @property
    def scheduled(self) -> bool:
        return len(self.gamma_thresholds) > 0


def check_gamma_or_schedule(
    gamma: object,
) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """``gamma`` as ``(number, thresholds, values)``: a number (or a one-value schedule) gives
    ``(gamma, (), ())``; a schedule of several pieces gives ``(nan, thresholds, values)``."""
    if isinstance(gamma, GammaSchedule):
        thresholds, values = gamma.pieces()  # constants under torch.compile
        if len(thresholds) == 0:  # one value: the constant path, bit for bit
            return values[0], (), ()
        return math.nan, thresholds, values
    if isinstance(gamma, bool) or not isinstance(gamma, Real):
        raise TypeError(
            f"gamma: expected a real number >= 0, got {type(gamma).__name__} (or a GammaSchedule)"
        )
    return V.check_gamma(gamma), (), ()


def check_poly1_epsilon(poly1_epsilon: object) -> float:
    """The Poly-1 coefficient: any finite real number (the paper uses values in [-1, 10])."""
    if isinstance(poly1_epsilon, bool) or not isinstance(poly1_epsilon, Real):
        raise TypeError(
            f"poly1_epsilon: expected a finite real number, got {type(poly1_epsilon).__name__}"
        )
    value = float(poly1_epsilon)
    # comparisons, not math.isfinite: they also work on torch.compile's symbolic floats
    if not (-math.inf < value < math.inf):
        raise ValueError(f"poly1_epsilon: expected a finite real number, got {value}")
    return value


def prepare(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float | GammaSchedule,
    alpha: float | Sequence[float] | Tensor | None,
    weight: Sequence[float] | Tensor | None,
    ignore_index: int | None,
    reduction: str,
    label_smoothing: float,
    detach_modulator: bool,
    backend: str,
    sync_normalizer: bool,
    poly1_epsilon: float = 0.0,
) -> SoftmaxFocalSpec:
    check_common(input, target, reduction, backend, detach_modulator, ignore_index)
    gamma, thresholds, values = check_gamma_or_schedule(gamma)
    poly1_epsilon = check_poly1_epsilon(poly1_epsilon)
    label_smoothing = V.check_unit_interval("label_smoothing", label_smoothing)
    if input.dim() == 0:
        raise ValueError(
            "input: expected logits of shape (C), (N, C) or (N, C, d1, ...), got a 0-d tensor"
        )
    V.check_constants(target=target, alpha=alpha, weight=weight)
    V.check_sync_normalizer(sync_normalizer, reduction)

    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    num_classes = input.shape[1]
    if num_classes == 0:
        raise ValueError(
            f"input: expected at least one class (C >= 1), got shape {tuple(input.shape)}"
        )
    probabilities = _target_kind(input, target, unbatched)
    alpha_vec = _alpha_vector(alpha, num_classes, input)
    weight_vec = (
        None
        if weight is None
        else class_vector("weight", weight, num_classes, input, upper=float("inf"))
    )
    coef = product(weight_vec, alpha_vec)

    if probabilities:
        if ignore_index not in (None, -100):
            raise ValueError(
                f"ignore_index: not supported with probability targets (as in F.cross_entropy); "
                f"expected -100 (the default) or None, got {ignore_index}"
            )
        V.check_unit_range("target", target, "class probabilities")
        ignored = None
        divisor = target.numel() // num_classes
    else:
        target, ignored = index_target(target, ignore_index, num_classes, num_classes, fill=0)
        divisor = _index_divisor(input, target, ignored, weight_vec)
    scale = None
    if reduction == "mean":
        if isinstance(divisor, int):  # a count known on the host: 1 / count by one fill
            scale = count_scale(input, divisor, sync_normalizer)
        else:
            scale = mean_scale(divisor, sync_normalizer, clamp=False)
    return SoftmaxFocalSpec(
        input=input,
        reduction=reduction,  # type: ignore[arg-type]
        scale=scale,
        layout=layout_for(reduction, elementwise=False),  # type: ignore[arg-type]
        squeeze=unbatched and reduction == "none",
        target=target,
        ignored=ignored,
        coef=coef,
        gamma=gamma,
        label_smoothing=label_smoothing,
        detach_modulator=detach_modulator,
        gamma_thresholds=thresholds,
        gamma_values=values,
        poly1_epsilon=poly1_epsilon,
        poly_weight=weight_vec if poly1_epsilon != 0.0 else None,
    )


def _target_kind(input: Tensor, target: Tensor, unbatched: bool) -> bool:
    """True for probability targets, False for class indices; raises on anything else."""
    index_shape = input.shape[:1] + input.shape[2:]
    if target.shape == input.shape:
        if not target.is_floating_point():
            shapes = _shown_shapes(input, target, unbatched)
            raise TypeError(
                f"target: a target of the input's shape {shapes[0]} holds class probabilities "
                f"and must be floating point, got dtype {target.dtype} (for class indices pass "
                f"shape {shapes[1]})"
            )
        return True
    if target.shape == index_shape:
        if not V.is_integer_tensor(target):
            raise TypeError(
                f"target: class indices of shape {_shown_shapes(input, target, unbatched)[1]} "
                f"must have an integer dtype (int64 or uint8), got dtype {target.dtype} "
                f"(convert with target.long())"
            )
        return False
    shown_input, shown_index, shown_target = _shown_shapes(input, target, unbatched)
    raise ValueError(
        f"target: expected class indices of shape {shown_index} or probabilities of shape "
        f"{shown_input} for input of shape {shown_input}, got shape {shown_target}"
    )


def _shown_shapes(input: Tensor, target: Tensor, unbatched: bool) -> tuple[str, str, str]:
    """The input, index-target and target shapes as the caller wrote them (for messages)."""
    if unbatched:
        return str(tuple(input.shape[1:])), "()", str(tuple(target.shape[1:]))
    index = tuple(input.shape[:1] + input.shape[2:])
    return str(tuple(input.shape)), str(index), str(tuple(target.shape))


def _alpha_vector(
    alpha: float | Sequence[float] | Tensor | None, num_classes: int, input: Tensor
) -> Tensor | None:
    if alpha is None:
        return None
    if isinstance(alpha, Real) and not isinstance(alpha, bool):
        a = V.check_unit_interval("alpha", alpha)
        check_number_alpha(num_classes)
        return constant_vector((a, 1.0 - a), input.device, compute_dtype_of(input))
    return class_vector("alpha", alpha, num_classes, input, upper=float("inf"))


def check_number_alpha(num_classes: int) -> None:
    """A number ``a`` as alpha means ``[a, 1 - a]``: two classes only."""
    if num_classes != 2:
        raise ValueError(
            f"alpha: a single number a means factors [a, 1 - a] for classes 0 and 1 and is "
            f"valid only for C == 2, got C={num_classes}; pass {num_classes} per-class "
            f"factors instead"
        )


def _index_divisor(
    input: Tensor, target: Tensor, ignored: Tensor | None, weight: Tensor | None
) -> Tensor | int:
    """``sum_i v_i * w_{target_i}``: the divisor of ``reduction="mean"`` for class indices
    (an int when it is the number of positions)."""
    if weight is None:
        if ignored is None:
            return target.numel()
        return target.numel() - ignored.sum(dtype=compute_dtype_of(input))
    w_t = weight[target]
    if ignored is not None:
        w_t.masked_fill_(ignored, 0.0)
    return w_t.sum()
