"""focal_loss against F.cross_entropy, the float64 reference and the paper's closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focalloss import focal_loss
from refs import softmax_focal_ref

SHAPES = [(5,), (4, 5), (3, 5, 7), (2, 5, 3, 4, 2)]


def _index_target(shape, ignore_index, generator, frac_ignored=0.3):
    tshape = () if len(shape) == 1 else shape[:1] + shape[2:]
    t = torch.randint(0, shape[0 if len(shape) == 1 else 1], tshape, generator=generator)
    if ignore_index not in (None, -100) and len(shape) > 1:
        t[torch.rand(tshape, generator=generator) < frac_ignored] = ignore_index
    if ignore_index == -100 and len(shape) > 1:
        t[torch.rand(tshape, generator=generator) < frac_ignored] = -100
    return t


def _prob_target(shape, generator):
    dim = 0 if len(shape) == 1 else 1
    return torch.softmax(3 * torch.randn(shape, generator=generator, dtype=torch.float64), dim)


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss.sum(), x)
    return g


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("kind", ["index-100", "index0", "index255", "prob"])
def test_gamma0_equals_cross_entropy(shape, reduction, use_weight, label_smoothing, kind):
    g = torch.Generator().manual_seed(hash((shape, reduction, kind)) % 2**31)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    num_classes = shape[0 if len(shape) == 1 else 1]
    weight = torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.1 if use_weight else None
    if kind == "prob":
        t, ignore_index = _prob_target(shape, g), -100
    else:
        ignore_index = int(kind[len("index") :])
        t = _index_target(shape, ignore_index, g)
    kwargs = dict(
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    ours = focal_loss(x, t, gamma=0.0, **kwargs)
    ref = F.cross_entropy(x, t, **kwargs)
    g_ours, g_ref = _grad(ours, x), _grad(ref, x)
    all_ignored = kind != "prob" and bool((t == ignore_index).all())
    if reduction == "mean" and all_ignored:  # the documented exception: 0, not NaN
        assert torch.isnan(ref)
        assert ours.item() == 0.0
        assert torch.count_nonzero(g_ours) == 0
        return
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-12)
    # Entries that cancel to ~0 carry float64 rounding relative to the gradient's scale.
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-9 * g_ref.abs().max().item())


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.7])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_float64_reference(gamma, label_smoothing, kind, reduction):
    g = torch.Generator().manual_seed(7)
    shape = (3, 4, 5, 6)
    x = (2 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    alpha = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    t = _prob_target(shape, g) if kind == "prob" else _index_target(shape, 255, g)
    kwargs = dict(alpha=alpha, weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    if kind == "index":
        kwargs["ignore_index"] = 255
    ours = focal_loss(x, t, gamma=gamma, **kwargs)
    ref = softmax_focal_ref(x, t, gamma=gamma, **kwargs)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_is_at_most_cross_entropy_and_ratio_is_modulator(gamma):
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(64, 6, 9, generator=g, dtype=torch.float64)
    t = torch.randint(0, 6, (64, 9), generator=g)
    alpha = torch.rand(6, generator=g, dtype=torch.float64)
    ce = F.cross_entropy(x, t, reduction="none")
    fl = focal_loss(x, t, gamma=gamma, reduction="none")
    assert bool((fl <= ce).all())
    fl_a = focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="none")
    p_t = torch.softmax(x, 1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(fl_a / ce, (1 - p_t) ** gamma * alpha[t], rtol=1e-10, atol=0)


@pytest.mark.parametrize(("p_t", "factor"), [(0.9, 100.0), (0.968, 1000.0)])
def test_paper_statements(p_t, factor):
    # Lin et al.: with gamma = 2, p_t = 0.9 gives 100x less loss than CE, p_t ~ 0.968 ~1000x.
    x = torch.tensor([[math.log(p_t), math.log(1 - p_t)]], dtype=torch.float64)
    t = torch.tensor([0])
    ratio = F.cross_entropy(x, t) / focal_loss(x, t, gamma=2.0)
    assert ratio.item() == pytest.approx(factor, rel=0.03)


@pytest.mark.parametrize("num_classes", [2, 3, 19, 1000])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_uniform_logits(num_classes, gamma):
    x = torch.zeros(4, num_classes, 3, dtype=torch.float64)
    t = torch.randint(0, num_classes, (4, 3))
    out = focal_loss(x, t, gamma=gamma, reduction="none")
    expected = (1 - 1 / num_classes) ** gamma * math.log(num_classes)
    torch.testing.assert_close(out, torch.full_like(out, expected))


@pytest.mark.parametrize("detach_modulator", [False, True])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradcheck(detach_modulator, kind, gamma):
    g = torch.Generator().manual_seed(3)
    shape = (2, 3, 4, 2)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    t = _prob_target(shape, g) if kind == "prob" else _index_target(shape, 255, g)
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    for label_smoothing in (0.0, 0.15):
        for reduction in ("none", "mean"):

            def fn(inp, ls=label_smoothing, red=reduction):
                return focal_loss(
                    inp,
                    t,
                    gamma=gamma,
                    weight=w,
                    alpha=[0.2, 0.3, 0.5],
                    ignore_index=255 if kind == "index" else -100,
                    label_smoothing=ls,
                    reduction=red,
                    detach_modulator=detach_modulator,
                )

            if detach_modulator:
                # The detached gradient is not the derivative of the loss: compare it with the
                # derivative of the loss whose modulator is a constant.
                p = torch.softmax(x.detach(), 1)
                m = (1 - p) ** gamma
                expected = torch.autograd.grad(
                    _modulated_ce(x, t, m, w, label_smoothing, reduction, kind).sum(), x
                )[0]
                torch.testing.assert_close(_grad(fn(x), x), expected, rtol=1e-9, atol=1e-12)
            else:
                assert torch.autograd.gradcheck(fn, (x,))


def _modulated_ce(x, t, m, w, eps, reduction, kind):
    """sum_c w_c a_c q_c m_c (-log p_c) with m a constant: the detach_modulator loss."""
    a = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    lp = torch.log_softmax(x, 1)
    view = (1, 3, 1, 1)
    if kind == "prob":
        q = (1 - eps) * t + eps / 3
        valid = torch.ones(t.shape[:1] + t.shape[2:], dtype=torch.bool)
        divisor = valid.sum()
    else:
        valid = t != 255
        safe = torch.where(valid, t, 0)
        q = (1 - eps) * F.one_hot(safe, 3).movedim(-1, 1).double() + eps / 3
        divisor = (w[safe] * valid).sum()
    loss = ((w * a).view(view) * q * m * -lp).sum(1) * valid
    return loss if reduction == "none" else loss.sum() / divisor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_finite_at_saturated_logits(dtype, gamma, label_smoothing):
    # Every position is either certain and right, certain and wrong, or a tie, at +-1e4.
    x = torch.tensor(
        [[1e4, -1e4, -1e4], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4], [0.0, 0.0, 0.0]], dtype=dtype
    ).requires_grad_()
    t = torch.tensor([0, 0, 1, 2])
    loss = focal_loss(x, t, gamma=gamma, label_smoothing=label_smoothing)
    loss.backward()
    assert loss.dtype == torch.float32
    assert x.grad.dtype == dtype
    assert torch.isfinite(loss)
    assert bool(torch.isfinite(x.grad).all())
    # The certain-and-wrong position costs 2e4 nats (times the modulator, which is 1 there).
    per_pos = focal_loss(x.detach(), t, gamma=gamma, reduction="none")
    gap = (x[1, 1] - x[1, 0]).item()  # 2e4 as rounded to the dtype
    assert per_pos[1].item() == pytest.approx(gap, rel=1e-6)
    assert per_pos[0].item() == 0.0


def test_small_gamma_gradient_is_exact_near_certainty():
    # p_t = 1 - 1e-12: 1 - p_t must not cancel; gamma = 0.5 used to give NaN (seed) or 0.
    x = torch.tensor([[0.0, -27.631021115928547]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0])
    loss = focal_loss(x, t, gamma=0.5)
    ref = softmax_focal_ref(x, t, gamma=0.5)
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=0)
    torch.testing.assert_close(_grad(loss, x), _grad(ref, x), rtol=1e-6, atol=0)
    x32 = x.detach().float().requires_grad_()
    loss32 = focal_loss(x32, t, gamma=0.5)
    assert loss32.item() == pytest.approx(ref.item(), rel=1e-4)
    assert bool(torch.isfinite(_grad(loss32, x32)).all())


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_layouts_are_read_in_place(kind):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2, 8, 6, 5, generator=g, dtype=torch.float64)
    t = _prob_target((2, 8, 6, 5), g) if kind == "prob" else _index_target((2, 8, 6, 5), 255, g)
    kw = dict(gamma=1.5, ignore_index=255) if kind == "index" else dict(gamma=1.5)
    expected = softmax_focal_ref(base, t, reduction="none", **kw)
    layouts = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "permuted view": base.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
        "strided slice": torch.stack([base, base], dim=-1)[..., 0],  # every other element
    }
    for name, x in layouts.items():
        x = x.detach().requires_grad_()
        out = focal_loss(x, t, reduction="none", **kw)
        torch.testing.assert_close(out, expected, msg=name)
        xr = base.clone().requires_grad_()
        torch.testing.assert_close(
            _grad(out, x), _grad(softmax_focal_ref(xr, t, reduction="none", **kw), xr), msg=name
        )


@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.channels_last_3d])
def test_channels_last_gradient_keeps_the_input_layout(kind, memory_format):
    # Classes innermost: computed over (positions, C) rows of a view, so the gradient has the
    # input's strides (autograd then copies nothing into x.grad) and equals the reference.
    g = torch.Generator().manual_seed(6)
    shape = (2, 5, 3, 4) if memory_format == torch.channels_last else (2, 5, 3, 2, 4)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    x = base.contiguous(memory_format=memory_format).requires_grad_()
    t = _prob_target(shape, g) if kind == "prob" else _index_target(shape, 255, g)
    kw = dict(gamma=2.0, label_smoothing=0.1 if kind == "smoothed" else 0.0)
    if kind != "prob":
        kw["ignore_index"] = 255
    out = focal_loss(x, t, reduction="none", **kw)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.stride() == x.stride()
    xr = base.clone().requires_grad_()
    ref = softmax_focal_ref(xr, t, reduction="none", **kw)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, _grad(ref, xr))


def test_empty_batch_and_all_ignored_give_zero():
    for x, t in [
        (torch.randn(0, 4, requires_grad=True), torch.zeros(0, dtype=torch.long)),
        (torch.randn(0, 4, 3, requires_grad=True), torch.zeros(0, 3, dtype=torch.long)),
        (torch.randn(3, 4, 2, requires_grad=True), torch.full((3, 2), 255)),
        (torch.randn(0, 4, requires_grad=True), torch.zeros(0, 4)),
    ]:
        for reduction in ("mean", "sum"):
            loss = focal_loss(
                x, t, ignore_index=255 if not t.is_floating_point() else -100, reduction=reduction
            )
            assert loss.item() == 0.0
            (grad,) = torch.autograd.grad(loss, x)
            assert torch.count_nonzero(grad) == 0
        none = focal_loss(
            x, t, ignore_index=255 if not t.is_floating_point() else -100, reduction="none"
        )
        assert (
            none.shape == t.shape[: t.dim() - (1 if t.is_floating_point() else 0)]
            or none.numel() == 0
        )


def test_zero_weight_sum_gives_zero():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0, 0, 1, 1])
    loss = focal_loss(x, t, weight=[0.0, 0.0, 1.0])
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_ignored_positions_do_not_matter():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 5, 6, generator=g, requires_grad=True)
    t = _index_target((4, 5, 6), 255, g)
    ignored = t == 255
    loss = focal_loss(x, t, ignore_index=255, label_smoothing=0.1)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.count_nonzero(grad.movedim(1, -1)[ignored]) == 0
    y = x.detach().clone()
    y.movedim(1, -1)[ignored] = 1e3 * torch.randn(int(ignored.sum()), 5)
    y.requires_grad_()
    loss_y = focal_loss(y, t, ignore_index=255, label_smoothing=0.1)
    (grad_y,) = torch.autograd.grad(loss_y, y)
    torch.testing.assert_close(loss_y, loss)
    torch.testing.assert_close(grad_y, grad)


def test_uint8_targets_with_void_label():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 4, 4), dtype=torch.uint8)
    t[0, 0] = 255
    torch.testing.assert_close(
        focal_loss(x, t, ignore_index=255), softmax_focal_ref(x, t.long(), ignore_index=255)
    )


def test_scalar_alpha_is_the_seed_convention():
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    t = torch.randint(0, 2, (6, 3))
    torch.testing.assert_close(focal_loss(x, t, alpha=0.25), focal_loss(x, t, alpha=[0.25, 0.75]))
    torch.testing.assert_close(focal_loss(x, t, alpha=0.25), softmax_focal_ref(x, t, alpha=0.25))


def test_alpha_stays_out_of_the_mean_divisor_weight_enters_it():
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 2, 1])
    loss_sum = focal_loss(x, t, alpha=[2.0, 3.0, 4.0], reduction="sum")
    assert focal_loss(x, t, alpha=[2.0, 3.0, 4.0]).item() == pytest.approx(loss_sum.item() / 5)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    loss_w = focal_loss(x, t, weight=w, reduction="sum")
    assert focal_loss(x, t, weight=w).item() == pytest.approx(loss_w.item() / w[t].sum().item())


def test_half_precision_against_float32():
    g = torch.Generator().manual_seed(2)
    x32 = torch.randn(4, 7, 5, 5, generator=g)
    t = torch.randint(0, 7, (4, 5, 5), generator=g)
    for dtype, tol in [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]:
        x = x32.to(dtype).requires_grad_()
        xr = x.detach().float().requires_grad_()
        loss = focal_loss(x, t, gamma=2.0)
        ref = focal_loss(xr, t, gamma=2.0)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
        loss.backward()
        ref.backward()
        assert x.grad.dtype == dtype
        torch.testing.assert_close(
            x.grad.float(), xr.grad, rtol=tol, atol=tol * xr.grad.abs().max().item()
        )


def test_no_grad_and_grad_paths_agree():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 5))
    with torch.no_grad():
        a = focal_loss(x.requires_grad_(), t, label_smoothing=0.1)
    b = focal_loss(x, t, label_smoothing=0.1)
    assert a.grad_fn is None
    torch.testing.assert_close(a, b.detach())


def test_retain_graph_second_backward_and_grad_output_scaling():
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (3, 5))
    ref = softmax_focal_ref(x, t, reduction="none")
    (g_ref,) = torch.autograd.grad((ref * 3.0).sum(), x)
    for reduction in ("mean", "none"):
        loss = focal_loss(x, t, reduction=reduction)
        go = torch.full_like(loss, 3.0)
        (g1,) = torch.autograd.grad(loss, x, go, retain_graph=True)
        (g2,) = torch.autograd.grad(loss, x, go)
        torch.testing.assert_close(g1, g2)
        if reduction == "none":
            torch.testing.assert_close(g1, g_ref)
    loss = focal_loss(x, t, reduction="none")
    go = torch.randn_like(loss)
    (g,) = torch.autograd.grad(loss, x, go)
    (g_expected,) = torch.autograd.grad(softmax_focal_ref(x, t, reduction="none"), x, go)
    torch.testing.assert_close(g, g_expected)


def test_large_inputs_use_the_chunked_path_consistently():
    # Big enough to be split into pieces; compare with the float64 reference.
    g = torch.Generator().manual_seed(4)
    shape = (3, 5, 300, 200)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    t = _index_target(shape, 255, g)
    for kw in (dict(label_smoothing=0.1, ignore_index=255), dict()):
        tt = t if kw else _prob_target(shape, g)
        ours = focal_loss(x, tt, gamma=1.5, reduction="sum", **kw)
        ref = softmax_focal_ref(x, tt, gamma=1.5, reduction="sum", **kw)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("use_weight", [False, True])
def test_gamma0_smoothing_gradient_is_exact_in_float64(use_weight):
    # Regression: the smoothing sum of the gradient was built as a float32 tensor when the
    # per-class coefficient was a plain number, costing ~1e-9 of accuracy in float64.
    g = torch.Generator().manual_seed(21)
    x = torch.randn(5, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (5, 6), generator=g)
    w = torch.rand(4, generator=g, dtype=torch.float64) + 0.5 if use_weight else None
    ours = focal_loss(x, t, gamma=0.0, weight=w, label_smoothing=0.2, reduction="sum")
    ref = F.cross_entropy(x, t, weight=w, label_smoothing=0.2, reduction="sum")
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-12, atol=1e-14)
