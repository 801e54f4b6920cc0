"""``nn.Module`` wrappers: they hold configuration and call the functions in ``functional``.

Per-class values (``alpha``, ``weight``, ``pos_weight``) are buffers: they follow ``.to()`` and
are saved in ``state_dict`` under the same key whatever form they were given in (a number, a
sequence, a tensor). Python numbers become float32 (a tensor keeps its floating dtype), and
assigning a new value after construction (``criterion.alpha = [0.2, 0.8]``) goes through the
same conversion and checks. The modules cannot be compiled by TorchScript (deprecated in
PyTorch); ``torch.compile`` and ``torch.export`` are supported.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Real
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import _validation as V
from ._engine import BackendName, Reduction, check_backend
from ._spec.softmax import check_number_alpha, check_poly1_epsilon
from .functional import focal_loss, sigmoid_focal_loss
from .schedules import GammaSchedule

__all__ = ["FocalLoss", "SigmoidFocalLoss"]


def as_buffer(
    name: str,
    value: float | Sequence[float] | Tensor | None,
    upper: float = float("inf"),
    any_shape: bool = False,
) -> Tensor | None:
    """A per-class (or scalar) configuration value as a float tensor for a buffer.

    Python numbers become float32; a tensor keeps its floating dtype (integer tensors become
    float32). Values must be finite and in ``[0, upper]`` (checked here, meta-safe).
    """
    if value is None:
        return None
    if isinstance(value, Tensor):
        tensor = V.check_tensor(name, value).detach().clone()
        if not tensor.is_floating_point():
            tensor = tensor.float()
    elif isinstance(value, Real) and not isinstance(value, bool):
        tensor = torch.tensor(float(value), dtype=torch.float32)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name}: expected a sequence of numbers, got {value!r}")
        tensor = torch.tensor([float(v) for v in value], dtype=torch.float32)
    else:
        raise TypeError(
            f"{name}: expected None, a sequence of per-class numbers, a number or a tensor, "
            f"got {type(value).__name__}"
        )
    if tensor.dim() > 1 and not any_shape:
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


def check_module_gamma(gamma: object) -> float | GammaSchedule:
    """A number ``gamma`` (checked) or a :class:`GammaSchedule` (checked when built), kept as
    given."""
    if isinstance(gamma, GammaSchedule):
        return gamma
    if isinstance(gamma, bool) or not isinstance(gamma, Real):
        raise TypeError(
            f"gamma: expected a real number >= 0, got {type(gamma).__name__} (or a GammaSchedule)"
        )
    return V.check_gamma(gamma)


class _LossModule(nn.Module):
    """Configuration holder: per-class values are converted on every assignment."""

    _buffer_names: ClassVar[tuple[str, ...]] = ()

    def _convert(self, name: str, value: object) -> Tensor | None:
        raise NotImplementedError

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._buffer_names:
            converted = self._convert(name, value)
            if name in self.__dict__.get("_buffers", {}):
                self._buffers[name] = converted
            else:
                self.register_buffer(name, converted)
            return
        super().__setattr__(name, value)

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by TorchScript (torch.jit.script, "
            f"deprecated in PyTorch): use torch.compile(model) for speed, or torch.export for "
            f"deployment; both support focalloss"
        )


class FocalLoss(_LossModule):
    r"""Multi-class focal loss as a module; a drop-in for the seed project's ``FocalLoss``.

    The first four parameters keep the seed module's order and meaning, so
    ``FocalLoss(gamma, alpha, size_average, ignore_index)`` code runs unchanged; the math,
    shapes and reductions are those of :func:`focalloss.focal_loss`, which this module calls.
    Differences from the seed, all deliberate: the default ``gamma`` is 2 (the seed's is 0),
    the gradient flows through ``(1 - p_t)^gamma`` unless ``detach_modulator=True``, and an
    all-ignored batch gives 0 instead of NaN.

    Args:
        gamma: focusing parameter ``>= 0``, or a :class:`~focalloss.GammaSchedule`. Default: 2.
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
        poly1_epsilon: the Poly-1 coefficient (see :func:`focalloss.focal_loss`). Default: 0.

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

    _buffer_names = ("alpha", "weight")
    alpha: Tensor | None
    weight: Tensor | None

    def __init__(
        self,
        gamma: float | GammaSchedule = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int | None = -100,
        *,
        weight: Sequence[float] | Tensor | None = None,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        detach_modulator: bool = False,
        backend: BackendName = "auto",
        sync_normalizer: bool = False,
        poly1_epsilon: float = 0.0,
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
        self.gamma = check_module_gamma(gamma)
        self.poly1_epsilon = check_poly1_epsilon(poly1_epsilon)
        self.label_smoothing = V.check_unit_interval("label_smoothing", label_smoothing)
        V.check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.reduction = reduction
        if not isinstance(detach_modulator, bool):
            raise TypeError(f"detach_modulator: expected a bool, got {detach_modulator!r}")
        self.detach_modulator = detach_modulator
        self.alpha = alpha  # type: ignore[assignment]  (converted by __setattr__)
        self.weight = weight  # type: ignore[assignment]

    def _convert(self, name: str, value: object) -> Tensor | None:
        number = isinstance(value, Real) and not isinstance(value, bool)
        if name == "alpha":
            # Kept to give a number alpha's own error when C != 2 (plain attribute).
            object.__setattr__(self, "_alpha_from_number", number)
        if name == "alpha" and number:
            a = V.check_unit_interval("alpha", value)  # type: ignore[arg-type]
            return torch.tensor([a, 1.0 - a])  # the seed's convention, for C == 2
        return as_buffer(name, value)  # type: ignore[arg-type]

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if self._alpha_from_number and input.dim() > 0:
            check_number_alpha(input.shape[0 if input.dim() == 1 else 1])
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
            poly1_epsilon=self.poly1_epsilon,
        )

    def extra_repr(self) -> str:
        parts = [f"gamma={self.gamma}"]
        parts += [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.poly1_epsilon:
            parts.append(f"poly1_epsilon={self.poly1_epsilon}")
        if self.detach_modulator:
            parts.append("detach_modulator=True")
        return ", ".join(parts)


class SigmoidFocalLoss(_LossModule):
    r"""Sigmoid focal loss as a module; see :func:`focalloss.sigmoid_focal_loss` for the math.

    Per-class ``alpha``, ``weight`` and ``pos_weight`` tensors are buffers (they follow
    ``.to()`` and are saved in ``state_dict``). ``normalizer`` can be fixed here or given per
    call (``criterion(logits, target, normalizer=num_positives)``), which is how detectors use
    it. ``gamma`` may be a :class:`~focalloss.GammaSchedule`, and ``poly1_epsilon`` adds the
    Poly-1 term (see :func:`focalloss.sigmoid_focal_loss`).

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

    _buffer_names = ("alpha", "weight", "pos_weight")
    alpha: Tensor | None
    weight: Tensor | None
    pos_weight: Tensor | None

    def __init__(
        self,
        *,
        gamma: float | GammaSchedule = 2.0,
        alpha: float | Sequence[float] | Tensor | None = 0.25,
        weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
        ignore_index: int | None = None,
        reduction: Reduction = "mean",
        normalizer: float | Tensor | None = None,
        detach_modulator: bool = False,
        backend: BackendName = "auto",
        sync_normalizer: bool = False,
        poly1_epsilon: float = 0.0,
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.backend = backend
        V.check_reduction(reduction)
        V.check_sync_normalizer(sync_normalizer, reduction)
        self.sync_normalizer = sync_normalizer
        self.gamma = check_module_gamma(gamma)
        self.poly1_epsilon = check_poly1_epsilon(poly1_epsilon)
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
        self.alpha = alpha  # type: ignore[assignment]  (converted by __setattr__)
        self.weight = weight  # type: ignore[assignment]
        self.pos_weight = pos_weight  # type: ignore[assignment]

    def _convert(self, name: str, value: object) -> Tensor | None:
        if name == "alpha":
            if isinstance(value, Real) and not isinstance(value, bool):
                if float(value) < 0:  # torchvision's convention: a negative alpha disables it
                    return None
                V.check_unit_interval("alpha", value)
            return as_buffer("alpha", value, upper=1.0)  # type: ignore[arg-type]
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name}: expected a tensor or None, got {type(value).__name__}")
        if value is not None and not V.check_tensor(name, value).is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {value.dtype}")
        return as_buffer(name, value, any_shape=True)

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
            poly1_epsilon=self.poly1_epsilon,
        )

    def extra_repr(self) -> str:
        parts = [f"gamma={self.gamma}"]
        if self.alpha is not None and self.alpha.dim() == 0:
            parts.append(f"alpha={self.alpha.item():g}")
        parts += [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.poly1_epsilon:
            parts.append(f"poly1_epsilon={self.poly1_epsilon}")
        if self.detach_modulator:
            parts.append("detach_modulator=True")
        return ", ".join(parts)
