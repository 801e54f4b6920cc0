"""Property-based checks (Hypothesis) of both losses, shared by the two backends' test files.

``tests/test_properties.py`` runs them on the PyTorch backend, ``tests/triton_interp/
test_properties.py`` on the Triton kernels (CUDA, or Triton's interpreter on the CPU). Each
property compares the library with itself under a transformation the math says is neutral, or
with ``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits`` where they must agree. All in
float64, so the tolerances are tight. A profile with ``derandomize=True`` makes CI repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import Tensor

from focalloss import focal_loss, sigmoid_focal_loss

settings.register_profile(
    "focalloss", derandomize=True, max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip
# Triton's interpreter runs a kernel launch in tens of milliseconds: fewer examples there.
settings.register_profile("focalloss-interpreter", parent=settings.get_profile("focalloss"),
                          max_examples=20)  # fmt: skip

IGNORE = 255  # softmax ignore_index
SIG_IGNORE = -1  # sigmoid ignore_index
TIGHT = dict(rtol=1e-9, atol=1e-12)
GRAD = dict(rtol=1e-7, atol=1e-11)
# Values an ignored position may hold (padding, masked-out crops): they must not matter.
GARBAGE = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 3.0])


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftmaxCase:
    x: Tensor  # (N, C, *) float64
    t: Tensor  # (N, *) int64, IGNORE marks ignored positions
    weight: Tensor  # (C,) > 0
    alpha: Tensor | None  # (C,) in [0, 1]
    gamma: float
    eps: float  # label smoothing

    def kwargs(self, **extra) -> dict:
        return dict(
            gamma=self.gamma, weight=self.weight, alpha=self.alpha, ignore_index=IGNORE,
            label_smoothing=self.eps, **extra,
        )  # fmt: skip

    def to(self, device: str) -> SoftmaxCase:
        alpha = None if self.alpha is None else self.alpha.to(device)
        return replace(self, x=self.x.to(device), t=self.t.to(device),
                       weight=self.weight.to(device), alpha=alpha)  # fmt: skip


@st.composite
def softmax_cases(draw, max_classes: int = 6) -> SoftmaxCase:
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, max_classes))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = 4 * torch.randn((n, c, *spatial), generator=g, dtype=torch.float64)
    t = torch.randint(0, c, (n, *spatial), generator=g)
    t[torch.rand(t.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = IGNORE
    weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    alpha = torch.rand(c, generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    gamma = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]))
    eps = draw(st.sampled_from([0.0, 0.1]))
    return SoftmaxCase(x, t, weight, alpha, gamma, eps)


@dataclass(frozen=True)
class SigmoidCase:
    x: Tensor  # (N, C, *) float64
    t: Tensor  # float (N, C, *) in [0, 1], or int64 (N, *) in [0, C] with SIG_IGNORE
    weight: Tensor | None  # (C, 1, ..., 1): per class, broadcast
    pos_weight: Tensor | None  # (C, 1, ..., 1)
    alpha: Tensor | float | None
    gamma: float

    @property
    def index(self) -> bool:
        return not self.t.is_floating_point()

    def kwargs(self, **extra) -> dict:
        kw = dict(gamma=self.gamma, alpha=self.alpha, weight=self.weight,
                  pos_weight=self.pos_weight, **extra)  # fmt: skip
        if self.index:
            kw["ignore_index"] = SIG_IGNORE
        return kw

    def to(self, device: str) -> SigmoidCase:
        def move(v):
            return v.to(device) if isinstance(v, Tensor) else v

        return replace(self, x=move(self.x), t=move(self.t), weight=move(self.weight),
                       pos_weight=move(self.pos_weight), alpha=move(self.alpha))  # fmt: skip


@st.composite
def sigmoid_cases(draw, index: bool | None = None) -> SigmoidCase:
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=1)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = 5 * torch.randn((n, c, *spatial), generator=g, dtype=torch.float64)
    index = draw(st.booleans()) if index is None else index
    if index:
        t = torch.randint(0, c + 1, (n, *spatial), generator=g)
        t[torch.rand(t.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = SIG_IGNORE
    else:
        t = torch.rand(x.shape, generator=g, dtype=torch.float64)
        if draw(st.booleans()):
            t = t.round()  # hard labels
    per_class = (c,) + (1,) * len(spatial)
    weight = pos_weight = None
    if draw(st.booleans()):
        weight = torch.rand(per_class, generator=g, dtype=torch.float64) + 0.1
    if draw(st.booleans()):
        pos_weight = 3 * torch.rand(per_class, generator=g, dtype=torch.float64) + 0.1
    alpha_kind = draw(st.sampled_from(["none", "scalar", "class"]))
    alpha = {"none": None, "scalar": 0.25,
             "class": torch.rand(c, generator=g, dtype=torch.float64)}[alpha_kind]  # fmt: skip
    gamma = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]))
    return SigmoidCase(x, t, weight, pos_weight, alpha, gamma)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def loss_and_grad(fn, x: Tensor, t: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
    """The loss and d(sum(go * loss))/dx, with a fixed random ``go`` for reduction="none"."""
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, t, **kwargs)
    go = torch.ones_like(loss)
    if loss.dim():
        g = torch.Generator().manual_seed(1234)
        go = torch.randn(loss.shape, generator=g, dtype=loss.dtype).to(loss.device)
    (grad,) = torch.autograd.grad(loss, leaf, go)
    return loss.detach(), grad


def _positions_last(x: Tensor) -> Tensor:
    """(N, C, *) -> (N * prod(*), C)."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _softmax_divisor(case: SoftmaxCase) -> Tensor:
    """The "mean" divisor of F.cross_entropy: sum of weight[target] over non-ignored positions."""
    valid = case.t != IGNORE
    return case.weight[case.t[valid]].sum()


def _with_garbage(x: Tensor, ignored: Tensor, seed: int) -> Tensor:
    """``x`` with every logit of the ignored positions (``ignored``: (N, *)) replaced."""
    g = torch.Generator().manual_seed(seed)
    junk = GARBAGE[torch.randint(0, len(GARBAGE), x.shape, generator=g)].to(x)
    return torch.where(ignored.unsqueeze(1), junk, x)


def _class_permutation(c: int, seed: int) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    return perm, torch.argsort(perm)


# --------------------------------------------------------------------------------------------
# Softmax focal loss
# --------------------------------------------------------------------------------------------


def softmax_gamma0_equals_cross_entropy(case: SoftmaxCase, backend: str) -> None:
    """gamma = 0, alpha = None is F.cross_entropy (values and gradients); the documented
    exception: "mean" over an all-ignored batch is 0 here, NaN (0/0) there."""
    kw = dict(weight=case.weight, ignore_index=IGNORE, label_smoothing=case.eps)
    for reduction in ("none", "sum", "mean"):
        ours = loss_and_grad(focal_loss, case.x, case.t, gamma=0.0, reduction=reduction,
                             backend=backend, **kw)  # fmt: skip
        ref = loss_and_grad(F.cross_entropy, case.x, case.t, reduction=reduction, **kw)
        if reduction == "mean" and not bool((case.t != IGNORE).any()):
            assert ours[0].item() == 0.0 and bool(ref[0].isnan())
            assert not bool(ours[1].any())
            continue
        torch.testing.assert_close(ours[0], ref[0], **TIGHT)
        torch.testing.assert_close(ours[1], ref[1], **GRAD)


def softmax_finite_nonnegative_monotone_shift_invariant(
    case: SoftmaxCase, shift: float, backend: str
) -> None:
    kw = case.kwargs(reduction="none", backend=backend)
    loss, grad = loss_and_grad(focal_loss, case.x, case.t, **kw)
    assert bool(torch.isfinite(loss).all()) and bool((loss >= 0).all())
    assert bool(torch.isfinite(grad).all())
    higher = focal_loss(case.x, case.t, **{**kw, "gamma": case.gamma + 1.0})
    assert bool((higher <= loss + 1e-12).all())
    shifted, shifted_grad = loss_and_grad(focal_loss, case.x + shift, case.t, **kw)
    torch.testing.assert_close(shifted, loss, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(shifted_grad, grad, rtol=1e-6, atol=1e-9)


def softmax_ignored_positions_do_not_matter(case: SoftmaxCase, seed: int, backend: str) -> None:
    """Any logits at ignored positions (NaN and inf included) change neither the loss nor the
    other positions' gradients; their own gradient is exactly 0. Deleting them leaves "sum"
    and "mean" unchanged."""

    def deleted(kept: Tensor, kw: dict) -> Tensor:
        return focal_loss(_positions_last(case.x)[kept], case.t.reshape(-1)[kept], **kw)

    _garbage_at_ignored_positions(
        focal_loss, case, case.t == IGNORE, seed, backend, deleted
    )  # fmt: skip


def _garbage_at_ignored_positions(fn, case, ignored: Tensor, seed: int, backend: str, deleted):
    """The shared body of the ignored-position properties; ``deleted(kept, kwargs)`` is the
    loss of the same case with the ignored positions removed."""
    dirty_x = _with_garbage(case.x, ignored, seed)
    for reduction in ("none", "sum", "mean"):
        kw = case.kwargs(reduction=reduction, backend=backend)
        clean, clean_grad = loss_and_grad(fn, case.x, case.t, **kw)
        dirty, dirty_grad = loss_and_grad(fn, dirty_x, case.t, **kw)
        torch.testing.assert_close(dirty, clean, **TIGHT)
        mask = ignored.unsqueeze(1).expand_as(dirty_grad)
        assert bool((dirty_grad[mask] == 0).all()), "ignored positions must get a zero gradient"
        torch.testing.assert_close(dirty_grad[~mask], clean_grad[~mask], **GRAD)
        if reduction != "none":
            torch.testing.assert_close(deleted(~ignored.reshape(-1), kw), clean, **TIGHT)


def softmax_weight_scaling(case: SoftmaxCase, c: float, backend: str) -> None:
    """weight * c: "mean" unchanged (weights enter its divisor), "sum" and "none" times c."""
    for reduction in ("none", "sum", "mean"):
        kw = case.kwargs(reduction=reduction, backend=backend)
        base = focal_loss(case.x, case.t, **kw)
        scaled = focal_loss(case.x, case.t, **{**kw, "weight": c * case.weight})
        factor = 1.0 if reduction == "mean" else c
        torch.testing.assert_close(scaled, factor * base, **TIGHT)


def softmax_batch_split(case: SoftmaxCase, backend: str) -> None:
    """sum(A + B) = sum(A) + sum(B); mean(A + B) = (sum(A) + sum(B)) / (div(A) + div(B)), with
    div the sum of weight[target] over non-ignored positions (as F.cross_entropy)."""
    k = case.x.shape[0] // 2
    a = replace(case, x=case.x[:k], t=case.t[:k])
    b = replace(case, x=case.x[k:], t=case.t[k:])
    kw = case.kwargs(backend=backend)
    total = focal_loss(case.x, case.t, reduction="sum", **kw)
    parts = [focal_loss(p.x, p.t, reduction="sum", **kw) for p in (a, b)]
    torch.testing.assert_close(total, parts[0] + parts[1], **TIGHT)
    divisor = _softmax_divisor(a) + _softmax_divisor(b)
    mean = focal_loss(case.x, case.t, reduction="mean", **kw)
    expected = (parts[0] + parts[1]) / divisor if divisor > 0 else torch.zeros_like(mean)
    torch.testing.assert_close(mean, expected, **TIGHT)


def softmax_permutations(case: SoftmaxCase, backend: str) -> None:
    """Permuting the batch, or the classes together with weight, alpha and targets."""
    kw = case.kwargs(reduction="sum", backend=backend)
    whole, grad = loss_and_grad(focal_loss, case.x, case.t, **kw)
    perm = torch.randperm(case.x.shape[0], generator=torch.Generator().manual_seed(0))
    permuted, permuted_grad = loss_and_grad(focal_loss, case.x[perm], case.t[perm], **kw)
    torch.testing.assert_close(permuted, whole, **TIGHT)
    torch.testing.assert_close(permuted_grad, grad[perm], **GRAD)
    classes, inverse = _class_permutation(case.x.shape[1], 1)
    relabel = inverse.to(case.t.device)[case.t.clamp(max=case.x.shape[1] - 1)]
    t = torch.where(case.t == IGNORE, case.t, relabel)
    alpha = None if case.alpha is None else case.alpha[classes]
    permuted, permuted_grad = loss_and_grad(
        focal_loss, case.x[:, classes], t, **{**kw, "weight": case.weight[classes], "alpha": alpha}
    )
    torch.testing.assert_close(permuted, whole, **TIGHT)
    torch.testing.assert_close(permuted_grad, grad[:, classes], **GRAD)


def two_class_softmax_equals_sigmoid(
    n: int, seed: int, gamma: float, a: float, backend: str, device: str
) -> None:
    """Softmax over logits (z0, z1) is sigmoid(z1 - z0): the two-class focal loss with
    alpha = (1 - a, a) equals the sigmoid focal loss of z1 - z0 with alpha = a; the gradient
    with respect to z1 is the sigmoid one, with respect to z0 its negative."""
    g = torch.Generator().manual_seed(seed)
    z = (5 * torch.randn(n, 2, 3, generator=g, dtype=torch.float64)).to(device)
    t = torch.randint(0, 2, (n, 3), generator=g).to(device)
    kw = dict(gamma=gamma, reduction="none", backend=backend)
    alpha = torch.tensor([1 - a, a], dtype=torch.float64, device=device)
    soft, soft_grad = loss_and_grad(focal_loss, z, t, alpha=alpha, **kw)
    sig, sig_grad = loss_and_grad(sigmoid_focal_loss, z[:, 1] - z[:, 0], t.double(), alpha=a, **kw)
    torch.testing.assert_close(soft, sig, **TIGHT)
    torch.testing.assert_close(soft_grad[:, 1], sig_grad, **GRAD)
    torch.testing.assert_close(soft_grad[:, 0], -sig_grad, **GRAD)


# --------------------------------------------------------------------------------------------
# Sigmoid focal loss
# --------------------------------------------------------------------------------------------


def _dense_sigmoid_target(case: SigmoidCase) -> tuple[Tensor, Tensor]:
    """(float labels of the input's shape, elementwise keep mask): index targets one-hot with
    C as background, ignored positions marked in the mask."""
    if not case.index:
        return case.t, torch.ones_like(case.x, dtype=torch.bool)
    c = case.x.shape[1]
    keep = (case.t != SIG_IGNORE).unsqueeze(1).expand_as(case.x)
    safe = case.t.clamp(min=0)
    if c == 1:  # one output: an integer target is a binary mask (1 positive, 0 negative)
        return (safe == 1).unsqueeze(1).to(case.x.dtype), keep
    labels = F.one_hot(safe, c + 1)[..., :c].movedim(-1, 1).to(case.x.dtype)
    return labels, keep


def sigmoid_gamma0_equals_bce(case: SigmoidCase, backend: str) -> None:
    """gamma = 0, alpha = None is BCE-with-logits (same weight and pos_weight), values and
    gradients; index targets equal their one-hot labels with ignored positions removed."""
    case = replace(case, gamma=0.0, alpha=None)
    labels, keep = _dense_sigmoid_target(case)
    bce_kw = dict(weight=case.weight, pos_weight=case.pos_weight)
    for reduction in ("none", "sum", "mean"):
        ours, grad = loss_and_grad(sigmoid_focal_loss, case.x, case.t,
                                   **case.kwargs(reduction=reduction, backend=backend))  # fmt: skip
        ref, ref_grad = loss_and_grad(
            F.binary_cross_entropy_with_logits, case.x, labels, reduction="none", **bce_kw
        )
        ref_grad = torch.where(keep, ref_grad, 0.0)
        if reduction == "none":
            torch.testing.assert_close(ours, torch.where(keep, ref, 0.0), **TIGHT)
        else:
            # Elementwise references from the unreduced BCE: sum, and mean over kept elements.
            leaf = case.x.clone().requires_grad_()
            elementwise = F.binary_cross_entropy_with_logits(leaf, labels, reduction="none",
                                                             **bce_kw)  # fmt: skip
            kept = elementwise[keep].sum()
            count = int(keep.sum())
            ref = kept if reduction == "sum" else (kept / count if count else kept * 0)
            (ref_grad,) = torch.autograd.grad(ref, leaf)
            torch.testing.assert_close(ours, ref.detach(), **TIGHT)
        torch.testing.assert_close(grad, ref_grad, **GRAD)


def sigmoid_finite_nonnegative_monotone(case: SigmoidCase, backend: str) -> None:
    kw = case.kwargs(reduction="none", backend=backend)
    loss, grad = loss_and_grad(sigmoid_focal_loss, case.x, case.t, **kw)
    assert bool(torch.isfinite(loss).all()) and bool((loss >= 0).all())
    assert bool(torch.isfinite(grad).all())
    higher = sigmoid_focal_loss(case.x, case.t, **{**kw, "gamma": case.gamma + 1.0})
    assert bool((higher <= loss + 1e-12).all())


def sigmoid_ignored_positions_do_not_matter(case: SigmoidCase, seed: int, backend: str) -> None:
    """Index targets: garbage logits at ignored positions change nothing, their gradient is 0;
    deleting those positions leaves "sum" and "mean" unchanged."""

    def deleted(kept: Tensor, kw: dict) -> Tensor:
        weight, pos_weight = (
            None if v is None else _positions_last(v.expand_as(case.x))[kept]
            for v in (case.weight, case.pos_weight)
        )
        return sigmoid_focal_loss(
            _positions_last(case.x)[kept], case.t.reshape(-1)[kept],
            **{**kw, "weight": weight, "pos_weight": pos_weight},
        )  # fmt: skip

    _garbage_at_ignored_positions(
        sigmoid_focal_loss, case, case.t == SIG_IGNORE, seed, backend, deleted
    )  # fmt: skip


def sigmoid_weight_scaling(case: SigmoidCase, c: float, backend: str) -> None:
    """weight * c scales every reduction by c: "mean" divides by the element count, as
    BCE-with-logits does (unlike the softmax loss, whose "mean" divides by the weights)."""
    weight = case.weight if case.weight is not None else torch.ones_like(case.x[:1])
    for reduction in ("none", "sum", "mean"):
        kw = case.kwargs(reduction=reduction, backend=backend)
        base = sigmoid_focal_loss(case.x, case.t, **{**kw, "weight": weight})
        scaled = sigmoid_focal_loss(case.x, case.t, **{**kw, "weight": c * weight})
        torch.testing.assert_close(scaled, c * base, **TIGHT)


def sigmoid_batch_split_and_permutations(case: SigmoidCase, backend: str) -> None:
    """sum(A + B) = sum(A) + sum(B), "mean" = total / kept elements; permuting the batch, or
    the classes with weight, pos_weight, alpha and (index) targets, changes nothing."""
    kw = case.kwargs(reduction="sum", backend=backend)
    k = case.x.shape[0] // 2
    whole, grad = loss_and_grad(sigmoid_focal_loss, case.x, case.t, **kw)
    parts = sigmoid_focal_loss(case.x[:k], case.t[:k], **kw) + sigmoid_focal_loss(
        case.x[k:], case.t[k:], **kw
    )
    torch.testing.assert_close(whole, parts, **TIGHT)
    _, keep = _dense_sigmoid_target(case)
    count = int(keep.sum())
    mean = sigmoid_focal_loss(case.x, case.t, **{**kw, "reduction": "mean"})
    torch.testing.assert_close(mean, whole / count if count else whole * 0, **TIGHT)

    perm = torch.randperm(case.x.shape[0], generator=torch.Generator().manual_seed(0))
    permuted, permuted_grad = loss_and_grad(sigmoid_focal_loss, case.x[perm], case.t[perm], **kw)
    torch.testing.assert_close(permuted, whole, **TIGHT)
    torch.testing.assert_close(permuted_grad, grad[perm], **GRAD)

    c = case.x.shape[1]
    classes, inverse = _class_permutation(c, 1)
    if case.index:  # class c -> inverse[c]; background C and ignored stay
        lookup = torch.cat([inverse, torch.tensor([c])]).to(case.t.device)
        t = torch.where(case.t == SIG_IGNORE, case.t, lookup[case.t.clamp(min=0)])
    else:
        t = case.t[:, classes]
    alpha = case.alpha[classes] if isinstance(case.alpha, Tensor) else case.alpha
    permuted, permuted_grad = loss_and_grad(
        sigmoid_focal_loss, case.x[:, classes], t,
        **{**kw, "alpha": alpha,
           "weight": None if case.weight is None else case.weight[classes],
           "pos_weight": None if case.pos_weight is None else case.pos_weight[classes]},
    )  # fmt: skip
    torch.testing.assert_close(permuted, whole, **TIGHT)
    torch.testing.assert_close(permuted_grad, grad[:, classes], **GRAD)


def sigmoid_symmetry(case: SigmoidCase, backend: str) -> None:
    """Swapping positives and negatives: (x, t, alpha) and (-x, 1 - t, 1 - alpha) give the same
    loss and opposite gradients (float targets, no pos_weight)."""
    case = replace(case, pos_weight=None)
    if case.index:
        labels, _ = _dense_sigmoid_target(case)
        case = replace(case, t=labels)
    alpha = case.alpha
    flipped = None if alpha is None else 1 - alpha
    kw = case.kwargs(reduction="none", backend=backend)
    a, a_grad = loss_and_grad(sigmoid_focal_loss, case.x, case.t, **kw)
    b, b_grad = loss_and_grad(sigmoid_focal_loss, -case.x, 1 - case.t, **{**kw, "alpha": flipped})
    torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(a_grad, -b_grad, **GRAD)
