"""Which implementation computes a loss: ``"torch"`` (plain PyTorch) or ``"triton"`` (kernels).

Rule for ``backend="auto"`` (the default): Triton when the input is a CUDA tensor, Triton can be
used and the arguments are supported by the kernels; the PyTorch path otherwise. The
environment variable ``FOCALLOSS_BACKEND`` (``auto``, ``torch`` or ``triton``), read at each
call, overrides ``"auto"``; a value of ``triton`` then behaves as an explicit request. An
explicit ``backend="triton"`` that cannot run raises with the reason and the fix.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from . import _triton

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "FOCALLOSS_BACKEND"


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


@torch.compiler.assume_constant_result
def _from_environment() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}: expected one of {BACKENDS}, got {value!r}")
    return value


def choose(backend: str, input: Tensor, unsupported: str | None) -> str:
    """``"torch"`` or ``"triton"``; ``unsupported`` says why the kernels cannot take these
    arguments (None when they can)."""
    check_backend(backend)
    if backend == "auto":
        backend = _from_environment()
    if backend == "torch":
        return "torch"
    runnable = input.device.type == "cuda" or _triton.interpreting()
    if backend == "auto":
        usable = runnable and unsupported is None and _triton.triton_error() is None
        return "triton" if usable else "torch"
    error = _triton.triton_error()
    if error is not None:
        raise RuntimeError(f"backend='triton' cannot run: {error}; or use backend='torch'")
    if not runnable:
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got input on {input.device}: move input and "
            f"target to the GPU (.cuda()), use backend='auto' or 'torch', or set "
            f"TRITON_INTERPRET=1 before triton is imported to run the kernels in Triton's "
            f"interpreter on the CPU (slow; for tests)"
        )
    if unsupported is not None:
        raise ValueError(f"backend='triton' does not support {unsupported}; use backend='auto'")
    _triton.load()
    return "triton"
