"""How the detection losses' specs reach their kernels (plain Python: no triton import here;
``focalloss._triton.load()`` imports ``detection_kernels``, which registers the operators)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._spec.detection import DistributionFocalSpec, QualityFocalSpec, VarifocalSpec
from . import register

_VARIFOCAL, _QUALITY_FOCAL = 0, 1
_SUM, _PER_ELEMENT, _PER_POSITION = 0, 1, 2


def _supported(spec) -> str | None:
    return None  # every option of the three losses has a kernel


def _varifocal_forward(spec: VarifocalSpec, need_grad: bool) -> tuple[Tensor, Tensor]:
    return torch.ops.focalloss.quality_sigmoid_fwd(
        spec.input,
        spec.target,
        spec.score,
        spec.ignored,
        spec.weight,
        spec.scale,
        _VARIFOCAL,
        spec.alpha,
        spec.gamma,
        spec.iou_weighted,
        spec.detach_modulator,
        _PER_ELEMENT if spec.reduction == "none" else _SUM,
        need_grad,
    )


def _quality_focal_forward(spec: QualityFocalSpec, need_grad: bool) -> tuple[Tensor, Tensor]:
    weight = spec.weight
    if weight is not None:  # per position -> a view of the input's shape (class stride 0)
        weight = weight.unsqueeze(1).expand(spec.input.shape)
    return torch.ops.focalloss.quality_sigmoid_fwd(
        spec.input,
        spec.target,
        spec.score,
        spec.ignored,
        weight,
        spec.scale,
        _QUALITY_FOCAL,
        1.0,
        spec.beta,
        False,
        spec.detach_modulator,
        _PER_POSITION if spec.reduction == "none" else _SUM,
        need_grad,
    )


def _distribution_focal_forward(
    spec: DistributionFocalSpec, need_grad: bool
) -> tuple[Tensor, Tensor]:
    return torch.ops.focalloss.distribution_focal_fwd(
        spec.input,
        spec.target,
        spec.ignored,
        spec.weight,
        spec.scale,
        spec.reduction == "none",
        need_grad,
    )


register(VarifocalSpec.family, _supported, _varifocal_forward, launcher="detection_kernels")
register(QualityFocalSpec.family, _supported, _quality_focal_forward, launcher="detection_kernels")
register(
    DistributionFocalSpec.family,
    _supported,
    _distribution_focal_forward,
    launcher="detection_kernels",
)
