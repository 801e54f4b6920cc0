"""How the asymmetric loss and FL* reach their kernel (plain Python: no triton import here;
the custom operators live in ``classification_kernels``, imported by ``load()`` before the
first launch).

The focal Tversky loss has no kernel: its gradient needs the per-class sums over every
position before any element's gradient can be formed, so a kernel would be two launches with
a global reduction between them, doing what the PyTorch path does with a softmax, two
reductions (one a matrix product) and one pass for the gradient; it is left to that path
(``FocalTverskySpec`` is unsupported here, and ``focal_tversky_loss`` has no ``backend``
argument).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._spec.classification import AsymmetricSpec, FocalStarSpec
from . import register


def _asymmetric_forward(spec: AsymmetricSpec, need_grad: bool) -> tuple[Tensor, Tensor]:
    return torch.ops.focalloss.asymmetric_fwd(
        spec.input,
        spec.target,
        spec.ignored,
        spec.weight,
        spec.scale,
        spec.gamma_pos,
        spec.gamma_neg,
        spec.clip,
        spec.detach_modulator,
        spec.reduction == "none",
        need_grad,
    )


def _focal_star_forward(spec: FocalStarSpec, need_grad: bool) -> tuple[Tensor, Tensor]:
    alpha = spec.alpha
    vector = None
    if isinstance(alpha, Tensor):  # per class (C,), or a 0-d buffer: one value per class
        classes = spec.input.shape[1] if spec.input.dim() >= 2 else 1
        vector = alpha if alpha.dim() == 1 else alpha.expand(classes).contiguous()
    mode = 0 if alpha is None else (2 if vector is not None else 1)
    return torch.ops.focalloss.focal_star_fwd(
        spec.input,
        spec.target,
        spec.ignored,
        spec.weight,
        vector,
        spec.scale,
        spec.gamma,
        spec.beta,
        alpha if isinstance(alpha, float) else 0.0,
        mode,
        spec.reduction == "none",
        need_grad,
    )


register(
    AsymmetricSpec.family,
    lambda spec: None,
    _asymmetric_forward,  # type: ignore[arg-type]
    launcher="classification_kernels",
)
register(
    FocalStarSpec.family,
    lambda spec: None,
    _focal_star_forward,  # type: ignore[arg-type]
    launcher="classification_kernels",
)
