"""``nn.Module`` wrappers: they hold configuration and call the functions in ``functional``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor, nn

from . import _validation as V
from ._backend import check_backend
from .functional import focal_loss, sigmoid_focal_loss

__all__ = ["FocalLoss", "SigmoidFocalLoss"]


def _as_buffer(
    name: str, value: Sequence[float] | Tensor | None, upper: float = math.inf
) -> Tensor | None:
    """Per-class configuration as a 1-D float tensor (a buffer: it follows ``.to()``).

    A tensor keeps its floating dtype (integer tensors become float32); a sequence of Python
    numbers becomes float64, so no factor is rounded before the loss converts it to the
    computation's dtype. Values must be finite, in ``[0, upper]`` (checked once, here).
    """
    if value is None:
        return None
    if isinstance(value, Tensor):
        tensor = V.check_tensor(name, value).detach().clone()
        if not tensor.is_floating_point():
            tensor = tensor.float()
    elif isinstance(value, Sequence) and not isinstance(value, str):
        # Python numbers are kept exactly (float64); each call converts to its compute dtype.
        tensor = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise TypeError(
            f"{name}: expected None, a sequence of per-class numbers or a 1-D tensor, "
            f"got {type(value).__name__}"
        )
    if tensor.dim() != 1:
        raise ValueError(
            f"{name}: expected one factor per class (a 1-D tensor), got shape {tuple(tensor.shape)}"
        )
    if not V.reads_values(tensor):
        return tensor
    bad = ~(tensor >= 0) | ~torch.isfinite(tensor)  # the same messages as the functions'
    if bool(bad.any()):
        raise ValueError(f"{name}: expected finite values >= 0, got {tensor[bad][0].item()}")
    if bool((tensor > upper).any()):
        high = tensor.max().item()
        raise ValueError(f"{name}: per-class factors must lie in [0, {upper:g}], got {high}")
    return tensor


class FocalLoss(nn.Module):
    r"""Multi-class focal loss as a module; a drop-in for the seed project's ``FocalLoss``.

    The first four parameters keep the seed module's order and meaning, so
    ``FocalLoss(gamma, alpha, size_average, ignore_index)`` code runs unchanged; the math,
    shapes and reductions are those of :func:`focalloss.focal_loss`, which this module calls.
    Differences from the seed, all deliberate: the default ``gamma`` is 2 (the seed's is 0),
    the gradient flows through ``(1 - p_t)^gamma`` unless ``detach_modulator=True``, and an
    all-ignored batch gives 0 instead of NaN.

    Args:
        gamma: focusing parameter ``>= 0``. Default: 2.
        alpha: per-class factors (sequence or 1-D tensor, stored as the buffer ``alpha``), or
            a number ``a`` meaning ``[a, 1 - a]`` for a two-class problem, or None.
        size_average: deprecated seed argument: True means ``reduction="mean"``, False
            ``"sum"``; None (default) uses ``reduction``.
        ignore_index: target value that contributes nothing, or None. Default: -100.
        weight: per-class rescaling as in ``nn.CrossEntropyLoss`` (buffer ``weight``).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        label_smoothing: in [0, 1]. Default: 0.
        detach_modulator: treat ``(1 - p)^gamma`` as a constant in the backward pass (the
            seed module's training behaviour). Default: False.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :func:`focalloss.focal_loss`).
        sync_normalizer: all-reduce the ``"mean"`` divisor across DDP ranks (see
            :mod:`focalloss.distributed`). Default: False.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` logits.
        - target: ``()``, ``(N)`` or ``(N, d1, ..., dk)`` class indices, or probabilities of
          the input's shape.
        - output: scalar, or the target's (index) shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from focalloss import FocalLoss
        >>> criterion = FocalLoss(gamma=2.0, alpha=[0.25, 0.75], ignore_index=255)
        >>> logits = torch.zeros(2, 2, 4, 4, requires_grad=True)
        >>> target = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> target[:, 0] = 255
        >>> loss = criterion(logits, target)
        >>> loss.backward()
        >>> round(loss.item(), 6)  # 0.25 * 0.5**2 * ln 2
        0.043322
        >>> sorted(criterion.state_dict())
        ['alpha']
    """

    alpha: Tensor | float | None
    weight: Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int | None = -100,
        *,
        weight: Sequence[float] | Tensor | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        detach_modulator: bool = False,
        backend: str = "auto",
        sync_normalizer: bool = False,
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.backend = backend
        self.sync_normalizer = sync_normalizer
        if size_average is not None:
            if not isinstance(size_average, bool):
                raise TypeError(f"size_average: expected a bool or None, got {size_average!r}")
            warnings.warn(
                "size_average is deprecated: use reduction='mean' (True) or 'sum' (False)",
                DeprecationWarning,
                stacklevel=2,
            )
            reduction = "mean" if size_average else "sum"
        V.check_reduction(reduction)
        V.check_sync_normalizer(sync_normalizer, reduction)
        self.gamma = V.check_gamma(gamma)
        self.label_smoothing = V.check_unit_interval("label_smoothing", label_smoothing)
        V.check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.reduction = reduction
        if not isinstance(detach_modulator, bool):
            raise TypeError(f"detach_modulator: expected a bool, got {detach_modulator!r}")
        self.detach_modulator = detach_modulator
        if isinstance(alpha, Real) and not isinstance(alpha, bool):
            self.alpha = V.check_unit_interval("alpha", alpha)
        else:
            self.register_buffer("alpha", _as_buffer("alpha", alpha))
        self.register_buffer("weight", _as_buffer("weight", weight))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_loss(
            input,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            detach_modulator=self.detach_modulator,
            backend=self.backend,
            sync_normalizer=self.sync_normalizer,
        )

    def extra_repr(self) -> str:
        parts = [f"gamma={self.gamma}"]
        if isinstance(self.alpha, float):
            parts.append(f"alpha={self.alpha}")
        parts += [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.detach_modulator:
            parts.append("detach_modulator=True")
        return ", ".join(parts)


class SigmoidFocalLoss(nn.Module):
    r"""Sigmoid focal loss as a module; see :func:`focalloss.sigmoid_focal_loss` for the math.

    Per-class ``alpha``, ``weight`` and ``pos_weight`` tensors are buffers (they follow
    ``.to()`` and are saved in ``state_dict``). ``normalizer`` can be fixed here or given per
    call (``criterion(logits, target, normalizer=num_positives)``), which is how detectors use
    it.

    Example:
        >>> import torch
        >>> from focalloss import SigmoidFocalLoss
        >>> criterion = SigmoidFocalLoss(gamma=2.0, alpha=0.25, ignore_index=-1)
        >>> logits = torch.zeros(6, 3, requires_grad=True)  # 6 anchors, 3 classes
        >>> target = torch.tensor([0, 3, 3, 2, -1, 3])      # 3 = background, -1 = ignored
        >>> loss = criterion(logits, target, normalizer=2)  # 2 positive anchors
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.8881
    """

    alpha: Tensor | float | None
    weight: Tensor | None
    pos_weight: Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = 0.25,
        weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        normalizer: float | Tensor | None = None,
        detach_modulator: bool = False,
        backend: str = "auto",
        sync_normalizer: bool = False,
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.backend = backend
        V.check_reduction(reduction)
        V.check_sync_normalizer(sync_normalizer, reduction)
        self.sync_normalizer = sync_normalizer
        self.gamma = V.check_gamma(gamma)
        V.check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.reduction = reduction
        V.check_normalizer_reduction(normalizer, reduction)
        if normalizer is not None and not isinstance(normalizer, Tensor):
            V.check_normalizer_number(normalizer)  # a tensor is checked at each call
        self.normalizer = normalizer
        if not isinstance(detach_modulator, bool):
            raise TypeError(f"detach_modulator: expected a bool, got {detach_modulator!r}")
        self.detach_modulator = detach_modulator
        if alpha is None or (isinstance(alpha, Real) and not isinstance(alpha, bool)):
            if alpha is not None and float(alpha) >= 0:
                V.check_unit_interval("alpha", alpha)
            self.alpha = None if alpha is None else float(alpha)
        else:
            self.register_buffer("alpha", _as_buffer("alpha", alpha, upper=1.0))
        for name, value in (("weight", weight), ("pos_weight", pos_weight)):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{name}: expected a tensor or None, got {type(value).__name__}")
            if value is not None and not V.check_tensor(name, value).is_floating_point():
                raise TypeError(f"{name}: expected a floating-point tensor, got {value.dtype}")
            if value is not None and V.reads_values(value):
                bad = ~(value >= 0) | ~torch.isfinite(value)
                if bool(bad.any()):
                    first = value[bad][0].item()
                    raise ValueError(f"{name}: expected finite values >= 0, got {first}")
            self.register_buffer(name, None if value is None else value.detach().clone())

    def forward(
        self, input: Tensor, target: Tensor, normalizer: float | Tensor | None = None
    ) -> Tensor:
        return sigmoid_focal_loss(
            input,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            weight=self.weight,
            pos_weight=self.pos_weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            normalizer=self.normalizer if normalizer is None else normalizer,
            detach_modulator=self.detach_modulator,
            backend=self.backend,
            sync_normalizer=self.sync_normalizer,
        )

    def extra_repr(self) -> str:
        parts = [f"gamma={self.gamma}"]
        if not isinstance(self.alpha, Tensor):
            parts.append(f"alpha={self.alpha}")
        parts += [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.detach_modulator:
            parts.append("detach_modulator=True")
        return ", ".join(parts)
