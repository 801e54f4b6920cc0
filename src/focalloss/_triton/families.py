"""How each loss family's spec reaches its kernel (plain Python: no triton import here; the
custom operators are registered by ``load()`` before the first launch)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._spec.sigmoid import SigmoidFocalSpec
from .._spec.softmax import SoftmaxFocalSpec
from . import register


def _softmax_unsupported(spec: SoftmaxFocalSpec) -> str | None:  # type: ignore[override]
    return "probability targets" if spec.probabilities else None


def _softmax_forward(spec: SoftmaxFocalSpec, need_grad: bool) -> tuple[Tensor, Tensor]:
    return torch.ops.focalloss.softmax_focal_fwd(
        spec.input,
        spec.target,
        spec.ignored,
        spec.coef,
        spec.scale,
        spec.gamma,
        spec.label_smoothing,
        spec.detach_modulator,
        spec.reduction == "none",
        need_grad,
        spec.poly_weight,
        spec.poly1_epsilon,
        list(spec.gamma_thresholds),
        list(spec.gamma_values),
    )


def alpha_vector_mode(input: Tensor, alpha: float | Tensor | None) -> tuple[Tensor | None, int]:
    """A sigmoid-family ``alpha`` as the kernels take it: ``(vector, mode)`` with mode 0 (no
    alpha), 1 (one number, passed as a parameter) or 2 (per class: ``vector`` of C values; a 0-d
    buffer is expanded to one value per class)."""
    if alpha is None:
        return None, 0
    if not isinstance(alpha, Tensor):
        return None, 1
    classes = input.shape[1] if input.dim() >= 2 else 1
    return (alpha if alpha.dim() == 1 else alpha.expand(classes).contiguous()), 2


def _sigmoid_forward(spec: SigmoidFocalSpec, need_grad: bool) -> tuple[Tensor, Tensor]:
    alpha = spec.alpha
    vector, mode = alpha_vector_mode(spec.input, alpha)
    return torch.ops.focalloss.sigmoid_focal_fwd(
        spec.input,
        spec.target,
        spec.ignored,
        spec.weight,
        spec.pos_weight,
        vector,
        spec.scale,
        spec.gamma,
        alpha if isinstance(alpha, float) else 0.0,
        mode,
        spec.detach_modulator,
        spec.reduction == "none",
        need_grad,
        spec.poly1_epsilon,
        list(spec.gamma_thresholds),
        list(spec.gamma_values),
    )


register(SoftmaxFocalSpec.family, _softmax_unsupported, _softmax_forward)
register(SigmoidFocalSpec.family, lambda spec: None, _sigmoid_forward)
