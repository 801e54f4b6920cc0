"""The focal family for multi-label classification and segmentation: the asymmetric loss
(Ridnik et al. 2021), FL* (Lin et al. 2017, appendix A) and the focal Tversky loss (Abraham &
Khan 2019), as functions and modules on the engine (``docs/architecture.md``).

The functions are the single source of truth; the modules hold configuration (per-class
tensors as buffers) and call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Literal

from torch import Tensor

from . import _validation as V
from ._engine import BackendName, Reduction, check_backend, run
from ._spec import classification as _spec

__all__ = [
    "AsymmetricLoss",
    "FocalTverskyLoss",
    "SigmoidFocalLossStar",
    "asymmetric_loss",
    "focal_tversky_loss",
    "sigmoid_focal_loss_star",
]

Activation = Literal["softmax", "sigmoid"]


def asymmetric_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    detach_modulator: bool = False,
    backend: BackendName = "auto",
) -> Tensor:
    r"""Asymmetric loss (ASL) of Ridnik et al. (2021) for multi-label classification.

    Per element, with ``p = sigmoid(input)``, the shifted probability
    ``p_m = max(p - clip, 0)`` and target ``t`` in [0, 1]:

    .. math::

        \ell = -\left[t\,(1 - p)^{\gamma_+} \log p
               + (1 - t)\, p_m^{\gamma_-} \log(1 - p_m)\right] \cdot w.

    Negatives with ``p <= clip`` contribute nothing (the hard threshold), the others are
    down-weighted by ``p_m^gamma_neg``; positives by ``(1 - p)^gamma_pos``. The terms are
    computed from the logits without any eps clamp (``-log p = softplus(-x)``; with
    ``clip > 0``, ``-log(1 - p_m) <= -log(clip)``; with ``clip = 0``,
    ``-log(1 - p) = softplus(x)``), so the loss and its exact gradient are finite for logits up
    to ``+-1e4`` in float32/float16/bfloat16.

    Equivalences: with binary (multi-hot) targets it equals timm's
    ``AsymmetricLossMultiLabel(gamma_neg, gamma_pos, clip)`` wherever timm's ``eps = 1e-8``
    clamp of the probabilities is inactive (``p > 1e-8`` for positives, ``1 - p_m > 1e-8``
    for negatives); timm returns the negated sum, i.e. ``reduction="sum"``, and its
    ``disable_torch_grad_focal_loss=True`` is ``detach_modulator=True``. With
    ``gamma_pos = gamma_neg = 0`` and ``clip = 0`` it is ``F.binary_cross_entropy_with_logits``
    (values and gradients). Soft targets mix the two terms linearly (as written above); timm
    instead raises ``1 - p_t`` to a mixed exponent, so the two differ for ``0 < t < 1``.

    Targets (as :func:`focalloss.sigmoid_focal_loss`): float labels of the input's shape
    (multi-hot or soft, in [0, 1]), or integer class indices of the input's shape without dim
    1 with values in ``[0, C]`` (``C`` = background, all outputs negative; ``ignore_index``
    drops the position), equal to their one-hot labels with ignored positions removed but
    without building them. With ``C == 1`` an integer target of 0/1 is a binary mask.

    Reductions: ``"none"`` (elementwise, 0 at ignored positions), ``"sum"``, ``"mean"`` (the
    sum over the number of non-ignored elements, or over ``normalizer`` clamped to >= 1; a
    divisor of 0 gives 0 with zero gradients).

    Args:
        input: logits ``(N, C, *)``, ``(N, C)`` or any shape for float targets.
        target: float labels of the input's shape, or integer class indices (see above).
        gamma_pos: focusing exponent of the positives, ``>= 0``. Default: 0.
        gamma_neg: focusing exponent of the negatives, ``>= 0``. Default: 4.
        clip: probability margin of the negatives, in [0, 1]. Default: 0.05.
        weight: elementwise rescaling broadcast to the input (a 1-D tensor of length ``C``
            lines up with dim 1). Default: None.
        ignore_index: with class-index targets, the value that marks ignored positions.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        normalizer: divisor of ``"mean"`` (a number or 0-d tensor, clamped to >= 1).
        detach_modulator: treat ``(1 - p)^gamma_pos`` and ``p_m^gamma_neg`` as constants in
            the backward pass (timm's ``disable_torch_grad_focal_loss``). Default: False.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (an elementwise kernel; ``"auto"``
            uses it for CUDA inputs when Triton is available).

    Returns:
        A 0-d tensor, or the elementwise loss for ``reduction="none"``; float32 for half inputs.

    Example:
        >>> import torch
        >>> from focalloss import asymmetric_loss
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 0.0]])
        >>> labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
        >>> asymmetric_loss(logits, labels, reduction="sum")
        tensor(1.2252)
        >>> import torch.nn.functional as F
        >>> bce = F.binary_cross_entropy_with_logits(logits, labels)
        >>> torch.allclose(asymmetric_loss(logits, labels, gamma_neg=0.0, clip=0.0), bce)
        True
    """
    spec = _spec.prepare_asymmetric(
        input,
        target,
        gamma_pos=gamma_pos,
        gamma_neg=gamma_neg,
        clip=clip,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        detach_modulator=detach_modulator,
        backend=backend,
    )
    return run(spec, backend)


def sigmoid_focal_loss_star(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    beta: float = 1.0,
    alpha: float | Sequence[float] | Tensor | None = 0.25,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    backend: BackendName = "auto",
) -> Tensor:
    r"""FL*, the focal loss variant of the RetinaNet paper's appendix A (Lin et al. 2017).

    Per element, with target ``t`` in [0, 1], ``x_t = x (2t - 1)`` and
    ``a_t = alpha t + (1 - alpha)(1 - t)``:

    .. math::

        \ell = -\frac{a_t\, w}{\gamma} \log \sigma(\gamma x_t + \beta).

    ``gamma`` sharpens and ``beta`` shifts the probability ``p_t* = sigmoid(gamma x_t + beta)``
    the loss is the cross-entropy of; the paper reports ``gamma = 2, beta = 1`` on par with the
    focal loss. With ``beta = 0`` it equals fvcore's ``sigmoid_focal_loss_star`` (which has no
    ``beta``); with ``gamma = 1, beta = 0, alpha = None`` it is BCE-with-logits for binary
    targets. The gradient, ``-(2t - 1) a_t w sigmoid(-(gamma x_t + beta))``, is exact and
    finite for every finite logit.

    Targets, reductions, ``ignore_index`` and ``normalizer``: as :func:`asymmetric_loss`.

    Args:
        input: logits ``(N, C, *)``, ``(N, C)`` or any shape for float targets.
        target: float labels of the input's shape, or integer class indices with ``C`` as
            background.
        gamma: sharpness ``> 0``. Default: 2.
        beta: shift, any finite number. Default: 1.
        alpha: weight of positives in [0, 1] (negatives get ``1 - alpha``); a negative number
            or None disables it; or ``C`` per-class values in [0, 1] along dim 1.
            Default: 0.25.
        weight: elementwise rescaling broadcast to the input (a 1-D tensor of length ``C``
            lines up with dim 1). Default: None.
        ignore_index: with class-index targets, the value that marks ignored positions.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        normalizer: divisor of ``"mean"`` (a number or 0-d tensor, clamped to >= 1).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (an elementwise kernel).

    Returns:
        A 0-d tensor, or the elementwise loss for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from focalloss import sigmoid_focal_loss_star
        >>> logits = torch.tensor([[3.0, -2.0], [0.5, 1.0]])
        >>> labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> sigmoid_focal_loss_star(logits, labels, reduction="sum")
        tensor(0.2686)
        >>> classes = torch.tensor([0, 1])  # the same labels as class indices
        >>> sigmoid_focal_loss_star(logits, classes, reduction="sum")
        tensor(0.2686)
    """
    spec = _spec.prepare_focal_star(
        input,
        target,
        gamma=gamma,
        beta=beta,
        alpha=alpha,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )
    return run(spec, backend)


def focal_tversky_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 0.75,
    smooth: float = 1.0,
    activation: Activation = "softmax",
    weight: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = None,
    per_image: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Focal Tversky loss of Abraham & Khan (2019), for segmentation of small structures.

    With probabilities ``p = softmax(input, dim=1)`` (or ``sigmoid(input)`` for multi-label)
    and targets ``g`` (one-hot class indices, or the given probabilities / labels), soft counts
    per class ``c`` over the non-ignored positions ``i`` of the batch (or of each image with
    ``per_image=True``):

    .. math::

        TP_c = \sum_i p_{ic} g_{ic},\quad FN_c = \sum_i (1 - p_{ic}) g_{ic},\quad
        FP_c = \sum_i p_{ic} (1 - g_{ic}),

        TI_c = \frac{TP_c + s}{TP_c + \alpha FN_c + \beta FP_c + s},\qquad
        \ell_c = w_c\,(1 - TI_c)^\gamma.

    ``alpha`` weights false negatives (recall), ``beta`` false positives, ``s = smooth``.
    ``gamma`` is the exponent itself (the paper writes ``1/gamma`` with ``gamma = 4/3``, i.e.
    ``0.75`` here). With ``alpha = beta = 0.5`` and ``gamma = 1`` it is the soft Dice loss
    ``1 - (2 TP + 2s) / (2 TP + FN + FP + 2s)`` per class (the smoothing term doubles: ``TI``
    with ``s`` is Dice with ``2s``; equal for ``smooth = 0``). A class with
    ``TP = FN = FP = 0`` and ``smooth = 0`` (no target and no predicted mass) counts as
    perfect: ``TI = 1``.

    Reductions (the loss couples all positions, so there is no per-position loss):

    * ``"mean"``: ``(1/C) sum_c w_c (1 - TI_c)^gamma`` (the average over classes, and over
      images with ``per_image=True``: ``(1/(N C)) sum_{n,c}``). ``weight`` scales each class's
      term; it does not enter the divisor.
    * ``"sum"``: the same sum, undivided.
    * ``"none"``: the per-class terms ``w_c (1 - TI_c)^gamma``, shape ``(C,)``, or ``(N, C)``
      with ``per_image=True``. This one reduction is differentiated by autograd through a
      composite of the same math (more memory); ``"mean"`` and ``"sum"`` use the closed-form
      gradient.

    The gradient is exact, in closed form from the per-class sums (through the softmax
    Jacobian for ``activation="softmax"``), and exactly 0 at ignored positions whatever their
    logits hold. A NaN logit at a non-ignored position makes the whole loss NaN (every class
    sum sees it). Half inputs are computed in float32.

    Args:
        input: logits ``(N, C, d1, ..., dk)`` or ``(N, C)``.
        target: class indices ``(N, d1, ..., dk)`` of an integer dtype (values in ``[0, C)``
            for softmax, ``[0, C]`` with ``C`` = background for sigmoid; with one output and
            the sigmoid, 0/1 is a binary mask), or float probabilities / multi-hot labels of
            the input's shape in [0, 1].
        alpha: weight of false negatives, ``>= 0``. Default: 0.7.
        beta: weight of false positives, ``>= 0``. Default: 0.3.
        gamma: exponent of ``1 - TI``, ``>= 0``. Default: 0.75.
        smooth: ``s >= 0``, added to numerator and denominator. Default: 1.
        activation: ``"softmax"`` (one class per position, ``C >= 2``) or ``"sigmoid"``
            (independent labels). Default: ``"softmax"``.
        weight: ``C`` per-class factors ``>= 0`` (sequence or 1-D tensor). Default: None.
        ignore_index: with class-index targets, the value of positions left out of every
            count. Default: None.
        per_image: count per image instead of over the batch. Default: False.
        reduction: ``"none"``, ``"mean"`` or ``"sum"`` (see above). Default: ``"mean"``.

    Returns:
        A 0-d tensor, or ``(C,)`` / ``(N, C)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from focalloss import focal_tversky_loss
        >>> logits = torch.tensor([[[2.0, -1.0], [0.0, 1.0]], [[-1.0, 0.5], [1.0, 0.0]]])
        >>> target = torch.tensor([[0, 1], [1, 0]])  # (N, W) class indices, C = 2
        >>> focal_tversky_loss(logits.unsqueeze(2), target.unsqueeze(1))
        tensor(0.2072)
        >>> dice = focal_tversky_loss(
        ...     logits.unsqueeze(2), target.unsqueeze(1), alpha=0.5, beta=0.5, gamma=1.0
        ... )
        >>> round(dice.item(), 4)
        0.1228
    """
    spec = _spec.prepare_focal_tversky(
        input,
        target,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        smooth=smooth,
        activation=activation,
        weight=weight,
        ignore_index=ignore_index,
        per_image=per_image,
        reduction=reduction,
    )
    if spec.reduction == "none":  # per-class terms: grad_output weights classes, not elements
        from . import _torch

        return _torch.composite(spec, spec.input)
    return run(spec, "torch")


# Modules
# -------

# After the functions, and functional first: functional re-exports them, and the modules of the
# other families import focalloss.modules from it.
from . import functional as _functional  # noqa: E402,F401
from .modules import _LossModule, as_buffer  # noqa: E402


def _elementwise_weight_buffer(value: object) -> Tensor | None:
    if value is not None and not isinstance(value, Tensor):
        raise TypeError(f"weight: expected a tensor or None, got {type(value).__name__}")
    if value is not None and not V.check_tensor("weight", value).is_floating_point():
        raise TypeError(f"weight: expected a floating-point tensor, got {value.dtype}")
    return as_buffer("weight", value, any_shape=True)


def _check_normalizer(normalizer: float | Tensor | None, reduction: str) -> None:
    V.check_normalizer_reduction(normalizer, reduction)
    if normalizer is not None and not isinstance(normalizer, Tensor):
        V.check_normalizer_number(normalizer)  # a tensor is checked at each call


class AsymmetricLoss(_LossModule):
    r"""Asymmetric loss as a module; see :func:`focalloss.asymmetric_loss` for the math.

    ``weight`` is a buffer (it follows ``.to()`` and is saved in ``state_dict``);
    ``normalizer`` can be fixed here or given per call.

    Example:
        >>> import torch
        >>> from focalloss import AsymmetricLoss
        >>> criterion = AsymmetricLoss(gamma_neg=4.0, clip=0.05)
        >>> logits = torch.zeros(4, 5, requires_grad=True)  # 4 images, 5 labels
        >>> labels = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 0, 0, 0],
        ...                        [0, 0, 0, 0, 0]])
        >>> loss = criterion(logits, labels)
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.1917
    """

    _buffer_names = ("weight",)
    weight: Tensor | None

    def __init__(
        self,
        *,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        reduction: Reduction = "mean",
        normalizer: float | Tensor | None = None,
        detach_modulator: bool = False,
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        check_backend(backend)
        V.check_reduction(reduction)
        V.check_ignore_index(ignore_index)
        _check_normalizer(normalizer, reduction)
        if not isinstance(detach_modulator, bool):
            raise TypeError(f"detach_modulator: expected a bool, got {detach_modulator!r}")
        self.gamma_pos = _spec.check_exponent("gamma_pos", gamma_pos)
        self.gamma_neg = _spec.check_exponent("gamma_neg", gamma_neg)
        self.clip = V.check_unit_interval("clip", clip)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.normalizer = normalizer
        self.detach_modulator = detach_modulator
        self.backend = backend
        self.weight = weight  # type: ignore[assignment]  (converted by __setattr__)

    def _convert(self, name: str, value: object) -> Tensor | None:
        return _elementwise_weight_buffer(value)

    def forward(
        self, input: Tensor, target: Tensor, normalizer: float | Tensor | None = None
    ) -> Tensor:
        return asymmetric_loss(
            input,
            target,
            gamma_pos=self.gamma_pos,
            gamma_neg=self.gamma_neg,
            clip=self.clip,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            detach_modulator=self.detach_modulator,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        parts = [f"gamma_pos={self.gamma_pos}", f"gamma_neg={self.gamma_neg}"]
        parts += [f"clip={self.clip}", f"reduction={self.reduction!r}"]
        if self.ignore_index is not None:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.detach_modulator:
            parts.append("detach_modulator=True")
        return ", ".join(parts)


class SigmoidFocalLossStar(_LossModule):
    r"""FL* as a module; see :func:`focalloss.sigmoid_focal_loss_star` for the math.

    Per-class ``alpha`` and ``weight`` tensors are buffers; ``normalizer`` can be fixed here
    or given per call.

    Example:
        >>> import torch
        >>> from focalloss import SigmoidFocalLossStar
        >>> criterion = SigmoidFocalLossStar(gamma=2.0, beta=1.0, ignore_index=-1)
        >>> logits = torch.zeros(6, 3, requires_grad=True)  # 6 anchors, 3 classes
        >>> target = torch.tensor([0, 3, 3, 2, -1, 3])      # 3 = background, -1 = ignored
        >>> loss = criterion(logits, target, normalizer=2)  # 2 positive anchors
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.8027
    """

    _buffer_names = ("alpha", "weight")
    alpha: Tensor | None
    weight: Tensor | None

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        beta: float = 1.0,
        alpha: float | Sequence[float] | Tensor | None = 0.25,
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        reduction: Reduction = "mean",
        normalizer: float | Tensor | None = None,
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        check_backend(backend)
        V.check_reduction(reduction)
        V.check_ignore_index(ignore_index)
        _check_normalizer(normalizer, reduction)
        self.gamma = _spec.check_star_gamma(gamma)
        self.beta = _spec.check_finite("beta", beta)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.normalizer = normalizer
        self.backend = backend
        self.alpha = alpha  # type: ignore[assignment]  (converted by __setattr__)
        self.weight = weight  # type: ignore[assignment]

    def _convert(self, name: str, value: object) -> Tensor | None:
        if name == "alpha":
            if isinstance(value, Real) and not isinstance(value, bool):
                if float(value) < 0:  # torchvision's convention: a negative alpha disables it
                    return None
                V.check_unit_interval("alpha", value)
            return as_buffer("alpha", value, upper=1.0)  # type: ignore[arg-type]
        return _elementwise_weight_buffer(value)

    def forward(
        self, input: Tensor, target: Tensor, normalizer: float | Tensor | None = None
    ) -> Tensor:
        return sigmoid_focal_loss_star(
            input,
            target,
            gamma=self.gamma,
            beta=self.beta,
            alpha=self.alpha,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        parts = [f"gamma={self.gamma}", f"beta={self.beta}"]
        if self.alpha is not None and self.alpha.dim() == 0:
            parts.append(f"alpha={self.alpha.item():g}")
        parts.append(f"reduction={self.reduction!r}")
        if self.ignore_index is not None:
            parts.append(f"ignore_index={self.ignore_index}")
        return ", ".join(parts)


class FocalTverskyLoss(_LossModule):
    r"""Focal Tversky loss as a module; see :func:`focalloss.focal_tversky_loss` for the math
    and what each reduction means.

    A per-class ``weight`` is a buffer (it follows ``.to()`` and is saved in ``state_dict``).

    Example:
        >>> import torch
        >>> from focalloss import FocalTverskyLoss
        >>> criterion = FocalTverskyLoss(alpha=0.7, beta=0.3, gamma=0.75, ignore_index=255)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)  # N=2, C=3, 4x4 pixels
        >>> target = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> target[:, 2:] = 1
        >>> target[:, 0] = 255                                      # ignored row
        >>> loss = criterion(logits, target)
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.6994
    """

    _buffer_names = ("weight",)
    weight: Tensor | None

    def __init__(
        self,
        *,
        alpha: float = 0.7,
        beta: float = 0.3,
        gamma: float = 0.75,
        smooth: float = 1.0,
        activation: Activation = "softmax",
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        per_image: bool = False,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        V.check_reduction(reduction)
        V.check_ignore_index(ignore_index)
        self.alpha = _spec.check_exponent("alpha", alpha)
        self.beta = _spec.check_exponent("beta", beta)
        self.gamma = _spec.check_exponent("gamma", gamma)
        self.smooth = _spec.check_exponent("smooth", smooth)
        if activation not in _spec.ACTIVATIONS:
            raise ValueError(f"activation: expected one of {_spec.ACTIVATIONS}, got {activation!r}")
        if not isinstance(per_image, bool):
            raise TypeError(f"per_image: expected a bool, got {per_image!r}")
        self.activation = activation
        self.ignore_index = ignore_index
        self.per_image = per_image
        self.reduction = reduction
        self.weight = weight  # type: ignore[assignment]  (converted by __setattr__)

    def _convert(self, name: str, value: object) -> Tensor | None:
        return as_buffer(name, value)  # type: ignore[arg-type]

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_tversky_loss(
            input,
            target,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            smooth=self.smooth,
            activation=self.activation,
            weight=self.weight,
            ignore_index=self.ignore_index,
            per_image=self.per_image,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        parts = [f"alpha={self.alpha}", f"beta={self.beta}", f"gamma={self.gamma}"]
        parts += [f"smooth={self.smooth}", f"activation={self.activation!r}"]
        if self.ignore_index is not None:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.per_image:
            parts.append("per_image=True")
        parts.append(f"reduction={self.reduction!r}")
        return ", ".join(parts)
