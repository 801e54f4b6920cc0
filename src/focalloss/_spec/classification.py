"""Specs and preparation of the classification family: the asymmetric loss, FL* and the focal
Tversky loss (shared by the functions and the modules of ``focalloss.classification``).

The two elementwise losses (asymmetric, FL*) take the targets of ``sigmoid_focal_loss``: float
labels of the input's shape, or class indices ``(N, *)`` with ``C`` as background and
``ignore_index``; the target rules and the elementwise ``weight`` are the sigmoid loss's own
helpers, so the three losses accept exactly the same inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from numbers import Real

from torch import Tensor

from .. import _validation as V
from .._engine import Spec
from . import (
    check_common,
    class_vector,
    compute_dtype_of,
    full,
    index_target,
    layout_for,
    mean_scale,
)
from . import sigmoid as _sigmoid
from . import softmax as _softmax

ACTIVATIONS = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class AsymmetricSpec(Spec):
    """Asymmetric loss (Ridnik et al. 2021), elementwise over ``input``.

    Attributes:
        target: float labels of the input's shape, or int64 class indices ``(N, *)`` with
            ``C`` (background) at ignored positions (as ``SigmoidFocalSpec``).
        ignored: bool ``(N, *)`` mask of ignored positions (index targets), or None.
        weight: None, or a view of the input's shape in the compute dtype.
        gamma_pos, gamma_neg, clip, detach_modulator: as in ``asymmetric_loss``.
    """

    family = "asymmetric"

    target: Tensor
    ignored: Tensor | None
    weight: Tensor | None
    gamma_pos: float
    gamma_neg: float
    clip: float
    detach_modulator: bool

    @property
    def index(self) -> bool:
        return not self.target.is_floating_point()


@dataclasses.dataclass(frozen=True)
class FocalStarSpec(Spec):
    """FL* (Lin et al. 2017, appendix A), elementwise over ``input``.

    Attributes:
        target, ignored, weight: as in :class:`AsymmetricSpec`.
        alpha: None (disabled), a float, a 0-d tensor (a module's buffer) or a contiguous
            ``(C,)`` tensor (per class along dim 1), in the compute dtype.
        gamma, beta: as in ``sigmoid_focal_loss_star`` (``gamma > 0``).
    """

    family = "sigmoid_focal_star"

    target: Tensor
    ignored: Tensor | None
    alpha: float | Tensor | None
    weight: Tensor | None
    gamma: float
    beta: float

    @property
    def index(self) -> bool:
        return not self.target.is_floating_point()


@dataclasses.dataclass(frozen=True)
class FocalTverskySpec(Spec):
    """Focal Tversky loss (Abraham & Khan 2019) over the positions of ``input`` ``(N, C, *)``.

    Attributes:
        target: int64 class indices ``(N, *)`` (valid values at ignored positions: 0 for
            softmax, ``C`` = background for sigmoid), or float probabilities / multi-hot
            labels of the input's shape.
        ignored: bool ``(N, *)`` mask of ignored positions (index targets), or None.
        weight: ``(C,)`` per-class factors in the compute dtype, or None.
        alpha, beta, gamma, smooth, per_image: as in ``focal_tversky_loss``.
        softmax: True for ``activation="softmax"``, False for ``"sigmoid"``.
    """

    family = "focal_tversky"

    target: Tensor
    ignored: Tensor | None
    weight: Tensor | None
    alpha: float
    beta: float
    gamma: float
    smooth: float
    softmax: bool
    per_image: bool

    @property
    def index(self) -> bool:
        return not self.target.is_floating_point()


def check_exponent(name: str, value: object) -> float:
    """A focusing exponent: a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a real number >= 0, got {type(value).__name__}")
    number = float(value)
    if not (number >= 0 and number < math.inf):  # NaN fails both
        raise ValueError(f"{name}: expected a finite number >= 0, got {number}")
    return number


def check_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a finite real number, got {type(value).__name__}")
    number = float(value)
    if not (-math.inf < number < math.inf):
        raise ValueError(f"{name}: expected a finite real number, got {number}")
    return number


def check_star_gamma(gamma: object) -> float:
    """FL* divides by gamma: a finite number > 0."""
    if isinstance(gamma, bool) or not isinstance(gamma, Real):
        raise TypeError(f"gamma: expected a real number > 0, got {type(gamma).__name__}")
    number = float(gamma)
    if not (number > 0 and number < math.inf):
        raise ValueError(
            f"gamma: expected a finite number > 0 (FL* is -log sigmoid(gamma * x_t + beta) "
            f"/ gamma), got {number}"
        )
    return number


def _elementwise_target(
    input: Tensor,
    target: Tensor,
    ignore_index: int | None,
    reduction: str,
    normalizer: float | Tensor | None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The sigmoid loss's target rules: ``(target, ignored, scale)`` in canonical form."""
    kind = _sigmoid._target_kind(input, target)
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
            target = _sigmoid._mask_as_indices(input, target, ignore_index)
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
        scale = mean_scale(divisor, False, clamp=normalizer is not None)
    return target, ignored, scale


def prepare_asymmetric(
    input: Tensor,
    target: Tensor,
    *,
    gamma_pos: float,
    gamma_neg: float,
    clip: float,
    weight: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    normalizer: float | Tensor | None,
    detach_modulator: bool,
    backend: str,
) -> AsymmetricSpec:
    check_common(input, target, reduction, backend, detach_modulator, ignore_index)
    gamma_pos = check_exponent("gamma_pos", gamma_pos)
    gamma_neg = check_exponent("gamma_neg", gamma_neg)
    clip = V.check_unit_interval("clip", clip)
    V.check_constants(target=target, weight=weight, normalizer=normalizer)
    V.check_normalizer_reduction(normalizer, reduction)
    target, ignored, scale = _elementwise_target(input, target, ignore_index, reduction, normalizer)
    return AsymmetricSpec(
        input=input,
        reduction=reduction,  # type: ignore[arg-type]
        scale=scale,
        layout=layout_for(reduction, elementwise=True),  # type: ignore[arg-type]
        squeeze=False,
        target=target,
        ignored=ignored,
        weight=_sigmoid.elementwise_weight("weight", weight, input),
        gamma_pos=gamma_pos,
        gamma_neg=gamma_neg,
        clip=clip,
        detach_modulator=detach_modulator,
    )


def prepare_focal_star(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float,
    beta: float,
    alpha: float | Sequence[float] | Tensor | None,
    weight: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    normalizer: float | Tensor | None,
    backend: str,
) -> FocalStarSpec:
    check_common(input, target, reduction, backend, False, ignore_index)
    gamma = check_star_gamma(gamma)
    beta = check_finite("beta", beta)
    V.check_constants(target=target, alpha=alpha, weight=weight, normalizer=normalizer)
    V.check_normalizer_reduction(normalizer, reduction)
    target, ignored, scale = _elementwise_target(input, target, ignore_index, reduction, normalizer)
    return FocalStarSpec(
        input=input,
        reduction=reduction,  # type: ignore[arg-type]
        scale=scale,
        layout=layout_for(reduction, elementwise=True),  # type: ignore[arg-type]
        squeeze=False,
        target=target,
        ignored=ignored,
        alpha=_sigmoid._alpha(alpha, input),
        weight=_sigmoid.elementwise_weight("weight", weight, input),
        gamma=gamma,
        beta=beta,
    )


def prepare_focal_tversky(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float,
    beta: float,
    gamma: float,
    smooth: float,
    activation: str,
    weight: Sequence[float] | Tensor | None,
    ignore_index: int | None,
    per_image: bool,
    reduction: str,
) -> FocalTverskySpec:
    check_common(input, target, reduction, "torch", False, ignore_index)
    alpha = check_exponent("alpha", alpha)
    beta = check_exponent("beta", beta)
    gamma = check_exponent("gamma", gamma)
    smooth = check_exponent("smooth", smooth)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(per_image, bool):
        raise TypeError(f"per_image: expected a bool, got {per_image!r}")
    if input.dim() < 2:
        raise ValueError(
            f"input: expected logits of shape (N, C) or (N, C, d1, ...), got shape "
            f"{tuple(input.shape)} (add the batch dimension with input.unsqueeze(0))"
        )
    num_classes = input.shape[1]
    softmax = activation == "softmax"
    if softmax and num_classes < 2:
        raise ValueError(
            f"input: activation='softmax' needs at least two classes (a softmax over one class "
            f"is 1 everywhere), got C={num_classes}; use activation='sigmoid' for one output"
        )
    if num_classes == 0:
        raise ValueError(
            f"input: expected at least one class (C >= 1), got shape {tuple(input.shape)}"
        )
    V.check_constants(target=target, weight=weight)

    ignored = None
    if softmax:
        probabilities = _softmax._target_kind(input, target, unbatched=False)
        kind = "float" if probabilities else "index"
    else:
        kind = _sigmoid._target_kind(input, target)
    if kind == "float":
        if ignore_index is not None:
            raise ValueError(
                f"ignore_index: only applies to class-index targets; with float targets give "
                f"the positions zero target and prediction mass by slicing them out (got "
                f"ignore_index={ignore_index})"
            )
        V.check_unit_range("target", target, "probabilities / labels")
    elif softmax:
        target, ignored = index_target(target, ignore_index, num_classes, num_classes, fill=0)
    else:
        if kind == "mask":
            target = _sigmoid._mask_as_indices(input, target, ignore_index)
        target, ignored = index_target(
            target, ignore_index, num_classes, num_classes + 1, fill=num_classes
        )
    weight_vec = (
        None
        if weight is None
        else class_vector("weight", weight, num_classes, input, upper=float("inf"))
    )
    scale = None
    if reduction == "mean":
        terms = num_classes * (input.shape[0] if per_image else 1)
        scale = mean_scale(full(input, float(terms)), False, clamp=False)
    return FocalTverskySpec(
        input=input,
        reduction=reduction,  # type: ignore[arg-type]
        scale=scale,
        layout="scalar",  # reduction="none" is differentiated through the composite
        squeeze=False,
        target=target,
        ignored=ignored,
        weight=weight_vec,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        smooth=smooth,
        softmax=softmax,
        per_image=per_image,
    )
