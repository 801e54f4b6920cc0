"""asymmetric_loss / AsymmetricLoss against float64 re-statements of the published formula and
of timm's AsymmetricLossMultiLabel, BCE-with-logits, and the library's own guarantees."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from focalloss import AsymmetricLoss, asymmetric_loss, sigmoid_focal_loss_star
from refs import float64_logits as _x
from refs import input_grad as _grad
from refs import one_hot_with_background as _one_hot


def asl_formula(x, t, gamma_pos=0.0, gamma_neg=4.0, clip=0.05):
    """Ridnik et al. (2021), eq. (6)-(8), per element, straight from the paper:
    L+ = (1 - p)^gamma_pos log(p), L- = p_m^gamma_neg log(1 - p_m), p_m = max(p - m, 0),
    loss = -(t L+ + (1 - t) L-). Powers of 0 are written with a guarded base, so that autograd
    gives the limit 0 (not 0 * inf) where a power of an exponent below 1 meets a zero base."""
    x, t = x.double(), t.double()
    p = torch.sigmoid(x)
    p_m = torch.where(p > clip, p - clip, torch.zeros_like(p))

    def power(base, exponent):
        if exponent == 0:
            return torch.ones_like(base)
        safe = torch.where(base > 0, base, torch.ones_like(base))
        return torch.where(base > 0, safe**exponent, torch.zeros_like(base))

    positive = power(1 - p, gamma_pos) * F.logsigmoid(x)
    negative = power(p_m, gamma_neg) * torch.log1p(-p_m)
    return -(t * positive + (1 - t) * negative)


def timm_formula(x, y, gamma_neg=4.0, gamma_pos=1.0, clip=0.05, eps=1e-8, detach=False):
    """timm's AsymmetricLossMultiLabel.forward, re-stated: the negative probability is shifted
    up by clip and clamped at 1, both logs clamp at eps, the focusing weight is
    (1 - p_t)^(gamma_pos y + gamma_neg (1 - y)) (computed without grad when detach), and the
    result is the negated sum."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not detach and torch.is_grad_enabled()):
            pt = xs_pos * y + xs_neg * (1 - y)
            weight = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * weight
    return -loss.sum()


SETTINGS = [
    (0.0, 4.0, 0.05),  # the paper's and timm's defaults (timm's gamma_pos default is 1)
    (1.0, 4.0, 0.05),
    (0.5, 0.5, 0.05),
    (2.0, 0.0, 0.0),
    (0.0, 2.0, 0.0),
    (0.5, 0.3, 0.1),
    (1.0, 1.0, 0.05),
    (0.0, 0.0, 0.05),
    (3.0, 3.0, 0.2),
    (0.0, 4.0, 1.0),
]


@pytest.mark.parametrize(("gamma_pos", "gamma_neg", "clip"), SETTINGS)
@pytest.mark.parametrize("targets", ["binary", "soft"])
@pytest.mark.parametrize("shape", [(9,), (6, 5), (3, 4, 5, 2)], ids=str)
def test_equals_the_formula_elementwise(gamma_pos, gamma_neg, clip, targets, shape):
    x = _x(shape, seed=1)
    g = torch.Generator().manual_seed(2)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    if targets == "binary":
        t = (t > 0.6).double()
    kw = dict(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    ours = asymmetric_loss(x, t, reduction="none", **kw)
    ref = asl_formula(x, t, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)
    go = torch.randn(shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"),
    [(1.0, 4.0, 0.05), (0.0, 4.0, 0.05), (2.0, 3.0, 0.0), (1.0, 2.0, 0.2)],
)
@pytest.mark.parametrize("detach", [False, True])
def test_equals_timm_where_its_eps_clamp_is_inactive(gamma_pos, gamma_neg, clip, detach):
    # Logits in [-6, 6]: p > 2e-3 and 1 - p_m > 2e-3, so timm's eps = 1e-8 never binds.
    g = torch.Generator().manual_seed(3)
    x = (12 * torch.rand(64, 20, generator=g, dtype=torch.float64) - 6).requires_grad_()
    y = (torch.rand(64, 20, generator=g, dtype=torch.float64) < 0.1).double()
    ours = asymmetric_loss(x, y, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip,
                           detach_modulator=detach, reduction="sum")  # fmt: skip
    ref = timm_formula(x, y, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, detach=detach)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-10, atol=1e-13)


def test_differs_from_timm_only_through_its_eps_clamp():
    # Saturated logits: timm clamps log p at log(1e-8); the exact loss keeps -log p = -x.
    x = torch.tensor([[-30.0, 0.5], [2.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ours = asymmetric_loss(x, y, gamma_pos=1.0, reduction="none")
    assert ours[0, 0].item() == pytest.approx(30.0, rel=1e-12)
    assert timm_formula(x[:1, :1], y[:1, :1], gamma_pos=1.0).item() == pytest.approx(
        -math.log(1e-8), rel=1e-6
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_gamma0_clip0_equals_bce_with_logits(reduction, with_weight):
    x = _x((5, 3, 4), seed=4)
    t = torch.rand(5, 3, 4, dtype=torch.float64)
    weight = torch.rand(3, 1, dtype=torch.float64) if with_weight else None
    ours = asymmetric_loss(x, t, gamma_pos=0.0, gamma_neg=0.0, clip=0.0, weight=weight,
                           reduction=reduction)  # fmt: skip
    ref = F.binary_cross_entropy_with_logits(x, t, weight=weight, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)
    go = torch.randn_like(ref)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", [(12, 5), (3, 5, 4, 3)], ids=str)
@pytest.mark.parametrize(("gamma_pos", "gamma_neg", "clip"), SETTINGS[:6])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_index_targets_equal_one_hot_with_ignored_rows_removed(
    shape, gamma_pos, gamma_neg, clip, reduction
):
    num_classes = shape[1]
    x = _x(shape, seed=5)
    g = torch.Generator().manual_seed(6)
    index_shape = shape[:1] + shape[2:]
    t = torch.randint(0, num_classes + 1, index_shape, generator=g)  # C = background
    t[torch.rand(index_shape, generator=g) < 0.25] = -1
    t.view(-1)[0], t.view(-1)[1] = num_classes, -1
    weight = torch.rand(num_classes, *([1] * (len(shape) - 2)), dtype=torch.float64) + 0.5
    kw = dict(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    ours = asymmetric_loss(x, t, ignore_index=-1, weight=weight, reduction=reduction, **kw)
    keep = t != -1
    elementwise = weight * asl_formula(x, _one_hot(torch.where(keep, t, 0), num_classes), **kw)
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


def test_binary_mask_and_uint8_targets():
    x = _x((4, 1, 3), seed=7)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.uint8)
    torch.testing.assert_close(
        asymmetric_loss(x, mask), asymmetric_loss(x, mask.unsqueeze(1).double())
    )
    x = _x((4, 3), seed=8)
    t = torch.tensor([0, 3, 2, 1], dtype=torch.uint8)
    torch.testing.assert_close(asymmetric_loss(x, t), asymmetric_loss(x, _one_hot(t.long(), 3)))


@pytest.mark.parametrize("kind", ["float", "index"])
@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"), [(1.0, 4.0, 0.05), (0.5, 0.5, 0.1), (2.0, 2.0, 0.0)]
)
def test_detached_modulator_gradient(kind, gamma_pos, gamma_neg, clip):
    x = _x((6, 4), seed=9)
    if kind == "float":
        t = torch.rand(6, 4, dtype=torch.float64).round()
        labels = t
    else:
        t = torch.tensor([0, 4, 3, 1, 2, 4])
        labels = _one_hot(t, 4)
    loss = asymmetric_loss(x, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip,
                           detach_modulator=True, reduction="sum")  # fmt: skip
    # The modulators as constants: (1 - p)^gamma_pos and p_m^gamma_neg from detached p.
    p = torch.sigmoid(x.detach())
    p_m = (p - clip).clamp(min=0)
    p_live = torch.sigmoid(x)
    neg_log = -torch.log1p(-torch.where(p_live > clip, p_live - clip, 0.0))
    expected = (labels * (1 - p) ** gamma_pos * F.softplus(-x)
                + (1 - labels) * p_m**gamma_neg * neg_log).sum()  # fmt: skip
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(loss, x), _grad(expected, x), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("kind", ["float", "index"])
@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"),
    [(0.0, 4.0, 0.05), (0.5, 0.5, 0.05), (1.5, 2.5, 0.0), (1.0, 0.0, 0.3)],
)
@pytest.mark.parametrize("detach", [False, True])
def test_gradcheck(kind, gamma_pos, gamma_neg, clip, detach):
    x = _x((4, 3, 2), seed=10, scale=2.0)
    if kind == "float":
        t = torch.rand(4, 3, 2, dtype=torch.float64)
        kw = {}
    else:
        t = torch.tensor([[0, 3], [2, -1], [3, 3], [1, 0]])
        kw = dict(ignore_index=-1)
    weight = torch.rand(3, 1, dtype=torch.float64) + 0.5

    def fn(inp):
        return asymmetric_loss(inp, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip,
                               weight=weight, detach_modulator=detach, **kw)  # fmt: skip

    if detach:  # the detached gradient is not the derivative: compare the composite's
        (with_graph,) = torch.autograd.grad(fn(x), x, create_graph=True)
        torch.testing.assert_close(with_graph, _grad(fn(x), x), rtol=1e-10, atol=1e-14)
        return
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"),
    [(0.0, 4.0, 0.05), (0.5, 0.5, 0.05), (1.0, 0.5, 0.0), (0.0, 0.0, 0.0)],
)
@pytest.mark.parametrize("kind", ["float", "index", "soft"])
def test_finite_at_saturated_logits(dtype, gamma_pos, gamma_neg, clip, kind):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0]], dtype=dtype, requires_grad=True)
    if kind == "index":
        t = torch.tensor([0, 1])
    elif kind == "float":
        t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    else:
        t = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.7, 1.0]])
    loss = asymmetric_loss(x, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.isfinite(loss) and bool(torch.isfinite(x.grad).all())


def test_exact_values_at_saturation():
    # Positive at x = 40: loss = softplus(-40) = e^-40 (not clamped); wrong positive at -1e4:
    # loss 1e4 and gradient -1; a negative below the clip: exactly 0 with a zero gradient;
    # with clip = 0 a certain negative at -40 costs e^-40 * (e^-40)^gamma_neg.
    x = torch.tensor([40.0, -1e4, -5.0, -40.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    loss = asymmetric_loss(x[:3], t[:3], reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert loss[0].item() == pytest.approx(math.exp(-40.0), rel=1e-12)
    assert loss[1].item() == pytest.approx(1e4, rel=1e-12)
    assert g[1].item() == pytest.approx(-1.0, rel=1e-12)
    assert loss[2].item() == 0.0 and g[2].item() == 0.0
    last = asymmetric_loss(x[3:], t[3:], gamma_neg=2.0, clip=0.0, reduction="none")
    assert last.item() == pytest.approx(math.exp(-40.0) ** 3, rel=1e-10)


def test_normalizer_semantics():
    x = _x((10, 4), seed=11)
    t = torch.randint(0, 5, (10,))
    total = asymmetric_loss(x, t, reduction="sum")
    g_total = _grad(total, x)
    for normalizer, divisor in [(3, 3.0), (0, 1.0), (0.5, 1.0), (torch.tensor(7.0), 7.0)]:
        loss = asymmetric_loss(x, t, normalizer=normalizer)
        torch.testing.assert_close(loss, total.detach() / divisor)
        torch.testing.assert_close(_grad(loss, x), g_total / divisor)
    module = AsymmetricLoss(normalizer=2.0)
    torch.testing.assert_close(module(x, t), total.detach() / 2)
    torch.testing.assert_close(module(x, t, normalizer=5), total.detach() / 5)


def test_empty_and_all_ignored_give_zero():
    for x, t, kw in [
        (torch.randn(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long), {}),
        (torch.randn(4, 3, requires_grad=True), torch.full((4,), -1), dict(ignore_index=-1)),
        (torch.randn(0, requires_grad=True), torch.zeros(0), {}),
    ]:
        loss = asymmetric_loss(x, t, **kw)
        assert loss.item() == 0.0
        assert torch.count_nonzero(_grad(loss, x)) == 0


def test_ignored_positions_with_garbage_logits():
    x = _x((5, 3, 4), seed=12).detach()
    t = torch.randint(0, 4, (5, 4))
    t[1, 2] = t[3, 0] = -1
    dirty = x.clone()
    dirty[1, :, 2] = float("nan")
    dirty[3, :, 0] = float("inf")
    for reduction in ("none", "sum", "mean"):
        clean_x, dirty_x = x.clone().requires_grad_(), dirty.clone().requires_grad_()
        clean = asymmetric_loss(clean_x, t, ignore_index=-1, reduction=reduction)
        messy = asymmetric_loss(dirty_x, t, ignore_index=-1, reduction=reduction)
        torch.testing.assert_close(messy, clean)
        go = torch.ones_like(clean)
        torch.testing.assert_close(_grad(messy, dirty_x, go), _grad(clean, clean_x, go))


def test_half_precision_against_float32():
    g = torch.Generator().manual_seed(13)
    x32 = torch.randn(64, 10, generator=g)
    t = (torch.rand(64, 10, generator=g) < 0.2).float()
    for dtype, tol in [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)]:
        x = x32.to(dtype).requires_grad_()
        xr = x.detach().float().requires_grad_()
        loss, ref = asymmetric_loss(x, t), asymmetric_loss(xr, t)
        torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
        loss.backward()
        ref.backward()
        scale = xr.grad.abs().max().item()
        torch.testing.assert_close(x.grad.float(), xr.grad, rtol=tol, atol=tol * scale)


def test_large_input_runs_in_pieces_consistently():
    x = _x((50000, 12), seed=14)
    t = torch.randint(0, 13, (50000,))
    onehot = _one_hot(t, 12)
    for target in (t, onehot):
        ours = asymmetric_loss(x, target, gamma_pos=1.0, reduction="sum")
        ref = asl_formula(x, onehot, gamma_pos=1.0).sum()
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-8, atol=1e-14)
    ours = asymmetric_loss(x, onehot, reduction="none")
    torch.testing.assert_close(ours, asl_formula(x, onehot), rtol=1e-10, atol=1e-14)


def test_module_equals_function_buffers_and_repr():
    weight = torch.tensor([[1.0], [2.0], [0.5]])
    module = AsymmetricLoss(gamma_pos=1.0, gamma_neg=3.0, clip=0.1, weight=weight,
                            ignore_index=-1, detach_modulator=True)  # fmt: skip
    assert set(module.state_dict()) == {"weight"}
    module = module.double()
    assert module.weight.dtype == torch.float64
    x = _x((4, 3, 5), seed=15)
    t = torch.randint(-1, 4, (4, 5))
    kw = dict(gamma_pos=1.0, gamma_neg=3.0, clip=0.1, ignore_index=-1, detach_modulator=True)
    got, expected = module(x, t), asymmetric_loss(x, t, weight=weight.double(), **kw)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(_grad(got, x), _grad(expected, x))
    module.weight = None
    torch.testing.assert_close(module(x, t), asymmetric_loss(x, t, **kw))
    text = repr(AsymmetricLoss())
    assert "gamma_pos=0.0" in text and "gamma_neg=4.0" in text and "clip=0.05" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(gamma_pos=-1.0), ValueError, r"gamma_pos: expected a finite number >= 0, got -1.0"),
        (dict(gamma_pos=float("nan")), ValueError, r"gamma_pos: expected a finite number >= 0"),
        (dict(gamma_neg=float("inf")), ValueError, r"gamma_neg: expected a finite number >= 0"),
        (dict(gamma_neg="4"), TypeError, r"gamma_neg: expected a real number >= 0, got str"),
        (dict(gamma_pos=True), TypeError, r"gamma_pos: expected a real number >= 0, got bool"),
        (dict(clip=-0.1), ValueError, r"clip: expected a number in \[0, 1\], got -0.1"),
        (dict(clip=1.5), ValueError, r"clip: expected a number in \[0, 1\], got 1.5"),
        (dict(clip=None), TypeError, r"clip: expected a number in \[0, 1\], got NoneType"),
        (dict(reduction="avg"), ValueError, r"reduction: expected one of"),
        (dict(backend="cuda"), ValueError, r"backend: expected one of"),
        (dict(detach_modulator=1), TypeError, r"detach_modulator: expected a bool, got 1"),
        (dict(normalizer=2.0, reduction="sum"), ValueError, r"normalizer: replaces the divisor"),
        (dict(normalizer=-1.0), ValueError, r"normalizer: expected a finite number >= 0"),
        (dict(ignore_index=1.5), TypeError, r"ignore_index: expected an int or None"),
    ],
)
def test_argument_errors(kwargs, error, message):
    x, t = torch.randn(4, 3), torch.rand(4, 3)
    with pytest.raises(error, match=message):
        asymmetric_loss(x, t, **kwargs)
    with pytest.raises(error, match=message):  # the module checks its configuration at once
        AsymmetricLoss(**kwargs)


def test_target_and_tensor_errors():
    x = torch.randn(4, 3)
    cases = [
        (torch.rand(4, 2), ValueError, r"target: expected labels of shape \(4, 3\) or class "
                                       r"indices of shape \(4,\) .* got shape \(4, 2\)"),
        (torch.ones(4, 3, dtype=torch.long), TypeError, r"target: labels of the input's shape"),
        (torch.rand(4), TypeError, r"target: class indices of shape \(4,\) must have an integer"),
        (torch.rand(4, 3) * 2, ValueError, r"target: float labels must lie in \[0, 1\], got 1"),
        (torch.tensor([0, 1, 2, 5]), ValueError, r"target: class indices must lie in \[0, 3\]"),
    ]  # fmt: skip
    for target, error, message in cases:
        with pytest.raises(error, match=message):
            asymmetric_loss(x, target)
    with pytest.raises(ValueError, match=r"ignore_index: only applies to class-index targets"):
        asymmetric_loss(x, torch.rand(4, 3), ignore_index=-1)
    with pytest.raises(ValueError, match=r"weight: expected a shape that broadcasts"):
        asymmetric_loss(x, torch.rand(4, 3), weight=torch.rand(2))
    with pytest.raises(ValueError, match=r"weight: expected finite values >= 0, got -1"):
        asymmetric_loss(x, torch.rand(4, 3), weight=-torch.ones(3))
    with pytest.raises(TypeError, match=r"input: expected floating-point logits"):
        asymmetric_loss(torch.ones(4, 3, dtype=torch.long), torch.rand(4, 3))
    with pytest.raises(TypeError, match=r"input: expected a torch.Tensor, got list"):
        asymmetric_loss([1.0], torch.rand(1))
    with pytest.raises(ValueError, match=r"target: expected a tensor that does not require grad"):
        asymmetric_loss(x, torch.rand(4, 3, requires_grad=True))
    with pytest.raises(TypeError, match=r"weight: expected a tensor or None, got list"):
        AsymmetricLoss(weight=[1.0, 2.0])


def test_triton_backend_errors_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("CUDA machine: the kernels run")
    with pytest.raises(RuntimeError, match=r"backend='triton' (needs CUDA tensors|cannot run)"):
        asymmetric_loss(torch.randn(4, 3), torch.rand(4, 3), backend="triton")


@pytest.mark.parametrize("kind", ["float", "index"])
def test_compiled_fullgraph_matches_eager(kind):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(16)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    if kind == "float":
        t, kw = (torch.rand(4, 3, 5, generator=g) < 0.3).double(), dict(reduction="none")
    else:
        t, kw = torch.randint(-1, 4, (4, 5), generator=g), dict(ignore_index=-1, gamma_pos=1.0)

    def step(inp):
        return asymmetric_loss(inp, t, **kw)

    module = AsymmetricLoss(**kw)
    for fn in (step, lambda inp: module(inp, t)):
        compiled = torch.compile(fn, fullgraph=True)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, expected = compiled(xc), fn(xe)
        torch.testing.assert_close(got, expected)
        go = torch.randn_like(got)
        got.backward(go)
        expected.backward(go)
        torch.testing.assert_close(xc.grad, xe.grad)
        torch._dynamo.reset()


def test_func_grad_and_vmap_use_the_composite():
    x = _x((3, 4), seed=17).detach()
    t = torch.tensor([0, 4, 2])
    x = x.requires_grad_()
    closed = _grad(asymmetric_loss(x, t, gamma_pos=0.5), x)
    torch.testing.assert_close(
        torch.func.grad(lambda z: asymmetric_loss(z, t, gamma_pos=0.5))(x.detach()), closed
    )
    per_row = torch.func.vmap(
        torch.func.grad(lambda z, tt: asymmetric_loss(z[None], tt[None], reduction="sum"))
    )(x.detach(), t)
    torch.testing.assert_close(per_row, _grad(asymmetric_loss(x, t, reduction="sum"), x))


# Properties (Hypothesis, derandomised): the library against itself under transformations the
# math says are neutral, for both elementwise losses of this family.

PROPERTY_SETTINGS = settings(derandomize=True, max_examples=25, deadline=None)


@st.composite
def elementwise_cases(draw):
    n, c, s = draw(st.integers(2, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(n, c, s, generator=g, dtype=torch.float64)
    t = torch.randint(-1, c + 1, (n, s), generator=g) if c > 1 else torch.randint(-1, 2, (n, s))
    weight = torch.rand(c, 1, generator=g, dtype=torch.float64) + 0.1
    if draw(st.booleans()):
        options = dict(gamma_pos=draw(st.sampled_from([0.0, 0.5, 1.0])),
                       gamma_neg=draw(st.sampled_from([0.0, 0.5, 4.0])),
                       clip=draw(st.sampled_from([0.0, 0.05, 0.3])))  # fmt: skip
        return asymmetric_loss, x, t, weight, options
    options = dict(gamma=draw(st.sampled_from([0.5, 2.0])), beta=draw(st.floats(-2, 2)),
                   alpha=draw(st.sampled_from([None, 0.25])))  # fmt: skip
    return sigmoid_focal_loss_star, x, t, weight, options


def _loss_grad(fn, x, t, **kw):
    leaf = x.clone().requires_grad_()
    loss = fn(leaf, t, ignore_index=-1, **kw)
    (g,) = torch.autograd.grad(loss, leaf, torch.ones_like(loss))
    return loss.detach(), g


@PROPERTY_SETTINGS
@given(elementwise_cases())
def test_property_batch_split_mean_and_class_permutation(case):
    fn, x, t, weight, options = case
    kw = dict(weight=weight, **options)
    total, grad = _loss_grad(fn, x, t, reduction="sum", **kw)
    k = x.shape[0] // 2
    parts = (
        _loss_grad(fn, x[:k], t[:k], reduction="sum", **kw)[0]
        + _loss_grad(fn, x[k:], t[k:], reduction="sum", **kw)[0]
    )
    torch.testing.assert_close(parts, total, rtol=1e-12, atol=1e-12)
    kept = int((t != -1).sum()) * x.shape[1]
    mean, _ = _loss_grad(fn, x, t, reduction="mean", **kw)
    torch.testing.assert_close(mean, total / kept if kept else total * 0, rtol=1e-12, atol=1e-14)
    c = x.shape[1]
    if c == 1:
        return
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(0))
    inverse = torch.argsort(perm)
    lookup = torch.cat([inverse, torch.tensor([c])])
    t_perm = torch.where(t == -1, t, lookup[t.clamp(min=0)])
    permuted, permuted_grad = _loss_grad(
        fn, x[:, perm], t_perm, reduction="sum", **{**kw, "weight": weight[perm]}
    )
    torch.testing.assert_close(permuted, total, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(permuted_grad, grad[:, perm], rtol=1e-12, atol=1e-14)
