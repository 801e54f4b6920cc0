# ruff: noqa: E501
"""varifocal_loss, quality_focal_loss, distribution_focal_loss and dfl_decode.

Against float64 re-statements of the published formulas written here (VarifocalNet's VFL, GFL's
QFL and DFL, as mmdet computes them, including mmdet's reduction with ``avg_factor``), against
F.binary_cross_entropy_with_logits and F.cross_entropy where they must agree, and against the
library itself under transformations the math says are neutral (hypothesis properties, which
``tests/triton_interp/test_detection_kernels.py`` also runs on the Triton kernels).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import focalloss
from focalloss import (
    DistributionFocalLoss,
    QualityFocalLoss,
    VarifocalLoss,
    dfl_decode,
    distribution_focal_loss,
    quality_focal_loss,
    varifocal_loss,
)

MMDET_EPS = torch.finfo(torch.float32).eps  # what mmdet adds to avg_factor
TIGHT = dict(rtol=1e-10, atol=1e-13)
GRAD = dict(rtol=1e-8, atol=1e-12)

# --------------------------------------------------------------------------------------------
# Float64 re-statements of the published formulas (plain autograd, no library code)
# --------------------------------------------------------------------------------------------


def vfl_ref(x: Tensor, q: Tensor, alpha=0.75, gamma=2.0, iou_weighted=True) -> Tensor:
    """Zhang et al. 2021, eq. 2 (mmdet's varifocal_loss): elementwise, modulator differentiated.

    focal_weight = q [q > 0] + alpha |p - q|^gamma [q <= 0] (or [q > 0] for the first term when
    not iou_weighted); loss = BCE(x, q) * focal_weight.
    """
    x, q = x.double(), q.double()
    p = torch.sigmoid(x)
    pos, neg = (q > 0).double(), (q <= 0).double()
    first = q * pos if iou_weighted else pos
    focal_weight = first + alpha * (p - q).abs().pow(gamma) * neg
    return F.binary_cross_entropy_with_logits(x, q, reduction="none") * focal_weight


def qfl_ref(x: Tensor, y: Tensor, beta=2.0) -> Tensor:
    """Li et al. 2020, eq. 5 for every output, summed over classes per position (dense y)."""
    x, y = x.double(), y.double()
    p = torch.sigmoid(x)
    return (
        F.binary_cross_entropy_with_logits(x, y, reduction="none") * (y - p).abs().pow(beta)
    ).sum(1)


def qfl_mmdet_index(x: Tensor, label: Tensor, score: Tensor, beta=2.0) -> Tensor:
    """mmdet's quality_focal_loss for (N, C) logits and (label, score) targets, restated: every
    output as a negative, then the labelled outputs (0 <= label < C) replaced."""
    x, score = x.double(), score.double()
    num_classes = x.shape[1]
    p = torch.sigmoid(x)
    loss = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    loss = loss * p.pow(beta)
    pos = ((label >= 0) & (label < num_classes)).nonzero().squeeze(1)
    cls = label[pos]
    factor = score[pos] - p[pos, cls]
    loss = loss.index_put(
        (pos, cls),
        F.binary_cross_entropy_with_logits(x[pos, cls], score[pos], reduction="none")
        * factor.abs().pow(beta),
    )
    return loss.sum(1)


def dfl_ref(x: Tensor, y: Tensor) -> Tensor:
    """Li et al. 2020, eq. 6 on (M, n + 1) logits: CE(x, l)(l + 1 - y) + CE(x, l + 1)(y - l);
    for y == n the loss is CE(x, n)."""
    x, y = x.double(), y.double()
    n = x.shape[1] - 1
    at_end = y == n
    left = torch.where(at_end, n - 1, y.floor()).long()
    right = left + 1
    loss = F.cross_entropy(x, left, reduction="none") * (right.double() - y) + F.cross_entropy(
        x, right, reduction="none"
    ) * (y - left.double())
    return torch.where(at_end, F.cross_entropy(x, torch.full_like(left, n), reduction="none"), loss)


def mmdet_reduce(loss: Tensor, reduction: str, avg_factor: float | None = None) -> Tensor:
    """mmdet's weight_reduce_loss (no weight): mean over every entry, or sum / (avg_factor + eps)."""
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    assert reduction == "mean"
    return loss.sum() / (avg_factor + MMDET_EPS)


def dense_from_index(target: Tensor, score: Tensor, num_classes: int) -> Tensor:
    """(N, *) indices in [0, C] (C: background) and scores -> (N, C, *) float64 scores."""
    onehot = F.one_hot(target.clamp(min=0), num_classes + 1)[..., :num_classes].movedim(-1, 1)
    return onehot.double() * score.double().unsqueeze(1)


def grad_of(loss: Tensor, x: Tensor, go: Tensor | None = None) -> Tensor:
    (g,) = torch.autograd.grad(loss, x, go, retain_graph=True)
    return g


def logits(shape, seed=0, scale=3.0, dtype=torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()


def index_case(shape, seed=1, ignore=None, frac=0.25):
    """(class indices with C = background (and ``ignore``), scores in [0, 1]) for ``shape``."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    tshape = shape[:1] + shape[2:]
    t = torch.randint(0, c + 1, tshape, generator=g)
    if ignore is not None:
        t[torch.rand(tshape, generator=g) < frac] = ignore
    s = torch.rand(tshape, generator=g, dtype=torch.float64)
    return t, s


def dense_case(shape, seed=2, frac=0.3):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(shape, generator=g, dtype=torch.float64)
    q = q * (torch.rand(shape, generator=g) < frac)
    q.view(-1)[:2] = torch.tensor([1.0, 0.0], dtype=torch.float64)  # a hard 1 and a hard 0
    return q


def dfl_case(m=40, bins=17, seed=3):
    g = torch.Generator().manual_seed(seed)
    n = bins - 1
    y = torch.rand(m, generator=g, dtype=torch.float64) * n
    y[:4] = torch.tensor([0.0, min(3.0, n), n - 1e-9, n], dtype=torch.float64)  # integers, n
    return logits((m, bins), seed=seed + 1), y


# --------------------------------------------------------------------------------------------
# Values and gradients against the published formulas
# --------------------------------------------------------------------------------------------

SHAPES = [(7, 4), (3, 5, 6), (2, 3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.75, 0.25, 1.5])
@pytest.mark.parametrize("iou_weighted", [True, False])
def test_varifocal_equals_the_paper_formula(shape, gamma, alpha, iou_weighted):
    x = logits(shape)
    q = dense_case(shape)
    kw = dict(alpha=alpha, gamma=gamma, iou_weighted=iou_weighted)
    ours = varifocal_loss(x, q, reduction="none", **kw)
    ref = vfl_ref(x, q, **kw)
    torch.testing.assert_close(ours, ref, **TIGHT)
    go = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(grad_of(ours, x, go), grad_of(ref, x, go), **GRAD)
    t, s = index_case(shape, ignore=None)
    ours = varifocal_loss(x, t, s, reduction="none", **kw)
    ref = vfl_ref(x, dense_from_index(t, s, shape[1]), **kw)
    torch.testing.assert_close(ours, ref, **TIGHT)
    torch.testing.assert_close(grad_of(ours, x, go), grad_of(ref, x, go), **GRAD)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_quality_focal_equals_the_paper_formula(shape, beta):
    x = logits(shape, seed=5)
    q = dense_case(shape, seed=6, frac=0.5)
    ours = quality_focal_loss(x, q, beta=beta, reduction="none")
    ref = qfl_ref(x, q, beta)
    assert ours.shape == shape[:1] + shape[2:]
    torch.testing.assert_close(ours, ref, **TIGHT)
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(grad_of(ours, x, go), grad_of(ref, x, go), **GRAD)
    t, s = index_case(shape, seed=8)
    ours = quality_focal_loss(x, t, s, beta=beta, reduction="none")
    ref = qfl_ref(x, dense_from_index(t, s, shape[1]), beta)
    torch.testing.assert_close(ours, ref, **TIGHT)
    torch.testing.assert_close(grad_of(ours, x, go), grad_of(ref, x, go), **GRAD)


@pytest.mark.parametrize("beta", [0.5, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_quality_focal_equals_mmdet_index_form(beta, reduction):
    x = logits((30, 6), seed=9)
    t, s = index_case((30, 6), seed=10)
    ours = quality_focal_loss(x, t, s, beta=beta, reduction=reduction)
    ref = mmdet_reduce(qfl_mmdet_index(x, t, s, beta), reduction)
    torch.testing.assert_close(ours, ref, **TIGHT)
    go = torch.rand_like(ref)
    torch.testing.assert_close(grad_of(ours, x, go), grad_of(ref, x, go), **GRAD)


@pytest.mark.parametrize("bins", [2, 5, 17])
def test_distribution_focal_equals_the_paper_formula(bins):
    x, y = dfl_case(bins=bins)
    ours = distribution_focal_loss(x, y, reduction="none")
    ref = dfl_ref(x, y)
    torch.testing.assert_close(ours, ref, **TIGHT)
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    torch.testing.assert_close(grad_of(ours, x, go), grad_of(ref, x, go), **GRAD)
    # The closed-form gradient: softmax(x) - (l + 1 - y) e_l - (y - l) e_{l+1}.
    (g,) = torch.autograd.grad(distribution_focal_loss(x, y, reduction="sum"), x)
    left = torch.where(y == bins - 1, bins - 2, y.floor()).long()
    expected = torch.softmax(x.detach(), 1)
    rows = torch.arange(len(y))
    expected[rows, left] -= left + 1 - y
    expected[rows, left + 1] -= y - left
    torch.testing.assert_close(g, expected, **GRAD)


def test_distribution_focal_special_targets():
    x = logits((4, 9), seed=12)
    y = torch.tensor([8.0, 0.0, 5.0, 8.0], dtype=torch.float64)
    ours = distribution_focal_loss(x, y, reduction="none")
    # Integer targets (n included) are one cross-entropy term; no bin beyond n exists.
    torch.testing.assert_close(ours, F.cross_entropy(x, y.long(), reduction="none"), **TIGHT)
    torch.testing.assert_close(
        grad_of(ours.sum(), x), grad_of(F.cross_entropy(x, y.long(), reduction="sum"), x), **GRAD
    )
    # mmdet's formula (which would index bin n + 1 at y == n) agrees just below n.
    below = torch.full((4,), 8.0 - 1e-12, dtype=torch.float64)
    torch.testing.assert_close(
        distribution_focal_loss(x, below, reduction="none"), dfl_ref(x, below)
    )


@pytest.mark.parametrize("shape", [(2, 9, 5), (2, 6, 3, 4)], ids=str)
def test_distribution_focal_spatial_layout(shape):
    x = logits(shape, seed=13)
    g = torch.Generator().manual_seed(14)
    y = torch.rand(shape[:1] + shape[2:], generator=g, dtype=torch.float64) * (shape[1] - 1)
    ours = distribution_focal_loss(x, y, reduction="none")
    rows = x.movedim(1, -1).reshape(-1, shape[1])
    ref = dfl_ref(rows, y.reshape(-1)).reshape(y.shape)
    torch.testing.assert_close(ours, ref, **TIGHT)
    torch.testing.assert_close(grad_of(ours.sum(), x), grad_of(ref.sum(), x), **GRAD)
    # channels_last and a transposed view read as they are
    cl = x.detach().contiguous(memory_format=torch.channels_last) if x.dim() == 4 else None
    if cl is not None:
        torch.testing.assert_close(distribution_focal_loss(cl, y, reduction="none"), ref)


def test_dfl_decode():
    x = logits((6, 17), seed=15).detach()
    expected = (torch.softmax(x, 1) * torch.arange(17, dtype=torch.float64)).sum(1)
    torch.testing.assert_close(dfl_decode(x), expected, **TIGHT)
    x4 = logits((2, 17, 3, 4), seed=16).detach()
    decoded = dfl_decode(x4)
    assert decoded.shape == (2, 3, 4)
    torch.testing.assert_close(decoded, dfl_decode(x4.movedim(1, -1).reshape(-1, 17)).view(2, 3, 4))
    peaked = torch.full((3, 5), -1e4)
    peaked[torch.arange(3), torch.tensor([0, 2, 4])] = 1e4
    assert dfl_decode(peaked).tolist() == [0.0, 2.0, 4.0]
    half = dfl_decode(x.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), expected, rtol=2e-3, atol=2e-3)
    leaf = x.clone().requires_grad_()
    dfl_decode(leaf).sum().backward()  # differentiable
    assert torch.isfinite(leaf.grad).all()
    with pytest.raises(ValueError, match=r"input: expected logits over n \+ 1 >= 2 bins"):
        dfl_decode(torch.zeros(4, 1))
    with pytest.raises(TypeError, match="input: expected floating-point logits"):
        dfl_decode(torch.zeros(4, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# Target forms, reductions, normalizer, ignore_index
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["vfl", "qfl"])
@pytest.mark.parametrize("shape", [(12, 5), (3, 5, 4, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_index_and_score_equal_dense_with_ignored_removed(fn, shape, reduction):
    loss = varifocal_loss if fn == "vfl" else quality_focal_loss
    x = logits(shape, seed=17)
    t, s = index_case(shape, seed=18, ignore=-1, frac=0.3)
    t.view(-1)[:2] = torch.tensor([shape[1], -1])
    s[t == shape[1]] = float("nan")  # not read: background and ignored scores do not matter
    s[t == -1] = 7.0
    ours = loss(x, t, s, ignore_index=-1, reduction=reduction)
    keep = t != -1
    dense = dense_from_index(torch.where(keep, t, shape[1]), torch.nan_to_num(s), shape[1])
    full = loss(x, dense, reduction="none")
    per_position = full if fn == "qfl" else full.sum(1)
    if reduction == "none":
        expected = full * (keep if fn == "qfl" else keep.unsqueeze(1))
    else:
        kept = per_position[keep].sum()
        count = keep.sum() * (shape[1] if fn == "vfl" else 1)
        expected = kept if reduction == "sum" else kept / count
    torch.testing.assert_close(ours, expected, **TIGHT)
    go = torch.rand_like(ours)
    g = grad_of(ours, x, go)
    torch.testing.assert_close(g, grad_of(expected, x, go), **GRAD)
    assert torch.count_nonzero(g.movedim(1, -1)[~keep]) == 0


@pytest.mark.parametrize("fn", ["vfl", "qfl", "dfl"])
def test_normalizer_and_mmdet_avg_factor(fn):
    x = logits((20, 6), seed=19)
    if fn == "dfl":
        _, y = dfl_case(m=20, bins=6)
        call = lambda **kw: distribution_focal_loss(x, y, **kw)  # noqa: E731
        elementwise = dfl_ref(x, y)
    else:
        q = dense_case((20, 6), seed=20)
        if fn == "vfl":
            call = lambda **kw: varifocal_loss(x, q, **kw)  # noqa: E731
            elementwise = vfl_ref(x, q)
        else:
            call = lambda **kw: quality_focal_loss(x, q, **kw)  # noqa: E731
            elementwise = qfl_ref(x, q)
    total = call(reduction="sum")
    torch.testing.assert_close(total, elementwise.sum(), **TIGHT)
    # "mean" without a normalizer is mmdet's plain mean (elements for VFL, positions else).
    torch.testing.assert_close(call(), mmdet_reduce(elementwise, "mean"), **TIGHT)
    g_total = grad_of(total, x)
    for normalizer, divisor in [(3, 3.0), (12.5, 12.5), (0, 1.0), (0.5, 1.0), (torch.tensor(7.0), 7.0)]:  # fmt: skip
        loss = call(normalizer=normalizer)
        torch.testing.assert_close(loss, total.detach() / divisor, **TIGHT)
        torch.testing.assert_close(grad_of(loss, x), g_total / divisor, **GRAD)
        if divisor >= 1:  # mmdet's avg_factor (the heads clamp it to >= 1 before passing it)
            torch.testing.assert_close(
                loss, mmdet_reduce(elementwise, "mean", divisor), rtol=1e-6, atol=0
            )


@pytest.mark.parametrize("fn", ["vfl", "qfl", "dfl"])
def test_all_ignored_and_empty_give_zero_with_zero_gradients(fn):
    cases = []
    if fn == "dfl":
        for x, y in [
            (torch.randn(4, 5, requires_grad=True), torch.full((4,), -1.0)),
            (torch.randn(0, 5, requires_grad=True), torch.zeros(0)),
        ]:
            cases.append((distribution_focal_loss, (x, y), dict(ignore_index=-1)))
    else:
        loss = varifocal_loss if fn == "vfl" else quality_focal_loss
        x = torch.randn(4, 3, 2).requires_grad_()
        x.data[0, 0, 0] = float("nan")
        cases.append((loss, (x, torch.full((4, 2), -1), torch.rand(4, 2)), dict(ignore_index=-1)))
        cases.append((loss, (torch.randn(0, 3, requires_grad=True), torch.zeros(0, 3)), {}))
        empty_t = torch.zeros(0, dtype=torch.long)
        cases.append((loss, (torch.randn(0, 3, requires_grad=True), empty_t, torch.zeros(0)), {}))
    for fn_, args, kw in cases:
        for reduction in ("mean", "sum", "none"):
            value = fn_(*args, reduction=reduction, **kw)
            assert bool((value == 0).all())
            g = grad_of(value.sum(), args[0])
            assert torch.count_nonzero(g) == 0
        assert fn_(*args, normalizer=5.0, **kw).item() == 0.0


@pytest.mark.parametrize("fn", ["vfl", "qfl", "dfl"])
def test_ignored_positions_hold_garbage(fn):
    x = logits((10, 5), seed=21).detach()
    dirty = x.clone()
    if fn == "dfl":
        _, y = dfl_case(m=10, bins=5)
        y[::3] = -7.0
        ignored = y == -7.0
        args, kw, call = (y,), dict(ignore_index=-7), distribution_focal_loss
    else:
        t, s = index_case((10, 5), seed=22, ignore=255, frac=0.4)
        ignored = t == 255
        args, kw = (t, s), dict(ignore_index=255)
        call = varifocal_loss if fn == "vfl" else quality_focal_loss
    garbage = [float("nan"), float("inf"), -float("inf"), 1e30, 3.0]
    dirty[ignored] = torch.tensor(garbage, dtype=dirty.dtype)
    for reduction in ("none", "mean"):
        a, b = x.clone().requires_grad_(), dirty.clone().requires_grad_()
        clean, garbage = call(a, *args, reduction=reduction, **kw), call(b, *args, reduction=reduction, **kw)  # fmt: skip
        torch.testing.assert_close(garbage, clean)
        ga, gb = grad_of(clean.sum(), a), grad_of(garbage.sum(), b)
        assert bool((gb[ignored] == 0).all())
        torch.testing.assert_close(ga, gb)


def test_weights():
    x = logits((6, 4, 5), seed=23)
    q = dense_case((6, 4, 5), seed=24)
    w = torch.rand(4, 1, dtype=torch.float64)  # broadcast as in BCE-with-logits
    torch.testing.assert_close(
        varifocal_loss(x, q, weight=w, reduction="none"), vfl_ref(x, q) * w, **TIGHT
    )
    per_class = torch.rand(4, dtype=torch.float64)  # (C,): one factor per class along dim 1
    torch.testing.assert_close(
        varifocal_loss(x, q, weight=per_class, reduction="sum"),
        (vfl_ref(x, q) * per_class.view(1, 4, 1)).sum(),
        **TIGHT,
    )
    pw = torch.rand(6, 5, dtype=torch.float64)  # QFL: per position, as mmdet's per-anchor weight
    ours = quality_focal_loss(x, q, weight=pw, reduction="none")
    torch.testing.assert_close(ours, qfl_ref(x, q) * pw, **TIGHT)
    torch.testing.assert_close(
        grad_of(ours.sum(), x), grad_of((qfl_ref(x, q) * pw).sum(), x), **GRAD
    )
    torch.testing.assert_close(
        quality_focal_loss(x, q, weight=pw[:1]), (qfl_ref(x, q) * pw[:1]).mean(), **TIGHT
    )
    xd, y = dfl_case(m=12, bins=7)
    wd = torch.rand(12, dtype=torch.float64)
    ours = distribution_focal_loss(xd, y, weight=wd, reduction="sum")
    torch.testing.assert_close(ours, (dfl_ref(xd, y) * wd).sum(), **TIGHT)
    torch.testing.assert_close(grad_of(ours, xd), grad_of((dfl_ref(xd, y) * wd).sum(), xd), **GRAD)


@pytest.mark.parametrize("fn", ["vfl", "qfl"])
@pytest.mark.parametrize("shape", [(300, 80), (2, 5, 40, 30)], ids=str)
def test_pieces_equal_the_whole(fn, shape, monkeypatch):
    """Inputs above the piece size are computed in pieces (along dim 0, or along dim 2 for
    large positions): values and gradients equal the re-statement; a small piece size here
    stands in for a large input."""
    import focalloss._torch.detection as backend

    monkeypatch.setattr(backend, "PIECE_ELEMENTS", 1000)
    assert len(backend._pieces(torch.empty(shape))) > 3
    c = shape[1]
    x = logits(shape, seed=25)
    t, s = index_case(shape, seed=26, ignore=-1, frac=0.1)
    keep = t != -1
    dense = dense_from_index(torch.where(keep, t, c), s, c)
    unmasked = vfl_ref(x, dense) if fn == "vfl" else qfl_ref(x, dense)
    ref = unmasked * (keep.unsqueeze(1) if fn == "vfl" else keep)
    loss = varifocal_loss if fn == "vfl" else quality_focal_loss
    w = torch.rand(shape[:1] + shape[2:], dtype=torch.float64)  # per position
    weight = w.unsqueeze(1) if fn == "vfl" else w
    for reduction in ("sum", "none", "mean"):
        ours = loss(x, t, s, ignore_index=-1, reduction=reduction, weight=weight)
        weighted = ref * weight
        expected = {"sum": weighted.sum(), "none": weighted}.get(reduction)
        if expected is None:
            count = keep.sum() * (c if fn == "vfl" else 1)
            expected = weighted.sum() / count
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
        go = torch.rand_like(ours)
        torch.testing.assert_close(grad_of(ours, x, go), grad_of(expected, x, go), **GRAD)
    # The dense form in pieces (ignored positions count as background there).
    ours = loss(x, dense, reduction="none")
    torch.testing.assert_close(ours, unmasked, rtol=1e-10, atol=1e-12)
    go = torch.rand_like(ours)
    torch.testing.assert_close(grad_of(ours, x, go), grad_of(unmasked, x, go), **GRAD)


# --------------------------------------------------------------------------------------------
# Gradients: gradcheck, detached modulator, saturated logits, QFL at p == y
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "index"])
@pytest.mark.parametrize("exponent", [0.5, 2.0])
def test_gradcheck(kind, exponent):
    x = logits((4, 3, 2), seed=27, scale=2.0)
    if kind == "dense":
        args = (dense_case((4, 3, 2), seed=28, frac=0.6),)
        kw = {}
    else:
        args = index_case((4, 3, 2), seed=29, ignore=-1)
        kw = dict(ignore_index=-1)
    w = torch.rand(4, 1, 2, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda z: varifocal_loss(z, *args, gamma=exponent, weight=w, **kw), (x,)
    )
    assert torch.autograd.gradcheck(
        lambda z: quality_focal_loss(z, *args, beta=exponent, weight=w[:, 0], **kw), (x,)
    )
    xd, y = dfl_case(m=6, bins=5, seed=30)
    wd = torch.rand(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: distribution_focal_loss(z, y, weight=wd), (xd,))


def test_detached_modulator_is_the_constant_factor_gradient():
    x = logits((8, 4), seed=31)
    q = dense_case((8, 4), seed=32, frac=0.5)
    p = torch.sigmoid(x.detach())
    bce = F.binary_cross_entropy_with_logits(x, q, reduction="none")
    vfl_factor = torch.where(q > 0, q, 0.75 * p.square())
    torch.testing.assert_close(
        grad_of(varifocal_loss(x, q, detach_modulator=True, reduction="sum"), x),
        grad_of((bce * vfl_factor).sum(), x),
        **GRAD,
    )
    torch.testing.assert_close(
        grad_of(quality_focal_loss(x, q, detach_modulator=True, reduction="sum"), x),
        grad_of((bce * (q - p).abs().square()).sum(), x),
        **GRAD,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("kind", ["index", "dense-hard", "dense-soft"])
def test_finite_at_saturated_logits(dtype, exponent, kind):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0], [1e4, 1e4, -1e4]], dtype=dtype)
    if kind == "index":
        args = (torch.tensor([0, 1, 3]), torch.tensor([1.0, 0.7, 0.0]))
    elif kind == "dense-hard":
        args = (torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),)
    else:
        args = (torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.7, 1.0], [0.0, 0.3, 0.6]]),)
    for fn, kw in [(varifocal_loss, dict(gamma=exponent)), (quality_focal_loss, dict(beta=exponent))]:  # fmt: skip
        leaf = x.clone().requires_grad_()
        loss = fn(leaf, *args, **kw)
        loss.backward()
        assert loss.dtype == torch.float32 and leaf.grad.dtype == dtype
        assert torch.isfinite(loss) and bool(torch.isfinite(leaf.grad).all()), (fn, loss, leaf.grad)
    xd = torch.tensor([[1e4, -1e4, 0.0, -1e4], [-1e4, -1e4, -1e4, 1e4]], dtype=dtype)
    leaf = xd.clone().requires_grad_()
    loss = distribution_focal_loss(leaf, torch.tensor([0.5, 3.0]))
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(leaf.grad).all())


def test_saturated_gradients_are_the_exact_limits():
    # float64, logits far enough that sigmoid rounds to 0/1 only in float32: the closed form
    # gives the analytic value, where the formula's |p - y|^(beta - 1) factor would be 0 * inf.
    x = torch.tensor([[40.0, -40.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    e = math.exp(-40.0)
    beta = 0.5
    loss = quality_focal_loss(x, y, beta=beta, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    # y = 1: loss = softplus(-x) (1 - p)^beta ~ e^(1 + beta); derivative -(1 + beta) e^(1+beta)
    assert g[0, 0].item() == pytest.approx(-(1 + beta) * e ** (1 + beta), rel=1e-6)
    assert g[0, 1].item() == pytest.approx((1 + beta) * e ** (1 + beta), rel=1e-6)
    assert loss.item() == pytest.approx(2 * e ** (1 + beta), rel=1e-6)
    # At 1e4 in float32 the exact values underflow to 0: 0, not NaN.
    x32 = torch.tensor([[1e4, -1e4]], requires_grad=True)
    (g32,) = torch.autograd.grad(quality_focal_loss(x32, y.float(), beta=beta), x32)
    assert g32.tolist() == [[0.0, 0.0]]
    # Certain and wrong: loss ~ |x|, gradient ~ +-1 (beta any).
    wrong = torch.tensor([[-1e4, 1e4]], requires_grad=True)
    loss = quality_focal_loss(wrong, y.float(), beta=beta, reduction="sum")
    (g,) = torch.autograd.grad(loss, wrong)
    assert loss.item() == pytest.approx(2e4) and g.tolist() == [[-1.0, 1.0]]


@pytest.mark.parametrize("beta", [0.25, 0.5])
def test_quality_focal_at_p_equal_to_a_soft_target(beta):
    """0 < beta < 1, 0 < y < 1: |p - y|^beta has no derivative at p == y (one-sided limits
    -inf, +inf). Documented: exactly 0 there; the exact (large, finite) value next to it."""
    y = torch.tensor([[0.5]], dtype=torch.float64)
    at = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)  # p == 0.5 exactly
    loss = quality_focal_loss(at, y, beta=beta, reduction="sum")
    assert loss.item() == 0.0
    assert grad_of(loss, at).item() == 0.0
    for step in (1e-3, 1e-9, -1e-9):
        near = torch.full((1, 1), step, dtype=torch.float64, requires_grad=True)
        g = grad_of(quality_focal_loss(near, y, beta=beta, reduction="sum"), near).item()
        ref = grad_of(qfl_ref(near, y, beta).sum(), near).item()
        assert math.isfinite(g) and g == pytest.approx(ref, rel=1e-9)
        if abs(step) < 1e-6:
            assert abs(g) > 10  # large: the derivative is unbounded as p -> y
    # float32: finite for every p != y, bounded by about 2**24 * beta * BCE.
    xs = torch.linspace(-1e-4, 1e-4, 2001, requires_grad=True)
    g = grad_of(quality_focal_loss(xs.view(-1, 1), torch.full((2001, 1), 0.5), beta=beta, reduction="sum"), xs)  # fmt: skip
    assert bool(torch.isfinite(g).all()) and g.abs().max() < 2**24 * beta


def test_half_precision_against_float32():
    g = torch.Generator().manual_seed(33)
    x32 = torch.randn(64, 10, generator=g)
    t = torch.randint(0, 11, (64,), generator=g)
    s = torch.rand(64, generator=g)
    xd32 = torch.randn(64, 9, generator=g)
    yd = torch.rand(64, generator=g) * 8
    calls = [
        (varifocal_loss, x32, (t, s)),
        (quality_focal_loss, x32, (t, s)),
        (distribution_focal_loss, xd32, (yd,)),
    ]
    for fn, base, args in calls:
        for dtype, tol in [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)]:
            x = base.to(dtype).requires_grad_()
            xr = x.detach().float().requires_grad_()
            loss, ref = fn(x, *args), fn(xr, *args)
            assert loss.dtype == torch.float32
            torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
            loss.backward()
            ref.backward()
            assert x.grad.dtype == dtype
            scale = xr.grad.abs().max().item()
            torch.testing.assert_close(x.grad.float(), xr.grad, rtol=tol, atol=tol * scale)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

X = torch.zeros(4, 3)
T = torch.tensor([0, 3, 1, 2])
S = torch.rand(4)
Q = torch.zeros(4, 3)
XD = torch.zeros(4, 5)
YD = torch.tensor([0.5, 1.0, 4.0, 2.5])

ERRORS = [
    # (call, exception, message)
    (lambda: varifocal_loss(X, T), ValueError, r"score: class-index targets of shape \(4,\) need the quality score"),
    (lambda: varifocal_loss(X, Q, S), ValueError, r"target: with score, expected class indices of shape \(4,\)"),
    (lambda: varifocal_loss(X, T.float(), S), TypeError, r"target: with score, class indices must have an integer dtype, got dtype torch.float32"),
    (lambda: varifocal_loss(X, T, S[:3]), ValueError, r"score: expected the target's shape \(4,\), got shape \(3,\)"),
    (lambda: varifocal_loss(X, T, T), TypeError, "score: expected a floating-point tensor, got dtype torch.int64"),
    (lambda: varifocal_loss(X, torch.tensor([0, 4, 1, 2]), S), ValueError, r"target: class indices must lie in \[0, 3\] .* got 4"),
    (lambda: varifocal_loss(X, torch.tensor([0, -1, 1, 2]), S), ValueError, r"class indices must lie in \[0, 3\] for C=3 classes, got -1"),
    (lambda: varifocal_loss(X, T, torch.tensor([1.5, 0.0, 0.2, 0.3])), ValueError, r"score: quality scores of the labelled classes must lie in \[0, 1\], got 1.5"),
    (lambda: varifocal_loss(X, T, torch.tensor([0.5, 0.0, float("nan"), 0.3])), ValueError, r"score: quality scores .* got nan"),
    (lambda: varifocal_loss(X, Q + 2), ValueError, r"target: quality scores must lie in \[0, 1\], got 2.0"),
    (lambda: varifocal_loss(X, Q.long()), TypeError, r"target: dense targets of the input's shape \(4, 3\) must be floating-point"),
    (lambda: varifocal_loss(X, torch.zeros(4, 2)), ValueError, r"target: expected dense scores of shape \(4, 3\) or class indices of shape \(4,\) with score"),
    (lambda: varifocal_loss(X, Q, ignore_index=-1), ValueError, "ignore_index: only applies to class-index targets"),
    (lambda: varifocal_loss(X, Q, alpha=-0.5), ValueError, r"alpha: expected a finite number >= 0, got -0.5"),
    (lambda: varifocal_loss(X, Q, gamma=float("nan")), ValueError, "gamma: expected a finite number >= 0, got nan"),
    (lambda: varifocal_loss(X, Q, gamma="2"), TypeError, "gamma: expected a real number >= 0, got str"),
    (lambda: varifocal_loss(X, Q, iou_weighted=1), TypeError, "iou_weighted: expected a bool, got 1"),
    (lambda: varifocal_loss(X, Q, detach_modulator=None), TypeError, "detach_modulator: expected a bool"),
    (lambda: varifocal_loss(X, Q, reduction="avg"), ValueError, "reduction: expected one of"),
    (lambda: varifocal_loss(X, Q, reduction="sum", normalizer=3), ValueError, "normalizer: replaces the divisor of reduction='mean'"),
    (lambda: varifocal_loss(X, Q, normalizer=-1.0), ValueError, "normalizer: expected a finite number >= 0, got -1.0"),
    (lambda: varifocal_loss(X, Q, normalizer=torch.ones(2)), ValueError, r"normalizer: expected a number or a 0-d tensor, got shape \(2,\)"),
    (lambda: varifocal_loss(X, Q, weight=torch.ones(5)), ValueError, "weight: expected a shape that broadcasts"),
    (lambda: varifocal_loss(X, Q, weight=-torch.ones(3)), ValueError, "weight: expected finite values >= 0, got -1.0"),
    (lambda: varifocal_loss(X, Q.clone().requires_grad_()), ValueError, "target: expected a tensor that does not require grad"),
    (lambda: varifocal_loss(X, T, S.clone().requires_grad_()), ValueError, "score: expected a tensor that does not require grad"),
    (lambda: varifocal_loss(X.long(), Q), TypeError, "input: expected floating-point logits, got dtype torch.int64"),
    (lambda: varifocal_loss(torch.zeros(()), torch.zeros(())), ValueError, "input: expected logits with at least one dimension"),
    (lambda: varifocal_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long), torch.zeros(4)), ValueError, r"target: with score, expected class indices|score: class-index targets need \(N, C, ...\) logits"),
    (lambda: varifocal_loss(X, Q, backend="cuda"), ValueError, "backend: expected one of"),
    (lambda: varifocal_loss(X, [0, 1]), TypeError, "target: expected a torch.Tensor, got list"),
    (lambda: varifocal_loss(X, T, S, ignore_index=1.5), TypeError, "ignore_index: expected an int or None"),
    (lambda: quality_focal_loss(X, T), ValueError, "score: class-index targets"),
    (lambda: quality_focal_loss(torch.zeros(4), torch.zeros(4)), ValueError, r"input: expected logits \(N, C\) or \(N, C, d1, ...\)"),
    (lambda: quality_focal_loss(X, Q, beta=-1), ValueError, "beta: expected a finite number >= 0, got -1.0"),
    (lambda: quality_focal_loss(X, Q, beta=True), TypeError, "beta: expected a real number >= 0, got bool"),
    (lambda: quality_focal_loss(X, Q, weight=torch.ones(4, 3)), ValueError, r"weight: expected one factor per position, a shape that broadcasts to \(4,\)"),
    (lambda: quality_focal_loss(X, Q, weight=torch.ones(4, dtype=torch.long)), TypeError, "weight: expected a floating-point tensor"),
    (lambda: quality_focal_loss(X, Q, weight=torch.tensor([1.0, -2.0, 1.0, 1.0])), ValueError, "weight: expected finite values >= 0, got -2.0"),
    (lambda: quality_focal_loss(X, T, torch.tensor([0.5, 0.5, -0.1, 0.5])), ValueError, r"score: .* got -0.1"),
    (lambda: distribution_focal_loss(XD, torch.tensor([0.5, 1.0, 4.5, 2.5])), ValueError, r"target: offsets must be finite and lie in \[0, 4\] for n \+ 1 = 5 bins, got 4.5"),
    (lambda: distribution_focal_loss(XD, torch.tensor([0.5, -0.5, 1.0, 1.0])), ValueError, r"lie in \[0, 4\] .* got -0.5"),
    (lambda: distribution_focal_loss(XD, torch.tensor([0.5, float("nan"), 1.0, 1.0])), ValueError, r"lie in \[0, 4\] .* got nan"),
    (lambda: distribution_focal_loss(XD, torch.tensor([0.5, float("inf"), 1.0, 1.0])), ValueError, r"got inf"),
    (lambda: distribution_focal_loss(XD, torch.tensor([0.5, -1.0, 1.0, 9.0]), ignore_index=-1), ValueError, r"\[0, 4\] or ignore_index=-1 .* got 9.0"),
    (lambda: distribution_focal_loss(XD, YD, ignore_index=2), ValueError, r"ignore_index: must lie outside the valid targets \[0, 4\]"),
    (lambda: distribution_focal_loss(XD, YD.long()), TypeError, r"target: expected continuous offsets in \[0, 4\] as a floating-point tensor"),
    (lambda: distribution_focal_loss(XD, YD[:3]), ValueError, r"target: expected one offset per position, shape \(4,\)"),
    (lambda: distribution_focal_loss(torch.zeros(4, 1), torch.zeros(4)), ValueError, r"input: expected logits over n \+ 1 >= 2 bins"),
    (lambda: distribution_focal_loss(torch.zeros(4), torch.zeros(4)), ValueError, r"input: expected logits over n \+ 1 >= 2 bins"),
    (lambda: distribution_focal_loss(XD, YD, weight=torch.ones(4, 5)), ValueError, "weight: expected one factor per position"),
    (lambda: distribution_focal_loss(XD, YD, reduction="none", normalizer=2), ValueError, "normalizer: replaces the divisor"),
    (lambda: distribution_focal_loss(XD, YD, normalizer="2"), TypeError, "normalizer: expected a number or a 0-d tensor, got str"),
    (lambda: VarifocalLoss(alpha=-1), ValueError, "alpha: expected a finite number >= 0"),
    (lambda: VarifocalLoss(reduction="sum", normalizer=2), ValueError, "normalizer: replaces the divisor"),
    (lambda: VarifocalLoss(iou_weighted="yes"), TypeError, "iou_weighted: expected a bool"),
    (lambda: QualityFocalLoss(beta=float("inf")), ValueError, "beta: expected a finite number >= 0, got inf"),
    (lambda: QualityFocalLoss(ignore_index="x"), TypeError, "ignore_index: expected an int or None"),
    (lambda: DistributionFocalLoss(backend="gpu"), ValueError, "backend: expected one of"),
    (lambda: DistributionFocalLoss(normalizer=float("nan")), ValueError, "normalizer: expected a finite number >= 0, got nan"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "exception", "message"), ERRORS, ids=range(len(ERRORS)))
def test_errors_name_the_argument(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_value_checks_off_treat_out_of_range_targets_as_ignored():
    previous = focalloss.set_value_checks(False)
    try:
        x = logits((4, 3), seed=34)
        t = torch.tensor([0, 7, 1, -5])  # 7 and -5 are outside [0, C]
        s = torch.rand(4, dtype=torch.float64)
        for fn in (varifocal_loss, quality_focal_loss):
            ours = fn(x, t, s, reduction="sum")
            keep = torch.tensor([0, 2])
            torch.testing.assert_close(ours, fn(x[keep], t[keep], s[keep], reduction="sum"))
            g = grad_of(ours, x)
            assert torch.count_nonzero(g[torch.tensor([1, 3])]) == 0
        xd, y = dfl_case(m=6, bins=5)
        y[1], y[4] = 4.5, float("nan")
        ours = distribution_focal_loss(xd, y, reduction="none")
        assert ours[1].item() == 0.0 and ours[4].item() == 0.0
        keep = torch.tensor([0, 2, 3, 5])
        torch.testing.assert_close(ours[keep], dfl_ref(xd[keep], y[keep]))
        mean = distribution_focal_loss(xd, y)
        torch.testing.assert_close(mean, dfl_ref(xd[keep], y[keep]).mean())
        assert torch.count_nonzero(grad_of(mean, xd)[torch.tensor([1, 4])]) == 0
    finally:
        focalloss.set_value_checks(previous)


# --------------------------------------------------------------------------------------------
# Modules, compile, double backward, torch.func, no host synchronisation
# --------------------------------------------------------------------------------------------


def test_modules_equal_functions():
    x = logits((6, 3, 2), seed=35).detach()
    t, s = index_case((6, 3, 2), seed=36, ignore=-1)
    w = torch.rand(6, 3, 2, dtype=torch.float64)
    vfl = VarifocalLoss(alpha=0.5, gamma=1.5, iou_weighted=False, ignore_index=-1, normalizer=3.0)
    torch.testing.assert_close(
        vfl(x, t, s, weight=w),
        varifocal_loss(x, t, s, alpha=0.5, gamma=1.5, iou_weighted=False, ignore_index=-1,
                       weight=w, normalizer=3.0),
    )  # fmt: skip
    torch.testing.assert_close(
        vfl(x, t, s, normalizer=7), varifocal_loss(x, t, s, alpha=0.5, gamma=1.5,
                                                   iou_weighted=False, ignore_index=-1, normalizer=7)
    )  # fmt: skip
    qfl = QualityFocalLoss(beta=1.0, ignore_index=-1, reduction="none", detach_modulator=True)
    torch.testing.assert_close(
        qfl(x, t, s, weight=w[:, 0]),
        quality_focal_loss(x, t, s, beta=1.0, ignore_index=-1, reduction="none",
                           detach_modulator=True, weight=w[:, 0]),
    )  # fmt: skip
    xd, y = dfl_case(m=10, bins=6)
    dfl = DistributionFocalLoss(reduction="sum")
    torch.testing.assert_close(dfl(xd, y), distribution_focal_loss(xd, y, reduction="sum"))
    dfl_mean = DistributionFocalLoss(normalizer=4.0)
    torch.testing.assert_close(dfl_mean(xd, y), distribution_focal_loss(xd, y, normalizer=4.0))
    assert repr(vfl) == (
        "VarifocalLoss(alpha=0.5, gamma=1.5, iou_weighted=False, ignore_index=-1, reduction='mean')"
    )
    assert "beta=1.0" in repr(qfl) and "detach_modulator=True" in repr(qfl)
    assert repr(dfl) == "DistributionFocalLoss(ignore_index=None, reduction='sum')"
    for module in (vfl, qfl, dfl):
        assert module.state_dict() == {}
        with pytest.raises(RuntimeError, match="cannot be compiled by TorchScript"):
            module.__prepare_scriptable__()


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_fullgraph_equals_eager(fresh_dynamo):
    g = torch.Generator().manual_seed(37)
    x = torch.randn(6, 4, 3, generator=g)
    t = torch.randint(-1, 5, (6, 3), generator=g)
    s = torch.rand(6, 3, generator=g)
    q = torch.rand(6, 4, 3, generator=g) * (torch.rand(6, 4, 3, generator=g) < 0.3)
    xd = torch.randn(12, 9, generator=g)
    y = torch.rand(12, generator=g) * 8
    vfl_module = VarifocalLoss(ignore_index=-1)

    def step(inp, box):
        return (
            vfl_module(inp, t, s, normalizer=2.0)
            + quality_focal_loss(inp, q, reduction="none").sum()
            + quality_focal_loss(inp, t, s, ignore_index=-1)
            + varifocal_loss(inp, q, reduction="none").mean()
            + distribution_focal_loss(box, y, normalizer=3.0)
            + distribution_focal_loss(box, y, reduction="none").sum()
        )

    compiled = torch.compile(step, fullgraph=True)
    inputs_c = [v.clone().requires_grad_() for v in (x, xd)]
    inputs_e = [v.clone().requires_grad_() for v in (x, xd)]
    got, expected = compiled(*inputs_c), step(*inputs_e)
    torch.testing.assert_close(got, expected)
    got.backward()
    expected.backward()
    for a, b in zip(inputs_c, inputs_e, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_compiled_dynamic_shapes_without_recompiles(fresh_dynamo):
    """dynamic=True, three sizes (C and the number of bins change too): one graph, no
    recompile after the first call, values and gradients equal eager and the float64
    re-statements."""
    from torch._dynamo.utils import counters

    def fn(x, t, s, q, xd, y):
        return (
            varifocal_loss(x, t, s, ignore_index=-1, normalizer=2.0),
            quality_focal_loss(x, q, beta=1.5, reduction="sum"),
            distribution_focal_loss(xd, y, ignore_index=-1, reduction="none"),
        )

    counters.clear()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for i, (shape, dshape) in enumerate(
        [((6, 4, 3), (12, 9)), ((3, 4, 7), (20, 9)), ((4, 6, 2), (7, 5))]
    ):
        x = logits(shape, seed=50 + i).detach()
        t, s = index_case(shape, seed=60 + i, ignore=-1)
        q = dense_case(shape, seed=70 + i)
        xd = logits(dshape, seed=80 + i).detach()
        y = torch.rand(dshape[0], generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        y = y * (dshape[1] - 1)
        y[0] = -1.0
        leaves_c = [v.clone().requires_grad_() for v in (x, xd)]
        leaves_e = [v.clone().requires_grad_() for v in (x, xd)]
        stance = torch.compiler.set_stance("fail_on_recompile") if i else contextlib.nullcontext()
        with stance:
            got = compiled(leaves_c[0], t, s, q, leaves_c[1], y)
        expected = fn(leaves_e[0], t, s, q, leaves_e[1], y)
        leaves_r = [v.clone().requires_grad_() for v in (x, xd)]
        keep = y != -1
        dense = dense_from_index(torch.where(t == -1, shape[1], t), s, shape[1])
        want = (
            (vfl_ref(leaves_r[0], dense) * (t != -1).unsqueeze(1)).sum() / 2.0,
            qfl_ref(leaves_r[0], q, 1.5).sum(),
            torch.where(keep, dfl_ref(leaves_r[1], y.clamp(min=0)), 0.0),
        )
        for a, b, c in zip(got, expected, want, strict=True):
            torch.testing.assert_close(a, b, **TIGHT)
            torch.testing.assert_close(a, c, **TIGHT)
        total = lambda values: values[0] + values[1] + values[2].sum()  # noqa: E731
        total(got).backward()
        total(expected).backward()
        total(want).backward()
        for a, b, c in zip(leaves_c, leaves_e, leaves_r, strict=True):
            torch.testing.assert_close(a.grad, b.grad, **GRAD)
            torch.testing.assert_close(a.grad, c.grad, **GRAD)
    assert counters["stats"]["unique_graphs"] == 1


def test_double_backward_and_torch_func():
    x = logits((3, 4, 2), seed=38)
    t, s = index_case((3, 4, 2), seed=39, ignore=-1)
    q = dense_case((3, 4, 2), seed=40, frac=0.5)
    xd, y = dfl_case(m=5, bins=6, seed=41)
    wd = torch.rand(5, dtype=torch.float64)
    calls = [
        (lambda z: varifocal_loss(z, t, s, ignore_index=-1, gamma=1.5), x),
        (lambda z: varifocal_loss(z, q, reduction="sum", iou_weighted=False), x),
        (lambda z: quality_focal_loss(z, t, s, ignore_index=-1, beta=2.5), x),
        (lambda z: quality_focal_loss(z, q, beta=1.5, reduction="sum"), x),
        (lambda z: distribution_focal_loss(z, y, weight=wd), xd),
    ]
    for call, inp in calls:
        leaf = inp.detach().clone().requires_grad_()
        (with_graph,) = torch.autograd.grad(call(leaf), leaf, create_graph=True)
        closed = grad_of(call(leaf), leaf)
        torch.testing.assert_close(with_graph, closed, **GRAD)
        torch.testing.assert_close(torch.func.grad(call)(inp.detach()), closed, **GRAD)
        assert torch.autograd.gradgradcheck(call, (leaf,))


@pytest.mark.parametrize("exponent", [0.5, 2.0])
def test_composite_first_derivative_equals_closed_form_when_saturated(exponent):
    x = torch.tensor([[40.0, -40.0, 1e4], [-1e4, 25.0, -25.0]], requires_grad=True)
    t = torch.tensor([0, 3])
    s = torch.tensor([0.8, 0.0])
    hard = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for call in (
        lambda z: varifocal_loss(z, t, s, gamma=exponent, reduction="sum"),
        lambda z: quality_focal_loss(z, hard, beta=exponent, reduction="sum"),
        lambda z: quality_focal_loss(z, t, s, beta=exponent, reduction="sum"),
    ):
        (with_graph,) = torch.autograd.grad(call(x), x, create_graph=True)
        closed = grad_of(call(x), x)
        assert bool(torch.isfinite(with_graph).all())
        torch.testing.assert_close(with_graph, closed, rtol=1e-5, atol=1e-30)


def test_vmap_per_sample_gradients():
    x = logits((5, 4, 3), seed=42).detach()
    t, s = index_case((5, 4, 3), seed=43, ignore=-1)

    def one(xi, ti, si):
        return quality_focal_loss(
            xi.unsqueeze(0), ti.unsqueeze(0), si.unsqueeze(0), ignore_index=-1
        )

    per_sample = torch.func.vmap(torch.func.grad(one))(x, t, s)
    for i in range(5):
        leaf = x[i : i + 1].clone().requires_grad_()
        expected = grad_of(
            quality_focal_loss(leaf, t[i : i + 1], s[i : i + 1], ignore_index=-1), leaf
        )
        torch.testing.assert_close(per_sample[i], expected[0], **GRAD)


class _SyncProbe(TorchDispatchMode):
    """Records operators that read a value on the host or copy host data to the device."""

    SYNCING = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero", "aten.masked_select")

    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith(self.SYNCING):
            self.bad.append(name)
        if name.startswith(("aten._to_copy", "aten.copy_", "aten.lift_fresh")):
            devices = {a.device.type for a in [*args, *kwargs.values()] if isinstance(a, Tensor)}
            if "cpu" in devices and "meta" in devices | {str(kwargs.get("device"))}:
                self.bad.append(f"{name} from the host")
        return func(*args, **kwargs)


@contextlib.contextmanager
def _value_checks(enabled: bool):
    previous = focalloss.set_value_checks(enabled)
    try:
        yield
    finally:
        focalloss.set_value_checks(previous)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_training_call_reads_nothing_on_the_host(reduction):
    meta = dict(device="meta")
    x = torch.empty(4, 3, 5, **meta)
    t = torch.empty(4, 5, dtype=torch.long, **meta)
    s = torch.empty(4, 5, **meta)
    xd, y = torch.empty(8, 17, **meta), torch.empty(8, **meta)
    calls = [
        lambda z: varifocal_loss(z, t, s, ignore_index=-1, reduction=reduction),
        lambda z: varifocal_loss(
            z, torch.empty(4, 3, 5, **meta), weight=torch.empty(3, **meta), reduction=reduction
        ),
        lambda z: quality_focal_loss(
            z, t, s, ignore_index=-1, weight=torch.empty(4, 5, **meta), reduction=reduction
        ),
        lambda z: quality_focal_loss(z, torch.empty(4, 3, 5, **meta), reduction=reduction),
    ]
    dfl_calls = [lambda z: distribution_focal_loss(z, y, ignore_index=-1, reduction=reduction)]
    if reduction == "mean":
        calls.append(lambda z: varifocal_loss(z, t, s, normalizer=3.0))
        dfl_calls.append(
            lambda z: distribution_focal_loss(z, y, normalizer=torch.empty((), **meta))
        )
    with _value_checks(False):
        for fns, inp in ((calls, x), (dfl_calls, xd)):
            for fn in fns:
                for _ in range(2):  # the second call is the steady state
                    leaf = inp.detach().requires_grad_()
                    with _SyncProbe() as probe:
                        loss = fn(leaf)
                        loss.backward(torch.ones_like(loss))
                assert probe.bad == [], probe.bad
                assert leaf.grad.shape == inp.shape


def test_the_probe_can_fail():
    with _SyncProbe() as probe:
        torch.ones(3).sum().item()
        torch.ones(2).to("meta")
    assert len(probe.bad) == 2


# --------------------------------------------------------------------------------------------
# Properties (hypothesis), shared with the Triton kernel tests
# --------------------------------------------------------------------------------------------

PROFILE = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IGNORE = -1
PROPERTY_TOL = dict(rtol=1e-9, atol=1e-12)
PROPERTY_GRAD = dict(rtol=1e-7, atol=1e-11)


@dataclass(frozen=True)
class ScoreCase:
    x: Tensor  # (N, C, *) float64
    t: Tensor  # dense (N, C, *) scores, or (N, *) int64 indices in [0, C] with IGNORE
    s: Tensor | None  # (N, *) scores with index targets
    exponent: float  # gamma (VFL) or beta (QFL)
    alpha: float
    iou_weighted: bool

    @property
    def index(self) -> bool:
        return self.s is not None

    def args(self) -> tuple:
        return (self.t, self.s) if self.index else (self.t,)

    def kwargs(self, fn, **extra) -> dict:
        kw = dict(extra)
        if self.index:
            kw["ignore_index"] = IGNORE
        if fn is varifocal_loss:
            kw.update(gamma=self.exponent, alpha=self.alpha, iou_weighted=self.iou_weighted)
        else:
            kw.update(beta=self.exponent)
        return kw

    def to(self, device: str) -> ScoreCase:
        move = lambda v: None if v is None else v.to(device)  # noqa: E731
        return replace(self, x=move(self.x), t=move(self.t), s=move(self.s))

    def dense(self) -> tuple[Tensor, Tensor]:
        """(dense scores, position keep mask (N, *))."""
        if not self.index:
            shape = self.x.shape[:1] + self.x.shape[2:]
            return self.t, torch.ones(shape, dtype=torch.bool, device=self.x.device)
        c = self.x.shape[1]
        keep = self.t != IGNORE
        dense = dense_from_index(torch.where(keep, self.t, c).cpu(), self.s.cpu(), c)
        return dense.to(self.x.device), keep


@st.composite
def score_cases(draw) -> ScoreCase:
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=1)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = 5 * torch.randn((n, c, *spatial), generator=g, dtype=torch.float64)
    if draw(st.booleans()):
        t = torch.randint(0, c + 1, (n, *spatial), generator=g)
        frac = draw(st.sampled_from([0.0, 0.3, 1.0]))
        t[torch.rand(t.shape, generator=g) < frac] = IGNORE
        s = torch.rand(t.shape, generator=g, dtype=torch.float64)
    else:
        t = torch.rand(x.shape, generator=g, dtype=torch.float64)
        t = t * (torch.rand(x.shape, generator=g) < 0.4)
        if draw(st.booleans()):
            t = (t > 0).double()  # hard labels
        s = None
    exponent = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]))
    alpha = draw(st.sampled_from([0.25, 0.75, 1.0]))
    return ScoreCase(x, t, s, exponent, alpha, draw(st.booleans()))


@dataclass(frozen=True)
class OffsetCase:
    x: Tensor  # (M, n + 1) or (N, n + 1, d)
    y: Tensor  # offsets in [0, n], IGNORE at ignored positions

    def to(self, device: str) -> OffsetCase:
        return replace(self, x=self.x.to(device), y=self.y.to(device))


@st.composite
def offset_cases(draw) -> OffsetCase:
    bins = draw(st.integers(2, 9))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    spatial = draw(st.lists(st.integers(1, 3), max_size=1))
    shape = (draw(st.integers(1, 6)), bins, *spatial)
    x = 5 * torch.randn(shape, generator=g, dtype=torch.float64)
    tshape = shape[:1] + shape[2:]
    y = torch.rand(tshape, generator=g, dtype=torch.float64) * (bins - 1)
    if draw(st.booleans()):
        y = y.round()  # integer offsets, n included
    y[torch.rand(tshape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = IGNORE
    return OffsetCase(x, y)


def loss_and_grad(fn, x: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, *args, **kwargs)
    go = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device)
    (grad,) = torch.autograd.grad(loss, leaf, go.view(loss.shape))
    return loss.detach(), grad


def prop_reduce_to_bce(case: ScoreCase, backend: str) -> None:
    """VFL with gamma = 0, alpha = 1, iou_weighted=False, and QFL with beta = 0, are BCE with
    logits against the dense scores (values and gradients; ignored positions removed)."""
    dense, keep = case.dense()
    for fn, kw in [(varifocal_loss, dict(gamma=0.0, alpha=1.0, iou_weighted=False)),
                   (quality_focal_loss, dict(beta=0.0))]:  # fmt: skip
        for reduction in ("none", "sum", "mean"):
            full = case.kwargs(fn, reduction=reduction, backend=backend)
            full.update(kw)
            ours, grad = loss_and_grad(fn, case.x, *case.args(), **full)
            leaf = case.x.clone().requires_grad_()
            ref = F.binary_cross_entropy_with_logits(leaf, dense, reduction="none")
            ref = ref * keep.unsqueeze(1)
            if fn is quality_focal_loss:
                ref = ref.sum(1)
            count = keep.sum() * (case.x.shape[1] if fn is varifocal_loss else 1)
            if reduction == "sum":
                ref = ref.sum()
            elif reduction == "mean":
                ref = ref.sum() / count if count > 0 else ref.sum() * 0
            go = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype, device=ref.device)
            go = go.view(ref.shape)
            (ref_grad,) = torch.autograd.grad(ref, leaf, go)
            torch.testing.assert_close(ours, ref.detach(), **PROPERTY_TOL)
            torch.testing.assert_close(grad, ref_grad, **PROPERTY_GRAD)


def prop_finite_nonnegative_monotone(case: ScoreCase, backend: str) -> None:
    """Finite, >= 0, at most BCE, and non-increasing in the exponent (|p - q| <= 1)."""
    dense, _ = case.dense()
    bce = F.binary_cross_entropy_with_logits(case.x, dense, reduction="none")
    for fn in (varifocal_loss, quality_focal_loss):
        kw = case.kwargs(fn, reduction="none", backend=backend)
        loss, grad = loss_and_grad(fn, case.x, *case.args(), **kw)
        assert bool(torch.isfinite(loss).all()) and bool((loss >= 0).all())
        assert bool(torch.isfinite(grad).all())
        bound = bce.sum(1) if fn is quality_focal_loss else bce * max(case.alpha, 1.0)
        assert bool((loss <= bound + 1e-9).all())
        key = "gamma" if fn is varifocal_loss else "beta"
        higher = fn(case.x, *case.args(), **{**kw, key: case.exponent + 1.0})
        assert bool((higher <= loss + 1e-12).all())


def prop_index_equals_dense(case: ScoreCase, backend: str) -> None:
    """Class indices + score equal the dense scores onehot * score (ignored positions 0)."""
    if not case.index:
        return
    dense, keep = case.dense()
    for fn in (varifocal_loss, quality_focal_loss):
        kw = case.kwargs(fn, reduction="none", backend=backend)
        ours, grad = loss_and_grad(fn, case.x, *case.args(), **kw)
        dense_kw = {k: v for k, v in kw.items() if k != "ignore_index"}
        ref, ref_grad = loss_and_grad(fn, case.x, dense, **dense_kw)
        mask = keep if fn is quality_focal_loss else keep.unsqueeze(1).expand_as(ours)
        torch.testing.assert_close(ours, torch.where(mask, ref, 0.0), **PROPERTY_TOL)
        gmask = keep.unsqueeze(1).expand_as(grad)
        torch.testing.assert_close(grad, torch.where(gmask, ref_grad, 0.0), **PROPERTY_GRAD)


def prop_batch_split_and_class_permutation(case: ScoreCase, backend: str) -> None:
    k = case.x.shape[0] // 2
    c = case.x.shape[1]
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(0)).to(case.x.device)
    inverse = torch.argsort(perm)
    if case.index:
        lookup = torch.cat([inverse, torch.tensor([c], device=case.x.device)])
        t = torch.where(case.t == IGNORE, case.t, lookup[case.t.clamp(min=0)])
        permuted = (t, case.s)
    else:
        permuted = (case.t[:, perm],)
    for fn in (varifocal_loss, quality_focal_loss):
        kw = case.kwargs(fn, reduction="sum", backend=backend)
        whole, grad = loss_and_grad(fn, case.x, *case.args(), **kw)
        head = fn(case.x[:k], *(a[:k] for a in case.args()), **kw)
        tail = fn(case.x[k:], *(a[k:] for a in case.args()), **kw)
        torch.testing.assert_close(whole, head + tail, **PROPERTY_TOL)
        again, again_grad = loss_and_grad(fn, case.x[:, perm], *permuted, **kw)
        torch.testing.assert_close(again, whole, **PROPERTY_TOL)
        torch.testing.assert_close(again_grad, grad[:, perm], **PROPERTY_GRAD)


def prop_dfl_integer_targets_are_cross_entropy(case: OffsetCase, backend: str) -> None:
    """Integer offsets (n included) make DFL F.cross_entropy with the same ignore_index,
    values and gradients, every reduction (the all-ignored "mean": 0 here, NaN there)."""
    y = case.y.round()
    for reduction in ("none", "sum", "mean"):
        ours, grad = loss_and_grad(distribution_focal_loss, case.x, y, ignore_index=IGNORE,
                                   reduction=reduction, backend=backend)  # fmt: skip
        ref, ref_grad = loss_and_grad(F.cross_entropy, case.x, y.long(), ignore_index=IGNORE,
                                      reduction=reduction)  # fmt: skip
        if reduction == "mean" and not bool((y != IGNORE).any()):
            assert ours.item() == 0.0 and not bool(grad.any())
            continue
        torch.testing.assert_close(ours, ref, **PROPERTY_TOL)
        torch.testing.assert_close(grad, ref_grad, **PROPERTY_GRAD)


def prop_dfl_is_the_two_bin_mixture(case: OffsetCase, backend: str) -> None:
    """DFL = w_l CE(x, l) + w_r CE(x, l + 1) by cross-entropy with probability targets; the
    gradient of every position sums to 0 over the bins (softmax minus a distribution)."""
    n = case.x.shape[1] - 1
    keep = case.y != IGNORE
    y = torch.where(keep, case.y, 0.0)
    left = y.floor().clamp(max=n - 1)
    dist = F.one_hot(left.long(), n + 1).double() * (left + 1 - y).unsqueeze(-1)
    dist = dist + F.one_hot(left.long() + 1, n + 1).double() * (y - left).unsqueeze(-1)
    probabilities = dist.movedim(-1, 1)
    ours, grad = loss_and_grad(distribution_focal_loss, case.x, case.y, ignore_index=IGNORE,
                               reduction="none", backend=backend)  # fmt: skip
    ref = F.cross_entropy(case.x, probabilities, reduction="none") * keep
    torch.testing.assert_close(ours, ref, **PROPERTY_TOL)
    torch.testing.assert_close(grad.sum(1), torch.zeros_like(grad.sum(1)), rtol=0, atol=1e-12)


@settings(max_examples=40, **PROFILE)
@given(score_cases())
def test_property_reduce_to_bce(case):
    prop_reduce_to_bce(case, "torch")


@settings(max_examples=40, **PROFILE)
@given(score_cases())
def test_property_finite_nonnegative_monotone(case):
    prop_finite_nonnegative_monotone(case, "torch")


@settings(max_examples=40, **PROFILE)
@given(score_cases())
def test_property_index_equals_dense(case):
    prop_index_equals_dense(case, "torch")


@settings(max_examples=40, **PROFILE)
@given(score_cases())
def test_property_batch_split_and_class_permutation(case):
    prop_batch_split_and_class_permutation(case, "torch")


@settings(max_examples=40, **PROFILE)
@given(offset_cases())
def test_property_dfl_integer_targets_are_cross_entropy(case):
    prop_dfl_integer_targets_are_cross_entropy(case, "torch")


@settings(max_examples=40, **PROFILE)
@given(offset_cases())
def test_property_dfl_is_the_two_bin_mixture(case):
    prop_dfl_is_the_two_bin_mixture(case, "torch")
