"""The PyTorch backend: closed-form losses from PyTorch operations (CPU, CUDA, any device).

Each loss family has one module here with ``forward(spec, need_grad)`` (loss and gradient in
closed form) and ``composite(spec, input)`` (the same loss from differentiable operations);
``FAMILIES`` maps a spec's ``family`` to it.

Eager and compiled runs execute the same code. Under ``torch.compile`` the closed form runs
inside one opaque custom operator (``torch.ops.focalloss.torch_forward``), so inductor neither
re-derives nor re-schedules it: the buffers it reuses in place, its chunking for the cache and
its use of PyTorch's fused kernels stay as they are, and compiling a model never makes its loss
slower than eager. This is the one place where compiled and eager runs differ.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import torch
from torch import Tensor

from .._engine import Layout, Spec, broadcast_grad_output
from . import sigmoid, softmax

FAMILIES: dict[str, ModuleType] = {}
SPEC_TYPES: dict[str, type[Spec]] = {}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def register(spec_type: type[Spec], module: ModuleType) -> None:
    """Add a loss family: ``module`` has ``forward(spec, need_grad)`` and ``composite``."""
    FAMILIES[spec_type.family] = module
    SPEC_TYPES[spec_type.family] = spec_type
    _FIELD_NAMES[spec_type] = tuple(f.name for f in dataclasses.fields(spec_type))[1:]


def composite(spec: Spec, input: Tensor) -> Tensor:
    """The loss of ``spec`` at ``input`` from differentiable operations (not squeezed)."""
    return FAMILIES[spec.family].composite(spec, input)


class TorchBackend:
    name = "torch"

    def unavailable(self, spec: Spec) -> str | None:
        return None

    def unsupported(self, spec: Spec) -> str | None:
        return None if spec.family in FAMILIES else f"{spec.family} (no PyTorch implementation)"

    def forward(self, spec: Spec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        if torch.compiler.is_compiling():
            tensors, numbers, codes = _flatten(spec)
            loss, grad = torch.ops.focalloss.torch_forward(
                spec.family, spec.input, tensors, numbers, codes, need_grad
            )
            return loss, grad if need_grad else None
        return FAMILIES[spec.family].forward(spec, need_grad)

    def scale_grad(
        self, grad: Tensor, grad_output: Tensor, layout: Layout, inplace: bool
    ) -> Tensor:
        on_cpu = grad_output.device.type == "cpu"  # where the read is no synchronisation
        if inplace and layout == "scalar" and on_cpu and grad_output.item() == 1.0:
            return grad
        scale = broadcast_grad_output(grad_output, layout).to(grad.dtype)
        return grad.mul_(scale) if inplace else grad * scale


BACKEND = TorchBackend()
register(softmax.SoftmaxFocalSpec, softmax)
register(sigmoid.SigmoidFocalSpec, sigmoid)


# The compiled path: one custom operator for every family. A spec travels as its input, a
# list of its tensor fields, and its plain fields encoded as numbers with a code string
# (dynamo traces the encoding; the operator rebuilds the spec at run time).

_STRINGS = ("none", "mean", "sum", "scalar", "position", "element")


def _flatten(spec: Spec) -> tuple[list[Tensor | None], list[float], str]:
    tensors: list[Tensor | None] = []
    numbers: list[float] = []
    codes = ""
    for name in _field_names(type(spec)):
        value = getattr(spec, name)
        if value is None:
            codes += "n"
        elif isinstance(value, Tensor):
            codes += "t"
            tensors.append(value)
        elif isinstance(value, bool):
            codes += "b"
            numbers.append(float(value))
        elif isinstance(value, int):
            codes += "i"
            numbers.append(float(value))
        elif isinstance(value, float):
            codes += "f"
            numbers.append(value)
        elif isinstance(value, str):
            codes += "s"
            numbers.append(float(_STRINGS.index(value)))
        elif isinstance(value, tuple):  # a tuple of floats (a schedule's values)
            codes += "u"
            numbers.append(float(len(value)))
            numbers.extend(float(v) for v in value)
        else:
            raise TypeError(f"cannot pass a {type(value).__name__} field of {spec.family}")
    return tensors, numbers, codes


def _unflatten(
    family: str, input: Tensor, tensors: list[Tensor | None], numbers: list[float], codes: str
) -> Spec:
    spec_type = SPEC_TYPES[family]
    values: dict[str, object] = {"input": input}
    t, k = iter(tensors), 0
    for name, code in zip(_field_names(spec_type), codes, strict=True):
        if code == "n":
            values[name] = None
        elif code == "t":
            values[name] = next(t)
        elif code == "u":
            length = int(numbers[k])
            values[name] = tuple(numbers[k + 1 : k + 1 + length])
            k += 1 + length
        else:
            number = numbers[k]
            k += 1
            values[name] = {
                "b": lambda v: bool(v),
                "i": lambda v: int(v),
                "f": lambda v: v,
                "s": lambda v: _STRINGS[int(v)],
            }[code](number)
    return spec_type(**values)


def _field_names(spec_type: type) -> tuple[str, ...]:
    """The spec's fields after ``input`` (filled in by ``register``: a plain lookup here)."""
    return _FIELD_NAMES[spec_type]


def _grad_like(input: Tensor) -> Tensor:
    """The layout of a gradient returned to compiled code: the input's strides when they are
    dense (``empty_like`` keeps them), contiguous otherwise."""
    return torch.empty_like(input)


@torch.library.custom_op("focalloss::torch_forward", mutates_args=())
def _torch_forward(
    family: str,
    input: Tensor,
    tensors: list[Tensor | None],
    numbers: list[float],
    codes: str,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    spec = _unflatten(family, input, tensors, numbers, codes)
    loss, grad = FAMILIES[family].forward(spec, need_grad)
    if grad is None:
        return loss, input.new_empty(0)
    expected = _grad_like(input)
    if grad.stride() != expected.stride():
        grad = expected.copy_(grad)
    return loss, grad


@_torch_forward.register_fake
def _(family, input, tensors, numbers, codes, need_grad):
    spec = _unflatten(family, input, tensors, numbers, codes)
    if spec.reduction != "none":
        loss_shape: tuple[int, ...] = ()
    elif spec.layout == "position":
        loss_shape = tuple(input.shape[:1] + input.shape[2:])
    else:
        loss_shape = tuple(input.shape)
    loss = input.new_empty(loss_shape, dtype=spec.compute_dtype)
    return loss, _grad_like(input) if need_grad else input.new_empty(0)


from . import detection  # noqa: E402  (varifocal, quality focal, distribution focal)

register(detection.VarifocalSpec, detection.varifocal)  # type: ignore[arg-type]
register(detection.QualityFocalSpec, detection.quality_focal)  # type: ignore[arg-type]
register(detection.DistributionFocalSpec, detection.distribution_focal)  # type: ignore[arg-type]

from . import asymmetric, focal_star, focal_tversky  # noqa: E402  (issue 13: classification)

register(asymmetric.AsymmetricSpec, asymmetric)
register(focal_star.FocalStarSpec, focal_star)
register(focal_tversky.FocalTverskySpec, focal_tversky)
