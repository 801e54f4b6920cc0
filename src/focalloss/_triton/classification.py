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
from .families import alpha_vector_mode


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
    vector, mode = alpha_vector_mode(spec.input, alpha)
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
