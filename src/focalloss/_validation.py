"""Argument checks shared by every public entry point.

Every error names the argument, what was expected and what was given. Checks on Python values
and on tensor metadata (shape, dtype, device) always run. Checks that *read tensor values*
(target ranges, negative weights) need a device-to-host read, which ``torch.compile`` cannot
trace without a graph break; they are therefore skipped while compiling, and can be switched
off globally with :func:`set_value_checks` or the environment variable
``FOCALLOSS_VALUE_CHECKS=0`` for maximum speed.
"""

from __future__ import annotations

import math
import os
from numbers import Real

import torch
from torch import Tensor

_REDUCTIONS = ("none", "mean", "sum")
_value_checks = os.environ.get("FOCALLOSS_VALUE_CHECKS", "1").strip().lower() not in (
    "0",
    "false",
    "no",
    "off",
)


def set_value_checks(enabled: bool) -> bool:
    """Switch the checks that read tensor values on or off; returns the previous setting.

    The checks that read values are: class-index targets in ``[0, C)`` (or ``[0, C]`` for the
    sigmoid loss), finite non-negative ``alpha``/``weight``/``pos_weight``, and float targets
    (soft labels, class probabilities) in ``[0, 1]``. Each costs a small pass over a
    target-sized (not logits-sized) tensor and, on a GPU, one synchronisation. They are
    skipped automatically inside ``torch.compile``.

    Example:
        >>> import focalloss
        >>> previous = focalloss.set_value_checks(False)
        >>> _ = focalloss.set_value_checks(previous)
    """
    global _value_checks
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    previous = _value_checks
    _value_checks = enabled
    return previous


def value_checks_enabled() -> bool:
    """Whether checks that read tensor values run now: never while ``torch.compile`` traces,
    nor under ``torch.func.vmap``, where a tensor's value cannot be read."""
    return _value_checks and not torch.compiler.is_compiling() and not _vmapping()


def _vmapping() -> bool:
    if torch._C._functorch.peek_interpreter_stack() is None:  # the common case, fast
        return False
    stack = torch._C._functorch.get_interpreter_stack() or ()
    return any(level.key() == torch._C._functorch.TransformType.Vmap for level in stack)


def reads_values(value: Tensor) -> bool:
    """Whether to run a value check on ``value`` now (not on meta tensors, which hold none)."""
    return value_checks_enabled() and value.device.type != "meta" and value.numel() > 0


def check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, Real):
        raise TypeError(f"gamma: expected a real number >= 0, got {type(gamma).__name__}")
    gamma = float(gamma)
    # Comparisons (not math.isfinite) also work on the symbolic floats of torch.compile;
    # NaN fails both.
    if not (gamma >= 0 and gamma < math.inf):
        raise ValueError(f"gamma: expected a finite number >= 0, got {gamma}")
    return gamma


def check_unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value}")
    return value


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise TypeError(
            f"{name}: expected a dense (strided) tensor, got layout {value.layout} "
            f"(convert with .to_dense())"
        )
    return value


def check_constants(**arguments: object) -> None:
    """The losses differentiate with respect to ``input`` only. A tensor argument that
    requires grad (soft targets from a model that is being trained, learnable weights) would
    get no gradient, or one from a path that is not meant for it, so it is an error while grad
    mode is on (also when ``input`` does not require grad: detach the tensor, or evaluate
    under ``torch.no_grad()``)."""
    if not torch.is_grad_enabled():
        return
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise ValueError(
                f"{name}: expected a tensor that does not require grad (the loss is "
                f"differentiated with respect to input only), got one with requires_grad=True; "
                f"pass {name}.detach(), or compute it under torch.no_grad()"
            )


def check_ignore_index(ignore_index: int | None) -> None:
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise TypeError(f"ignore_index: expected an int or None, got {ignore_index!r}")


def check_same_device(name: str, value: torch.Tensor, input: torch.Tensor) -> None:
    if value.device != input.device:
        raise ValueError(
            f"{name}: expected a tensor on the input's device {input.device}, "
            f"got one on {value.device} (move it with .to(input.device))"
        )


def _is_integer(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def is_integer_tensor(t: torch.Tensor) -> bool:
    """Integer dtype (int8 ... int64, uint8), excluding bool."""
    return _is_integer(t)


def check_class_range(
    target: Tensor, num_classes: int, ignore_index: int | None, upper: int
) -> None:
    """Raise if a class index is outside ``[0, upper)``.

    ``target`` must already hold a valid class at ignored positions (the callers replace
    ``ignore_index`` before calling), so one ``aminmax`` and one host read check everything.
    """
    if not reads_values(target):
        return
    low, high = (int(v) for v in torch.aminmax(target))
    if low < 0 or high >= upper:
        first = low if low < 0 else high
        allowed = f"[0, {upper})" if upper == num_classes else f"[0, {num_classes}]"
        extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(
            f"target: class indices must lie in {allowed}{extra} for C={num_classes} classes, "
            f"got {first}"
        )


def check_unit_range(name: str, target: Tensor, what: str = "float labels") -> None:
    """Float labels or probabilities must lie in [0, 1] (a value check: one read)."""
    if not reads_values(target):
        return
    low, high = (float(v) for v in torch.aminmax(target))
    if not (low >= 0.0 and high <= 1.0):  # NaN fails too
        bad = low if not low >= 0.0 else high
        raise ValueError(f"{name}: {what} must lie in [0, 1], got {bad}")


def broadcast_weight(
    name: str, value: Tensor | None, input: Tensor, dtype: torch.dtype
) -> Tensor | None:
    """A weight tensor in ``dtype`` (the computation's), broadcast to the input's shape as a
    view, as BCE-with-logits does."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a tensor or None, got {type(value).__name__}")
    check_tensor(name, value)
    check_same_device(name, value, input)
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    try:
        shape = torch.broadcast_shapes(value.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise ValueError(
            f"{name}: expected a shape that broadcasts to the input's {tuple(input.shape)} "
            f"(as in F.binary_cross_entropy_with_logits), got {tuple(value.shape)}"
        )
    if reads_values(value):
        bad = ~(value >= 0) | ~torch.isfinite(value)
        if bool(bad.any()):
            raise ValueError(f"{name}: expected finite values >= 0, got {value[bad][0].item()}")
    return value.detach().to(dtype).expand(input.shape)


def check_normalizer(normalizer: float | Tensor, input: Tensor, dtype: torch.dtype) -> Tensor:
    """The divisor of a normalised mean as a tensor: >= 0 and finite (the caller clamps it
    to at least 1, after summing it over ranks when asked to)."""
    if isinstance(normalizer, Tensor):
        check_tensor("normalizer", normalizer)
        check_same_device("normalizer", normalizer, input)
        if normalizer.dim() != 0:
            shape = tuple(normalizer.shape)
            raise ValueError(f"normalizer: expected a number or a 0-d tensor, got shape {shape}")
        value = normalizer.detach().to(dtype)
        if reads_values(value):
            check_normalizer_number(value.item())
        return value
    # A fill, not torch.tensor(number, device=...): no host-to-device copy.
    return input.new_full((), check_normalizer_number(normalizer), dtype=dtype)


def check_normalizer_number(normalizer: object) -> float:
    """A Python number given as ``normalizer``: finite and >= 0."""
    if isinstance(normalizer, bool) or not isinstance(normalizer, Real):
        raise TypeError(
            f"normalizer: expected a number or a 0-d tensor, got {type(normalizer).__name__}"
        )
    number = float(normalizer)
    if not (number >= 0 and number < math.inf):
        raise ValueError(f"normalizer: expected a finite number >= 0, got {number}")
    return number


def check_normalizer_reduction(normalizer: object, reduction: str) -> None:
    if normalizer is not None and reduction != "mean":
        raise ValueError(
            f"normalizer: replaces the divisor of reduction='mean'; it cannot be used with "
            f"reduction={reduction!r} (got normalizer={normalizer!r})"
        )


def check_sync_normalizer(sync_normalizer: bool, reduction: str) -> None:
    if not isinstance(sync_normalizer, bool):
        raise TypeError(f"sync_normalizer: expected a bool, got {sync_normalizer!r}")
    if sync_normalizer and reduction != "mean":
        raise ValueError(
            f"sync_normalizer: synchronises the divisor of reduction='mean' across ranks; it "
            f"cannot be used with reduction={reduction!r}"
        )
