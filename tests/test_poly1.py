"""Poly-1 (``poly1_epsilon``) on focal_loss and sigmoid_focal_loss (PyTorch backend):
against float64 re-statements of the formula (values and gradients), Poly-1 cross-entropy
(``gamma = 0``: ``F.cross_entropy`` / BCE-with-logits plus ``e (1 - p_t)``), ``epsilon = 0``
== the focal loss, weight/ignore/smoothing/probabilities, every reduction, gradcheck, double
backward and torch.func, saturated logits, exactness near certainty, modules and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from focalloss import FocalLoss, SigmoidFocalLoss, focal_loss, sigmoid_focal_loss
from refs import input_grad as _grad
from refs_poly import index_labels, sigmoid_ref, softmax_ref

REDUCTIONS = ["none", "mean", "sum"]


def _softmax_case(kind, shape=(3, 5, 4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (2.5 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    num_classes = shape[1]
    if kind == "prob":
        t = torch.softmax(2 * torch.randn(shape, generator=g, dtype=torch.float64), 1)
        return x, t, dict()
    t = torch.randint(0, num_classes, shape[:1] + shape[2:], generator=g)
    t[torch.rand(t.shape, generator=g) < 0.25] = 255
    smoothing = 0.15 if kind == "smoothed" else 0.0
    return x, t, dict(ignore_index=255, label_smoothing=smoothing)


# --------------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.7])
@pytest.mark.parametrize("poly1", [1.0, -0.6])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_matches_reference(kind, reduction, gamma, poly1, weighted):
    x, t, kw = _softmax_case(kind, seed=hash((kind, gamma)) % 1000)
    if weighted:
        kw.update(
            weight=torch.tensor([1.0, 2.0, 0.5, 1.5, 0.3], dtype=torch.float64),
            alpha=torch.tensor([0.1, 0.4, 0.3, 0.2, 0.9], dtype=torch.float64),
        )
    ours = focal_loss(x, t, gamma=gamma, poly1_epsilon=poly1, reduction=reduction, **kw)
    ref = softmax_ref(x, t, gamma=gamma, poly1=poly1, reduction=reduction, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    go = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_softmax_detached_modulator(kind, gamma):
    # detach_modulator treats (1 - p)^gamma as a constant in the Poly-1 term too:
    # e W (1 - P)^gamma (constant) * (1 - P).
    x, t, kw = _softmax_case(kind, seed=3)
    kw["weight"] = torch.tensor([1.0, 2.0, 0.5, 1.5, 0.3], dtype=torch.float64)
    ours = focal_loss(x, t, gamma=gamma, poly1_epsilon=0.8, detach_modulator=True, **kw)
    ref = softmax_ref(x, t, gamma=gamma, poly1=0.8, detach=True, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_epsilon_zero_is_the_focal_loss(kind, reduction):
    x, t, kw = _softmax_case(kind, seed=4)
    kw.update(weight=[1.0, 2.0, 0.5, 1.5, 0.3], alpha=[0.1, 0.4, 0.3, 0.2, 0.9])
    with_zero = focal_loss(x, t, gamma=1.5, poly1_epsilon=0.0, reduction=reduction, **kw)
    plain = focal_loss(x, t, gamma=1.5, reduction=reduction, **kw)
    assert torch.equal(with_zero, plain)
    assert torch.equal(_grad(with_zero, x), _grad(plain, x))
    ref = softmax_ref(x, t, gamma=1.5, reduction=reduction, **kw)  # no Poly-1 term
    torch.testing.assert_close(with_zero, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_gamma0_is_poly1_cross_entropy(kind, reduction, weighted):
    """Poly-1 CE (Leng et al., eq. 3): CE + e (1 - P) per position, weighted like the position's
    cross-entropy (w_t; sum_c w_c target_c for probabilities), the mean divisor unchanged.
    Anchored on F.cross_entropy, not on the library."""
    x, t, kw = _softmax_case(kind, seed=5)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5, 0.3], dtype=torch.float64) if weighted else None
    eps = 0.7
    ours = focal_loss(x, t, gamma=0.0, poly1_epsilon=eps, weight=weight, reduction=reduction, **kw)
    ce = F.cross_entropy(x, t, weight=weight, reduction="none", **kw)
    p = torch.softmax(x, 1)
    num_classes = x.shape[1]
    smoothing = kw.get("label_smoothing", 0.0)
    if t.is_floating_point():
        raw, valid = t, torch.ones_like(ce, dtype=torch.bool)
        w_t = (t * weight.view(1, -1, 1, 1)).sum(1) if weighted else torch.ones_like(ce)
        divisor = float(ce.numel())
    else:
        valid = t != 255
        safe = torch.where(valid, t, 0)
        raw = F.one_hot(safe, num_classes).movedim(-1, 1).double()
        w_t = weight[safe] if weighted else torch.ones_like(ce)
        divisor = (w_t * valid).sum()
    big_p = (((1 - smoothing) * raw + smoothing / num_classes) * p).sum(1)
    per_position = torch.where(valid, ce + eps * w_t * (1 - big_p), 0.0)
    if reduction == "none":
        expected = per_position
    elif reduction == "sum":
        expected = per_position.sum()
    else:
        expected = per_position.sum() / divisor
        torch.testing.assert_close(
            expected, F.cross_entropy(x, t, weight=weight, **kw) + eps * (
                (w_t * (1 - big_p) * valid).sum() / divisor
            )
        )  # fmt: skip
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grad(ours, x), _grad(expected, x), rtol=1e-9, atol=1e-12)


def test_index_targets_equal_one_hot_probabilities():
    # W = w_t for indices and sum_c w_c target_c for probabilities: the same for a one-hot
    # target, smoothing included ("sum": F.cross_entropy's divisors differ between the forms).
    x, t, _ = _softmax_case("index", seed=6)
    t = t.masked_fill(t == 255, 0)
    one_hot = F.one_hot(t, 5).movedim(-1, 1).double()
    kw = dict(
        gamma=1.5,
        poly1_epsilon=0.9,
        weight=[1.0, 2.0, 0.5, 1.5, 0.3],
        alpha=[0.1, 0.4, 0.3, 0.2, 0.9],
        label_smoothing=0.1,
    )
    for reduction in ("none", "sum"):
        a = focal_loss(x, t, reduction=reduction, **kw)
        b = focal_loss(x, one_hot, reduction=reduction, **kw)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(_grad(a, x), _grad(b, x), rtol=1e-10, atol=1e-13)


def test_mean_divisor_and_ignored_positions():
    # "mean" = "sum" / (weight sum over non-ignored positions); ignored positions hold 0 and get
    # an exact zero gradient whatever their logits hold (NaN, inf).
    x, t, _ = _softmax_case("index", seed=7)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5, 0.3], dtype=torch.float64)
    args = dict(gamma=2.0, poly1_epsilon=1.3, weight=weight, ignore_index=255)
    total = focal_loss(x, t, reduction="sum", **args)
    mean = focal_loss(x, t, **args)
    valid = t != 255
    torch.testing.assert_close(mean, total / weight[t[valid]].sum(), rtol=1e-13, atol=0)
    none = focal_loss(x, t, reduction="none", **args)
    assert bool((none[~valid] == 0).all()) and bool((none[valid] > 0).all())
    y = x.detach().clone()
    y.movedim(1, -1)[~valid] = torch.tensor([float("nan"), float("inf"), -1e4, 3.0, 0.0]).double()
    for label_smoothing in (0.0, 0.2):
        y.requires_grad_()
        got = focal_loss(y, t, label_smoothing=label_smoothing, **args)
        want = focal_loss(x, t, label_smoothing=label_smoothing, **args)
        torch.testing.assert_close(got, want)
        grad = _grad(got, y)
        assert torch.count_nonzero(grad.movedim(1, -1)[~valid]) == 0
        torch.testing.assert_close(grad, _grad(want, x))
        y = y.detach()
    all_ignored = torch.full_like(t, 255)
    loss = focal_loss(x, all_ignored, **args)
    assert loss.item() == 0.0 and torch.count_nonzero(_grad(loss, x)) == 0


@pytest.mark.parametrize("gamma", [0.5])
def test_softmax_layouts_and_chunks(gamma):
    # channels_last (rows of a view) and inputs big enough for the chunked dense path.
    g = torch.Generator().manual_seed(8)
    base = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64)
    t = torch.randint(0, 5, (2, 6, 7), generator=g)
    kw = dict(gamma=gamma, poly1_epsilon=0.5, label_smoothing=0.1, reduction="none")
    x = base.contiguous(memory_format=torch.channels_last).requires_grad_()
    xr = base.clone().requires_grad_()
    out, ref = focal_loss(x, t, **kw), softmax_ref(xr, t, poly1=0.5, **_no_poly(kw))
    torch.testing.assert_close(out, ref)
    grad = _grad(out, x)
    assert grad.stride() == x.stride()
    torch.testing.assert_close(grad, _grad(ref, xr))

    big = torch.randn(2, 5, 300, 200, generator=g, dtype=torch.float64, requires_grad=True)
    tb = torch.randint(0, 5, (2, 300, 200), generator=g)
    prob = torch.softmax(torch.randn(big.shape, generator=g, dtype=torch.float64), 1)
    for target, extra in ((tb, dict(label_smoothing=0.1)), (prob, dict())):
        ours = focal_loss(big, target, gamma=gamma, poly1_epsilon=0.5, reduction="sum", **extra)
        ref = softmax_ref(big, target, gamma=gamma, poly1=0.5, reduction="sum", **extra)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(_grad(ours, big), _grad(ref, big), rtol=1e-8, atol=1e-14)


def _no_poly(kw):
    return {k: v for k, v in kw.items() if k != "poly1_epsilon"}


@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_gradcheck_and_double_backward(kind, gamma):
    x, t, kw = _softmax_case(kind, shape=(2, 3, 3, 2), seed=9)
    kw["weight"] = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)

    def fn(inp):
        return focal_loss(inp, t, gamma=gamma, poly1_epsilon=-0.8, reduction="none", **kw)

    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda z: fn(z).sum(), (x,), fast_mode=True)
    # torch.func runs the composite: the same first derivative as the closed form.
    closed = _grad(fn(x).sum(), x)
    torch.testing.assert_close(torch.func.grad(lambda z: fn(z).sum())(x.detach()), closed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("poly1", [1.0, -1.0])
def test_softmax_finite_at_saturated_logits(dtype, gamma, label_smoothing, poly1):
    x = torch.tensor(
        [[1e4, -1e4, -1e4], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4], [0.0, 0.0, 0.0]], dtype=dtype
    ).requires_grad_()
    t = torch.tensor([0, 0, 1, 2])
    kw = dict(gamma=gamma, poly1_epsilon=poly1, label_smoothing=label_smoothing)
    loss = focal_loss(x, t, **kw)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(x.grad).all())
    if label_smoothing == 0.0:
        per_pos = focal_loss(x.detach(), t, reduction="none", **kw)
        assert per_pos[0].item() == 0.0  # certain and right: 1 - p_t = 0
        gap = (x[1, 1] - x[1, 0]).item()  # certain and wrong: CE = gap, 1 - p_t = 1
        assert per_pos[1].item() == pytest.approx(gap + poly1, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_poly_term_adds_no_error_near_certainty(gamma):
    # 1 - p_t = 1e-12. The log-probability itself carries the rounding of log(1 + 1e-12)
    # (F.cross_entropy's too); the Poly-1 term must add nothing to it: exactly
    # e * u^(gamma + 1) with u = -expm1(log p_t) of torch.log_softmax, and its gradient
    # (gamma + 1) u^gamma * dU/dz with dU/dz_1 = p_1 p_t.
    z = 27.631021115928547
    x = torch.tensor([[0.0, -z]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0])
    lp = torch.log_softmax(x.detach(), 1)[0]
    u = -torch.expm1(lp[0]).item()
    assert u == pytest.approx(1e-12, rel=1e-3)
    with_poly = focal_loss(x, t, gamma=gamma, poly1_epsilon=1.0, reduction="sum")
    without = focal_loss(x, t, gamma=gamma, reduction="sum")
    assert (with_poly - without).item() == pytest.approx(u ** (gamma + 1), rel=1e-9, abs=0)
    grad = _grad(with_poly, x) - _grad(without, x)
    p_1, p_t = lp[1].exp().item(), lp[0].exp().item()
    expected = (gamma + 1) * u**gamma * p_1 * p_t
    assert grad[0, 1].item() == pytest.approx(expected, rel=1e-9, abs=0)
    assert grad[0, 0].item() == pytest.approx(
        -(gamma + 1) * u ** (gamma + 1) * p_t, rel=1e-9, abs=0
    )


def test_softmax_half_precision():
    g = torch.Generator().manual_seed(10)
    x32 = torch.randn(4, 7, 5, 5, generator=g)
    t = torch.randint(0, 7, (4, 5, 5), generator=g)
    for dtype, tol in [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]:
        x = x32.to(dtype).requires_grad_()
        xr = x.detach().float().requires_grad_()
        loss = focal_loss(x, t, poly1_epsilon=1.0)
        ref = focal_loss(xr, t, poly1_epsilon=1.0)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
        loss.backward()
        ref.backward()
        assert x.grad.dtype == dtype
        torch.testing.assert_close(
            x.grad.float(), xr.grad, rtol=tol, atol=tol * xr.grad.abs().max().item()
        )


# --------------------------------------------------------------------------------------------
# sigmoid
# --------------------------------------------------------------------------------------------


def _sigmoid_case(kind, shape=(3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    if kind == "index":
        t = torch.randint(-1, shape[1] + 1, shape[:1] + shape[2:], generator=g)
        labels, keep = index_labels(t, shape[1], -1)
        return x, t, labels, keep, dict(ignore_index=-1)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == "binary":
        t = t.round()
    return x, t, t, None, dict()


@pytest.mark.parametrize("kind", ["binary", "soft", "index"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25, "per-class"])
@pytest.mark.parametrize("weighted", [False, True])
def test_sigmoid_matches_reference(kind, reduction, gamma, alpha, weighted):
    x, t, labels, keep, kw = _sigmoid_case(kind, seed=hash((kind, gamma)) % 1000)
    if alpha == "per-class":
        alpha = torch.tensor([0.1, 0.5, 0.75, 0.9], dtype=torch.float64)
    weights = {}
    if weighted:
        g = torch.Generator().manual_seed(2)
        weights = dict(
            weight=torch.rand(3, 4, 5, generator=g, dtype=torch.float64) + 0.2,
            pos_weight=torch.rand(4, 1, generator=g, dtype=torch.float64) * 3,
        )
    kwargs = dict(gamma=gamma, alpha=alpha, reduction=reduction, **weights)
    ours = sigmoid_focal_loss(x, t, poly1_epsilon=0.75, **kw, **kwargs)
    ref = sigmoid_ref(x, labels, poly1=0.75, keep=keep, **kwargs)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    go = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["soft", "index"])
def test_sigmoid_detached_modulator_and_normalizer(kind):
    x, t, labels, keep, kw = _sigmoid_case(kind, seed=11)
    w = torch.rand(4, 1, dtype=torch.float64) + 0.5
    args = dict(gamma=1.5, alpha=0.3, weight=w, reduction="mean", normalizer=2.5)
    ours = sigmoid_focal_loss(x, t, poly1_epsilon=-0.4, detach_modulator=True, **kw, **args)
    ref = sigmoid_ref(x, labels, poly1=-0.4, detach=True, keep=keep, **args)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["binary", "soft", "index"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_gamma0_is_poly1_bce(kind, reduction):
    """Poly-1 BCE: BCE-with-logits (weight, pos_weight) + e * w * (1 - p_t), anchored on
    F.binary_cross_entropy_with_logits; "mean" divides by the same count as without Poly-1."""
    x, t, labels, keep, kw = _sigmoid_case(kind, seed=12)
    g = torch.Generator().manual_seed(3)
    w = torch.rand(3, 4, 5, generator=g, dtype=torch.float64) + 0.2
    pw = torch.rand(4, 1, generator=g, dtype=torch.float64) * 3
    eps = 1.5
    ours = sigmoid_focal_loss(
        x, t, gamma=0.0, alpha=None, weight=w, pos_weight=pw, poly1_epsilon=eps,
        reduction=reduction, **kw,
    )  # fmt: skip
    bce = F.binary_cross_entropy_with_logits(x, labels, weight=w, pos_weight=pw, reduction="none")
    p = torch.sigmoid(x)
    p_t = p * labels + (1 - p) * (1 - labels)
    full = bce + eps * w * (1 - p_t)
    count = float(full.numel())
    if keep is not None:
        full = torch.where(keep, full, 0.0)
        count = keep.expand_as(full).sum()
    expected = {"none": full, "sum": full.sum(), "mean": full.sum() / count}[reduction]
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grad(ours, x), _grad(expected, x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["soft", "index"])
def test_sigmoid_epsilon_zero_is_the_focal_loss(kind):
    x, t, _, _, kw = _sigmoid_case(kind, seed=13)
    a = sigmoid_focal_loss(x, t, poly1_epsilon=0.0, reduction="none", **kw)
    b = sigmoid_focal_loss(x, t, reduction="none", **kw)
    assert torch.equal(a, b) and torch.equal(_grad(a, x), _grad(b, x))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_gradcheck_and_double_backward(gamma):
    for kind in ("soft", "index"):
        x, t, _, _, kw = _sigmoid_case(kind, shape=(2, 3, 2), seed=14)
        w = torch.rand(3, 1, dtype=torch.float64) + 0.5

        def fn(inp, t=t, kw=kw, w=w):
            return sigmoid_focal_loss(
                inp, t, gamma=gamma, weight=w, poly1_epsilon=0.9, reduction="none", **kw
            )

        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(lambda z, f=fn: f(z).sum(), (x,), fast_mode=True)
        closed = _grad(fn(x).sum(), x)
        torch.testing.assert_close(torch.func.grad(lambda z, f=fn: f(z).sum())(x.detach()), closed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("kind", ["binary", "index"])
def test_sigmoid_finite_at_saturated_logits(dtype, gamma, kind):
    x = torch.tensor([[1e4, -1e4, 40.0], [-1e4, 1e4, -40.0]], dtype=dtype).requires_grad_()
    t = (
        torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=dtype)
        if kind == "binary"
        else torch.tensor([0, 0])
    )
    loss = sigmoid_focal_loss(x, t, gamma=gamma, poly1_epsilon=1.0, alpha=None)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(x.grad).all())
    kw = dict(gamma=gamma, poly1_epsilon=1.0, alpha=None, reduction="none")
    per = sigmoid_focal_loss(x.detach(), t, **kw)
    assert per[0, 0].item() == 0.0  # certain and right
    wrong = -x[1, 0].item()  # 1e4 as rounded to the dtype
    assert per[1, 0].item() == pytest.approx(wrong + 1.0, rel=1e-6)  # certain and wrong: CE + e


# --------------------------------------------------------------------------------------------
# modules and errors
# --------------------------------------------------------------------------------------------


def test_modules_equal_the_functions():
    x, t, kw = _softmax_case("smoothed", seed=15)
    criterion = FocalLoss(1.5, [0.1, 0.4, 0.3, 0.2, 0.9], None, 255, poly1_epsilon=0.5,
                          label_smoothing=0.15, weight=[1.0, 2.0, 0.5, 1.5, 0.3])  # fmt: skip
    expected = focal_loss(
        x, t, gamma=1.5, alpha=[0.1, 0.4, 0.3, 0.2, 0.9], weight=[1.0, 2.0, 0.5, 1.5, 0.3],
        poly1_epsilon=0.5, **kw,
    )  # fmt: skip
    torch.testing.assert_close(criterion(x, t), expected, rtol=1e-6, atol=0)  # float32 buffers
    assert "poly1_epsilon=0.5" in repr(criterion)
    assert "poly1_epsilon" not in repr(FocalLoss())

    x, t, _, _, kw = _sigmoid_case("index", seed=16)
    criterion = SigmoidFocalLoss(gamma=0.5, alpha=None, poly1_epsilon=-0.3, ignore_index=-1)
    torch.testing.assert_close(
        criterion(x, t, normalizer=3.0),
        sigmoid_focal_loss(x, t, gamma=0.5, alpha=None, poly1_epsilon=-0.3, normalizer=3.0, **kw),
    )
    assert "poly1_epsilon=-0.3" in repr(criterion)


BAD = [
    ("1.0", TypeError, r"poly1_epsilon: expected a finite real number, got str"),
    (True, TypeError, r"poly1_epsilon: expected a finite real number, got bool"),
    (None, TypeError, r"poly1_epsilon: expected a finite real number, got NoneType"),
    (torch.tensor(1.0), TypeError, r"poly1_epsilon: expected a finite real number, got Tensor"),
    (float("nan"), ValueError, r"poly1_epsilon: expected a finite real number, got nan"),
    (float("inf"), ValueError, r"poly1_epsilon: expected a finite real number, got inf"),
    (-float("inf"), ValueError, r"poly1_epsilon: expected a finite real number, got -inf"),
]


@pytest.mark.parametrize(("value", "exc", "match"), BAD, ids=[repr(b[0]) for b in BAD])
def test_errors(value, exc, match):
    x = torch.randn(2, 3)
    t = torch.tensor([0, 2])
    with pytest.raises(exc, match=match):
        focal_loss(x, t, poly1_epsilon=value)
    with pytest.raises(exc, match=match):
        sigmoid_focal_loss(x, t, poly1_epsilon=value)
    with pytest.raises(exc, match=match):
        FocalLoss(poly1_epsilon=value)
    with pytest.raises(exc, match=match):
        SigmoidFocalLoss(poly1_epsilon=value)


def test_poly1_is_keyword_only():
    x, t = torch.randn(2, 3), torch.tensor([0, 2])
    with pytest.raises(TypeError):
        focal_loss(x, t, 2.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        FocalLoss(2.0, None, None, -100, 0.5)  # type: ignore[misc]
