"""One autograd.Function for every closed-form loss: the gradient comes with the forward.

``compute(input, *args, need_grad=...)`` returns ``(loss, grad)`` where ``grad`` is the gradient
of the returned loss with respect to ``input`` (in the input's dtype), or a tuple of parts with
a ``gradient(scale)`` method that builds it (see ``HardGradParts``). Backward only scales it by
``grad_output``:

* eager: the gradient buffer is handed to autograd in the first backward, scaled in place, or
  untouched when ``grad_output`` is exactly 1 (checked on the CPU only, where it costs no
  synchronisation), so backward allocates and copies no logits-sized tensor. A second backward
  through the same graph (``retain_graph=True``) recomputes it from the saved inputs;
* under ``torch.compile`` nothing is mutated: the gradient (or its parts) is saved and scaled.

Where a graph of the gradient itself is needed, the loss is recomputed from a differentiable
composite of plain PyTorch operations (``compute.composite``, see ``focalloss._reference``):

* double backward (``create_graph=True``: gradient penalties, Hessian-vector products):
  backward differentiates the composite at the saved input;
* ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ``hessian``): the composite runs
  instead of this Function, so the transforms see ordinary operations.

Under ``torch.compile``, PyTorch itself rejects double backward ("aot_autograd does not
currently support double backward").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import _triton

# How grad_output lines up with the gradient: a scalar, one value per position (the class
# dimension 1 is inserted), or one value per element.
SCALAR, PER_POSITION, PER_ELEMENT = "scalar", "position", "element"

_SAVED = object()  # marks an argument kept with save_for_backward (a tensor)


class ClosedFormLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, compute: Callable, layout: str, input: Tensor, *args):  # type: ignore[override]
        loss, grad = compute(input, *args, need_grad=True)
        ctx.layout = layout
        ctx.nargs = len(args)
        if torch.compiler.is_compiling():
            ctx.parts_type = type(grad) if isinstance(grad, tuple) else None
            ctx.input_dtype = input.dtype
            ctx.save_for_backward(*(grad if ctx.parts_type else (grad,)))
        else:
            ctx.grad = grad
            ctx.compute = compute
            ctx.constants = [_SAVED if isinstance(a, Tensor) else a for a in args]
            ctx.save_for_backward(input, *(a for a in args if isinstance(a, Tensor)))
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        nones = (None,) * (ctx.nargs + 2)
        if torch.is_grad_enabled():  # create_graph=True: the gradient needs a graph
            ctx.grad = None
            input, *tensors = ctx.saved_tensors
            it = iter(tensors)
            args = [next(it) if c is _SAVED else c for c in ctx.constants]
            loss = ctx.compute.composite(input, *args)
            (grad,) = torch.autograd.grad(loss, input, grad_output, create_graph=True)
            return (*nones[:2], grad, *nones[2:])
        scale = grad_output.unsqueeze(1) if ctx.layout == PER_POSITION else grad_output
        if torch.compiler.is_compiling():
            if ctx.parts_type is not None:
                grad = ctx.parts_type(*ctx.saved_tensors).gradient(scale)
                return (*nones[:2], grad.to(ctx.input_dtype), *nones[2:])
            (grad,) = ctx.saved_tensors
            return (*nones[:2], grad * scale.to(grad.dtype), *nones[2:])
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # retain_graph: a second backward through this node
            input, *tensors = ctx.saved_tensors
            it = iter(tensors)
            args = [next(it) if c is _SAVED else c for c in ctx.constants]
            _, grad = ctx.compute(input, *args, need_grad=True)
        if _batched(grad_output):  # a batch of grad_outputs: scaled out of place
            return (*nones[:2], grad * scale.to(grad.dtype), *nones[2:])
        kernels = _triton.loaded()
        if (
            kernels is not None
            and getattr(ctx.compute, "scale_in_kernel", False)
            and ctx.layout != PER_ELEMENT
            and grad.dtype != torch.float64
        ):
            kernels.scale_grad_(grad, grad_output, per_position=ctx.layout == PER_POSITION)
        elif ctx.layout != SCALAR:
            grad.mul_(scale.to(grad.dtype))
        elif not (grad_output.device.type == "cpu" and grad_output.item() == 1.0):
            grad.mul_(grad_output.to(grad.dtype))
        return (*nones[:2], grad, *nones[2:])


def _batched(grad_output: Tensor) -> bool:
    """A batch of ``grad_output`` (``autograd.grad(is_grads_batched=True)``, vectorised
    Jacobians, ``vmap`` over a vjp) arrives as a batching wrapper, which the in-place update of
    an unbatched buffer, or a read of its value, cannot take. Only the dispatch keys tell (the
    legacy batching key has no Python name)."""
    return "Batched" in str(torch._C._dispatch_keys(grad_output))


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, ...) is running."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def apply_loss(compute: Callable, layout: str, input: Tensor, *args) -> Tensor:
    """The loss of ``compute``, through autograd only when a gradient can be needed; under a
    ``torch.func`` transform, the differentiable composite (``compute.composite``)."""
    if functorch_active():
        return compute.composite(input, *args)
    if torch.is_grad_enabled() and input.requires_grad:
        return ClosedFormLoss.apply(compute, layout, input, *args)
    loss, _ = compute(input, *args, need_grad=False)
    return loss
