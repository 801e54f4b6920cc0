"""Preparation: every public argument validated and normalised once into a frozen spec.

One module per loss family (``softmax``, ``sigmoid``, ...) defines its spec (a subclass of
:class:`focalloss._engine.Spec`) and a ``prepare(...)`` that the function and the module
share. This package holds what the families share: the ``"mean"`` factor, per-class
vectors, dtype rules.

No host synchronisation: scalars are placed on the device with fills (``new_full``), never
with ``torch.tensor(python_value, device=...)``; per-class vectors given as Python numbers are
built once per (values, device, dtype) and cached, so a training loop does not copy them to the
device at every call. Checks that read tensor values (``_validation.reads_values``) are the
only synchronising code, and they are off under ``torch.compile``, under ``vmap``, for meta
tensors and with ``set_value_checks(False)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

from .. import _validation as V
from ..distributed import global_divisor

_VECTOR_CACHE: dict[tuple, Tensor] = {}
_VECTOR_CACHE_SIZE = 64


def compute_dtype_of(input: Tensor) -> torch.dtype:
    """float64 for float64 input, float32 otherwise (half inputs are computed in float32)."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def constant_vector(values: Sequence[float], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A read-only ``(len(values),)`` tensor of Python numbers on ``device``, cached.

    Building it from Python data is a host-to-device copy (and cannot be captured in a CUDA
    graph); the cache makes that happen once per distinct vector, not at every call.
    """
    if torch.compiler.is_compiling():  # a constant of the graph (and no cache to guard on)
        return torch.tensor(list(values), dtype=dtype, device=device)
    # NaN != NaN: a key holding one would never be found again (one copy per call)
    key = (tuple("nan" if v != v else v for v in values), device, dtype)
    cached = _VECTOR_CACHE.get(key)
    if cached is None:
        if len(_VECTOR_CACHE) >= _VECTOR_CACHE_SIZE:
            _VECTOR_CACHE.pop(next(iter(_VECTOR_CACHE)))
        cached = torch.tensor(list(values), dtype=dtype, device=device)
        _VECTOR_CACHE[key] = cached
    return cached


def class_vector(
    name: str, value: Sequence[float] | Tensor, num_classes: int, input: Tensor, upper: float
) -> Tensor:
    """A per-class argument as a checked, contiguous ``(C,)`` tensor of the compute dtype.

    Values must be finite and in ``[0, upper]`` (checked when value checks are on).
    """
    dtype = compute_dtype_of(input)
    if isinstance(value, Tensor):
        V.check_tensor(name, value)
        V.check_same_device(name, value, input)
        if value.dtype == torch.bool or not (
            value.is_floating_point() or V.is_integer_tensor(value)
        ):
            raise TypeError(f"{name}: expected a real-valued tensor, got dtype {value.dtype}")
        tensor = value
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name}: expected a sequence of numbers, got {value!r}")
        tensor = None
    else:
        raise TypeError(
            f"{name}: expected None, a sequence of {num_classes} numbers or a 1-D tensor, "
            f"got {type(value).__name__}"
        )
    shape = tuple(tensor.shape) if tensor is not None else (len(value),)
    if shape != (num_classes,):
        raise ValueError(
            f"{name}: expected one factor per class, shape ({num_classes},), got shape {shape}"
        )
    if tensor is None:
        numbers = [float(v) for v in value]
        # comparisons, not math.isfinite: they also work on torch.compile's symbolic floats
        negative = [v for v in numbers if not (v >= 0.0 and v < math.inf)]
        if negative:
            raise ValueError(f"{name}: expected finite values >= 0, got {negative[0]}")
        high = max(numbers) if numbers else 0.0
        if high > upper:
            raise ValueError(f"{name}: per-class factors must lie in [0, {upper:g}], got {high}")
        return constant_vector(numbers, input.device, dtype)
    check_vector_values(name, tensor, upper)
    # Contiguous (C,) in the compute dtype: kernels index it as a plain array.
    return tensor.detach().to(dtype).contiguous()


def check_vector_values(name: str, tensor: Tensor, upper: float = math.inf) -> None:
    """Finite values in ``[0, upper]`` (a value check: reads the tensor)."""
    if not V.reads_values(tensor):
        return
    bad = ~(tensor >= 0) | ~torch.isfinite(tensor)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected finite values >= 0, got {tensor[bad].flatten()[0].item()}"
        )
    if upper < math.inf and bool((tensor > upper).any()):
        high = tensor.max().item()
        raise ValueError(f"{name}: per-class factors must lie in [0, {upper:g}], got {high}")


def product(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None or b is None:
        return a if b is None else b
    return a * b


def full(input: Tensor, value: float) -> Tensor:
    """A 0-d compute-dtype tensor on the input's device, by a fill (no host-to-device copy)."""
    return input.new_full((), value, dtype=compute_dtype_of(input))


def mean_scale(divisor: Tensor, sync: bool, clamp: bool) -> Tensor:
    """The factor of ``reduction="mean"``: ``1 / divisor``, 0 for a divisor of 0 (the
    all-ignored policy); with ``sync``, ``world_size / global divisor`` (see
    ``focalloss.distributed``). ``clamp``: a normalizer counts as at least 1 (RetinaNet),
    applied after the sum over ranks."""
    size = 1
    if sync:
        divisor, size = global_divisor(divisor)
    if clamp:
        divisor = divisor.clamp(min=1.0)
    scale = divisor.reciprocal().nan_to_num_(posinf=0.0)  # 1/0 -> 0: the policy
    return scale if size == 1 else scale * size


def count_scale(input: Tensor, count: int, sync: bool) -> Tensor:
    """``mean_scale`` of a divisor known on the host (a number of positions): ``1 / count``
    (0 for none) by one fill."""
    if sync:
        return mean_scale(full(input, float(count)), sync, clamp=False)
    return full(input, 1.0 / count if count else 0.0)


def check_common(
    input: object,
    target: object,
    reduction: object,
    backend: object,
    detach_modulator: object = False,
    ignore_index: object = None,
) -> None:
    """The checks every loss family starts with."""
    from .._engine import check_backend

    V.check_tensor("input", input)
    V.check_tensor("target", target)
    V.check_reduction(reduction)
    V.check_ignore_index(ignore_index)
    check_backend(backend)
    if not isinstance(detach_modulator, bool):
        raise TypeError(f"detach_modulator: expected a bool, got {detach_modulator!r}")
    assert isinstance(input, Tensor) and isinstance(target, Tensor)
    if not input.is_floating_point():
        raise TypeError(f"input: expected floating-point logits, got dtype {input.dtype}")
    V.check_same_device("target", target, input)


def index_target(
    target: Tensor, ignore_index: int | None, num_classes: int, upper: int, fill: int
) -> tuple[Tensor, Tensor | None]:
    """Class indices as int64 with ``fill`` at ignored positions, and the ignored mask.

    Indices must lie in ``[0, upper)`` unless they equal ``ignore_index``: checked when value
    checks are on (an error naming the value). With value checks off nothing is read on the
    host; an out-of-range index is then treated as ignored (loss 0, zero gradient, not counted
    by ``"mean"``) by every backend, so no kernel ever reads outside the logits.
    """
    target = target.long()
    if V.reads_values(target):
        # One read of the range settles the common case: when ignore_index cannot occur, no
        # mask is built (and every later step skips its masking).
        low, high = (int(v) for v in torch.aminmax(target))
        if ignore_index is None or not low <= ignore_index <= high:
            if low < 0 or high >= upper:
                V.check_class_range(target, num_classes, ignore_index, upper)
            return target, None
        ignored = target == ignore_index
        target = target.masked_fill(ignored, fill)  # a valid value: its terms are masked
        V.check_class_range(target, num_classes, ignore_index, upper)
        return target, ignored
    ignored = None if ignore_index is None else target == ignore_index
    if not V.value_checks_enabled() or target.device.type == "meta":
        outside = (target < 0) | (target >= upper)
        ignored = outside if ignored is None else ignored | outside
    if ignored is not None:
        target = target.masked_fill(ignored, fill)
    return target, ignored


def layout_for(reduction: str, elementwise: bool) -> str:
    if reduction != "none":
        return "scalar"
    return "element" if elementwise else "position"
