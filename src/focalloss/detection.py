"""The focal losses of modern detectors: varifocal, quality focal and distribution focal loss.

* :func:`varifocal_loss` / :class:`VarifocalLoss`: the IoU-aware classification loss of
  VarifocalNet (Zhang et al., CVPR 2021) and RT-DETR-style detectors.
* :func:`quality_focal_loss` / :class:`QualityFocalLoss`: the joint classification-quality loss
  of GFL (Li et al., NeurIPS 2020).
* :func:`distribution_focal_loss` / :class:`DistributionFocalLoss` and :func:`dfl_decode`: the
  box-side distribution loss of GFL and several YOLO versions, and its decoding.

Each function reads as *prepare, run, return* on the library's engine (closed-form gradients,
PyTorch and Triton backends, ``torch.compile``, double backward and ``torch.func``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _validation as V
from ._engine import BackendName, Reduction, check_backend, run
from ._spec import compute_dtype_of
from ._spec import detection as _spec

__all__ = [
    "DistributionFocalLoss",
    "QualityFocalLoss",
    "VarifocalLoss",
    "dfl_decode",
    "distribution_focal_loss",
    "quality_focal_loss",
    "varifocal_loss",
]


def varifocal_loss(
    input: Tensor,
    target: Tensor,
    score: Tensor | None = None,
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    detach_modulator: bool = False,
    backend: BackendName = "auto",
) -> Tensor:
    r"""Varifocal loss (VFL) of VarifocalNet (Zhang et al., CVPR 2021), elementwise.

    Per element, with ``p = sigmoid(input)`` and the IoU-aware target score ``q`` in [0, 1]
    (the IoU of the predicted box with its ground truth at the labelled class, 0 elsewhere):

    .. math::

        \ell = \mathrm{BCE}(x, q) \cdot
        \begin{cases} q \text{ (or 1 when } \texttt{iou\_weighted=False}) & q > 0 \\
        \alpha\, p^\gamma & q = 0 \end{cases}

    Positives are weighted by their own score, so high-quality detections dominate; only
    negatives are down-weighted by ``alpha * p^gamma``. The modulating factor is differentiated
    (as in mmdet's ``varifocal_loss``); ``detach_modulator=True`` treats it as a constant.

    Targets (two forms, the same loss):

    * dense scores: a floating tensor of the input's shape with ``q`` per element (``score``
      None), values in [0, 1];
    * class indices plus scores: ``target`` of integer dtype and shape ``(N, d1, ...)`` for
      ``(N, C, d1, ...)`` logits, class ``c`` in ``[0, C)`` labels output ``c`` of that position
      with ``q = score`` (all other outputs ``q = 0``), ``C`` means background (every output
      ``q = 0``), ``ignore_index`` drops the position; ``score`` a float tensor of the same
      shape (read only where a class is labelled). Equal to the dense form with the one-hot
      ``onehot(target) * score``, without building it.

    Reductions: ``"none"`` returns the elementwise loss (the input's shape, 0 at ignored
    positions); ``"sum"``; ``"mean"`` divides the sum by the number of non-ignored elements
    (as mmdet without ``avg_factor``), or by ``max(normalizer, 1)`` when ``normalizer`` is
    given. With ``normalizer = avg_factor`` this equals mmdet's ``varifocal_loss`` (up to the
    ``1.2e-7`` mmdet adds to the divisor); mmdet's heads clamp their ``avg_factor`` (the number
    of positives) to at least 1 themselves, which the clamp here makes the rule. A divisor of 0
    (empty or all-ignored input) gives 0 with zero gradients.

    The gradient is exact, in closed form, and finite for every ``gamma >= 0`` and logits up to
    ``+-1e4`` in float32/float16/bfloat16: only ``q = 0`` carries the modulator ``p^gamma``,
    whose derivative ``gamma p^gamma (1 - p)`` is bounded. Half inputs are computed in float32
    (float32 loss, input-dtype gradient). Logits must be finite (``+-inf`` gives inf or NaN at
    that element, as BCE-with-logits); ignored positions get 0 and a zero gradient whatever
    their logits hold.

    Args:
        input: logits ``(N, C, d1, ...)`` (dense targets also take any other shape).
        target: dense scores of the input's shape, or integer class indices (see above).
        score: with class indices, the quality score of each position's labelled class.
        alpha: factor of the negatives, a finite number ``>= 0``. Default: 0.75.
        gamma: exponent of ``p`` on the negatives, ``>= 0``. Default: 2.
        iou_weighted: weight positives by ``q`` (True) or by 1. Default: True.
        weight: elementwise rescaling, broadcast to the input as in
            ``F.binary_cross_entropy_with_logits`` (a ``(C,)`` tensor for ``(N, C, ...)``
            logits is one factor per class along dim 1). Default: None.
        ignore_index: with class indices, the value that marks ignored positions.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        normalizer: divisor of ``"mean"`` (a number or 0-d tensor ``>= 0``, clamped to
            ``>= 1``), typically the number of positives; an error with other reductions.
        detach_modulator: treat ``alpha * p^gamma`` as a constant in the backward pass.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (``"auto"``: the fused Triton kernel
            for CUDA inputs when Triton is available, PyTorch otherwise).

    Returns:
        A 0-d tensor, or the elementwise loss for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from focalloss import varifocal_loss
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
        >>> classes = torch.tensor([0, 3])  # anchor 0: class 0; anchor 1: background (C = 3)
        >>> iou = torch.tensor([0.8, 0.0])  # IoU of each anchor's box with its ground truth
        >>> varifocal_loss(logits, classes, iou, reduction="sum")
        tensor(1.3780)
        >>> dense = torch.tensor([[0.8, 0.0, 0.0], [0.0, 0.0, 0.0]])  # the same target
        >>> varifocal_loss(logits, dense, reduction="sum")
        tensor(1.3780)
    """
    spec = _spec.prepare_varifocal(
        input,
        target,
        score,
        alpha=alpha,
        gamma=gamma,
        iou_weighted=iou_weighted,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        detach_modulator=detach_modulator,
        backend=backend,
    )
    return run(spec, backend)


def quality_focal_loss(
    input: Tensor,
    target: Tensor,
    score: Tensor | None = None,
    *,
    beta: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    detach_modulator: bool = False,
    backend: BackendName = "auto",
) -> Tensor:
    r"""Quality focal loss (QFL) of Generalized Focal Loss (Li et al., NeurIPS 2020).

    Per element, with ``p = sigmoid(input)`` and ``y`` the quality score (IoU) at the labelled
    class and 0 elsewhere, summed over the classes of each position:

    .. math::

        \ell_i = \sum_c \mathrm{BCE}(x_{ic}, y_{ic})\, |y_{ic} - p_{ic}|^\beta .

    The classification score is trained to predict the localisation quality; ``beta`` plays
    the role of the focal loss's ``gamma``. Equal to mmdet's ``quality_focal_loss`` (which
    returns the per-position sum over classes) for matching arguments: ``"none"``, ``"mean"``
    over positions, and ``normalizer = avg_factor`` (as for :func:`varifocal_loss`).

    Targets: dense scores ``y`` of the input's shape (``score`` None), or integer class
    indices ``(N, d1, ...)`` (``C`` = background, ``ignore_index`` dropped) plus ``score`` of
    the same shape, equal to the dense ``onehot(target) * score`` without building it.

    Reductions: ``"none"`` returns one value per position, shape ``(N, d1, ...)`` (0 at ignored
    positions); ``"sum"``; ``"mean"`` divides by the number of non-ignored positions, or by
    ``max(normalizer, 1)``. A divisor of 0 gives 0 with zero gradients.

    The gradient is exact, in closed form, and finite at saturated logits (``+-1e4`` in
    float32/float16/bfloat16) for every ``beta >= 0``. For a soft target ``0 < y < 1`` and
    ``0 < beta < 1`` the derivative of ``|y - p|^beta`` is unbounded as ``p -> y``: the gradient
    is exact wherever ``p != y`` in the compute dtype (large but finite near it: about
    ``2**24 * beta * BCE`` at most in float32) and 0 where ``p == y`` exactly (the one-sided
    derivatives are infinite there). Logits must be finite; ignored positions get 0 and a zero
    gradient whatever their logits hold.

    Args:
        input: logits ``(N, C)`` or ``(N, C, d1, ...)``.
        target: dense scores of the input's shape, or integer class indices.
        score: with class indices, the quality score of each position's labelled class.
        beta: exponent of ``|y - p|``, ``>= 0`` (0 is BCE-with-logits). Default: 2.
        weight: one factor per position, broadcast to ``(N, d1, ...)`` (mmdet's per-anchor
            ``weight``). Default: None.
        ignore_index: with class indices, the value that marks ignored positions.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        normalizer: divisor of ``"mean"`` (a number or 0-d tensor ``>= 0``, clamped to
            ``>= 1``); an error with other reductions.
        detach_modulator: treat ``|y - p|^beta`` as a constant in the backward pass.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        A 0-d tensor, or ``(N, d1, ...)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from focalloss import quality_focal_loss
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
        >>> classes = torch.tensor([0, 3])  # 3 = background
        >>> iou = torch.tensor([0.8, 0.0])
        >>> quality_focal_loss(logits, classes, iou, reduction="none")
        tensor([0.4035, 0.8753])
    """
    spec = _spec.prepare_quality_focal(
        input,
        target,
        score,
        beta=beta,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        detach_modulator=detach_modulator,
        backend=backend,
    )
    return run(spec, backend)


def distribution_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    backend: BackendName = "auto",
) -> Tensor:
    r"""Distribution focal loss (DFL) of Generalized Focal Loss (Li et al., NeurIPS 2020).

    A box side is predicted as a distribution over the offsets ``0, 1, ..., n`` (logits over
    ``n + 1`` bins along dim 1; the expected offset is :func:`dfl_decode`). For a continuous
    target ``y`` in ``[0, n]`` with ``l = floor(y)``, the loss puts the mass on the two nearest
    bins:

    .. math::

        \ell = \mathrm{CE}(x, l)\,(l + 1 - y) + \mathrm{CE}(x, l + 1)\,(y - l).

    ``y == n`` is valid: the loss is ``CE(x, n)`` (no bin beyond ``n`` is read). Equal to
    mmdet's ``distribution_focal_loss`` for ``y`` in ``[0, n)`` (``"none"`` per position,
    ``"mean"`` over positions, ``normalizer = avg_factor`` as for :func:`varifocal_loss`).

    Shapes: ``input`` ``(M, n + 1)`` (as detectors call it: one row per box side) or
    ``(N, n + 1, d1, ...)``; ``target`` ``(M,)`` or ``(N, d1, ...)``, floating. A target outside
    ``[0, n]`` or not finite is an error (a value check; with value checks off such a position
    is ignored, and no bin outside the logits is ever read). ``ignore_index`` (an int outside
    ``[0, n]``) marks positions to drop.

    Reductions: ``"none"`` returns one value per position (0 at ignored positions); ``"sum"``;
    ``"mean"`` divides by the number of non-ignored positions, or by ``max(normalizer, 1)``. A
    divisor of 0 gives 0 with zero gradients. The gradient is the closed form
    ``softmax(x) - (l + 1 - y) e_l - (y - l) e_{l+1}``, finite for logits up to ``+-1e4``.

    Args:
        input: logits over ``n + 1 >= 2`` bins along dim 1.
        target: offsets in ``[0, n]``, the input's shape without dim 1.
        weight: one factor per position, broadcast to the target's shape. Default: None.
        ignore_index: target value that marks ignored positions, outside ``[0, n]``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        normalizer: divisor of ``"mean"`` (clamped to ``>= 1``); an error otherwise.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        A 0-d tensor, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from focalloss import distribution_focal_loss
        >>> logits = torch.zeros(2, 5)                # 2 box sides, n = 4 (5 bins)
        >>> offsets = torch.tensor([1.25, 4.0])       # 4.0 = n is valid
        >>> distribution_focal_loss(logits, offsets, reduction="none")  # uniform: log 5 each
        tensor([1.6094, 1.6094])
    """
    spec = _spec.prepare_distribution_focal(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )
    return run(spec, backend)


def dfl_decode(input: Tensor) -> Tensor:
    r"""The expected offset of DFL logits: ``sum_i softmax(input)_i * i`` over dim 1.

    What GFL-style heads compute at inference (and for the IoU of the predicted box during
    training) from the ``n + 1`` bins of :func:`distribution_focal_loss`. Differentiable
    (plain autograd). Half inputs are computed in float32; the result has the input's dtype.

    Args:
        input: logits ``(M, n + 1)`` or ``(N, n + 1, d1, ...)``.

    Returns:
        ``(M,)`` or ``(N, d1, ...)``: offsets in ``[0, n]``.

    Example:
        >>> import torch
        >>> from focalloss import dfl_decode
        >>> dfl_decode(torch.tensor([[0.0, 0.0, 0.0], [-1e4, 1e4, -1e4]]))
        tensor([1., 1.])
    """
    V.check_tensor("input", input)
    if not input.is_floating_point():
        raise TypeError(f"input: expected floating-point logits, got dtype {input.dtype}")
    if input.dim() < 2 or input.shape[1] < 2:
        raise ValueError(
            f"input: expected logits over n + 1 >= 2 bins along dim 1, (M, n + 1) or "
            f"(N, n + 1, d1, ...), got shape {tuple(input.shape)}"
        )
    dtype = compute_dtype_of(input)
    p = torch.softmax(input, dim=1, dtype=dtype)
    bins = torch.arange(input.shape[1], device=input.device, dtype=dtype)
    offsets = torch.tensordot(p.movedim(1, -1), bins, dims=1)
    return offsets.to(input.dtype)


# --------------------------------------------------------------------------------------------
# Modules: configuration holders that call the functions
# --------------------------------------------------------------------------------------------

# Imported after the functions: focalloss.modules imports focalloss.functional, which
# re-exports the functions above from this (then partly initialised) module.
from .modules import _LossModule  # noqa: E402


def _check_module_options(reduction: object, normalizer: object, backend: object) -> None:
    check_backend(backend)
    V.check_reduction(reduction)  # type: ignore[arg-type]
    V.check_normalizer_reduction(normalizer, reduction)  # type: ignore[arg-type]
    if normalizer is not None and not isinstance(normalizer, Tensor):
        V.check_normalizer_number(normalizer)  # a tensor is checked at each call


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r}")
    return value


class VarifocalLoss(_LossModule):
    r"""Varifocal loss as a module; see :func:`focalloss.varifocal_loss` for the math.

    Holds the configuration; ``weight`` (per element, data-dependent) and ``normalizer`` (the
    number of positives) are given per call: ``criterion(logits, target, score,
    normalizer=num_pos)``. A ``normalizer`` fixed here is used when none is passed.

    Example:
        >>> import torch
        >>> from focalloss import VarifocalLoss
        >>> criterion = VarifocalLoss(alpha=0.75, gamma=2.0, ignore_index=-1)
        >>> logits = torch.zeros(4, 3, requires_grad=True)  # 4 anchors, 3 classes
        >>> classes = torch.tensor([0, 3, -1, 2])           # 3 = background, -1 = ignored
        >>> iou = torch.tensor([0.9, 0.0, 0.0, 0.6])
        >>> loss = criterion(logits, classes, iou, normalizer=2)  # 2 positives
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.9747
    """

    def __init__(
        self,
        *,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        ignore_index: int | None = None,
        reduction: Reduction = "mean",
        normalizer: float | Tensor | None = None,
        detach_modulator: bool = False,
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        _check_module_options(reduction, normalizer, backend)
        self.alpha = _spec._nonnegative("alpha", alpha)
        self.gamma = _spec._nonnegative("gamma", gamma)
        self.iou_weighted = _check_flag("iou_weighted", iou_weighted)
        V.check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.normalizer = normalizer
        self.detach_modulator = _check_flag("detach_modulator", detach_modulator)
        self.backend = backend

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        score: Tensor | None = None,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return varifocal_loss(
            input,
            target,
            score,
            alpha=self.alpha,
            gamma=self.gamma,
            iou_weighted=self.iou_weighted,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            detach_modulator=self.detach_modulator,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        parts = [f"alpha={self.alpha}", f"gamma={self.gamma}"]
        if not self.iou_weighted:
            parts.append("iou_weighted=False")
        parts += [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.detach_modulator:
            parts.append("detach_modulator=True")
        return ", ".join(parts)


class QualityFocalLoss(_LossModule):
    r"""Quality focal loss as a module; see :func:`focalloss.quality_focal_loss`.

    ``weight`` (per position) and ``normalizer`` are given per call.

    Example:
        >>> import torch
        >>> from focalloss import QualityFocalLoss
        >>> criterion = QualityFocalLoss(beta=2.0)
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> loss = criterion(logits, torch.tensor([1, 3]), torch.tensor([0.5, 0.0]))
        >>> loss.backward()
        >>> round(loss.item(), 4)  # (0 + 2 * 0.25 * ln 2) / 2 + 3 * 0.25 * ln 2 / 2
        0.4332
    """

    def __init__(
        self,
        *,
        beta: float = 2.0,
        ignore_index: int | None = None,
        reduction: Reduction = "mean",
        normalizer: float | Tensor | None = None,
        detach_modulator: bool = False,
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        _check_module_options(reduction, normalizer, backend)
        self.beta = _spec._nonnegative("beta", beta)
        V.check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.normalizer = normalizer
        self.detach_modulator = _check_flag("detach_modulator", detach_modulator)
        self.backend = backend

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        score: Tensor | None = None,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return quality_focal_loss(
            input,
            target,
            score,
            beta=self.beta,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            detach_modulator=self.detach_modulator,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        parts = [f"beta={self.beta}", f"ignore_index={self.ignore_index}"]
        parts.append(f"reduction={self.reduction!r}")
        if self.detach_modulator:
            parts.append("detach_modulator=True")
        return ", ".join(parts)


class DistributionFocalLoss(_LossModule):
    r"""Distribution focal loss as a module; see :func:`focalloss.distribution_focal_loss`.

    ``weight`` (per position) and ``normalizer`` are given per call.

    Example:
        >>> import torch
        >>> from focalloss import DistributionFocalLoss, dfl_decode
        >>> criterion = DistributionFocalLoss()
        >>> logits = torch.zeros(4, 17, requires_grad=True)  # one box: 4 sides, n = 16
        >>> offsets = torch.tensor([2.5, 0.0, 16.0, 7.25])
        >>> loss = criterion(logits, offsets)
        >>> loss.backward()
        >>> round(loss.item(), 4)  # uniform bins: log 17
        2.8332
        >>> dfl_decode(logits.detach())
        tensor([8., 8., 8., 8.])
    """

    def __init__(
        self,
        *,
        ignore_index: int | None = None,
        reduction: Reduction = "mean",
        normalizer: float | Tensor | None = None,
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        _check_module_options(reduction, normalizer, backend)
        V.check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.normalizer = normalizer
        self.backend = backend

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return distribution_focal_loss(
            input,
            target,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"
