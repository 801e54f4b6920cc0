"""sigmoid_focal_loss_star / SigmoidFocalLossStar against float64 re-statements of FL* (the
RetinaNet paper's appendix A) and of fvcore's sigmoid_focal_loss_star, and BCE-with-logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focalloss import SigmoidFocalLossStar, sigmoid_focal_loss, sigmoid_focal_loss_star
from refs import alpha_balanced
from refs import float64_logits as _x
from refs import input_grad as _grad
from refs import one_hot_with_background as _one_hot


def star_formula(x, t, gamma=2.0, beta=1.0, alpha=0.25):
    """Lin et al. (2017), appendix A: x_t = x if t = 1 else -x (here x (2t - 1)),
    p_t* = sigmoid(gamma x_t + beta), FL* = -log(p_t*) / gamma; times alpha_t as in the focal
    loss (alpha < 0 or None: no factor; a tensor: per class along dim 1)."""
    x, t = x.double(), t.double()
    x_t = x * (2 * t - 1)
    p_star = torch.sigmoid(gamma * x_t + beta)
    loss = -torch.log(p_star) / gamma
    loss = alpha_balanced(loss, t, alpha, x.dim())
    return loss


def fvcore_formula(inputs, targets, alpha=-1.0, gamma=1.0, reduction="none"):
    """fvcore.nn.sigmoid_focal_loss_star, re-stated: shift the logits by the target's sign,
    times gamma; -logsigmoid / gamma; alpha_t when alpha >= 0; mean or sum."""
    shifted = gamma * (inputs * (2 * targets - 1))
    loss = -F.logsigmoid(shifted) / gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


@pytest.mark.parametrize("gamma", [1.0, 2.0, 0.5, 4.0])
@pytest.mark.parametrize("alpha", [-1.0, 0.25, 0.8])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("soft", [False, True])
def test_beta0_equals_fvcore(gamma, alpha, reduction, soft):
    x = _x((6, 5, 3), seed=1)
    g = torch.Generator().manual_seed(2)
    t = torch.rand(6, 5, 3, generator=g, dtype=torch.float64)
    if not soft:
        t = (t > 0.7).double()
    ours = sigmoid_focal_loss_star(x, t, gamma=gamma, beta=0.0, alpha=alpha, reduction=reduction)
    ref = fvcore_formula(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    go = torch.randn_like(ref)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("gamma", "beta"), [(2.0, 1.0), (1.0, 0.0), (4.0, 0.5), (0.5, -1.0), (3.0, 2.0), (2.0, -3.0)]
)
@pytest.mark.parametrize("alpha", [None, 0.25, "per-class"])
@pytest.mark.parametrize("shape", [(11,), (6, 4), (3, 4, 5, 2)], ids=str)
def test_equals_the_formula_at_several_gamma_beta(gamma, beta, alpha, shape):
    x = _x(shape, seed=3)
    g = torch.Generator().manual_seed(4)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    if alpha == "per-class":
        if len(shape) < 2:
            return
        alpha = torch.rand(shape[1], generator=g, dtype=torch.float64)
    ours = sigmoid_focal_loss_star(x, t, gamma=gamma, beta=beta, alpha=alpha, reduction="none")
    ref = star_formula(x, t, gamma=gamma, beta=beta, alpha=alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    go = torch.randn(shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gamma1_beta0_equals_bce_for_binary_targets(reduction):
    x = _x((5, 3, 4), seed=5)
    t = (torch.rand(5, 3, 4, dtype=torch.float64) > 0.5).double()
    weight = torch.rand(3, 1, dtype=torch.float64)
    ours = sigmoid_focal_loss_star(x, t, gamma=1.0, beta=0.0, alpha=None, weight=weight,
                                   reduction=reduction)  # fmt: skip
    ref = F.binary_cross_entropy_with_logits(x, t, weight=weight, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)
    go = torch.randn_like(ref)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-10, atol=1e-14)


def test_symmetry():
    x = _x((7, 3), seed=6)
    t = torch.rand(7, 3, dtype=torch.float64)
    y = (-x).detach().requires_grad_()
    a = sigmoid_focal_loss_star(x, t, alpha=0.3, beta=0.7, reduction="none")
    b = sigmoid_focal_loss_star(y, 1 - t, alpha=0.7, beta=0.7, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(a.sum(), x), -_grad(b.sum(), y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(12, 5), (3, 5, 4, 3)], ids=str)
@pytest.mark.parametrize(("gamma", "beta"), [(2.0, 1.0), (1.0, 0.0), (0.5, -2.0)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_index_targets_equal_one_hot_with_ignored_rows_removed(shape, gamma, beta, reduction):
    num_classes = shape[1]
    x = _x(shape, seed=7)
    g = torch.Generator().manual_seed(8)
    index_shape = shape[:1] + shape[2:]
    t = torch.randint(0, num_classes + 1, index_shape, generator=g)
    t[torch.rand(index_shape, generator=g) < 0.25] = -1
    t.view(-1)[0], t.view(-1)[1] = num_classes, -1
    weight = torch.rand(num_classes, *([1] * (len(shape) - 2)), dtype=torch.float64) + 0.5
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    kw = dict(gamma=gamma, beta=beta, alpha=alpha)
    ours = sigmoid_focal_loss_star(x, t, ignore_index=-1, weight=weight, reduction=reduction, **kw)
    keep = t != -1
    elementwise = weight * star_formula(x, _one_hot(torch.where(keep, t, 0), num_classes), **kw)
    if reduction == "none":
        expected = elementwise * keep.unsqueeze(1)
    else:
        kept = elementwise.movedim(1, -1)[keep]
        expected = kept.sum() if reduction == "sum" else kept.mean()
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-14)
    go = torch.randn_like(ours)
    g_ours = _grad(ours, x, go)
    torch.testing.assert_close(g_ours, _grad(expected, x, go), rtol=1e-9, atol=1e-13)
    assert torch.count_nonzero(g_ours.movedim(1, -1)[~keep]) == 0


@pytest.mark.parametrize("kind", ["float", "index"])
@pytest.mark.parametrize(("gamma", "beta"), [(2.0, 1.0), (0.5, -1.0), (3.0, 0.0)])
def test_gradcheck(kind, gamma, beta):
    x = _x((4, 3, 2), seed=9, scale=2.0)
    if kind == "float":
        t, kw = torch.rand(4, 3, 2, dtype=torch.float64), {}
    else:
        t, kw = torch.tensor([[0, 3], [2, -1], [3, 3], [1, 0]]), dict(ignore_index=-1)
    weight = torch.rand(3, 1, dtype=torch.float64) + 0.5

    def fn(inp):
        return sigmoid_focal_loss_star(inp, t, gamma=gamma, beta=beta, alpha=0.3, weight=weight,
                                       **kw)  # fmt: skip

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("gamma", "beta"), [(2.0, 1.0), (0.5, -1.0), (4.0, 0.0)])
@pytest.mark.parametrize("kind", ["float", "index", "soft"])
def test_finite_at_saturated_logits(dtype, gamma, beta, kind):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0]], dtype=dtype, requires_grad=True)
    if kind == "index":
        t = torch.tensor([0, 1])
    elif kind == "float":
        t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    else:
        t = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.7, 1.0]])
    loss = sigmoid_focal_loss_star(x, t, gamma=gamma, beta=beta)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.isfinite(loss) and bool(torch.isfinite(x.grad).all())


def test_exact_values_at_saturation():
    # Certain and right (z = 2 * 40 + 1): loss e^-81 / 2 (not 0, not clamped); certain and wrong
    # (z = -2e4 + 1): loss (2e4 - 1) / 2 and gradient -(2t - 1) = -1 times alpha = 1.
    x = torch.tensor([40.0, -1e4], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 1.0], dtype=torch.float64)
    loss = sigmoid_focal_loss_star(x, t, alpha=None, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert loss[0].item() == pytest.approx(math.exp(-81.0) / 2, rel=1e-12)
    assert g[0].item() == pytest.approx(-math.exp(-81.0), rel=1e-12)
    assert loss[1].item() == pytest.approx((2e4 - 1) / 2, rel=1e-14)
    assert g[1].item() == pytest.approx(-1.0, rel=1e-14)


def test_close_to_the_focal_loss_in_the_papers_setting():
    # Appendix A: FL* with gamma = 2, beta = 1 behaves like FL with gamma = 2: both small for
    # well-classified examples, both close to -x_t for badly misclassified ones.
    x = torch.tensor([-8.0, -6.0, 6.0, 8.0], dtype=torch.float64)
    t = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    star = sigmoid_focal_loss_star(x, t, alpha=None, reduction="none")
    focal = sigmoid_focal_loss(x, t, alpha=None, reduction="none")
    assert bool((star[2:] < 1e-2).all()) and bool((focal[2:] < 1e-2).all())
    torch.testing.assert_close(star[:2], -x[:2] - 0.5, rtol=1e-3, atol=0)
    torch.testing.assert_close(focal[:2], -x[:2], rtol=1e-2, atol=0)


def test_normalizer_empty_and_all_ignored():
    x = _x((10, 4), seed=10)
    t = torch.randint(0, 5, (10,))
    total = sigmoid_focal_loss_star(x, t, reduction="sum")
    g_total = _grad(total, x)
    for normalizer, divisor in [(3, 3.0), (0, 1.0), (torch.tensor(7.0), 7.0)]:
        loss = sigmoid_focal_loss_star(x, t, normalizer=normalizer)
        torch.testing.assert_close(loss, total.detach() / divisor)
        torch.testing.assert_close(_grad(loss, x), g_total / divisor)
    for x, t, kw in [
        (torch.randn(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long), {}),
        (torch.randn(4, 3, requires_grad=True), torch.full((4,), -1), dict(ignore_index=-1)),
    ]:
        loss = sigmoid_focal_loss_star(x, t, **kw)
        assert loss.item() == 0.0 and torch.count_nonzero(_grad(loss, x)) == 0


def test_ignored_positions_with_garbage_logits():
    x = _x((5, 3, 4), seed=11).detach()
    t = torch.randint(0, 4, (5, 4))
    t[1, 2] = t[3, 0] = -1
    dirty = x.clone()
    dirty[1, :, 2] = float("nan")
    dirty[3, :, 0] = -float("inf")
    for reduction in ("none", "sum", "mean"):
        clean_x, dirty_x = x.clone().requires_grad_(), dirty.clone().requires_grad_()
        clean = sigmoid_focal_loss_star(clean_x, t, ignore_index=-1, reduction=reduction)
        messy = sigmoid_focal_loss_star(dirty_x, t, ignore_index=-1, reduction=reduction)
        torch.testing.assert_close(messy, clean)
        go = torch.ones_like(clean)
        torch.testing.assert_close(_grad(messy, dirty_x, go), _grad(clean, clean_x, go))


def test_large_input_runs_in_pieces_consistently():
    x = _x((50000, 12), seed=12)
    t = torch.randint(0, 13, (50000,))
    onehot = _one_hot(t, 12)
    for target in (t, onehot):
        ours = sigmoid_focal_loss_star(x, target, reduction="sum")
        ref = star_formula(x, onehot).sum()
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-8, atol=1e-14)


def test_half_precision_against_float32():
    g = torch.Generator().manual_seed(13)
    x32 = torch.randn(64, 10, generator=g)
    t = torch.randint(0, 11, (64,), generator=g)
    for dtype, tol in [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)]:
        x = x32.to(dtype).requires_grad_()
        xr = x.detach().float().requires_grad_()
        loss, ref = sigmoid_focal_loss_star(x, t), sigmoid_focal_loss_star(xr, t)
        torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
        loss.backward()
        ref.backward()
        scale = xr.grad.abs().max().item()
        torch.testing.assert_close(x.grad.float(), xr.grad, rtol=tol, atol=tol * scale)


def test_module_equals_function_buffers_and_repr():
    alpha = torch.tensor([0.2, 0.4, 0.6])
    weight = torch.tensor([[1.0], [2.0], [0.5]])
    module = SigmoidFocalLossStar(gamma=1.5, beta=0.5, alpha=alpha, weight=weight,
                                  ignore_index=-1)  # fmt: skip
    assert set(module.state_dict()) == {"alpha", "weight"}
    module = module.double()
    assert module.alpha.dtype == torch.float64
    x = _x((4, 3, 5), seed=14)
    t = torch.randint(-1, 4, (4, 5))
    got = module(x, t)
    expected = sigmoid_focal_loss_star(x, t, gamma=1.5, beta=0.5, alpha=alpha.double(),
                                       weight=weight.double(), ignore_index=-1)  # fmt: skip
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(_grad(got, x), _grad(expected, x))
    module.alpha = -1  # disables the factor, as in the function
    assert module.alpha is None
    torch.testing.assert_close(
        module(x, t),
        sigmoid_focal_loss_star(x, t, gamma=1.5, beta=0.5, alpha=None, weight=weight.double(),
                                ignore_index=-1),
    )  # fmt: skip
    text = repr(SigmoidFocalLossStar())
    assert "gamma=2.0" in text and "beta=1.0" in text and "alpha=0.25" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(gamma=0.0), ValueError, r"gamma: expected a finite number > 0 \(FL\* is"),
        (dict(gamma=-1.0), ValueError, r"gamma: expected a finite number > 0"),
        (dict(gamma=float("nan")), ValueError, r"gamma: expected a finite number > 0"),
        (dict(gamma="2"), TypeError, r"gamma: expected a real number > 0, got str"),
        (dict(beta=float("inf")), ValueError, r"beta: expected a finite real number, got inf"),
        (dict(beta=None), TypeError, r"beta: expected a finite real number, got NoneType"),
        (dict(alpha=1.5), ValueError, r"alpha: expected a number in \[0, 1\], got 1.5"),
        (dict(reduction="avg"), ValueError, r"reduction: expected one of"),
        (dict(backend="gpu"), ValueError, r"backend: expected one of"),
        (dict(normalizer=2.0, reduction="none"), ValueError, r"normalizer: replaces the divisor"),
        (dict(normalizer=float("nan")), ValueError, r"normalizer: expected a finite number >= 0"),
        (dict(ignore_index="x"), TypeError, r"ignore_index: expected an int or None"),
    ],
)
def test_argument_errors(kwargs, error, message):
    x, t = torch.randn(4, 3), torch.rand(4, 3)
    with pytest.raises(error, match=message):
        sigmoid_focal_loss_star(x, t, **kwargs)
    with pytest.raises(error, match=message):
        SigmoidFocalLossStar(**kwargs)


def test_target_and_tensor_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"target: expected labels of shape \(4, 3\)"):
        sigmoid_focal_loss_star(x, torch.rand(3, 3))
    with pytest.raises(ValueError, match=r"target: float labels must lie in \[0, 1\], got -0.5"):
        sigmoid_focal_loss_star(x, torch.full((4, 3), -0.5))
    with pytest.raises(ValueError, match=r"target: class indices must lie in \[0, 3\]"):
        sigmoid_focal_loss_star(x, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"ignore_index: only applies to class-index targets"):
        sigmoid_focal_loss_star(x, torch.rand(4, 3), ignore_index=-1)
    with pytest.raises(ValueError, match=r"alpha: expected one factor per class, shape \(3,\)"):
        sigmoid_focal_loss_star(x, torch.rand(4, 3), alpha=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"alpha: per-class factors must lie in \[0, 1\]"):
        sigmoid_focal_loss_star(x, torch.rand(4, 3), alpha=torch.tensor([0.1, 0.2, 1.5]))
    with pytest.raises(ValueError, match=r"alpha: expected a tensor that does not require grad"):
        sigmoid_focal_loss_star(x, torch.rand(4, 3), alpha=torch.rand(3, requires_grad=True))
    with pytest.raises(ValueError, match=r"weight: expected a shape that broadcasts"):
        sigmoid_focal_loss_star(x, torch.rand(4, 3), weight=torch.rand(5))
    with pytest.raises(TypeError, match=r"input: expected floating-point logits"):
        sigmoid_focal_loss_star(torch.ones(4, 3, dtype=torch.int32), torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"alpha: per-class factors must lie in \[0, 1\]"):
        SigmoidFocalLossStar(alpha=[0.5, 2.0])


@pytest.mark.parametrize("kind", ["float", "index"])
def test_compiled_fullgraph_matches_eager(kind):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(15)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    if kind == "float":
        t, kw = torch.rand(4, 3, 5, generator=g, dtype=torch.float64), dict(reduction="none")
    else:
        t, kw = torch.randint(-1, 4, (4, 5), generator=g), dict(ignore_index=-1, beta=0.3)
    module = SigmoidFocalLossStar(**kw)
    for fn in (lambda inp: sigmoid_focal_loss_star(inp, t, **kw), lambda inp: module(inp, t)):
        compiled = torch.compile(fn, fullgraph=True)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, expected = compiled(xc), fn(xe)
        torch.testing.assert_close(got, expected)
        go = torch.randn_like(got)
        got.backward(go)
        expected.backward(go)
        torch.testing.assert_close(xc.grad, xe.grad)
        torch._dynamo.reset()


def test_func_grad_and_double_backward_use_the_composite():
    x = _x((3, 4), seed=16)
    t = torch.tensor([0, 4, 2])

    def fn(z):
        return sigmoid_focal_loss_star(z, t, gamma=3.0, beta=-0.5)

    closed = _grad(fn(x), x)
    torch.testing.assert_close(torch.func.grad(fn)(x.detach()), closed)
    (with_graph,) = torch.autograd.grad(fn(x), x, create_graph=True)
    torch.testing.assert_close(with_graph, closed)
