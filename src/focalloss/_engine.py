"""The engine: one autograd Function and one backend protocol for every closed-form loss.

A public loss function reads as *prepare, run, return*:

1. a family's ``prepare`` (``focalloss._spec``) validates every argument once and returns a
   frozen :class:`Spec`: the input view the backends read, the target in its canonical form,
   per-class coefficients as contiguous compute-dtype tensors, the ``"mean"`` factor as a 0-d
   tensor, and the plain-Python options;
2. :func:`run` picks a backend for the spec (:func:`choose`, the only place that does) and
   returns the loss through :class:`ClosedFormLoss`;
3. the function returns that tensor.

A backend (:class:`Backend`) implements two things for every spec family it supports:

* ``forward(spec, need_grad)``: the reduced loss (``"mean"`` factor applied) and, when asked,
  the gradient of that loss with respect to ``spec.input`` in the input's dtype, computed
  together in closed form;
* ``scale_grad(grad, grad_output, layout, inplace)``: the chain rule of backward, in place on
  the buffer the forward produced (eager) or out of place (under ``torch.compile`` and for
  batched ``grad_output``).

The autograd Function knows no backend by name; it only calls the protocol. Where autograd
needs a graph of the gradient itself (``create_graph=True``, ``torch.func`` transforms), the
loss is recomputed from the family's differentiable composite (``composite(spec, input)``, in
``focalloss._torch``), the same math written with ordinary differentiable operations.

Host synchronisation: nothing here reads a tensor's value on the host; the one exception is
the eager CPU skip of a ``grad_output`` of exactly 1, where a read costs no synchronisation.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar, Literal, Protocol

import torch
from torch import Tensor

Reduction = Literal["none", "mean", "sum"]
BackendName = Literal["auto", "torch", "triton"]
# How grad_output lines up with the gradient: one scalar, one value per position (the class
# dimension 1 is inserted), or one value per element of the input.
Layout = Literal["scalar", "position", "element"]

BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
ENV_VAR = "FOCALLOSS_BACKEND"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What every loss family's spec carries (each family subclasses it with its fields).

    Attributes:
        input: the logits as the backends read them: ``(N, C, *)`` (class dimension 1) or the
            family's own documented frame; any strides.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        scale: the 0-d factor of ``"mean"`` (``1 / divisor``, 0 for a zero divisor) in the
            compute dtype; None for the other reductions.
        layout: how ``grad_output`` lines up with the gradient.
        squeeze: drop dimension 0 of a ``"none"`` result (an unbatched input was given a
            batch dimension by ``prepare``).
    """

    family: ClassVar[str] = ""

    input: Tensor
    reduction: Reduction
    scale: Tensor | None
    layout: Layout
    squeeze: bool

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 for float64 input, float32 otherwise (half inputs are computed in float32)."""
        return torch.float64 if self.input.dtype == torch.float64 else torch.float32

    def with_input(self, input: Tensor) -> Spec:
        return dataclasses.replace(self, input=input)


class Backend(Protocol):
    """What a backend provides for the spec families it supports."""

    name: str

    def unavailable(self, spec: Spec) -> str | None:
        """Why this backend cannot run here, for this input's device (None when it can)."""
        ...

    def unsupported(self, spec: Spec) -> str | None:
        """Which of ``spec``'s arguments this backend does not implement (None: all)."""
        ...

    def forward(self, spec: Spec, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """The reduced loss and, if ``need_grad``, its gradient w.r.t. ``spec.input``."""
        ...

    def scale_grad(
        self, grad: Tensor, grad_output: Tensor, layout: Layout, inplace: bool
    ) -> Tensor:
        """``grad * grad_output`` (``grad_output`` lined up by ``layout``)."""
        ...


def check_backend(backend: object) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def _from_environment() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}: expected one of {BACKENDS}, got {value!r}")
    return value


def choose(requested: str, spec: Spec) -> Backend:
    """The backend that computes ``spec``: the one place that decides.

    ``"auto"``: the Triton backend when it can run this spec (a CUDA input, or Triton's
    interpreter; Triton importable; the family and its options supported), the PyTorch backend
    otherwise. ``FOCALLOSS_BACKEND`` (read at each call) overrides ``"auto"``; ``triton`` there
    acts as an explicit request. An explicit ``"triton"`` that cannot run raises with the
    reason and the fix.
    """
    from . import _torch, _triton

    if requested == "auto":
        requested = _from_environment()
    if requested == "torch":
        return _torch.BACKEND
    if requested == "auto" and spec.input.device.type == "cpu" and not _triton.interpreting():
        return _torch.BACKEND  # the kernels run on CPU tensors only in the interpreter
    kernels: Backend = _triton.BACKEND
    unavailable = kernels.unavailable(spec)
    unsupported = None if unavailable is not None else kernels.unsupported(spec)
    if requested == "auto":
        return _torch.BACKEND if unavailable or unsupported else kernels
    if unavailable is not None:
        raise RuntimeError(f"backend='triton' {unavailable}")
    if unsupported is not None:
        raise ValueError(f"backend='triton' does not support {unsupported}; use backend='auto'")
    return kernels


def run(spec: Spec, backend: str) -> Tensor:
    """The loss of ``spec`` from the chosen backend, differentiable w.r.t. ``spec.input``."""
    from . import _torch

    if _functorch_active():  # torch.func sees ordinary differentiable operations
        loss = _torch.composite(spec, spec.input)
    else:
        chosen = choose(backend, spec)
        if torch.is_grad_enabled() and spec.input.requires_grad:
            loss = ClosedFormLoss.apply(spec, chosen, spec.input)
        else:
            loss, _ = chosen.forward(spec, False)
    return loss.squeeze(0) if spec.squeeze else loss


class ClosedFormLoss(torch.autograd.Function):
    """The loss with its gradient computed in forward; backward applies the chain rule.

    * eager: the gradient buffer is handed to autograd in the first backward, scaled in place
      (untouched when ``grad_output`` is exactly 1 and the backend can tell without a
      synchronisation), so backward allocates no logits-sized tensor. A second backward through
      the same graph (``retain_graph=True``) recomputes it;
    * under ``torch.compile`` nothing saved is mutated: the gradient is scaled out of place;
    * ``create_graph=True`` (double backward): the gradient is recomputed from the
      differentiable composite at the saved input, so autograd can differentiate it again.
    """

    @staticmethod
    def forward(ctx, spec: Spec, backend: Backend, input: Tensor) -> Tensor:  # type: ignore[override]
        loss, grad = backend.forward(spec, True)
        ctx.spec, ctx.backend = spec, backend
        if torch.compiler.is_compiling():
            ctx.save_for_backward(grad, input)
        else:
            ctx.grad = grad
            ctx.save_for_backward(input)  # for create_graph=True and retain_graph
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        spec: Spec = ctx.spec
        backend: Backend = ctx.backend
        if torch.is_grad_enabled():  # create_graph=True: the gradient needs a graph
            from . import _torch

            ctx.grad = None
            (input,) = ctx.saved_tensors
            loss = _torch.composite(spec, input)
            (grad,) = torch.autograd.grad(loss, input, grad_output, create_graph=True)
            return None, None, grad
        if torch.compiler.is_compiling():
            grad, input = ctx.saved_tensors
            return None, None, _compiled_scale(grad, grad_output, input, spec.layout)
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # retain_graph: a second backward through this node
            (input,) = ctx.saved_tensors
            _, grad = backend.forward(spec.with_input(input), True)
        inplace = not _batched(grad_output)
        return None, None, backend.scale_grad(grad, grad_output, spec.layout, inplace)


@torch.library.custom_op("focalloss::compiled_scale", mutates_args=())
def _compiled_scale(grad: Tensor, grad_output: Tensor, input: Tensor, layout: str) -> Tensor:
    """``grad * grad_output`` in compiled backward. ``input`` is an argument only so that the
    compiled backward keeps it: with it, PyTorch's own check rejects a double backward through
    compiled code (``create_graph=True``) with a clear error, instead of returning a gradient
    without a graph."""
    return grad * broadcast_grad_output(grad_output, layout).to(grad.dtype)  # type: ignore[arg-type]


@_compiled_scale.register_fake
def _(grad, grad_output, input, layout):
    return torch.empty_like(grad)


def broadcast_grad_output(grad_output: Tensor, layout: Layout) -> Tensor:
    """``grad_output`` shaped to broadcast against the gradient."""
    return grad_output.unsqueeze(1) if layout == "position" else grad_output


def _batched(grad_output: Tensor) -> bool:
    """A batch of ``grad_output`` (``autograd.grad(is_grads_batched=True)``, vectorised
    Jacobians, ``vmap`` over a vjp) arrives as a batching wrapper, which an in-place update
    of an unbatched buffer cannot take. Only the dispatch keys tell."""
    return "Batched" in str(torch._C._dispatch_keys(grad_output))


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, ...) is running. While dynamo traces
    (``torch.compile``) the interpreter stack is never empty, so it is not a transform then:
    the compiled loss must take the closed form, not the composite."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None
