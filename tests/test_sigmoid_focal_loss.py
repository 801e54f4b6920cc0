"""sigmoid_focal_loss against torchvision's formula, BCE-with-logits and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focalloss import SigmoidFocalLoss, focal_loss, sigmoid_focal_loss
from refs import float64_logits as _x
from refs import input_grad as _grad
from refs import one_hot_with_background, sigmoid_focal_ref

SHAPES = [(9,), (6, 4), (3, 4, 5, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [None, -1.0, 0.25, 0.9])
@pytest.mark.parametrize("soft", [False, True])
def test_equals_torchvision_formula_elementwise(shape, gamma, alpha, soft):
    x = _x(shape, seed=1)
    g = torch.Generator().manual_seed(2)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    if not soft:
        t = (t > 0.7).double()
    ours = sigmoid_focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="none")
    ref = sigmoid_focal_ref(x, t, gamma=gamma, alpha=alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)
    go = torch.randn(shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("with_weights", [False, True])
def test_gamma0_equals_bce_with_logits(reduction, with_weights):
    x = _x((5, 3, 4), seed=3)
    t = torch.rand(5, 3, 4, dtype=torch.float64)
    weight = torch.rand(3, 1, dtype=torch.float64) if with_weights else None
    pos_weight = torch.rand(4, dtype=torch.float64) * 3 if with_weights else None
    kw = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    ours = sigmoid_focal_loss(x, t, gamma=0.0, alpha=None, **kw)
    ref = F.binary_cross_entropy_with_logits(x, t, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-14)
    go = torch.randn_like(ref)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-6, atol=1e-14)


def test_ratio_to_ce_and_bound():
    x = _x((64, 5), seed=4).detach()
    t = torch.rand(64, 5, dtype=torch.float64).round()
    for gamma in (0.5, 2.0):
        for alpha in (0.25, 0.75):
            loss = sigmoid_focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="none")
            ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            p = torch.sigmoid(x)
            p_t = p * t + (1 - p) * (1 - t)
            a_t = alpha * t + (1 - alpha) * (1 - t)
            torch.testing.assert_close(loss / ce, (1 - p_t) ** gamma * a_t, rtol=1e-10, atol=0)
            assert bool((loss <= ce).all())


def test_symmetry():
    x = _x((7, 3), seed=5)
    t = torch.rand(7, 3, dtype=torch.float64)
    a = sigmoid_focal_loss(x, t, alpha=0.3, reduction="none")
    b = sigmoid_focal_loss(-x, 1 - t, alpha=0.7, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", [(12, 5), (3, 5, 4, 3)], ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_index_targets_equal_one_hot_with_ignored_rows_removed(shape, gamma, reduction):
    num_classes = shape[1]
    x = _x(shape, seed=6)
    g = torch.Generator().manual_seed(7)
    index_shape = shape[:1] + shape[2:]
    t = torch.randint(0, num_classes + 1, index_shape, generator=g)  # C = background
    t[torch.rand(index_shape, generator=g) < 0.25] = -1
    t.view(-1)[0], t.view(-1)[1] = num_classes, -1
    weight = torch.rand(num_classes, *([1] * (len(shape) - 2)), dtype=torch.float64) + 0.5
    pos_weight = torch.rand(shape[-1], dtype=torch.float64) + 0.5
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    kw = dict(gamma=gamma, alpha=alpha, weight=weight, pos_weight=pos_weight)
    ours = sigmoid_focal_loss(x, t, ignore_index=-1, reduction=reduction, **kw)
    keep = t != -1
    onehot = one_hot_with_background(torch.where(keep, t, 0), num_classes)
    elementwise = sigmoid_focal_loss(x, onehot, reduction="none", **kw)
    if reduction == "none":
        expected = elementwise * keep.unsqueeze(1)
    else:
        # "Removed": only the kept positions, reduced over their elements.
        kept = elementwise.movedim(1, -1)[keep]
        expected = kept.sum() if reduction == "sum" else kept.mean()
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-14)
    go = torch.randn_like(ours)
    g_ours = _grad(ours, x, go)
    g_exp = _grad(expected, x, go)
    torch.testing.assert_close(g_ours, g_exp, rtol=1e-8, atol=1e-13)
    assert torch.count_nonzero(g_ours.movedim(1, -1)[~keep]) == 0


def test_index_targets_uint8_and_no_ignore():
    x = _x((4, 3, 2), seed=8)
    t = torch.tensor([[0, 3], [2, 1], [3, 3], [1, 0]], dtype=torch.uint8)
    onehot = one_hot_with_background(t.long(), 3)
    torch.testing.assert_close(sigmoid_focal_loss(x, t), sigmoid_focal_loss(x, onehot))


def test_normalizer_semantics():
    x = _x((10, 4), seed=9)
    t = torch.randint(0, 5, (10,))
    total = sigmoid_focal_loss(x, t, reduction="sum")
    g_total = _grad(total, x)
    for normalizer, divisor in [(3, 3.0), (0, 1.0), (0.5, 1.0), (torch.tensor(7.0), 7.0)]:
        loss = sigmoid_focal_loss(x, t, normalizer=normalizer)
        torch.testing.assert_close(loss, total.detach() / divisor)
        torch.testing.assert_close(_grad(loss, x), g_total / divisor)
    module = SigmoidFocalLoss(normalizer=2.0)
    torch.testing.assert_close(module(x, t), total.detach() / 2)
    torch.testing.assert_close(module(x, t, normalizer=5), total.detach() / 5)


def test_empty_and_all_ignored_give_zero():
    for x, t, kw in [
        (torch.randn(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long), {}),
        (torch.randn(4, 3, requires_grad=True), torch.full((4,), -1), dict(ignore_index=-1)),
        (torch.randn(0, requires_grad=True), torch.zeros(0), {}),
    ]:
        loss = sigmoid_focal_loss(x, t, **kw)
        assert loss.item() == 0.0
        assert torch.count_nonzero(_grad(loss, x)) == 0


@pytest.mark.parametrize("detach_modulator", [False, True])
@pytest.mark.parametrize("kind", ["float", "index"])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradcheck_and_detached_gradient(detach_modulator, kind, gamma):
    x = _x((4, 3, 2), seed=10, scale=2.0)
    if kind == "float":
        t = torch.rand(4, 3, 2, dtype=torch.float64)
    else:
        t = torch.tensor([[0, 3], [2, -1], [3, 3], [1, 0]])
    kw = dict(
        gamma=gamma,
        alpha=0.3,
        weight=torch.rand(3, 1, dtype=torch.float64) + 0.5,
        pos_weight=torch.tensor([1.5, 0.5], dtype=torch.float64),
        ignore_index=-1 if kind == "index" else None,
        reduction="mean",
    )

    def fn(inp):
        return sigmoid_focal_loss(inp, t, detach_modulator=detach_modulator, **kw)

    if not detach_modulator:
        assert torch.autograd.gradcheck(fn, (x,))
        return
    # The detached gradient: the loss with (1 - p_t)^gamma held constant.
    if kind == "index":
        keep = (t != -1).unsqueeze(1)
        labels = one_hot_with_background(torch.where(t != -1, t, 3), 3)
    else:
        keep, labels = torch.ones_like(t, dtype=torch.bool), t
    p = torch.sigmoid(x.detach())
    m = (1 - (p * labels + (1 - p) * (1 - labels))) ** gamma
    ce = F.binary_cross_entropy_with_logits(
        x, labels, pos_weight=kw["pos_weight"], reduction="none"
    )
    a_t = 0.3 * labels + 0.7 * (1 - labels)
    constant_m = (a_t * m * ce * kw["weight"] * keep).sum() / (
        keep.sum() * (3 if kind == "index" else 1)
    )
    torch.testing.assert_close(_grad(fn(x), x), _grad(constant_m, x), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("kind", ["float", "index", "soft"])
def test_finite_at_saturated_logits(dtype, gamma, kind):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0]], dtype=dtype, requires_grad=True)
    if kind == "index":
        t = torch.tensor([0, 1])
    elif kind == "float":
        t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    else:
        t = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.7, 1.0]])
    loss = sigmoid_focal_loss(x, t, gamma=gamma)
    loss.backward()
    assert loss.dtype == torch.float32
    assert x.grad.dtype == dtype
    assert torch.isfinite(loss)
    assert bool(torch.isfinite(x.grad).all())


def test_small_gamma_saturated_gradient_is_exact():
    # torchvision's formula gives NaN here for 0 < gamma < 1; the exact limit is finite.
    x = torch.tensor([40.0, -40.0, 40.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    loss = sigmoid_focal_loss(x, t, gamma=0.5, alpha=None, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert bool(torch.isfinite(g).all())
    # Certain and right: loss ~ e^-40 * (e^-40)^0.5, gradient of that order, not NaN or 0/0.
    q = math.exp(-40.0)
    assert loss[0].item() == pytest.approx(q**1.5, rel=1e-6)
    assert g[0].item() == pytest.approx(-1.5 * q**1.5, rel=1e-5)
    # Certain and wrong: loss ~ 40, gradient ~ 1.
    assert loss[2].item() == pytest.approx(40.0, rel=1e-6)
    assert g[2].item() == pytest.approx(1.0, rel=1e-6)


def test_two_class_identity_with_softmax_focal_loss():
    z = _x((11,), seed=11)
    t = torch.randint(0, 2, (11,))
    for gamma in (0.0, 0.5, 2.0):
        logits = torch.stack([torch.zeros_like(z), z], dim=1)
        softmax = focal_loss(logits, t, gamma=gamma, reduction="none")
        sigmoid = sigmoid_focal_loss(z, t.double(), gamma=gamma, alpha=None, reduction="none")
        torch.testing.assert_close(softmax, sigmoid, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(_grad(softmax.sum(), z), _grad(sigmoid.sum(), z))


def test_half_precision_against_float32():
    g = torch.Generator().manual_seed(12)
    x32 = torch.randn(64, 10, generator=g)
    t = torch.randint(0, 11, (64,), generator=g)
    for dtype, tol in [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)]:
        x = x32.to(dtype).requires_grad_()
        xr = x.detach().float().requires_grad_()
        loss, ref = sigmoid_focal_loss(x, t), sigmoid_focal_loss(xr, t)
        torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
        loss.backward()
        ref.backward()
        torch.testing.assert_close(
            x.grad.float(), xr.grad, rtol=tol, atol=tol * xr.grad.abs().max().item()
        )


def test_module_buffers_and_equality():
    alpha = torch.tensor([0.2, 0.4, 0.6])
    weight = torch.tensor([[1.0], [2.0], [0.5]])
    module = SigmoidFocalLoss(gamma=1.5, alpha=alpha, weight=weight, ignore_index=-1)
    assert set(module.state_dict()) == {"alpha", "weight"}
    module = module.double()
    assert module.weight.dtype == torch.float64
    x = _x((4, 3, 5), seed=13).detach()
    t = torch.randint(-1, 4, (4, 5))
    expected = sigmoid_focal_loss(
        x, t, gamma=1.5, alpha=alpha.double(), weight=weight.double(), ignore_index=-1
    )
    torch.testing.assert_close(module(x, t), expected)
    assert "alpha=0.25" in repr(SigmoidFocalLoss())


def test_large_input_runs_in_pieces_consistently():
    x = _x((50000, 12), seed=14)
    t = torch.randint(0, 13, (50000,))
    onehot = one_hot_with_background(t, 12)
    for target in (t, onehot):
        ours = sigmoid_focal_loss(x, target, reduction="sum")
        ref = sigmoid_focal_ref(x, onehot, reduction="sum")
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-8, atol=1e-14)
