"""Focal loss fused with the output projection: :func:`linear_focal_loss`, :class:`LinearFocalLoss`.

For very large class counts (long-tailed classification with 10^4-10^6 classes, language-model
vocabularies of 32k-256k tokens) the logits ``(N, V)`` are the largest tensor of a training
step. These functions compute the focal loss of ``F.linear(input, classifier, bias)`` and its
gradients for ``input``, ``classifier`` and ``bias`` chunk by chunk, so that the logits never
exist in full (see ``focalloss._linear_torch`` for the math and the memory strategy).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from numbers import Real
from typing import Literal

import torch
from torch import Tensor, nn

from . import _validation as V
from ._linear_torch import Call, LinearFocalFunction, Spec, compute_dtype
from ._spec import class_vector, constant_vector
from ._spec.softmax import check_gamma_or_schedule
from .schedules import GammaSchedule

__all__ = ["LinearFocalLoss", "linear_focal_loss"]

_BACKENDS = ("auto", "torch", "triton")


def linear_focal_loss(
    input: Tensor,
    classifier: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    gamma: float | GammaSchedule = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    weight: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: Literal["none", "mean", "sum"] = "mean",
    poly1_epsilon: float = 0.0,
    logit_softcap: float | None = None,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    backend: Literal["auto", "torch", "triton"] = "auto",
) -> Tensor:
    r"""Focal loss of ``F.linear(input, classifier, bias)`` without materialising the logits.

    Value and gradients equal those of
    ``focal_loss(F.linear(input, classifier, bias), target, ...)`` (see
    :func:`focalloss.focal_loss` for ``gamma``, ``alpha``, ``weight``, ``ignore_index``,
    ``label_smoothing`` and the reductions), plus three options of language-model training.
    Per row ``i`` with logits ``z_i = input_i classifier^T + bias``:

    .. math::

        y_i = c \tanh(z_i / c) \quad (\texttt{logit\_softcap} = c;\ y_i = z_i \text{ without}),
        \qquad p_i = \mathrm{softmax}(y_i),

        \ell_i = v_i \Big[ \sum_c w_c a_c q_{ic} (1 - p_{ic})^\gamma (-\log p_{ic})
              + \epsilon_1 w_{t_i} (1 - P_i)^{\gamma + 1}
              + \lambda \operatorname{logsumexp}(y_i)^2 \Big],

    with ``q_i = (1 - eps) onehot(t_i) + eps / V`` (``eps = label_smoothing``),
    ``P_i = sum_c q_ic p_ic`` (``= p_{i,t_i}`` without smoothing), ``v_i = 1[t_i !=
    ignore_index]``, ``w = weight``, ``a = alpha`` (ones when None).

    * Poly-1 (Leng et al. 2022), ``epsilon_1 = poly1_epsilon``: multiplied by the row's
      ``weight[t_i]`` like the rest of the row's loss, not by ``alpha``; with ``gamma = 0`` it
      is Poly-1 cross-entropy.
    * z-loss (PaLM), ``lambda = z_loss``: per non-ignored row, not multiplied by ``weight``
      (it regularises the normaliser, not a class), and divided by the same ``"mean"``
      divisor as the rest.
    * ``logit_softcap`` (Gemma): applied to the logits before everything else (the z-loss
      sees the capped logits).
    * ``gamma`` may be a :class:`~focalloss.GammaSchedule`: row ``i`` then uses the constant
      ``gamma_i`` the schedule gives its detached ``P_i`` (as :func:`focalloss.focal_loss`
      does), in the focal term of every class and in the Poly-1 term. A one-value schedule
      computes bit for bit what its number does. Cost: one selection per row; with hard
      targets the per-logit work is that of a number ``gamma``, with label smoothing the
      smoothed part's ``(1 - p)^gamma_i`` takes ``exp(gamma_i log(1 - p))`` (two more
      in-place passes over each chunk than ``pow``); no extra memory.

    Reductions: ``"none"`` returns ``loss_i`` in the target's shape (0 at ignored rows);
    ``"sum"`` their sum; ``"mean"`` the sum divided by ``sum_i v_i w_{t_i}`` (as
    ``F.cross_entropy``), and 0 with zero gradients when that is 0 (every row ignored).

    Memory and speed: rows are processed in chunks whose logits live in one reused buffer,
    become their gradient in place and are contracted at once into the gradients of
    ``input``, ``classifier`` and ``bias`` by matmuls. For ``"mean"`` and ``"sum"`` this
    happens in the forward pass (three matmuls, as the unfused computation), which keeps the
    gradient buffers ``(N, D)`` and ``(V, D)`` until backward; backward scales them by
    ``grad_output``. For ``"none"`` backward recomputes the chunks with the per-row
    ``grad_output`` (four matmuls). Extra memory is ``O(chunk_size * V)``, never ``O(N V)``.
    Matmuls run in the input's dtype (float16/bfloat16 logits, gradients accumulated into
    the ``classifier`` gradient in that dtype chunk by chunk), the loss math in float32
    (float64 for float64 inputs); the loss is float32 for half inputs.

    Chunk rule (``chunk_size=None``): with ``B`` = 64 MiB on the CPU and 256 MiB on CUDA and
    ``b`` the bytes of work per logit (the compute dtype's size, plus the half logits' for
    float16/bfloat16, times 5 with label smoothing, plus one more compute-dtype buffer with
    ``logit_softcap``; the Triton kernel works in place: the input dtype's size), a chunk has
    ``B // (V * b)`` rows, at most ``N``, evened out over the chunks. When that is fewer than
    ``min(N, 32)`` rows, the PyTorch backend takes ``min(N, 32)`` rows and splits the classes
    into blocks of ``B // (rows * b)`` (at least 256) with an online logsumexp, recomputing
    each block's logits for the gradient (one more matmul). A given ``chunk_size`` is used as
    it is, without class blocks.

    Args:
        input: hidden states ``(N, D)`` or ``(..., D)``, floating point.
        classifier: ``(V, D)`` weight of the output projection (``nn.Linear.weight``, an LM
            head), the input's dtype and device.
        target: class indices of the input's leading shape ``(N,)`` or ``(...)``, integer.
        bias: ``(V,)`` or None.
        gamma: focusing parameter ``>= 0``, or a :class:`~focalloss.GammaSchedule`.
            Default: 2.
        alpha: per-class factors (``V`` values ``>= 0``), a number ``a`` meaning ``[a, 1 - a]``
            when ``V == 2``, or None.
        weight: per-class rescaling (``V`` values ``>= 0``), as in ``F.cross_entropy``.
        ignore_index: target value of rows that contribute nothing, or None. Default: -100.
        label_smoothing: ``eps`` in [0, 1]. Default: 0.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        poly1_epsilon: Poly-1 coefficient (any real number; the paper uses 1). Default: 0.
        logit_softcap: ``c > 0``, or None for no capping. Default: None.
        z_loss: ``lambda >= 0`` (PaLM uses 1e-4). Default: 0.
        chunk_size: rows per chunk ``>= 1``, or None for the rule above.
        backend: ``"auto"`` (the Triton kernel for CUDA tensors when Triton is installed, else
            PyTorch; ``FOCALLOSS_BACKEND`` overrides it), ``"torch"`` or ``"triton"``.

    Returns:
        A 0-d tensor, or the target's shape for ``reduction="none"``; float32 for half inputs.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from focalloss import focal_loss, linear_focal_loss
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> hidden = torch.randn(6, 8, requires_grad=True)
        >>> head = torch.nn.Linear(8, 50)
        >>> target = torch.tensor([3, 7, -100, 49, 0, 12])
        >>> loss = linear_focal_loss(hidden, head.weight, target, head.bias, chunk_size=4)
        >>> loss.backward()
        >>> unfused = focal_loss(head(hidden), target)
        >>> torch.allclose(loss, unfused)
        True
        >>> gamma0 = linear_focal_loss(hidden, head.weight, target, head.bias, gamma=0.0)
        >>> torch.allclose(gamma0, F.cross_entropy(head(hidden), target))
        True
    """
    V.check_tensor("input", input)
    V.check_tensor("classifier", classifier)
    V.check_tensor("target", target)
    if bias is not None:
        V.check_tensor("bias", bias)
    V.check_reduction(reduction)
    # A schedule of one value becomes its number (bit for bit the constant path); otherwise
    # gamma is NaN and the pieces travel as constants (see focalloss.schedules).
    gamma, thresholds, values = check_gamma_or_schedule(gamma)
    label_smoothing = V.check_unit_interval("label_smoothing", label_smoothing)
    V.check_ignore_index(ignore_index)
    poly1_epsilon = _check_real("poly1_epsilon", poly1_epsilon)
    softcap = _check_softcap(logit_softcap)
    z_loss = _check_z_loss(z_loss)
    chunk = _check_chunk_size(chunk_size)
    _check_backend(backend)

    if not input.is_floating_point():
        raise TypeError(f"input: expected floating-point hidden states, got dtype {input.dtype}")
    if input.dim() == 0:
        raise ValueError("input: expected shape (N, D) or (..., D), got a 0-d tensor")
    if classifier.dim() != 2:
        raise ValueError(
            f"classifier: expected a (V, D) weight matrix, got shape {tuple(classifier.shape)}"
        )
    num_classes, dim = classifier.shape
    if num_classes == 0 or dim == 0:
        raise ValueError(
            f"classifier: expected V >= 1 classes and D >= 1 features, got shape "
            f"{tuple(classifier.shape)}"
        )
    if input.shape[-1] != dim:
        raise ValueError(
            f"input: the last dimension must equal the classifier's D={dim} (classifier shape "
            f"{tuple(classifier.shape)}), got input shape {tuple(input.shape)}"
        )
    if classifier.dtype != input.dtype:
        raise TypeError(
            f"classifier: expected the input's dtype {input.dtype}, got {classifier.dtype}"
        )
    V.check_same_device("classifier", classifier, input)
    if bias is not None:
        if bias.shape != (num_classes,):
            raise ValueError(
                f"bias: expected shape ({num_classes},) (one value per class), got "
                f"{tuple(bias.shape)}"
            )
        if bias.dtype != input.dtype:
            raise TypeError(f"bias: expected the input's dtype {input.dtype}, got {bias.dtype}")
        V.check_same_device("bias", bias, input)
    lead = input.shape[:-1]
    if target.shape != lead:
        raise ValueError(
            f"target: expected class indices of the input's leading shape {tuple(lead)} "
            f"(input shape {tuple(input.shape)}), got shape {tuple(target.shape)}"
        )
    if not V.is_integer_tensor(target):
        raise TypeError(
            f"target: expected class indices of an integer dtype (int64), got dtype "
            f"{target.dtype} (probability targets are not supported here; use focal_loss)"
        )
    V.check_same_device("target", target, input)
    V.check_constants(target=target, alpha=alpha, weight=weight)

    cdtype = compute_dtype(input.dtype)
    alpha_vec = _alpha_vector(alpha, num_classes, input, cdtype)
    weight_vec = (
        None
        if weight is None
        else class_vector("weight", weight, num_classes, input, upper=math.inf)
    )
    class_coef = weight_vec if alpha_vec is None else alpha_vec
    if weight_vec is not None and alpha_vec is not None:
        class_coef = weight_vec * alpha_vec

    x = input.reshape(-1, dim)
    t = target.reshape(-1).long()
    has_ignore = ignore_index is not None
    valid = t != ignore_index if has_ignore else None
    if V.reads_values(t):
        V.check_class_range(
            t if valid is None else t.masked_fill(~valid, 0), num_classes, ignore_index, num_classes
        )
    grad_scale = None
    if reduction == "mean":
        grad_scale = _divisor(t, valid, weight_vec, cdtype).reciprocal().nan_to_num(posinf=0.0)

    use_triton = _use_triton(backend, input)
    spec = Spec(
        gamma,
        label_smoothing,
        poly1_epsilon,
        softcap,
        z_loss,
        -100 if ignore_index is None else int(ignore_index),
        has_ignore,
        thresholds,
        values,
    )
    call = Call(t, class_coef, weight_vec, grad_scale, spec, chunk, reduction == "none", use_triton)
    if _functorch_active():
        loss = call.composite(x, classifier, bias)
    elif torch.is_grad_enabled() and (
        input.requires_grad or classifier.requires_grad or (bias is not None and bias.requires_grad)
    ):
        loss = LinearFocalFunction.apply(call, x, classifier, bias)
    else:
        loss, *_ = call.run(x, classifier, bias, (False, False, False))
    return loss.view(lead) if reduction == "none" else loss


class LinearFocalLoss(nn.Module):
    r"""Holds the configuration of :func:`linear_focal_loss`; call it with the hidden states,
    the projection weight and the targets: ``criterion(hidden, lm_head.weight, target)``.

    Args: as :func:`linear_focal_loss` (``alpha`` and ``weight`` become buffers that follow
    ``.to()``; ``gamma`` is kept as given, a number or a :class:`~focalloss.GammaSchedule`).

    Shape:
        - input: ``(N, D)`` or ``(..., D)``; classifier ``(V, D)``; bias ``(V,)`` or None.
        - target: ``(N,)`` or ``(...)`` class indices.
        - output: scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from focalloss import LinearFocalLoss
        >>> lm_head = torch.nn.Linear(16, 100, bias=False)
        >>> criterion = LinearFocalLoss(gamma=1.0, z_loss=1e-4, ignore_index=-100)
        >>> hidden = torch.randn(2, 5, 16, requires_grad=True)
        >>> target = torch.randint(0, 100, (2, 5))
        >>> loss = criterion(hidden, lm_head.weight, target)
        >>> loss.backward()
        >>> hidden.grad.shape, lm_head.weight.grad.shape
        (torch.Size([2, 5, 16]), torch.Size([100, 16]))
    """

    alpha: Tensor | float | None
    weight: Tensor | None

    def __init__(
        self,
        gamma: float | GammaSchedule = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: Literal["none", "mean", "sum"] = "mean",
        poly1_epsilon: float = 0.0,
        logit_softcap: float | None = None,
        z_loss: float = 0.0,
        chunk_size: int | None = None,
        backend: Literal["auto", "torch", "triton"] = "auto",
    ) -> None:
        super().__init__()
        check_gamma_or_schedule(gamma)  # raises on anything else, naming gamma
        self.gamma = gamma if isinstance(gamma, GammaSchedule) else float(gamma)
        V.check_ignore_index(ignore_index)
        V.check_reduction(reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = V.check_unit_interval("label_smoothing", label_smoothing)
        self.reduction = reduction
        self.poly1_epsilon = _check_real("poly1_epsilon", poly1_epsilon)
        _check_softcap(logit_softcap)
        self.logit_softcap = logit_softcap
        self.z_loss = _check_z_loss(z_loss)
        _check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        _check_backend(backend)
        self.backend = backend
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            self.alpha = V.check_unit_interval("alpha", alpha)
        else:
            self.register_buffer("alpha", _as_buffer("alpha", alpha))
        self.register_buffer("weight", _as_buffer("weight", weight))

    def forward(
        self, input: Tensor, classifier: Tensor, target: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        return linear_focal_loss(
            input,
            classifier,
            target,
            bias,
            gamma=self.gamma,
            alpha=self.alpha,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,  # type: ignore[arg-type]
            poly1_epsilon=self.poly1_epsilon,
            logit_softcap=self.logit_softcap,
            z_loss=self.z_loss,
            chunk_size=self.chunk_size,
            backend=self.backend,  # type: ignore[arg-type]
        )

    def extra_repr(self) -> str:
        parts = [f"gamma={self.gamma}", f"reduction={self.reduction!r}"]
        for name, default in (
            ("ignore_index", -100),
            ("label_smoothing", 0.0),
            ("poly1_epsilon", 0.0),
            ("logit_softcap", None),
            ("z_loss", 0.0),
            ("chunk_size", None),
            ("backend", "auto"),
        ):
            value = getattr(self, name)
            if value != default:
                parts.append(f"{name}={value!r}")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    number = float(value)
    if not (number > -math.inf and number < math.inf):
        raise ValueError(f"{name}: expected a finite number, got {number}")
    return number


def _check_softcap(value: object) -> float:
    """``logit_softcap``: None (0.0 internally) or a finite number > 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"logit_softcap: expected None or a number > 0, got {type(value).__name__}")
    number = float(value)
    if not (number > 0 and number < math.inf):
        raise ValueError(f"logit_softcap: expected None or a finite number > 0, got {number}")
    return number


def _check_z_loss(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"z_loss: expected a number >= 0, got {type(value).__name__}")
    number = float(value)
    if not (number >= 0 and number < math.inf):
        raise ValueError(f"z_loss: expected a finite number >= 0, got {number}")
    return number


def _check_chunk_size(value: object) -> int:
    """``chunk_size``: None (0 internally: the rule) or an int >= 1."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"chunk_size: expected None or an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"chunk_size: expected None or an int >= 1, got {value}")
    return value


def _check_backend(backend: object) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")


def _alpha_vector(
    alpha: float | Sequence[float] | Tensor | None,
    num_classes: int,
    input: Tensor,
    dtype: torch.dtype,
) -> Tensor | None:
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        a = V.check_unit_interval("alpha", alpha)
        if num_classes != 2:
            raise ValueError(
                f"alpha: a single number a means factors [a, 1 - a] for classes 0 and 1 and is "
                f"valid only for V == 2, got V={num_classes}; pass {num_classes} per-class "
                f"factors instead"
            )
        return constant_vector((a, 1.0 - a), input.device, dtype)
    return class_vector("alpha", alpha, num_classes, input, upper=math.inf)


def _as_buffer(name: str, value: Sequence[float] | Tensor | None) -> Tensor | None:
    """Per-class configuration as a 1-D float tensor (checked again at each call)."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        V.check_tensor(name, value)
        tensor = value.detach().clone()
        if not tensor.is_floating_point():
            tensor = tensor.float()
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name}: expected a sequence of numbers, got {value!r}")
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
    if V.reads_values(tensor):
        bad = ~(tensor >= 0) | ~torch.isfinite(tensor)
        if bool(bad.any()):
            raise ValueError(f"{name}: expected finite values >= 0, got {tensor[bad][0].item()}")
    return tensor


def _divisor(
    target: Tensor, valid: Tensor | None, weight: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """``sum_i v_i w_{t_i}``: the divisor of ``reduction="mean"``."""
    if weight is None:
        if valid is None:
            return target.new_full((), float(target.numel()), dtype=dtype)  # a fill, no copy
        return valid.sum(dtype=dtype)
    safe = target if valid is None else target.masked_fill(~valid, 0)
    w_t = weight[safe]
    if valid is not None:
        w_t = w_t.masked_fill(~valid, 0.0)
    return w_t.sum()


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform runs. While dynamo traces (``torch.compile``) the
    interpreter stack is never empty, so that is not a transform: the compiled loss must take
    the chunked custom operator, not the composite (which holds the full logits)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


def _backend_from_environment() -> str:
    value = os.environ.get("FOCALLOSS_BACKEND", "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"FOCALLOSS_BACKEND: expected one of {_BACKENDS}, got {value!r}")
    return value


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Whether Triton can be imported (found, not imported: nothing heavy at import time).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _use_triton(backend: str, input: Tensor) -> bool:
    """The rule of ``focal_loss``: ``"auto"`` (or ``FOCALLOSS_BACKEND``) takes the kernel for
    CUDA tensors (or under ``TRITON_INTERPRET=1``) when Triton is installed; an explicit
    ``"triton"`` that cannot run raises with the reason."""
    if backend == "auto":
        backend = _backend_from_environment()
    if backend == "torch":
        return False
    runnable = input.device.type == "cuda" or _interpreting()
    if backend == "auto":
        return runnable and _TRITON_INSTALLED
    if not _TRITON_INSTALLED:
        raise RuntimeError(
            "backend='triton' cannot run: Triton is not installed (pip install triton); or "
            "use backend='torch'"
        )
    if not runnable:
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got input on {input.device}: move the "
            f"tensors to the GPU, use backend='auto' or 'torch', or set TRITON_INTERPRET=1 "
            f"before triton is imported (Triton's interpreter on the CPU; slow, for tests)"
        )
    return True
