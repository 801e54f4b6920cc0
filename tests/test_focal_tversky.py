"""focal_tversky_loss / FocalTverskyLoss against a float64 re-statement of Abraham & Khan
(2019), the soft Dice loss, removal of ignored positions, per-image computation, and the
library's guarantees (gradients, saturation, compile, errors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from focalloss import FocalTverskyLoss, focal_tversky_loss
from refs import input_grad as _grad


def _x(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()


def tversky_formula(
    x, g, valid=None, alpha=0.7, beta=0.3, gamma=0.75, smooth=1.0, softmax=True,
    per_image=False, weight=None, reduction="mean",
):  # fmt: skip
    """Abraham & Khan (2019): TI_c = (TP + s) / (TP + alpha FN + beta FP + s) with soft counts
    over the (valid) positions, FTL = sum_c (1 - TI_c)^gamma here averaged over the classes
    (and images); the paper's exponent 1/gamma is this gamma."""
    x, g = x.double(), g.double()
    p = torch.softmax(x, 1) if softmax else torch.sigmoid(x)
    v = torch.ones_like(p[:, :1]) if valid is None else valid.unsqueeze(1).double()
    dims = tuple(range(2, x.dim())) if per_image else (0, *range(2, x.dim()))
    if not dims:
        tp, fn, fp = p * g * v, (1 - p) * g * v, p * (1 - g) * v
    else:
        tp, fn, fp = (p * g * v).sum(dims), ((1 - p) * g * v).sum(dims), (p * (1 - g) * v).sum(dims)
    den = tp + alpha * fn + beta * fp + smooth
    live = den > 0  # 0/0 (smooth = 0, no target and no predicted mass): TI = 1 by convention
    ti = torch.where(live, (tp + smooth) / torch.where(live, den, 1.0), 1.0)
    u = 1 - ti  # 0 for an image with no counted position: its gradient is the limit 0
    safe = torch.where(u > 0, u, torch.ones_like(u))
    terms = torch.where(u > 0, safe**gamma, torch.full_like(u, 0.0 if gamma > 0 else 1.0))
    if weight is not None:
        terms = terms * torch.as_tensor(weight, dtype=torch.float64)
    if reduction == "none":
        return terms
    return terms.mean() if reduction == "mean" else terms.sum()


def soft_dice(x, g, smooth, softmax=True):
    """1 - (2 sum p g + s) / (sum p + sum g + s) per class, averaged."""
    p = torch.softmax(x, 1) if softmax else torch.sigmoid(x)
    dims = (0, *range(2, x.dim()))
    return (1 - (2 * (p * g).sum(dims) + smooth) / (p.sum(dims) + g.sum(dims) + smooth)).mean()


def _index_case(shape, softmax, seed, ignore=True):
    """Class indices (C = background allowed for the sigmoid), 255 ignored, and their one-hot."""
    num_classes = shape[1]
    g = torch.Generator().manual_seed(seed)
    index_shape = shape[:1] + shape[2:]
    t = torch.randint(0, num_classes + (0 if softmax else 1), index_shape, generator=g)
    if ignore:
        t[torch.rand(index_shape, generator=g) < 0.2] = 255
    valid = t != 255
    onehot = F.one_hot(torch.where(valid, t, 0), num_classes + 1)[..., :num_classes]
    return t, onehot.movedim(-1, 1).double(), valid


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 6), (2, 3, 4, 3, 2)], ids=str)
@pytest.mark.parametrize(
    "params",
    [dict(), dict(alpha=0.3, beta=0.7, gamma=2.0, smooth=0.5), dict(gamma=1.0, smooth=0.0),
     dict(alpha=1.0, beta=0.0, gamma=0.5, weight=[0.5, 1.0, 2.0, 0.0])],
    ids=["default", "a.3-b.7-g2", "g1-s0", "a1-b0-weighted"],
)  # fmt: skip
def test_index_targets_equal_the_formula(activation, per_image, reduction, shape, params):
    softmax = activation == "softmax"
    params = dict(params)
    if "weight" in params and shape[1] != 4:
        params["weight"] = params["weight"][: shape[1]]
    x = _x(shape, seed=1)
    t, onehot, valid = _index_case(shape, softmax, seed=2)
    ours = focal_tversky_loss(x, t, activation=activation, per_image=per_image,
                              reduction=reduction, ignore_index=255, **params)  # fmt: skip
    ref = tversky_formula(x, onehot, valid, softmax=softmax, per_image=per_image,
                          reduction=reduction, **params)  # fmt: skip
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13)
    go = torch.randn_like(ref)
    g_ours = _grad(ours, x, go)
    torch.testing.assert_close(g_ours, _grad(ref, x, go), rtol=1e-8, atol=1e-13)
    assert torch.count_nonzero(g_ours.movedim(1, -1)[~valid]) == 0


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float_targets_equal_the_formula(activation, per_image, reduction):
    softmax = activation == "softmax"
    x = _x((3, 4, 5, 6), seed=3)
    g = torch.Generator().manual_seed(4)
    if softmax:  # class probabilities
        t = torch.softmax(3 * torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64), 1)
    else:  # multi-hot labels
        t = (torch.rand(3, 4, 5, 6, generator=g, dtype=torch.float64) < 0.3).double()
    kw = dict(alpha=0.6, beta=0.4, gamma=1.5, per_image=per_image, reduction=reduction)
    ours = focal_tversky_loss(x, t, activation=activation, weight=[1.0, 2.0, 0.5, 1.5], **kw)
    ref = tversky_formula(x, t, softmax=softmax, weight=[1.0, 2.0, 0.5, 1.5], **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13)
    go = torch.randn_like(ref)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-8, atol=1e-13)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("smooth", [0.0, 1.0, 10.0])
@pytest.mark.parametrize("kind", ["index", "float"])
def test_alpha_beta_half_gamma1_is_soft_dice(activation, smooth, kind):
    softmax = activation == "softmax"
    x = _x((4, 3, 6, 5), seed=5)
    if kind == "index":
        t, onehot, _ = _index_case((4, 3, 6, 5), softmax, seed=6, ignore=False)
    else:
        t = onehot = torch.rand(4, 3, 6, 5, dtype=torch.float64)
    ours = focal_tversky_loss(x, t, alpha=0.5, beta=0.5, gamma=1.0, smooth=smooth,
                              activation=activation)  # fmt: skip
    ref = soft_dice(x, onehot, 2 * smooth, softmax=softmax)  # TI with s is Dice with 2s
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_ignored_positions_equal_removing_them(activation):
    softmax = activation == "softmax"
    x = _x((3, 4, 5, 6), seed=7)
    t, _, valid = _index_case((3, 4, 5, 6), softmax, seed=8)
    kw = dict(activation=activation, gamma=0.75)
    ours = focal_tversky_loss(x, t, ignore_index=255, **kw)
    kept_x = x.movedim(1, -1)[valid]  # (K, C): the kept positions as a batch of rows
    kept = focal_tversky_loss(kept_x, t[valid], **kw)
    torch.testing.assert_close(ours, kept, rtol=1e-12, atol=1e-14)
    g = _grad(ours, x)
    g_kept = _grad(kept, x)  # through the gather: zero at the removed positions
    torch.testing.assert_close(g, g_kept, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_garbage_logits_at_ignored_positions(activation, garbage):
    x = _x((2, 3, 4, 4), seed=9).detach()
    t, _, _ = _index_case((2, 3, 4, 4), activation == "softmax", seed=10, ignore=False)
    t[0, 1, :2] = 255
    t[1, 3, 3] = 255
    dirty = x.clone()
    dirty[0, :, 1, :2] = garbage
    dirty[1, :, 3, 3] = garbage
    for per_image in (False, True):
        for reduction in ("mean", "sum", "none"):
            kw = dict(activation=activation, per_image=per_image, reduction=reduction,
                      ignore_index=255)  # fmt: skip
            clean_x, dirty_x = x.clone().requires_grad_(), dirty.clone().requires_grad_()
            clean = focal_tversky_loss(clean_x, t, **kw)
            messy = focal_tversky_loss(dirty_x, t, **kw)
            torch.testing.assert_close(messy, clean, rtol=1e-12, atol=1e-15)
            go = torch.ones_like(clean)
            g_messy = _grad(messy, dirty_x, go)
            torch.testing.assert_close(g_messy, _grad(clean, clean_x, go), rtol=1e-10, atol=1e-15)
            assert not bool(g_messy[0, :, 1, :2].any()) and not bool(g_messy[1, :, 3, 3].any())


def test_nan_at_a_counted_position_makes_the_loss_nan():
    x = _x((2, 3, 4), seed=11).detach()
    x[0, 1, 2] = float("nan")
    t = torch.randint(0, 3, (2, 4))
    assert torch.isnan(focal_tversky_loss(x, t))


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_per_image_equals_each_image_alone(activation, reduction):
    x = _x((3, 4, 5, 6), seed=12)
    t, _, _ = _index_case((3, 4, 5, 6), activation == "softmax", seed=13)
    kw = dict(activation=activation, ignore_index=255)
    ours = focal_tversky_loss(x, t, per_image=True, reduction=reduction, **kw)
    alone = [focal_tversky_loss(x[n : n + 1], t[n : n + 1], reduction="none", **kw)
             for n in range(3)]  # fmt: skip
    stacked = torch.stack(alone)
    expected = {"none": stacked, "sum": stacked.sum(), "mean": stacked.mean()}[reduction]
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-15)
    go = torch.randn_like(ours)
    torch.testing.assert_close(_grad(ours, x, go), _grad(expected, x, go), rtol=1e-10, atol=1e-15)


def test_layouts_and_two_dimensional_input():
    x = _x((2, 5, 6, 7), seed=14)
    t, onehot, valid = _index_case((2, 5, 6, 7), True, seed=15)
    ref = tversky_formula(x, onehot, valid)
    expected = _grad(ref, x)
    channels_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    loss = focal_tversky_loss(channels_last, t, ignore_index=255)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(loss, channels_last), expected, rtol=1e-10, atol=1e-15)
    swapped = x.detach().transpose(2, 3).requires_grad_()  # strided: spatial dims swapped
    loss = focal_tversky_loss(swapped, t.transpose(1, 2), ignore_index=255)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(loss, swapped).transpose(2, 3), expected, rtol=1e-10,
                               atol=1e-15)  # fmt: skip
    rows = _x((40, 6), seed=16)
    t2, onehot2, valid2 = _index_case((40, 6), True, seed=17)
    for per_image in (False, True):
        loss = focal_tversky_loss(rows, t2, ignore_index=255, per_image=per_image)
        ref2 = tversky_formula(rows, onehot2, valid2, per_image=per_image)
        torch.testing.assert_close(loss, ref2, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(_grad(loss, rows), _grad(ref2, rows), rtol=1e-10, atol=1e-15)


def test_empty_all_ignored_and_zero_denominator():
    for per_image in (False, True):
        x = torch.randn(0, 3, 4, requires_grad=True)
        loss = focal_tversky_loss(x, torch.zeros(0, 4, dtype=torch.long), per_image=per_image)
        assert loss.item() == 0.0 and _grad(loss, x).shape == (0, 3, 4)
        x = torch.randn(2, 3, 4, requires_grad=True)
        t = torch.full((2, 4), 255)
        loss = focal_tversky_loss(x, t, ignore_index=255, per_image=per_image)
        assert loss.item() == 0.0 and torch.count_nonzero(_grad(loss, x)) == 0
    # smooth = 0, a class with neither target nor predicted mass (sigmoid(-1e4) is exactly 0):
    # TI = 1 for it (0/0 taken as perfect), the loss and the gradient stay finite.
    x = torch.tensor([[[-1e4, -1e4], [2.0, -1.0]]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64).unsqueeze(0)
    terms = focal_tversky_loss(x, t, smooth=0.0, activation="sigmoid", reduction="none")
    assert terms[0].item() == 0.0 and terms[1].item() > 0.0
    loss = focal_tversky_loss(x, t, smooth=0.0, activation="sigmoid")
    assert bool(torch.isfinite(_grad(loss, x)).all())


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("kind", ["index", "float"])
@pytest.mark.parametrize("gamma", [0.75, 2.0])
def test_gradcheck_and_gradgradcheck(activation, per_image, kind, gamma):
    x = _x((2, 3, 4), seed=18, scale=1.5)
    if kind == "index":
        t = torch.tensor([[0, 2, 255, 1], [1, 1, 0, 255]])
        kw = dict(ignore_index=255)
    else:
        t = torch.rand(2, 3, 4, dtype=torch.float64)
        kw = {}

    def fn(inp):
        return focal_tversky_loss(inp, t, gamma=gamma, activation=activation,
                                  per_image=per_image, weight=[1.0, 0.5, 2.0], **kw)  # fmt: skip

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("gamma", [0.75, 1.0, 2.0])
def test_finite_at_saturated_logits(dtype, activation, gamma):
    x = torch.tensor(
        [[[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0], [0.0, -1e4, 1e4]]], dtype=dtype
    ).requires_grad_()
    t = torch.tensor([[0, 1, 2]])
    for kw in (dict(), dict(per_image=True), dict(smooth=0.0)):
        loss = focal_tversky_loss(x, t, activation=activation, gamma=gamma, **kw)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())


def test_perfect_prediction_has_zero_loss_and_gradient():
    # Saturated correct logits: p equals the one-hot target exactly, u = 0 for every class
    # (gamma < 1: the cusp of u^gamma, whose limit gradient is 0).
    x = torch.tensor([[[200.0, -200.0], [-200.0, 200.0]]], requires_grad=True)
    t = torch.tensor([[0, 1]])
    loss = focal_tversky_loss(x, t, smooth=0.0, activation="sigmoid")
    assert loss.item() == 0.0
    assert torch.count_nonzero(_grad(loss, x)) == 0


def test_half_precision_against_float32():
    g = torch.Generator().manual_seed(19)
    x32 = torch.randn(2, 5, 8, 8, generator=g)
    t = torch.randint(0, 5, (2, 8, 8), generator=g)
    for dtype, tol in [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)]:
        x = x32.to(dtype).requires_grad_()
        xr = x.detach().float().requires_grad_()
        loss, ref = focal_tversky_loss(x, t), focal_tversky_loss(xr, t)
        torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
        loss.backward()
        ref.backward()
        scale = xr.grad.abs().max().item()
        torch.testing.assert_close(x.grad.float(), xr.grad, rtol=tol, atol=tol * scale)


def test_large_input_matches_the_formula():
    x = _x((4, 19, 48, 48), seed=20)
    t, onehot, valid = _index_case((4, 19, 48, 48), True, seed=21)
    for per_image in (False, True):
        ours = focal_tversky_loss(x, t, ignore_index=255, per_image=per_image)
        ref = tversky_formula(x, onehot, valid, per_image=per_image)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-8, atol=1e-15)


@pytest.mark.parametrize("per_image", [False, True])
def test_gradient_in_groups_of_images(per_image, monkeypatch):
    from focalloss._torch import focal_tversky as backend

    monkeypatch.setattr(backend, "_SCRATCH_ELEMENTS", 2 * 4 * 5 * 6)  # two images per group
    x = _x((5, 4, 5, 6), seed=27)
    t, onehot, valid = _index_case((5, 4, 5, 6), True, seed=28)
    ours = focal_tversky_loss(x, t, ignore_index=255, per_image=per_image)
    ref = tversky_formula(x, onehot, valid, per_image=per_image)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-10, atol=1e-15)


def test_module_equals_function_buffers_and_repr():
    weight = torch.tensor([1.0, 2.0, 0.5])
    module = FocalTverskyLoss(alpha=0.6, beta=0.4, gamma=1.5, smooth=0.5, weight=weight,
                              ignore_index=255, per_image=True)  # fmt: skip
    assert set(module.state_dict()) == {"weight"}
    module = module.double()
    assert module.weight.dtype == torch.float64
    x = _x((2, 3, 4, 5), seed=22)
    t, _, _ = _index_case((2, 3, 4, 5), True, seed=23)
    kw = dict(alpha=0.6, beta=0.4, gamma=1.5, smooth=0.5, ignore_index=255, per_image=True)
    got, expected = module(x, t), focal_tversky_loss(x, t, weight=weight.double(), **kw)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(_grad(got, x), _grad(expected, x))
    module.weight = [1.0, 1.0, 3.0]
    assert module.weight.dtype == torch.float32
    torch.testing.assert_close(module(x, t), focal_tversky_loss(x, t, weight=[1.0, 1.0, 3.0], **kw))
    text = repr(FocalTverskyLoss())
    assert "alpha=0.7" in text and "gamma=0.75" in text and "activation='softmax'" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(alpha=-0.1), ValueError, r"alpha: expected a finite number >= 0, got -0.1"),
        (dict(beta=float("inf")), ValueError, r"beta: expected a finite number >= 0, got inf"),
        (dict(gamma=float("nan")), ValueError, r"gamma: expected a finite number >= 0, got nan"),
        (dict(smooth=-1.0), ValueError, r"smooth: expected a finite number >= 0, got -1.0"),
        (dict(smooth="1"), TypeError, r"smooth: expected a real number >= 0, got str"),
        (dict(activation="relu"), ValueError, r"activation: expected one of \('softmax', 'sig"),
        (dict(per_image=1), TypeError, r"per_image: expected a bool, got 1"),
        (dict(reduction="batchmean"), ValueError, r"reduction: expected one of"),
        (dict(ignore_index=2.5), TypeError, r"ignore_index: expected an int or None"),
        (dict(weight=[1.0, -1.0, 1.0]), ValueError, r"weight: expected finite values >= 0"),
        (dict(weight="abc"), TypeError, r"weight: expected None, a "),
    ],
)
def test_argument_errors(kwargs, error, message):
    x, t = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))
    with pytest.raises(error, match=message):
        focal_tversky_loss(x, t, **kwargs)
    with pytest.raises(error, match=message):
        FocalTverskyLoss(**kwargs)


def test_input_and_target_errors():
    x = torch.randn(2, 3, 4)
    cases = [
        (dict(input=torch.randn(3)), ValueError, r"input: expected logits of shape \(N, C\) or"),
        (dict(input=torch.randn(2, 1, 4), target=torch.zeros(2, 4, dtype=torch.long)),
         ValueError, r"input: activation='softmax' needs at least two classes .* got C=1"),
        (dict(target=torch.randint(0, 3, (2, 5))), ValueError,
         r"target: expected class indices of shape \(2, 4\) or probabilities of shape"),
        (dict(target=torch.rand(2, 4)), TypeError, r"target: class indices of shape \(2, 4\) must"),
        (dict(target=torch.ones(2, 3, 4, dtype=torch.long)), TypeError,
         r"target: a target of the input's shape \(2, 3, 4\) holds class probabilities"),
        (dict(target=torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]])), ValueError,
         r"target: class indices must lie in \[0, 3\) .* got 3"),
        (dict(target=torch.full((2, 3, 4), 1.5)), ValueError,
         r"target: probabilities / labels must lie in \[0, 1\], got 1.5"),
        (dict(target=torch.rand(2, 3, 4), ignore_index=255), ValueError,
         r"ignore_index: only applies to class-index targets"),
        (dict(target=torch.rand(2, 3, 4, requires_grad=True)), ValueError,
         r"target: expected a tensor that does not require grad"),
        (dict(weight=[1.0, 2.0]), ValueError, r"weight: expected one factor per class"),
        (dict(input=torch.ones(2, 3, 4, dtype=torch.long)), TypeError,
         r"input: expected floating-point logits"),
        (dict(activation="sigmoid", target=torch.tensor([[0, 1, 2, 4], [0, 0, 0, 0]])),
         ValueError, r"target: class indices must lie in \[0, 3\]"),
    ]  # fmt: skip
    for kwargs, error, message in cases:
        args = dict(input=x, target=torch.randint(0, 3, (2, 4)))
        args.update(kwargs)
        with pytest.raises(error, match=message):
            focal_tversky_loss(**args)
    # sigmoid with one output: an integer 0/1 target is a binary mask; 2 is an error
    x1 = torch.randn(2, 1, 4)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    torch.testing.assert_close(
        focal_tversky_loss(x1, mask, activation="sigmoid"),
        focal_tversky_loss(x1, mask.unsqueeze(1).float(), activation="sigmoid"),
    )
    with pytest.raises(ValueError, match=r"target: with one output \(C == 1\) an integer target"):
        focal_tversky_loss(x1, mask + 1, activation="sigmoid")


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_compiled_fullgraph_matches_eager(reduction, activation):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(24)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    t, _, _ = _index_case((2, 4, 5, 6), activation == "softmax", seed=25)
    kw = dict(ignore_index=255, reduction=reduction, activation=activation, per_image=True)
    module = FocalTverskyLoss(**kw)
    for fn in (lambda inp: focal_tversky_loss(inp, t, **kw), lambda inp: module(inp, t)):
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
    x = _x((2, 3, 4), seed=26)
    t = torch.tensor([[0, 2, 255, 1], [1, 1, 0, 255]])

    def fn(z):
        return focal_tversky_loss(z, t, ignore_index=255)

    closed = _grad(fn(x), x)
    torch.testing.assert_close(torch.func.grad(fn)(x.detach()), closed)
    (with_graph,) = torch.autograd.grad(fn(x), x, create_graph=True)
    torch.testing.assert_close(with_graph, closed)


def test_no_backend_argument_and_no_kernel():
    import inspect

    from focalloss import _triton

    assert "backend" not in inspect.signature(focal_tversky_loss).parameters
    assert "focal_tversky" not in _triton._FAMILIES


SYNCING = {  # operators that read a value on the host, or bring host data to the device
    "aten._local_scalar_dense.default",
    "aten.is_nonzero.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.lift_fresh.default",
    "aten.lift_fresh_copy.default",
}


@pytest.mark.parametrize(
    ("fn", "kwargs", "index"),
    [
        ("tversky", dict(ignore_index=255), True),
        ("tversky", dict(activation="sigmoid", per_image=True, weight=[1.0, 2.0, 3.0]), True),
        ("tversky", dict(reduction="sum"), False),
        ("tversky", dict(reduction="none", per_image=True), False),
        ("asymmetric", dict(ignore_index=-1, gamma_pos=1.0), True),
        ("asymmetric", dict(clip=0.0, reduction="none"), False),
        ("star", dict(ignore_index=-1, alpha=[0.2, 0.3, 0.5]), True),
        ("star", dict(normalizer=3.0), False),
    ],
)
def test_training_call_reads_nothing_on_the_host(fn, kwargs, index):
    """Meta tensors (a GPU stand-in without data) under a dispatch probe, value checks off:
    no operator that synchronises with the host in forward or backward (after a first call,
    which may build cached per-class vectors from Python numbers)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import focalloss
    from focalloss import asymmetric_loss, sigmoid_focal_loss_star

    class Probe(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bad = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func) in SYNCING:
                self.bad.append(str(func))
            return func(*args, **(kwargs or {}))

    loss_fn = {
        "tversky": focal_tversky_loss,
        "asymmetric": asymmetric_loss,
        "star": sigmoid_focal_loss_star,
    }[fn]
    x = torch.empty(4, 3, 5, device="meta")
    if index:
        target = torch.empty(4, 5, device="meta", dtype=torch.long)
    else:
        target = torch.empty(4, 3, 5, device="meta")

    def step():
        leaf = x.detach().requires_grad_()
        loss = loss_fn(leaf, target, **kwargs)
        loss.backward(torch.ones_like(loss))
        return leaf.grad

    previous = focalloss.set_value_checks(False)
    try:
        step()
        with Probe() as probe:
            grad = step()
    finally:
        focalloss.set_value_checks(previous)
    assert probe.bad == []
    assert grad.shape == x.shape


@settings(derandomize=True, max_examples=25, deadline=None)
@given(
    st.integers(2, 4),
    st.integers(2, 5),
    st.integers(1, 6),
    st.integers(0, 2**16),
    st.sampled_from(["softmax", "sigmoid"]),
    st.floats(0, 1),
    st.sampled_from([0.5, 0.75, 2.0]),
)
def test_property_permutations_and_weight_scaling(n, c, s, seed, activation, alpha, gamma):
    """Permuting the images (batch counts) or the classes with their weights and targets
    changes nothing but the order of the gradient; scaling every weight by k scales the loss."""
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, c, s, generator=g, dtype=torch.float64)
    hi = c if activation == "softmax" else c + 1
    t = torch.randint(0, hi, (n, s), generator=g)
    t[torch.rand(n, s, generator=g) < 0.2] = 255
    weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    kw = dict(activation=activation, alpha=alpha, beta=1 - alpha, gamma=gamma, ignore_index=255)

    def run(x, t, weight, **extra):
        leaf = x.clone().requires_grad_()
        loss = focal_tversky_loss(leaf, t, weight=weight, **kw, **extra)
        return loss.detach(), _grad(loss, leaf)

    loss, grad = run(x, t, weight)
    perm = torch.randperm(n, generator=g)
    permuted, permuted_grad = run(x[perm], t[perm], weight)
    torch.testing.assert_close(permuted, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(permuted_grad, grad[perm], rtol=1e-10, atol=1e-15)
    classes = torch.randperm(c, generator=g)
    lookup = torch.cat([torch.argsort(classes), torch.tensor([c])])
    t_perm = torch.where(t == 255, t, lookup[t.clamp(max=c)])
    permuted, permuted_grad = run(x[:, classes], t_perm, weight[classes])
    torch.testing.assert_close(permuted, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(permuted_grad, grad[:, classes], rtol=1e-10, atol=1e-15)
    scaled, _ = run(x, t, 2.5 * weight, reduction="sum")
    plain, _ = run(x, t, weight, reduction="sum")
    torch.testing.assert_close(scaled, 2.5 * plain, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("which", ["tversky", "tversky-sigmoid-none", "asymmetric", "star"])
def test_compiled_dynamic_shapes_without_recompiles(which):
    """One graph for several batch and spatial sizes (dynamic=True); every call after the first
    under the fail_on_recompile stance; values and gradients equal eager mode."""
    import contextlib

    from torch._dynamo.utils import counters

    from focalloss import AsymmetricLoss, SigmoidFocalLossStar

    module = {
        "tversky": FocalTverskyLoss(ignore_index=255, per_image=True),
        "tversky-sigmoid-none": FocalTverskyLoss(activation="sigmoid", reduction="none"),
        "asymmetric": AsymmetricLoss(ignore_index=255, gamma_pos=1.0),
        "star": SigmoidFocalLossStar(ignore_index=255, beta=0.5),
    }[which]
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(module, fullgraph=True, dynamic=True)
    for i, (n, h, w) in enumerate([(2, 5, 6), (3, 7, 4), (4, 6, 9)]):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(n, 3, h, w, generator=g)
        t = torch.randint(0, 3, (n, h, w), generator=g)
        t[0, 0] = 255 if which != "tversky-sigmoid-none" else 3
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        stance = torch.compiler.set_stance("fail_on_recompile") if i else contextlib.nullcontext()
        with stance:
            got = compiled(xc, t)
        expected = module(xe, t)
        torch.testing.assert_close(got, expected)
        go = torch.randn(got.shape, generator=g)
        got.backward(go)
        expected.backward(go)
        torch.testing.assert_close(xc.grad, xe.grad)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
