"""Public loss functions: validate the arguments, pick the backend, compute, reduce."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _validation as V
from ._autograd import PER_ELEMENT, PER_POSITION, SCALAR, apply_loss
from ._backend import check_backend, choose
from ._reference import (
    SigmoidOptions,
    sigmoid_focal_composite,
    sigmoid_focal_forward,
    softmax_focal_composite,
    softmax_focal_forward,
)
from .distributed import global_divisor

__all__ = ["focal_loss", "sigmoid_focal_loss"]


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    weight: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    detach_modulator: bool = False,
    backend: str = "auto",
    sync_normalizer: bool = False,
) -> Tensor:
    r"""Multi-class (softmax) focal loss of Lin et al. (2017), a drop-in for ``F.cross_entropy``.

    With ``p = softmax(input, dim=1)``, ``v_i = 1[target_i != ignore_index]``, ``w = weight``
    and ``a = alpha`` (ones when None) and ``eps = label_smoothing``, each position ``i`` has
    the target distribution ``q_i = (1 - eps) * onehot(target_i) + eps / C`` (class indices)
    or ``q_i = (1 - eps) * target_i + eps / C`` (probabilities, ``v_i = 1``) and the loss

    .. math::

        \ell_i = v_i \sum_c w_c\, a_c\, q_{ic}\, (1 - p_{ic})^\gamma\, (-\log p_{ic}).

    For hard targets (``eps = 0``) this is the paper's ``-a_t (1 - p_t)^gamma log p_t``, times
    ``w_t``. With ``gamma = 0`` and ``alpha = None`` values and gradients equal
    ``F.cross_entropy`` with the same ``weight``, ``ignore_index``, ``reduction`` and
    ``label_smoothing``.

    Reductions: ``"none"`` returns ``loss_i`` (0 at ignored positions); ``"sum"`` their sum;
    ``"mean"`` the sum divided by ``sum_i v_i * w_{target_i}`` for class indices (as
    ``F.cross_entropy``: ``weight`` enters the divisor, ``alpha`` does not) or by the number of
    positions for probabilities. When that divisor is 0 (every target ignored, zero weights or
    an empty batch) ``"mean"`` returns 0 with zero gradients, where ``F.cross_entropy`` returns
    NaN: one all-ignored crop cannot poison a training run.

    The gradient is the exact derivative (through ``(1 - p_t)^gamma`` too), computed in closed
    form together with the loss; it is finite for every ``gamma >= 0`` and logits up to
    ``+-1e4`` in float32, float16 and bfloat16. Half-precision inputs are computed in float32:
    the loss is float32, the input gradient has the input's dtype. Double backward
    (``create_graph=True``) and ``torch.func`` transforms run on a differentiable composite of
    the same loss (slower; see ``focalloss._autograd``). Only ``input`` is differentiated (a
    ``target``, ``weight`` or ``alpha`` that requires grad is an error while grad mode is on).

    Non-finite logits: NaN anywhere in a position, or ``+inf``, gives NaN loss and gradient
    for that position only (as ``F.cross_entropy``); ``-inf`` masks a class (finite, unless
    the target puts mass on it: ``+inf``); ignored positions get 0 and an exact 0 gradient
    whatever their logits hold.

    Args:
        input: logits ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; the class dimension is 1
            (0 when unbatched). Any layout (channels_last, strided views) is read as it is.
        target: class indices ``(N, d1, ..., dk)`` (``()`` when unbatched) of an integer dtype
            (int64 or uint8, say), or class probabilities of the input's shape (floating).
        gamma: focusing parameter ``>= 0``. Default: 2.
        alpha: per-class factors ``a`` (a sequence or 1-D tensor of ``C`` values ``>= 0``), or
            a number ``a`` in [0, 1] meaning ``[a, 1 - a]`` for classes 0 and 1 (the seed
            module's convention, valid only when ``C == 2``), or None. Default: None.
        weight: per-class rescaling ``w`` of ``C`` values ``>= 0``, as in ``F.cross_entropy``;
            it also weights the ``"mean"`` divisor. Default: None.
        ignore_index: class-index value that marks positions that contribute nothing, or
            None. With probability targets it must stay -100 or None (as in
            ``F.cross_entropy``, which rejects other values). Default: -100.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        label_smoothing: ``eps`` in [0, 1]. Default: 0.
        detach_modulator: treat ``(1 - p)^gamma`` as a constant in the backward pass; this
            reproduces the seed module (which detaches ``p_t``). Default: False.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``. ``"auto"`` runs the fused Triton
            kernel for CUDA inputs with class-index targets when Triton is available, and the
            PyTorch path otherwise (probability targets always take the PyTorch path);
            ``FOCALLOSS_BACKEND`` overrides ``"auto"``. Default: ``"auto"``.
        sync_normalizer: under ``torch.distributed`` (DDP), all-reduce the ``"mean"`` divisor
            across ranks and return ``world_size * local_sum / global_divisor``, so that DDP's
            gradient averaging equals one process training on all ranks' batches (see
            :mod:`focalloss.distributed`). Only with ``reduction="mean"``. Default: False.

    Returns:
        A 0-d tensor, or ``(N, d1, ..., dk)`` for ``reduction="none"``; float32 for half inputs.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from focalloss import focal_loss
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.5, 0.2]])
        >>> target = torch.tensor([0, 2])
        >>> focal_loss(logits, target, gamma=2.0)
        tensor(0.2722)
        >>> torch.allclose(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
        True
    """
    V.check_tensor("input", input)
    V.check_tensor("target", target)
    V.check_reduction(reduction)
    gamma = V.check_gamma(gamma)
    label_smoothing = V.check_unit_interval("label_smoothing", label_smoothing)
    V.check_ignore_index(ignore_index)
    if not isinstance(detach_modulator, bool):
        raise TypeError(f"detach_modulator: expected a bool, got {detach_modulator!r}")
    if not input.is_floating_point():
        raise TypeError(f"input: expected floating-point logits, got dtype {input.dtype}")
    if input.dim() == 0:
        raise ValueError(
            "input: expected logits of shape (C), (N, C) or (N, C, d1, ...), got a 0-d tensor"
        )
    V.check_same_device("target", target, input)
    V.check_constants(target=target, alpha=alpha, weight=weight)
    check_backend(backend)
    V.check_sync_normalizer(sync_normalizer, reduction)

    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    num_classes = input.shape[1]
    if num_classes == 0:
        raise ValueError(
            f"input: expected at least one class (C >= 1), got shape {tuple(input.shape)}"
        )
    probabilities = _target_kind(input, target, unbatched)

    compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    alpha_vec = _alpha_vector(alpha, num_classes, input, compute_dtype)
    weight_vec = (
        None
        if weight is None
        else V.class_vector("weight", weight, num_classes, input, compute_dtype)
    )
    class_coef = _product(weight_vec, alpha_vec)

    raw_target = target
    if probabilities:
        if ignore_index not in (None, -100):
            raise ValueError(
                f"ignore_index: not supported with probability targets (as in F.cross_entropy); "
                f"expected -100 (the default) or None, got {ignore_index}"
            )
        V.check_unit_range("target", target, "class probabilities")
        ignored = None
        divisor: Tensor | None = torch.tensor(
            float(target.numel() // num_classes), dtype=compute_dtype, device=input.device
        )
    else:
        raw_target = target = target.long()
        ignored = None if ignore_index is None else target == ignore_index
        if ignored is not None:
            target = target.masked_fill(ignored, 0)  # any valid class: its terms are masked
        V.check_class_range(target, num_classes, ignore_index, num_classes)
        divisor = _index_divisor(target, ignored, weight_vec, compute_dtype)
    grad_scale = None
    if reduction == "mean":
        assert divisor is not None
        grad_scale = _mean_scale(divisor, sync_normalizer, clamp=False)

    layout = PER_POSITION if reduction == "none" else SCALAR
    unsupported = "probability targets" if probabilities else None
    if choose(backend, input, unsupported) == "triton":
        loss = apply_loss(
            _softmax_focal_loss_triton,
            layout,
            input,
            raw_target,
            class_coef,
            grad_scale,
            gamma,
            label_smoothing,
            -100 if ignore_index is None else ignore_index,
            ignore_index is not None,
            detach_modulator,
            reduction,
        )
        return loss.squeeze(0) if unbatched and reduction == "none" else loss
    loss = apply_loss(
        _softmax_focal_loss,
        layout,
        input,
        target,
        class_coef,
        ignored,
        grad_scale,
        gamma,
        label_smoothing,
        detach_modulator,
        reduction,
    )
    if unbatched and reduction == "none":
        loss = loss.squeeze(0)
    return loss


def _finish(
    loss: Tensor, grad: object, grad_scale: Tensor | None, reduction: str, input: Tensor
) -> tuple[Tensor, object]:
    """Scale a summed loss for ``reduction="mean"`` and give a gradient tensor the input's
    dtype (gradient parts for the compiled path pass through)."""
    if reduction == "mean":
        assert grad_scale is not None
        loss = loss * grad_scale
    if isinstance(grad, Tensor) and grad.dtype != input.dtype:
        grad = grad.to(input.dtype)
    return loss, grad


def _mean_scale(divisor: Tensor, sync: bool, clamp: bool) -> Tensor:
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


def _target_kind(input: Tensor, target: Tensor, unbatched: bool) -> bool:
    """True for probability targets, False for class indices; raises on anything else."""
    index_shape = input.shape[:1] + input.shape[2:]
    if target.shape == input.shape:
        if not target.is_floating_point():
            shapes = _shown_shapes(input, target, unbatched)
            raise TypeError(
                f"target: a target of the input's shape {shapes[0]} holds class probabilities "
                f"and must be floating point, got dtype {target.dtype} (for class indices pass "
                f"shape {shapes[1]})"
            )
        return True
    if target.shape == index_shape:
        if not V.is_integer_tensor(target):
            raise TypeError(
                f"target: class indices of shape {_shown_shapes(input, target, unbatched)[1]} "
                f"must have an integer dtype (int64 or uint8), got dtype {target.dtype} "
                f"(convert with target.long())"
            )
        return False
    shown_input, shown_index, shown_target = _shown_shapes(input, target, unbatched)
    raise ValueError(
        f"target: expected class indices of shape {shown_index} or probabilities of shape "
        f"{shown_input} for input of shape {shown_input}, got shape {shown_target}"
    )


def _shown_shapes(input: Tensor, target: Tensor, unbatched: bool) -> tuple[str, str, str]:
    """The input, index-target and target shapes as the caller wrote them (for messages)."""
    if unbatched:
        return str(tuple(input.shape[1:])), "()", str(tuple(target.shape[1:]))
    index = tuple(input.shape[:1] + input.shape[2:])
    return str(tuple(input.shape)), str(index), str(tuple(target.shape))


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
                f"valid only for C == 2, got C={num_classes}; pass {num_classes} per-class "
                f"factors instead"
            )
        return torch.tensor([a, 1.0 - a], dtype=dtype, device=input.device)
    return V.class_vector("alpha", alpha, num_classes, input, dtype)


def _product(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None or b is None:
        return a if b is None else b
    return a * b


def _index_divisor(
    target: Tensor, ignored: Tensor | None, weight: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """``sum_i v_i * w_{target_i}``: the divisor of ``reduction="mean"`` for class indices."""
    if weight is None:
        if ignored is None:
            return torch.tensor(float(target.numel()), dtype=dtype, device=target.device)
        return target.numel() - ignored.sum(dtype=dtype)
    w_t = weight[target]
    if ignored is not None:
        w_t.masked_fill_(ignored, 0.0)
    return w_t.sum()


def _softmax_focal_loss(
    input: Tensor,
    target: Tensor,
    class_coef: Tensor | None,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    label_smoothing: float,
    detach_modulator: bool,
    reduction: str,
    *,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """The reduced loss and the gradient of the reduced loss (PyTorch backend)."""
    compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    loss, grad = softmax_focal_forward(
        input,
        target,
        class_coef=class_coef,
        ignored=ignored,
        grad_scale=grad_scale,
        gamma=gamma,
        label_smoothing=label_smoothing,
        detach_modulator=detach_modulator,
        need_grad=need_grad,
        compute_dtype=compute_dtype,
    )
    return _finish(loss if reduction == "none" else loss.sum(), grad, grad_scale, reduction, input)


def _softmax_focal_loss_triton(
    input: Tensor,
    target: Tensor,
    class_coef: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    label_smoothing: float,
    ignore_index: int,
    has_ignore: bool,
    detach_modulator: bool,
    reduction: str,
    *,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """The reduced loss and its gradient from the fused kernel (``torch.ops.focalloss``)."""
    loss, grad = torch.ops.focalloss.softmax_focal_fwd(
        input,
        target,
        class_coef,
        grad_scale,
        gamma,
        label_smoothing,
        ignore_index,
        has_ignore,
        detach_modulator,
        reduction == "none",
        need_grad,
    )
    return _finish(loss, grad if need_grad else None, grad_scale, reduction, input)


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = 0.25,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
    detach_modulator: bool = False,
    backend: str = "auto",
    sync_normalizer: bool = False,
) -> Tensor:
    r"""Sigmoid (binary, multi-label, RetinaNet) focal loss with a closed-form gradient.

    Per element, with ``p = sigmoid(input)`` and target ``t`` in [0, 1]:

    .. math::

        \mathrm{ce} = \mathrm{BCEWithLogits}(x, t; \mathrm{pos\_weight}),\quad
        p_t = p t + (1 - p)(1 - t),\quad a_t = \alpha t + (1 - \alpha)(1 - t),

        \ell = w \cdot a_t\, (1 - p_t)^\gamma\, \mathrm{ce}.

    With ``weight=None`` and ``pos_weight=None`` this equals
    ``torchvision.ops.sigmoid_focal_loss`` elementwise (soft targets included; torchvision's
    default reduction is ``"none"``, this one's ``"mean"``). With ``gamma=0`` and
    ``alpha=None`` it equals ``F.binary_cross_entropy_with_logits`` (values and gradients).

    Targets:

    * floating, the input's shape: binary or soft labels in [0, 1] (checked when value checks
      are on: one read of the target).
    * integer class indices of the input's shape without dim 1 (``(N,)`` for ``(N, C)``
      logits, ``(N, d1, ...)`` for ``(N, C, d1, ...)``), values in ``[0, C]``: class ``c``
      makes output ``c`` the only positive of that position, ``C`` means background (all ``C``
      outputs negative), ``ignore_index`` drops the position. Equal to the float one-hot version
      with ignored positions removed, but no one-hot tensor is built.

    Reductions: ``"none"`` returns the elementwise loss (input's shape, 0 at ignored
    positions); ``"sum"``; ``"mean"`` divides the sum by the number of non-ignored elements, or
    by ``normalizer`` when given (e.g. the number of positive anchors; values below 1 count as
    1, as RetinaNet does, so an image without objects is not blown up). A divisor of 0 (empty or
    all-ignored input) gives 0 with zero gradients.

    The gradient is exact and finite for every ``gamma >= 0`` and logits up to ``+-1e4`` in
    float32/float16/bfloat16 (torchvision's is NaN for ``0 < gamma < 1`` once logits saturate).
    Half inputs are computed in float32; the loss is float32, the gradient the input's dtype.
    Double backward (``create_graph=True``) and ``torch.func`` transforms run on a
    differentiable composite of the same loss (slower). Only ``input`` is differentiated: other
    tensors that require grad are an error while grad mode is on. A NaN logit gives NaN loss
    and gradient for that element only; ``+-inf`` logits are outside the domain (inf or NaN
    there, as in BCE-with-logits); ignored positions get 0 and an exact 0 gradient whatever
    their logits hold.

    Args:
        input: logits of any shape: ``(N, C, *)`` per-class outputs, or ``(N,)``/``(N, *)``
            for a single binary output.
        target: float labels of the input's shape, or integer class indices (see above).
        gamma: focusing parameter ``>= 0``. Default: 2.
        alpha: weight of positives in [0, 1] (negatives get ``1 - alpha``); a negative number
            or None disables it (torchvision's convention for ``-1``); or ``C`` per-class values
            in [0, 1] applied along dim 1. Default: 0.25.
        weight: elementwise rescaling, broadcast to the input as in
            ``F.binary_cross_entropy_with_logits``. Default: None.
        pos_weight: weight of the positive term of the cross-entropy, broadcast as in
            ``F.binary_cross_entropy_with_logits`` (a ``(C,)`` tensor lines up with the *last*
            dimension). Default: None.
        ignore_index: with class-index targets, the value that marks ignored positions.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        normalizer: divisor for ``"mean"`` (a number or 0-d tensor >= 0, clamped to >= 1);
            an error with other reductions.
        detach_modulator: treat ``(1 - p_t)^gamma`` as a constant in the backward pass.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``: ``"auto"`` runs the fused Triton
            kernel for CUDA inputs when Triton is available (every option is supported), the
            PyTorch path otherwise; ``FOCALLOSS_BACKEND`` overrides ``"auto"``.
        sync_normalizer: under ``torch.distributed`` (DDP), all-reduce the ``"mean"`` divisor
            (or ``normalizer``, clamped to >= 1 after the sum) across ranks and return
            ``world_size * local_sum / global_divisor``, so that DDP's gradient averaging
            equals one process training on all ranks' batches (see
            :mod:`focalloss.distributed`). Only with ``reduction="mean"``. Default: False.

    Returns:
        A 0-d tensor, or the elementwise loss for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from focalloss import sigmoid_focal_loss
        >>> logits = torch.tensor([[3.0, -2.0], [0.5, 1.0]])
        >>> labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> sigmoid_focal_loss(logits, labels, reduction="sum")
        tensor(0.2901)
        >>> classes = torch.tensor([0, 1])  # the same labels as class indices
        >>> sigmoid_focal_loss(logits, classes, reduction="sum")
        tensor(0.2901)
    """
    V.check_tensor("input", input)
    V.check_tensor("target", target)
    V.check_reduction(reduction)
    gamma = V.check_gamma(gamma)
    V.check_ignore_index(ignore_index)
    if not isinstance(detach_modulator, bool):
        raise TypeError(f"detach_modulator: expected a bool, got {detach_modulator!r}")
    if not input.is_floating_point():
        raise TypeError(f"input: expected floating-point logits, got dtype {input.dtype}")
    V.check_same_device("target", target, input)
    V.check_constants(
        target=target, alpha=alpha, weight=weight, pos_weight=pos_weight, normalizer=normalizer
    )
    check_backend(backend)
    V.check_sync_normalizer(sync_normalizer, reduction)
    V.check_normalizer_reduction(normalizer, reduction)

    compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    index = _sigmoid_target_kind(input, target)
    num_classes = input.shape[1] if index else None
    if not index and ignore_index is not None:
        raise ValueError(
            f"ignore_index: only applies to class-index targets; with float targets drop the "
            f"elements or give them weight 0 (got ignore_index={ignore_index})"
        )
    ignored = None
    raw_target = target
    if index:
        assert num_classes is not None
        raw_target = target = target.long()
        if ignore_index is not None:
            ignored = target == ignore_index
            target = target.masked_fill(ignored, num_classes)  # background; masked anyway
        V.check_class_range(target, num_classes, ignore_index, num_classes + 1)
        count = target.numel() * num_classes
        if ignored is not None:
            divisor = (count - ignored.sum(dtype=compute_dtype) * num_classes).to(compute_dtype)
        else:
            divisor = torch.tensor(float(count), dtype=compute_dtype, device=input.device)
    else:
        V.check_unit_range("target", target)
        divisor = torch.tensor(float(target.numel()), dtype=compute_dtype, device=input.device)

    options = SigmoidOptions(
        alpha=_sigmoid_alpha(alpha, input, compute_dtype),
        weight=V.broadcast_weight("weight", weight, input, compute_dtype),
        pos_weight=V.broadcast_weight("pos_weight", pos_weight, input, compute_dtype),
        gamma=gamma,
        detach_modulator=detach_modulator,
        compute_dtype=compute_dtype,
    )
    grad_scale = None
    if reduction == "mean":
        if normalizer is not None:
            divisor = V.check_normalizer(normalizer, input, compute_dtype)
        grad_scale = _mean_scale(divisor, sync_normalizer, clamp=normalizer is not None)
    layout = PER_ELEMENT if reduction == "none" else SCALAR
    if choose(backend, input, None) == "triton":
        return apply_loss(
            _sigmoid_focal_loss_triton,
            layout,
            input,
            raw_target,
            grad_scale,
            options,
            -1 if ignore_index is None else ignore_index,
            ignore_index is not None,
            reduction,
        )
    return apply_loss(
        _sigmoid_focal_loss, layout, input, target, ignored, grad_scale, options, reduction
    )


def _sigmoid_target_kind(input: Tensor, target: Tensor) -> bool:
    """True for class indices, False for float labels; raises on anything else."""
    if target.shape == input.shape:
        if not target.is_floating_point():
            raise TypeError(
                f"target: labels of the input's shape {tuple(input.shape)} must be floating "
                f"point (binary or soft labels in [0, 1]), got dtype {target.dtype} (convert "
                f"with target.float(); class indices have shape input.shape without dim 1)"
            )
        return False
    if input.dim() >= 2 and target.shape == input.shape[:1] + input.shape[2:]:
        if not V.is_integer_tensor(target):
            raise TypeError(
                f"target: class indices of shape {tuple(target.shape)} must have an integer "
                f"dtype, got dtype {target.dtype}"
            )
        return True
    index_shape = tuple(input.shape[:1] + input.shape[2:]) if input.dim() >= 2 else None
    also = f" or class indices of shape {index_shape}" if index_shape is not None else ""
    raise ValueError(
        f"target: expected labels of shape {tuple(input.shape)}{also} for input of shape "
        f"{tuple(input.shape)}, got shape {tuple(target.shape)}"
    )


def _sigmoid_alpha(
    alpha: float | Sequence[float] | Tensor | None, input: Tensor, dtype: torch.dtype
) -> Tensor | float | None:
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        alpha = float(alpha)
        if alpha < 0:  # torchvision's convention: a negative alpha disables the factor
            return None
        return V.check_unit_interval("alpha", alpha)
    if input.dim() < 2:
        raise ValueError(
            f"alpha: per-class factors need (N, C, ...) logits, got input of shape "
            f"{tuple(input.shape)}; pass a single number"
        )
    vector = V.class_vector("alpha", alpha, input.shape[1], input, dtype)
    if V.reads_values(vector) and bool((vector > 1).any()):
        raise ValueError(f"alpha: per-class factors must lie in [0, 1], got {vector.max().item()}")
    return vector.view((1, -1) + (1,) * (input.dim() - 2))


def _sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    ignored: Tensor | None,
    grad_scale: Tensor | None,
    options: SigmoidOptions,
    reduction: str,
    *,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    loss, grad = sigmoid_focal_forward(
        input,
        target,
        ignored,
        grad_scale,
        options,
        elementwise=reduction == "none",
        need_grad=need_grad,
    )
    return _finish(loss, grad, grad_scale, reduction, input)


def _sigmoid_focal_loss_triton(
    input: Tensor,
    target: Tensor,
    grad_scale: Tensor | None,
    options: SigmoidOptions,
    ignore_index: int,
    has_ignore: bool,
    reduction: str,
    *,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    alpha = options.alpha
    alpha_vector = alpha.reshape(-1) if isinstance(alpha, Tensor) else None
    alpha_mode = 0 if alpha is None else (2 if alpha_vector is not None else 1)
    loss, grad = torch.ops.focalloss.sigmoid_focal_fwd(
        input,
        target,
        options.weight,
        options.pos_weight,
        alpha_vector,
        grad_scale,
        options.gamma,
        alpha if isinstance(alpha, float) else 0.0,
        alpha_mode,
        ignore_index,
        has_ignore,
        options.detach_modulator,
        reduction == "none",
        need_grad,
    )
    return _finish(loss, grad if need_grad else None, grad_scale, reduction, input)


# The kernels' gradients are scaled in backward by a kernel that skips grad_output == 1 without
# a host synchronisation (see focalloss._autograd).
_softmax_focal_loss_triton.scale_in_kernel = True  # type: ignore[attr-defined]
_sigmoid_focal_loss_triton.scale_in_kernel = True  # type: ignore[attr-defined]


# Differentiable composites with each compute function's arguments, for double backward and
# torch.func transforms (see focalloss._autograd).
def _softmax_triton_composite(
    input: Tensor,
    target: Tensor,
    class_coef: Tensor | None,
    grad_scale: Tensor | None,
    gamma: float,
    label_smoothing: float,
    ignore_index: int,
    has_ignore: bool,
    detach_modulator: bool,
    reduction: str,
) -> Tensor:
    target = target.long()
    ignored = target == ignore_index if has_ignore else None
    if ignored is not None:
        target = target.masked_fill(ignored, 0)
    return softmax_focal_composite(
        input, target, class_coef, ignored, grad_scale, gamma, label_smoothing,
        detach_modulator, reduction,
    )  # fmt: skip


def _sigmoid_triton_composite(
    input: Tensor,
    target: Tensor,
    grad_scale: Tensor | None,
    options: SigmoidOptions,
    ignore_index: int,
    has_ignore: bool,
    reduction: str,
) -> Tensor:
    ignored = None
    if not target.is_floating_point():
        target = target.long()
        if has_ignore:
            ignored = target == ignore_index
            target = target.masked_fill(ignored, input.shape[1])
    return sigmoid_focal_composite(input, target, ignored, grad_scale, options, reduction)


_softmax_focal_loss.composite = softmax_focal_composite  # type: ignore[attr-defined]
_sigmoid_focal_loss.composite = sigmoid_focal_composite  # type: ignore[attr-defined]
_softmax_focal_loss_triton.composite = _softmax_triton_composite  # type: ignore[attr-defined]
_sigmoid_focal_loss_triton.composite = _sigmoid_triton_composite  # type: ignore[attr-defined]
