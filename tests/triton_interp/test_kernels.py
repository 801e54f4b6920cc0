"""Triton kernels against the PyTorch backend: values and gradients, every option."""

from __future__ import annotations

import pytest
import torch

from focalloss import FocalLoss, SigmoidFocalLoss, focal_loss, sigmoid_focal_loss

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
    assert grad_t.dtype == x.dtype
    scale = grad_r.abs().max().item() if grad_r.numel() else 1.0
    torch.testing.assert_close(
        grad_t.float(), grad_r.float(), rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1e-3)
    )


def _index_target(shape, num_classes, device, ignore=255, frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    tshape = shape[:1] + shape[2:]
    t = torch.randint(0, num_classes, tshape, generator=g)
    t[torch.rand(tshape, generator=g) < frac] = ignore
    return t.to(device)


SOFTMAX_SHAPES = [(7, 1), (5, 2), (4, 3, 37), (2, 19, 5, 13), (2, 41, 3, 2, 5), (3, 1000)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(gamma=0.5, reduction="none"),
        dict(gamma=0.0, label_smoothing=0.1, reduction="sum"),
        dict(gamma=1.5, label_smoothing=0.3, detach_modulator=True),
        dict(gamma=2.0, alpha="rand", weight="rand", label_smoothing=0.05, reduction="none"),
        dict(gamma=3.0, alpha="rand", weight="rand"),
    ],
    ids=["default", "g0.5-none", "ce-ls-sum", "detach-ls", "all-none", "alpha-weight"],
)
def test_softmax_matches_torch(shape, options, device):
    num_classes = shape[1]
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(device)
    options = dict(options)
    for key in ("alpha", "weight"):
        if options.get(key) == "rand":
            options[key] = (torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.1).to(
                device
            )
    t = _index_target(shape, num_classes, device)
    _compare(focal_loss, x, t, ignore_index=255, **options)


@pytest.mark.parametrize(
    "layout", ["channels_last", "channels_last_3d", "strided", "permuted", "unbatched"]
)
def test_softmax_layouts(layout, device):
    g = torch.Generator().manual_seed(2)
    if layout == "channels_last_3d":
        base = torch.randn(2, 5, 3, 4, 6, generator=g, dtype=torch.float64)
        x = base.to(device).contiguous(memory_format=torch.channels_last_3d)
    elif layout == "unbatched":
        x = torch.randn(6, generator=g, dtype=torch.float64).to(device)
        t = torch.tensor(3, device=device)
        _compare(focal_loss, x, t, gamma=2.0)
        return
    else:
        base = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64).to(device)
        if layout == "channels_last":
            x = base.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            x = torch.randn(3, 10, 6, 14, generator=g, dtype=torch.float64).to(device)[
                :, ::2, :, ::2
            ]
        else:  # spatial dims swapped: cannot be framed without a copy
            x = base.transpose(2, 3)
    t = _index_target(x.shape, x.shape[1], device)
    _compare(focal_loss, x, t, ignore_index=255, gamma=2.0, label_smoothing=0.1)


def test_softmax_large_class_count(device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 32768, generator=g).to(device)
    t = torch.tensor([5, 32767], device=device)
    _compare(focal_loss, x, t, dtype=torch.float32, gamma=2.0)
    _compare(focal_loss, x, t, dtype=torch.float32, gamma=2.0, label_smoothing=0.1)


def test_softmax_all_ignored_and_empty(device):
    x = torch.randn(2, 3, 5, dtype=torch.float64, device=device)
    t = torch.full((2, 5), 255, device=device)
    loss, grad = _run(focal_loss, x, t, ignore_index=255, backend="triton")
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    empty = torch.randn(0, 3, dtype=torch.float64, device=device)
    loss, grad = _run(
        focal_loss, empty, torch.zeros(0, dtype=torch.long, device=device), backend="triton"
    )
    assert loss.item() == 0.0 and grad.shape == (0, 3)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_saturated_logits_and_half_precision(gamma, dtype, device):
    x = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [30.0, -30.0, 0.5], [0.1, 0.2, 0.3]], dtype=dtype
    ).to(device)
    t = torch.tensor([0, 0, 1, 2], device=device)
    for fn, target in ((focal_loss, t), (sigmoid_focal_loss, t)):
        loss, grad = _run(fn, x, target, gamma=gamma, backend="triton")
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
        _compare(fn, x, target, dtype=dtype, gamma=gamma)
    g = torch.Generator().manual_seed(4)
    xh = torch.randn(3, 7, 9, 11, generator=g).to(device, dtype)
    th = _index_target(xh.shape, 7, device)
    _compare(focal_loss, xh, th, dtype=dtype, ignore_index=255, gamma=gamma, label_smoothing=0.1)


SIGMOID_SHAPES = [(13,), (9, 1), (6, 4), (2, 3, 17), (2, 5, 3, 7)]


@pytest.mark.parametrize("shape", SIGMOID_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["float", "soft", "index"])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(gamma=0.5, alpha=None, reduction="none"),
        dict(gamma=0.0, alpha=None, reduction="sum", weights=True),
        dict(gamma=2.0, alpha=0.7, detach_modulator=True, weights=True, normalizer=3.0),
        dict(gamma=1.5, alpha="per-class", reduction="none", weights=True),
    ],
    ids=["default", "g0.5-none", "bce-sum", "detach-norm", "per-class-none"],
)
def test_sigmoid_matches_torch(shape, kind, options, device):
    g = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(device)
    options = dict(options)
    if kind == "index" and len(shape) < 2:
        return
    if options.pop("weights", False):
        options["weight"] = (torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.2).to(
            device
        )
        options["pos_weight"] = (torch.rand(shape[-1], generator=g, dtype=torch.float64) * 3).to(
            device
        )
    if options.get("alpha") == "per-class":
        if len(shape) < 2:
            return
        options["alpha"] = torch.rand(shape[1], generator=g, dtype=torch.float64).to(device)
    if kind == "index":
        t = torch.randint(-1, shape[1] + 1, shape[:1] + shape[2:], generator=g).to(device)
        options["ignore_index"] = -1
    else:
        t = torch.rand(shape, generator=g, dtype=torch.float64)
        t = (t if kind == "soft" else t.round()).to(device)
    _compare(sigmoid_focal_loss, x, t, **options)


def test_sigmoid_layouts_and_broadcast_weight(device):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 5, (2, 5, 6), generator=g).to(device)
    w = torch.rand(4, 1, 1, generator=g, dtype=torch.float64).to(device)
    _compare(sigmoid_focal_loss, x, t, weight=w, reduction="none")
    _compare(sigmoid_focal_loss, x, t.transpose(1, 2).contiguous().transpose(1, 2), weight=w)
    xt = torch.randn(8, 3, generator=g, dtype=torch.float64).to(device).t()  # (3, 8) strided
    _compare(sigmoid_focal_loss, xt, torch.rand(3, 8, dtype=torch.float64).to(device))


def test_determinism_bit_identical(device):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 19, 33, 17, generator=g).to(device)
    t = _index_target(x.shape, 19, device)
    runs = [_run(focal_loss, x, t, ignore_index=255, backend="triton") for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    xs = torch.randn(300, 80, generator=g).to(device)
    ts = torch.randint(0, 81, (300,), generator=g).to(device)
    runs = [_run(sigmoid_focal_loss, xs, ts, backend="triton") for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_modules_and_auto_backend(device, monkeypatch):
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=device)
    t = torch.randint(0, 3, (2, 4), device=device)
    for module in (FocalLoss(backend="triton"), SigmoidFocalLoss(backend="triton")):
        torch.testing.assert_close(
            module(x, t), type(module)(backend="torch")(x, t), rtol=1e-9, atol=1e-12
        )
    monkeypatch.setenv("FOCALLOSS_BACKEND", "triton")
    loss = focal_loss(x.requires_grad_(), t)
    assert "ClosedFormLoss" in type(loss.grad_fn).__name__


def test_compiled_training_step_with_custom_ops(device):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 6, generator=g).to(device)
    t = _index_target(x.shape, 5, device)
    ts = torch.randint(0, 6, (2, 6), generator=g).to(device)

    def step(inp):
        return focal_loss(inp, t, ignore_index=255, backend="triton") + sigmoid_focal_loss(
            inp, ts, backend="triton"
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
    # The first derivative comes from the kernel (plain backward) or from the composite
    # (create_graph, torch.func): the two must agree, and gradgradcheck must pass.
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 4, 2, generator=g, dtype=torch.float64).to(device)
    t = _index_target(x.shape, 4, device, frac=0.3)
    ts = torch.randint(-1, 5, (3, 2), generator=g).to(device)
    calls = [
        lambda z: focal_loss(
            z, t, gamma=0.5, ignore_index=255, label_smoothing=0.1, backend="triton"
        ),
        lambda z: sigmoid_focal_loss(z, ts, ignore_index=-1, reduction="sum", backend="triton"),
    ]
    for call in calls:
        leaf = x.clone().requires_grad_()
        (with_graph,) = torch.autograd.grad(call(leaf), leaf, create_graph=True)
        (kernel,) = torch.autograd.grad(call(leaf), leaf)
        torch.testing.assert_close(with_graph, kernel, **TOL[torch.float64])
        torch.testing.assert_close(torch.func.grad(call)(x), kernel, **TOL[torch.float64])
        assert torch.autograd.gradgradcheck(call, leaf)


@pytest.mark.parametrize("options", [dict(gamma=2.0), dict(gamma=0.5, label_smoothing=0.1)])
def test_nonfinite_logits_as_the_pytorch_backend(options, device):
    # NaN and +inf give NaN at their position, -inf masks a class, ignored positions give 0:
    # the kernels follow the documented table (README "Non-finite logits") as the PyTorch path.
    inf, nan = float("inf"), float("nan")
    x = torch.tensor(
        [[0.5, 1.0, -2.0], [nan, 0.0, 0.0], [inf, 0.0, 1.0], [-inf, 0.0, 1.0], [0.0, -inf, 2.0],
         [nan, inf, -inf]], dtype=torch.float64,
    ).to(device)  # fmt: skip
    t = torch.tensor([0, 1, 2, 1, 1, 255]).to(device)
    results = [_run(focal_loss, x, t, ignore_index=255, reduction="none", backend=b, **options)
               for b in ("triton", "torch")]  # fmt: skip
    for got, expected in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, equal_nan=True, **TOL[torch.float64])
    assert not bool(results[0][1][5].any())  # the ignored position: an exact zero gradient
    xs = x[:, :2].clone()
    ts = torch.tensor([0, 2, 1, -1, 0, -1]).to(device)
    results = [_run(sigmoid_focal_loss, xs, ts, ignore_index=-1, reduction="none", backend=b)
               for b in ("triton", "torch")]  # fmt: skip
    for got, expected in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, equal_nan=True, **TOL[torch.float64])
