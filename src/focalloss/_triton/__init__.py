"""The Triton backend. This package is the only code that imports ``triton``.

``triton_error()`` says why the kernels cannot be used here (None when they can);
``load()`` imports the launchers, which registers the ``torch.ops.focalloss`` custom operators.
They are imported with ``focalloss`` when Triton is installed and can run (a CUDA device, or
``TRITON_INTERPRET=1``), so that ``torch.compile`` finds them registered.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from types import ModuleType

_ops: ModuleType | None = None
_error: str | None = None


def interpreting() -> bool:
    """Triton's interpreter runs the kernels on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton; it ships with CUDA builds of torch)"
    return _error


def load() -> ModuleType:
    """Import the launchers (and register the custom operators) once."""
    global _ops, _error
    if _ops is None:
        try:
            from . import ops
        except Exception as exc:  # a broken or incompatible Triton install
            _error = f"importing Triton failed: {type(exc).__name__}: {exc}"
            raise RuntimeError(_error) from exc
        _ops = ops
    return _ops


def loaded() -> ModuleType | None:
    return _ops


def _load_if_usable() -> None:
    if triton_error() is not None:
        return
    import torch

    if torch.cuda.is_available() or interpreting():
        with contextlib.suppress(RuntimeError):  # reported by triton_error() when asked for
            load()


_load_if_usable()
