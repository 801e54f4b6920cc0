# ruff: noqa: E501
"""The detection losses' Triton kernels against the PyTorch backend: values and gradients.

On CUDA, or on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``; ``tests/
test_triton_backend.py`` runs this directory in a child process). The hypothesis properties of
``tests/test_detection_losses.py`` run here on the kernels too, with fewer examples in the
interpreter.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import focalloss
import test_detection_losses as D
from focalloss import (
    DistributionFocalLoss,
    QualityFocalLoss,
    VarifocalLoss,
    distribution_focal_loss,
    quality_focal_loss,
    varifocal_loss,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EXAMPLES = 40 if DEVICE == "cuda" else 10
PROFILE = dict(
    max_examples=EXAMPLES, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip

TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _run(fn, x, *args, **kwargs):
    """(loss, grad) for a fixed random grad_output ('none') or 1.7 (reduced)."""
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, *args, **kwargs)
    g = torch.Generator().manual_seed(0)
    go = torch.randn(loss.shape, generator=g, dtype=loss.dtype).to(loss.device)
    if loss.dim() == 0:
        go = torch.full_like(loss, 1.7)
    loss.backward(go)
    return loss.detach(), leaf.grad


def _compare(fn, x, *args, dtype=torch.float64, **kwargs):
    loss_t, grad_t = _run(fn, x, *args, backend="triton", **kwargs)
    loss_r, grad_r = _run(fn, x, *args, backend="torch", **kwargs)
    tol = TOL[dtype]
    assert loss_t.shape == loss_r.shape and loss_t.dtype == loss_r.dtype
    torch.testing.assert_close(loss_t, loss_r, **tol)
    assert grad_t.dtype == x.dtype and grad_t.shape == x.shape
    scale = grad_r.abs().max().item() if grad_r.numel() else 1.0
    torch.testing.assert_close(
        grad_t.float(), grad_r.float(), rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1e-3)
    )


def _targets(shape, kind, seed=1, ignore=-1):
    g = torch.Generator().manual_seed(seed)
    if kind == "index":
        tshape = shape[:1] + shape[2:]
        t = torch.randint(-1, shape[1] + 1, tshape, generator=g)
        t[t == -1] = ignore
        s = torch.rand(tshape, generator=g, dtype=torch.float64)
        return (t.to(DEVICE), s.to(DEVICE)), dict(ignore_index=ignore)
    q = torch.rand(shape, generator=g, dtype=torch.float64)
    q = q * (torch.rand(shape, generator=g) < 0.4)
    if kind == "hard":
        q = (q > 0).double()
    return (q.to(DEVICE),), {}


SHAPES = [(9, 1), (6, 4), (2, 3, 17), (2, 5, 3, 7), (3, 70)]
VFL_OPTIONS = [
    dict(),
    dict(gamma=0.5, reduction="none"),
    dict(gamma=0.0, alpha=1.0, iou_weighted=False, reduction="sum", weights=True),
    dict(gamma=2.0, alpha=0.25, detach_modulator=True, weights=True, normalizer=3.0),
    dict(gamma=1.5, reduction="none", weights=True, iou_weighted=False),
]
QFL_OPTIONS = [
    dict(),
    dict(beta=0.5, reduction="none"),
    dict(beta=0.0, reduction="sum", weights=True),
    dict(beta=2.0, detach_modulator=True, weights=True, normalizer=3.0),
    dict(beta=1.0, reduction="none", weights=True),
]


def _with_weights(options, shape, per_position, seed=2):
    options = dict(options)
    if options.pop("weights", False):
        g = torch.Generator().manual_seed(seed)
        wshape = (shape[:1] + shape[2:]) if per_position else (shape[1],) + (1,) * (len(shape) - 2)
        options["weight"] = (torch.rand(wshape, generator=g, dtype=torch.float64) + 0.2).to(DEVICE)
    return options


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "soft", "hard"])
@pytest.mark.parametrize("options", VFL_OPTIONS, ids=range(len(VFL_OPTIONS)))
def test_varifocal_matches_torch(shape, kind, options):
    g = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(DEVICE)
    args, kw = _targets(shape, kind)
    _compare(varifocal_loss, x, *args, **kw, **_with_weights(options, shape, False))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "soft", "hard"])
@pytest.mark.parametrize("options", QFL_OPTIONS, ids=range(len(QFL_OPTIONS)))
def test_quality_focal_matches_torch(shape, kind, options):
    g = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(DEVICE)
    args, kw = _targets(shape, kind)
    _compare(quality_focal_loss, x, *args, **kw, **_with_weights(options, shape, True))


DFL_SHAPES = [(30, 17), (7, 2), (5, 40), (2, 9, 5, 3), (2, 6, 11)]


@pytest.mark.parametrize("shape", DFL_SHAPES, ids=str)
@pytest.mark.parametrize(
    "options",
    [dict(), dict(reduction="none"), dict(reduction="sum", weights=True),
     dict(normalizer=4.0, weights=True, ignore=True), dict(reduction="none", ignore=True)],
    ids=range(5),
)  # fmt: skip
def test_distribution_focal_matches_torch(shape, options):
    g = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(DEVICE)
    n = shape[1] - 1
    tshape = shape[:1] + shape[2:]
    y = torch.rand(tshape, generator=g, dtype=torch.float64) * n
    y.view(-1)[:2] = torch.tensor([float(n), 1.0], dtype=torch.float64)
    options = _with_weights(options, shape, True)
    if options.pop("ignore", False):
        y[torch.rand(tshape, generator=g) < 0.3] = -1.0
        options["ignore_index"] = -1
    _compare(distribution_focal_loss, x, y.to(DEVICE), **options)


def test_layouts():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64).to(DEVICE)
    x = x.contiguous(memory_format=torch.channels_last)
    (t, s), kw = _targets(x.shape, "index")
    w = torch.rand(4, 1, 1, generator=g, dtype=torch.float64).to(DEVICE)
    _compare(varifocal_loss, x, t, s, weight=w, reduction="none", **kw)
    _compare(quality_focal_loss, x, t.transpose(1, 2).contiguous().transpose(1, 2), s, **kw)
    xt = torch.randn(8, 3, generator=g, dtype=torch.float64).to(DEVICE).t()  # (3, 8) strided
    q = torch.rand(3, 8, dtype=torch.float64).to(DEVICE)
    _compare(varifocal_loss, xt, q)
    _compare(quality_focal_loss, xt, q, reduction="none")
    _compare(varifocal_loss, torch.randn(13, dtype=torch.float64).to(DEVICE), q.view(-1)[:13])
    xd = torch.randn(17, 40, generator=g, dtype=torch.float64).to(DEVICE).t()  # (40, 17) strided
    yd = (torch.rand(40, generator=g, dtype=torch.float64) * 16).to(DEVICE)
    _compare(distribution_focal_loss, xd, yd, reduction="none")
    x4 = torch.randn(2, 9, 4, 5, generator=g, dtype=torch.float64).to(DEVICE)
    y4 = (torch.rand(2, 4, 5, generator=g, dtype=torch.float64) * 8).to(DEVICE)
    _compare(distribution_focal_loss, x4.contiguous(memory_format=torch.channels_last), y4)
    wb = torch.rand(1, 5, dtype=torch.float64).to(DEVICE)  # broadcast per-position weight
    _compare(distribution_focal_loss, x4, y4, weight=wb, reduction="none")


@pytest.mark.parametrize("exponent", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_saturated_logits_and_half_precision(exponent, dtype):
    x = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [30.0, -30.0, 0.5], [0.1, 0.2, 0.3]], dtype=dtype
    ).to(DEVICE)
    t = torch.tensor([0, 0, 1, 3], device=DEVICE)
    s = torch.tensor([1.0, 0.6, 0.3, 0.0], device=DEVICE)
    q = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.0, 1.0], [0.2, 0.5, 0.0], [0.0, 0.0, 0.7]])
    for fn, kw in ((varifocal_loss, dict(gamma=exponent)), (quality_focal_loss, dict(beta=exponent))):  # fmt: skip
        for args in ((t, s), (q.to(DEVICE),)):
            loss, grad = _run(fn, x, *args, backend="triton", **kw)
            assert loss.dtype == torch.float32 and grad.dtype == dtype
            assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
            _compare(fn, x, *args, dtype=dtype, **kw)
    xd = torch.tensor([[1e4, -1e4, 0.0, -1e4], [-1e4, -1e4, -1e4, 1e4]], dtype=dtype).to(DEVICE)
    yd = torch.tensor([0.5, 3.0], device=DEVICE)
    loss, grad = _run(distribution_focal_loss, xd, yd, backend="triton")
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
    _compare(distribution_focal_loss, xd, yd, dtype=dtype)
    g = torch.Generator().manual_seed(7)
    xh = torch.randn(3, 7, 9, 11, generator=g).to(DEVICE, dtype)
    (th, sh), kw = _targets(xh.shape, "index")
    _compare(quality_focal_loss, xh, th, sh, dtype=dtype, beta=exponent, **kw)
    _compare(varifocal_loss, xh, th, sh, dtype=dtype, gamma=exponent, **kw)


def test_all_ignored_empty_and_checks_off():
    x = torch.randn(2, 3, 5, dtype=torch.float64, device=DEVICE)
    x[0, 0, 0] = float("nan")
    t = torch.full((2, 5), -1, device=DEVICE)
    s = torch.rand(2, 5, dtype=torch.float64, device=DEVICE)
    for fn in (varifocal_loss, quality_focal_loss):
        loss, grad = _run(fn, x, t, s, ignore_index=-1, backend="triton")
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
        empty = torch.randn(0, 3, dtype=torch.float64, device=DEVICE)
        loss, grad = _run(fn, empty, torch.zeros(0, 3, dtype=torch.float64, device=DEVICE),
                          backend="triton")  # fmt: skip
        assert loss.item() == 0.0 and grad.shape == (0, 3)
    xd = torch.randn(4, 5, dtype=torch.float64, device=DEVICE)
    loss, grad = _run(distribution_focal_loss, xd, torch.full((4,), -1.0, device=DEVICE),
                      ignore_index=-1, backend="triton")  # fmt: skip
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    previous = focalloss.set_value_checks(False)
    try:  # out-of-range targets count as ignored; the kernels read no bin outside the logits
        t = torch.tensor([[0, 9, 1, -7, 3]], device=DEVICE)
        _compare(varifocal_loss, x[:1].nan_to_num(), t, s[:1])
        _compare(quality_focal_loss, x[:1].nan_to_num(), t, s[:1], reduction="none")
        yd = torch.tensor([0.5, 4.5, float("nan"), -3.0], dtype=torch.float64, device=DEVICE)
        _compare(distribution_focal_loss, xd, yd, reduction="none")
        _compare(distribution_focal_loss, xd, yd)
    finally:
        focalloss.set_value_checks(previous)


def test_determinism_bit_identical():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(300, 80, generator=g).to(DEVICE)
    t = torch.randint(0, 81, (300,), generator=g).to(DEVICE)
    s = torch.rand(300, generator=g).to(DEVICE)
    for fn in (varifocal_loss, quality_focal_loss):
        runs = [_run(fn, x, t, s, backend="triton") for _ in range(2)]
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    xd = torch.randn(400, 17, generator=g).to(DEVICE)
    yd = (torch.rand(400, generator=g) * 16).to(DEVICE)
    runs = [_run(distribution_focal_loss, xd, yd, backend="triton") for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_modules_and_auto_backend(monkeypatch):
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=DEVICE)
    t = torch.randint(0, 4, (2, 4), device=DEVICE)
    s = torch.rand(2, 4, dtype=torch.float64, device=DEVICE)
    for module in (VarifocalLoss, QualityFocalLoss):
        torch.testing.assert_close(
            module(backend="triton")(x, t, s),
            module(backend="torch")(x, t, s),
            **TOL[torch.float64],
        )
    xd = torch.randn(6, 5, dtype=torch.float64, device=DEVICE)
    yd = torch.rand(6, dtype=torch.float64, device=DEVICE) * 4
    torch.testing.assert_close(
        DistributionFocalLoss(backend="triton")(xd, yd),
        DistributionFocalLoss(backend="torch")(xd, yd),
        **TOL[torch.float64],
    )
    monkeypatch.setenv("FOCALLOSS_BACKEND", "triton")
    loss = varifocal_loss(x.requires_grad_(), t, s)
    assert "ClosedFormLoss" in type(loss.grad_fn).__name__


def test_compiled_training_step_with_custom_ops():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 5, 6, generator=g).to(DEVICE)
    t = torch.randint(-1, 6, (2, 6), generator=g).to(DEVICE)
    s = torch.rand(2, 6, generator=g).to(DEVICE)
    xd = torch.randn(8, 9, generator=g).to(DEVICE)
    yd = (torch.rand(8, generator=g) * 8).to(DEVICE)

    def step(inp, box):
        return (
            varifocal_loss(inp, t, s, ignore_index=-1, backend="triton")
            + quality_focal_loss(inp, t, s, ignore_index=-1, reduction="none", backend="triton").sum()
            + varifocal_loss(inp, t, s, ignore_index=-1, reduction="none", backend="triton").mean()
            + distribution_focal_loss(box, yd, reduction="none", backend="triton").sum()
            + distribution_focal_loss(box, yd, normalizer=2.0, backend="triton")
        )  # fmt: skip

    compiled = torch.compile(step, fullgraph=True)
    inputs_c = [v.clone().requires_grad_() for v in (x, xd)]
    inputs_e = [v.clone().requires_grad_() for v in (x, xd)]
    got, expected = compiled(*inputs_c), step(*inputs_e)
    got.backward()
    expected.backward()
    torch.testing.assert_close(got, expected)
    for a, b in zip(inputs_c, inputs_e, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    torch._dynamo.reset()


def test_double_backward_and_func_grad_with_the_kernels():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(3, 4, 2, generator=g, dtype=torch.float64).to(DEVICE)
    t = torch.randint(-1, 5, (3, 2), generator=g).to(DEVICE)
    s = torch.rand(3, 2, generator=g, dtype=torch.float64).to(DEVICE)
    xd = torch.randn(5, 6, generator=g, dtype=torch.float64).to(DEVICE)
    yd = (torch.rand(5, generator=g, dtype=torch.float64) * 5).to(DEVICE)
    calls = [
        (lambda z: varifocal_loss(z, t, s, ignore_index=-1, gamma=0.5, backend="triton"), x),
        (lambda z: quality_focal_loss(z, t, s, ignore_index=-1, reduction="sum", backend="triton"), x),
        (lambda z: distribution_focal_loss(z, yd, backend="triton"), xd),
    ]  # fmt: skip
    for call, inp in calls:
        leaf = inp.clone().requires_grad_()
        (with_graph,) = torch.autograd.grad(call(leaf), leaf, create_graph=True)
        (kernel,) = torch.autograd.grad(call(leaf), leaf)
        torch.testing.assert_close(with_graph, kernel, **TOL[torch.float64])
        torch.testing.assert_close(torch.func.grad(call)(inp), kernel, **TOL[torch.float64])
        assert torch.autograd.gradgradcheck(call, leaf)


# The properties of tests/test_detection_losses.py, on the kernels.


@settings(**PROFILE)
@given(D.score_cases())
def test_property_reduce_to_bce(case):
    D.prop_reduce_to_bce(case.to(DEVICE), "triton")


@settings(**PROFILE)
@given(D.score_cases())
def test_property_finite_nonnegative_monotone(case):
    D.prop_finite_nonnegative_monotone(case.to(DEVICE), "triton")


@settings(**PROFILE)
@given(D.score_cases())
def test_property_index_equals_dense(case):
    D.prop_index_equals_dense(case.to(DEVICE), "triton")


@settings(**PROFILE)
@given(D.score_cases())
def test_property_batch_split_and_class_permutation(case):
    D.prop_batch_split_and_class_permutation(case.to(DEVICE), "triton")


@settings(**PROFILE)
@given(D.offset_cases())
def test_property_dfl_integer_targets_are_cross_entropy(case):
    D.prop_dfl_integer_targets_are_cross_entropy(case.to(DEVICE), "triton")


@settings(**PROFILE)
@given(D.offset_cases())
def test_property_dfl_is_the_two_bin_mixture(case):
    D.prop_dfl_is_the_two_bin_mixture(case.to(DEVICE), "triton")
