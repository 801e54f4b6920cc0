"""Public loss functions. Each reads as: prepare a spec (validation), run it, return the loss.

The math lives in the backends (``focalloss._torch``, ``focalloss._triton``); the engine
(``focalloss._engine``) connects them to autograd. See ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ._engine import BackendName, Reduction, run
from ._spec import sigmoid as _sigmoid
from ._spec import softmax as _softmax
from .schedules import GammaSchedule

__all__ = ["focal_loss", "sigmoid_focal_loss"]


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float | GammaSchedule = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    weight: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    detach_modulator: bool = False,
    backend: BackendName = "auto",
    sync_normalizer: bool = False,
    poly1_epsilon: float = 0.0,
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

    Poly-1 (Leng et al. 2022), ``e = poly1_epsilon``: each position gains

    .. math::

        v_i\, e\, W_i\, (1 - P_i)^{\gamma + 1},\qquad
        1 - P_i = \sum_c q_{ic} (1 - p_{ic}),

    i.e. ``P_i = sum_c q_ic p_ic`` (``p_t`` for hard targets) whenever ``q_i`` sums to 1, as it
    does for class indices; ``W_i = w_{target_i}`` for class indices (smoothed or not) and
    ``sum_c w_c target_ic`` for probabilities (1 without ``weight``), as ``F.cross_entropy``
    weights a position, and not ``alpha`` (as in the paper's listing). ``"mean"`` keeps its
    divisor, so with ``weight`` it stays a weighted mean; ignored positions get 0. With
    ``gamma = 0`` this is Poly-1 cross-entropy, ``CE + e (1 - p_t)``.

    ``gamma`` may be a :class:`~focalloss.GammaSchedule` (e.g. ``GammaSchedule.flsd53()``,
    Mukhoti et al. 2020): each position then uses the schedule's value at its detached
    ``P_i`` (the same ``p_t`` as Poly-1's) in every class's ``(1 - p_ic)^gamma`` and in the
    Poly-1 term. Within a piece the gradient is the constant-``gamma`` one.

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
        gamma: focusing parameter ``>= 0``, or a :class:`~focalloss.GammaSchedule` (gamma
            per position from its detached ``p_t``). Default: 2.
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
        poly1_epsilon: the Poly-1 coefficient ``e``, any finite number (the paper uses 1 for
            classification, and -1 on some detection tasks). Default: 0 (no Poly-1 term).

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
        >>> p_t = torch.softmax(logits, 1)[[0, 1], [0, 2]]  # Poly-1 CE = CE + e (1 - p_t)
        >>> poly = focal_loss(logits, target, gamma=0.0, poly1_epsilon=1.0)
        >>> torch.allclose(poly, F.cross_entropy(logits, target) + (1 - p_t).mean())
        True
    """
    spec = _softmax.prepare(
        input,
        target,
        gamma=gamma,
        alpha=alpha,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        detach_modulator=detach_modulator,
        backend=backend,
        sync_normalizer=sync_normalizer,
        poly1_epsilon=poly1_epsilon,
    )
    return run(spec, backend)


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float | GammaSchedule = 2.0,
    alpha: float | Sequence[float] | Tensor | None = 0.25,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    ignore_index: int | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    detach_modulator: bool = False,
    backend: BackendName = "auto",
    sync_normalizer: bool = False,
    poly1_epsilon: float = 0.0,
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

    Poly-1 (Leng et al. 2022), ``e = poly1_epsilon``: each element gains
    ``e * w * (1 - p_t)^(gamma + 1)``, multiplied by ``weight`` but not by ``alpha`` (as in the
    paper's listing) nor ``pos_weight``; ``"mean"`` keeps its divisor; ignored positions get 0.
    ``gamma`` may be a :class:`~focalloss.GammaSchedule`: each element uses the schedule's
    value at its detached ``p_t`` (within a piece the gradient is the constant-``gamma`` one).

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
        gamma: focusing parameter ``>= 0``, or a :class:`~focalloss.GammaSchedule` (gamma per
            element from its detached ``p_t``). Default: 2.
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
        poly1_epsilon: the Poly-1 coefficient ``e``, any finite number. Default: 0.

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
    spec = _sigmoid.prepare(
        input,
        target,
        gamma=gamma,
        alpha=alpha,
        weight=weight,
        pos_weight=pos_weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
        detach_modulator=detach_modulator,
        backend=backend,
        sync_normalizer=sync_normalizer,
        poly1_epsilon=poly1_epsilon,
    )
    return run(spec, backend)


from .classification import asymmetric_loss, focal_tversky_loss, sigmoid_focal_loss_star  # noqa: E402,F401
from .detection import dfl_decode, distribution_focal_loss, quality_focal_loss, varifocal_loss  # noqa: E402,F401
