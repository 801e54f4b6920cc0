"""The asymmetric-loss and FL* kernel against the PyTorch backend: values and gradients, every
option, layouts, half precision, saturated logits, custom operators under torch.compile.

Run on CUDA, or on the CPU in Triton's interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/triton_interp/test_classification_kernels.py``.
"""

from __future__ import annotations

import pytest
import torch

from focalloss import (
    AsymmetricLoss,
    SigmoidFocalLossStar,
    asymmetric_loss,
    sigmoid_focal_loss_star,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter

TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _run(fn, x, target, go_seed=0, **kwargs):
    """(loss, grad) for a random grad_output (reduction 'none') or 1.7 (reduced)."""
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, target, **kwargs)
    g = torch.Generator().manual_seed(go_seed)
    go = torch.randn(loss.shape, generator=g, dtype=loss.dtype).to(loss.device)
    if loss.dim() == 0:
        go = torch.full_like(loss, 1.7)
    loss.backward(go)
    return loss.detach(), leaf.grad


def _compare(fn, x, target, dtype=torch.float64, **kwargs):
    loss_t, grad_t = _run(fn, x, target, backend="triton", **kwargs)
    loss_r, grad_r = _run(fn, x, target, backend="torch", **kwargs)
    tol = TOL[dtype]
    torch.testing.assert_close(loss_t, loss_r, **tol)
    assert grad_t.dtype == x.dtype and grad_t.shape == x.shape
    scale = grad_r.abs().max().item() if grad_r.numel() else 1.0
    torch.testing.assert_close(
        grad_t.float(), grad_r.float(), rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1e-3)
    )


SHAPES = [(13,), (9, 1), (6, 4), (2, 3, 17), (2, 5, 3, 7), (3, 80)]


def _target(kind, shape, device, g):
    if kind == "index":
        return torch.randint(-1, shape[1] + 1, shape[:1] + shape[2:], generator=g).to(device)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    return (t if kind == "soft" else (t < 0.3).double()).to(device)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["float", "soft", "index"])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(gamma_pos=1.0, gamma_neg=0.5, clip=0.1, reduction="none"),
        dict(gamma_pos=0.0, gamma_neg=0.0, clip=0.0, reduction="sum", weights=True),
        dict(gamma_pos=0.5, gamma_neg=2.0, clip=0.0, detach_modulator=True, normalizer=3.0),
        dict(gamma_pos=2.0, gamma_neg=4.0, clip=0.05, detach_modulator=True, reduction="none",
             weights=True),
        dict(gamma_pos=0.0, gamma_neg=0.3, clip=1.0),
    ],
    ids=["default", "g1-g.5-c.1-none", "bce-sum", "detach-c0-norm", "detach-none-w", "clip1"],
)  # fmt: skip
def test_asymmetric_matches_torch(shape, kind, options, device):
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(device)
    if kind == "index" and len(shape) < 2:
        return
    options = dict(options)
    if options.pop("weights", False):
        options["weight"] = (torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.2).to(
            device
        )
    if kind == "index":
        options["ignore_index"] = -1
    _compare(asymmetric_loss, x, _target(kind, shape, device, g), **options)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["float", "soft", "index"])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(gamma=1.0, beta=0.0, alpha=None, reduction="none"),
        dict(gamma=0.5, beta=-2.0, alpha=0.7, reduction="sum", weights=True),
        dict(gamma=3.0, beta=1.5, alpha="per-class", normalizer=2.0),
        dict(gamma=2.0, beta=1.0, alpha="per-class", reduction="none", weights=True),
    ],
    ids=["default", "g1-b0-none", "g.5-sum-w", "per-class-norm", "per-class-none-w"],
)
def test_focal_star_matches_torch(shape, kind, options, device):
    g = torch.Generator().manual_seed(2)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(device)
    if kind == "index" and len(shape) < 2:
        return
    options = dict(options)
    if options.pop("weights", False):
        options["weight"] = (torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.2).to(
            device
        )
    if options.get("alpha") == "per-class":
        if len(shape) < 2:
            return
        options["alpha"] = torch.rand(shape[1], generator=g, dtype=torch.float64).to(device)
    if kind == "index":
        options["ignore_index"] = -1
    _compare(sigmoid_focal_loss_star, x, _target(kind, shape, device, g), **options)


def test_layouts_and_broadcast_weight(device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 5, (2, 5, 6), generator=g).to(device)
    w = torch.rand(4, 1, 1, generator=g, dtype=torch.float64).to(device)
    for fn in (asymmetric_loss, sigmoid_focal_loss_star):
        _compare(fn, x, t, weight=w, reduction="none")
        _compare(fn, x, t.transpose(1, 2).contiguous().transpose(1, 2), weight=w)
        xt = torch.randn(8, 3, generator=g, dtype=torch.float64).to(device).t()  # strided
        _compare(fn, xt, torch.rand(3, 8, dtype=torch.float64).to(device))
        swapped = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64).to(device)
        _compare(fn, swapped.transpose(2, 3), (torch.rand(2, 3, 5, 6) < 0.5).double().to(device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_saturated_logits_and_half_precision(dtype, device):
    x = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [30.0, -30.0, 0.5], [0.1, 0.2, 0.3]], dtype=dtype
    ).to(device)
    t = torch.tensor([0, 0, 1, 3], device=device)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.5, 0.2, 1.0], [0, 0, 0]])
    for fn, kw in [
        (asymmetric_loss, dict()),
        (asymmetric_loss, dict(gamma_pos=0.5, gamma_neg=0.5, clip=0.0)),
        (sigmoid_focal_loss_star, dict()),
        (sigmoid_focal_loss_star, dict(gamma=0.5, beta=-1.0)),
    ]:
        for target in (t, labels.to(device)):
            loss, grad = _run(fn, x, target, backend="triton", **kw)
            assert loss.dtype == torch.float32 and grad.dtype == dtype
            assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
            _compare(fn, x, target, dtype=dtype, **kw)
    g = torch.Generator().manual_seed(4)
    xh = torch.randn(3, 7, 9, 11, generator=g).to(device, dtype)
    th = torch.randint(-1, 8, (3, 9, 11), generator=g).to(device)
    _compare(asymmetric_loss, xh, th, dtype=dtype, ignore_index=-1, gamma_pos=1.0)
    _compare(sigmoid_focal_loss_star, xh, th, dtype=dtype, ignore_index=-1)


def test_all_ignored_empty_and_garbage_at_ignored_positions(device):
    for fn in (asymmetric_loss, sigmoid_focal_loss_star):
        x = torch.randn(2, 3, 5, dtype=torch.float64, device=device)
        t = torch.full((2, 5), -1, device=device)
        loss, grad = _run(fn, x, t, ignore_index=-1, backend="triton")
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
        empty = torch.randn(0, 3, dtype=torch.float64, device=device)
        loss, grad = _run(fn, empty, torch.zeros(0, dtype=torch.long, device=device),
                          backend="triton")  # fmt: skip
        assert loss.item() == 0.0 and grad.shape == (0, 3)
        dirty = torch.randn(3, 4, dtype=torch.float64, device=device)
        dirty[1] = float("nan")
        dirty[2, 0] = float("inf")
        t = torch.tensor([0, -1, -1], device=device)
        results = [_run(fn, dirty, t, ignore_index=-1, reduction="none", backend=b)
                   for b in ("triton", "torch")]  # fmt: skip
        for got, expected in zip(results[0], results[1], strict=True):
            torch.testing.assert_close(got, expected, **TOL[torch.float64])
        assert not bool(results[0][1][1:].any())


def test_nan_logit_gives_nan_for_its_element_only(device):
    x = torch.tensor([[0.5, float("nan"), -1.0], [1.0, 2.0, -3.0]], dtype=torch.float64).to(device)
    for fn in (asymmetric_loss, sigmoid_focal_loss_star):
        for target in (torch.tensor([0, 3], device=device), torch.rand(2, 3).double().to(device)):
            results = [
                _run(fn, x, target, reduction="none", backend=b) for b in ("triton", "torch")
            ]
            for got, expected in zip(results[0], results[1], strict=True):
                torch.testing.assert_close(got, expected, equal_nan=True, **TOL[torch.float64])
            loss, grad = results[0]
            assert torch.isnan(loss[0, 1]) and torch.isnan(grad[0, 1])
            assert bool(torch.isfinite(loss[1]).all()) and bool(torch.isfinite(grad[1]).all())


def test_determinism_bit_identical(device):
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(300, 80, generator=g).to(device)
    ts = torch.randint(0, 81, (300,), generator=g).to(device)
    for fn in (asymmetric_loss, sigmoid_focal_loss_star):
        runs = [_run(fn, xs, ts, backend="triton") for _ in range(2)]
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_modules_and_auto_backend(device, monkeypatch):
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=device)
    t = torch.randint(0, 4, (2, 4), device=device)
    for cls in (AsymmetricLoss, SigmoidFocalLossStar):
        torch.testing.assert_close(
            cls(backend="triton")(x, t), cls(backend="torch")(x, t), **TOL[torch.float64]
        )
    monkeypatch.setenv("FOCALLOSS_BACKEND", "triton")
    for fn in (asymmetric_loss, sigmoid_focal_loss_star):
        loss = fn(x.clone().requires_grad_(), t)
        assert "ClosedFormLoss" in type(loss.grad_fn).__name__


def test_compiled_training_step_with_custom_ops(device):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 6, generator=g).to(device)
    ti = torch.randint(-1, 6, (2, 6), generator=g).to(device)
    tf = (torch.rand(2, 5, 6, generator=g) < 0.3).float().to(device)

    def step(inp):
        return asymmetric_loss(inp, tf, backend="triton") + sigmoid_focal_loss_star(
            inp, ti, ignore_index=-1, reduction="sum", backend="triton"
        )

    compiled = torch.compile(step, fullgraph=True)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, expected = compiled(xc), step(xe)
    got.backward()
    expected.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(xc.grad, xe.grad)
    torch._dynamo.reset()


def test_double_backward_and_func_grad_with_the_kernels(device):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, 2, generator=g, dtype=torch.float64).to(device)
    ti = torch.randint(-1, 5, (3, 2), generator=g).to(device)
    tf = torch.rand(3, 4, 2, generator=g, dtype=torch.float64).to(device)
    calls = [
        lambda z: asymmetric_loss(z, tf, gamma_pos=1.0, gamma_neg=2.0, backend="triton"),
        lambda z: asymmetric_loss(z, ti, ignore_index=-1, reduction="sum", backend="triton"),
        lambda z: sigmoid_focal_loss_star(z, ti, ignore_index=-1, beta=0.5, backend="triton"),
    ]
    for call in calls:
        leaf = x.clone().requires_grad_()
        (with_graph,) = torch.autograd.grad(call(leaf), leaf, create_graph=True)
        (kernel,) = torch.autograd.grad(call(leaf), leaf)
        torch.testing.assert_close(with_graph, kernel, **TOL[torch.float64])
        torch.testing.assert_close(torch.func.grad(call)(x), kernel, **TOL[torch.float64])
        assert torch.autograd.gradgradcheck(call, leaf)
