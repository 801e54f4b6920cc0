"""The Triton backend. This package is the only code that imports ``triton``, and it does so
only when a loss first runs on it (never at ``import focalloss``).

``BACKEND.unsupported(spec)`` says why the kernels cannot compute a spec here (None when they
can); ``load()`` imports the launchers, which registers the ``torch.ops.focalloss`` custom
operators of the kernels.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from .._engine import Layout, Spec, broadcast_grad_output

_ops: ModuleType | None = None
_error: str | None = None
# Whether triton can be found (a lookup on sys.path, not an import): fixed at import, so that
# compiled code does not guard on a value that changes at its first call.
_INSTALLED = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's interpreter runs the kernels on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_error() -> str | None:
    """Why Triton cannot be used (None when it can); does not import it."""
    if not _INSTALLED:
        return "Triton is not installed (pip install triton; it ships with CUDA builds of torch)"
    return _error


def load() -> ModuleType:
    """Import the launchers (and so register their custom operators) once."""
    global _ops, _error
    if _ops is None:
        try:
            for module in _LAUNCHERS:
                importlib.import_module(f"{__name__}.{module}")
            from . import ops
        except Exception as exc:  # a broken or incompatible Triton install
            _error = f"importing Triton failed: {type(exc).__name__}: {exc}"
            raise RuntimeError(_error) from exc
        _ops = ops
    return _ops


def loaded() -> ModuleType | None:
    return _ops


# family -> (why a spec of it is not supported, or None; the launch)
_FAMILIES: dict[str, tuple[Callable[[Spec], str | None], Callable[[Spec, bool], tuple]]] = {}
_LAUNCHERS: list[str] = ["ops"]  # modules of this package that define custom operators


def register(
    family: str,
    unsupported: Callable[[Spec], str | None],
    forward: Callable[[Spec, bool], tuple[Tensor, Tensor | None]],
    launcher: str = "ops",
) -> None:
    """Add a loss family: ``forward(spec, need_grad)`` calls its custom operator, which the
    module ``launcher`` of this package defines (imported on first use)."""
    _FAMILIES[family] = (unsupported, forward)
    if launcher not in _LAUNCHERS:
        _LAUNCHERS.append(launcher)


class TritonBackend:
    name = "triton"

    def unavailable(self, spec: Spec) -> str | None:
        error = triton_error()
        if error is not None:
            return f"cannot run: {error}; or use backend='torch'"
        if spec.input.device.type != "cuda" and not interpreting():
            return (
                f"needs CUDA tensors, got input on {spec.input.device}: move input and target "
                f"to the GPU (.cuda()), use backend='auto' or 'torch', or set "
                f"TRITON_INTERPRET=1 before triton is imported to run the kernels in Triton's "
                f"interpreter on the CPU (slow; for tests)"
            )
        try:
            load()
        except RuntimeError as exc:
            return f"cannot run: {exc}; or use backend='torch'"
        return None

    def unsupported(self, spec: Spec) -> str | None:
        if spec.family not in _FAMILIES:
            return f"{spec.family} (no kernel)"
        return _FAMILIES[spec.family][0](spec)

    def forward(self, spec: Spec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        loss, grad = _FAMILIES[spec.family][1](spec, need_grad)
        if spec.reduction == "mean":
            loss = loss * spec.scale
        return loss, grad if need_grad else None

    def scale_grad(
        self, grad: Tensor, grad_output: Tensor, layout: Layout, inplace: bool
    ) -> Tensor:
        scale = broadcast_grad_output(grad_output, layout)
        if not inplace:
            return grad * scale.to(grad.dtype)
        if layout == "element" or grad.dtype == torch.float64:
            return grad.mul_(scale.to(grad.dtype))
        return load().scale_grad_(grad, grad_output, per_position=layout == "position")


BACKEND = TritonBackend()

from . import classification as _classification  # noqa: E402,F401  (asymmetric loss, FL*)
from . import detection as _detection  # noqa: E402,F401  (VFL, QFL, DFL launches)
from . import families as _families  # noqa: E402,F401  (registers the families' launches)
