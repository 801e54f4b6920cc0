"""The Triton kernels with Poly-1 and a GammaSchedule against the PyTorch backend and the
float64 re-statements: values and gradients, every option, half precision and saturated logits,
one value == the number bit for bit, FLSD-53 at and around its threshold, compile, double
backward and torch.func. Run on CUDA, or on the CPU with ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import pytest
import torch

from focalloss import FocalLoss, GammaSchedule, SigmoidFocalLoss, focal_loss, sigmoid_focal_loss
from refs_poly import index_labels, sigmoid_ref, softmax_ref

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter

FLSD = GammaSchedule.flsd53()
THREE = GammaSchedule((0.25, 0.6), (4.0, 0.0, 1.5))
FOUR = GammaSchedule((0.1, 0.3, 0.5, 0.9), (5.0, 3.0, 2.0, 0.5, 0.0))
TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _run(fn, x, target, **kwargs):
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, target, **kwargs)
    g = torch.Generator().manual_seed(0)
    go = torch.randn(loss.shape, generator=g, dtype=loss.dtype).to(loss.device)
    if loss.dim() == 0:
        go = torch.full_like(loss, 1.7)
    loss.backward(go)
    return loss.detach(), leaf.grad, go


def _compare(fn, x, target, dtype=torch.float64, **kwargs):
    loss_t, grad_t, go = _run(fn, x, target, backend="triton", **kwargs)
    loss_r, grad_r, _ = _run(fn, x, target, backend="torch", **kwargs)
    tol = TOL[dtype]
    torch.testing.assert_close(loss_t, loss_r, **tol)
    assert grad_t.dtype == x.dtype
    scale = grad_r.abs().max().item() if grad_r.numel() else 1.0
    torch.testing.assert_close(
        grad_t.float(), grad_r.float(), rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1e-3)
    )
    return loss_t, grad_t, go


def _index_target(shape, num_classes, device, ignore=255, frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    tshape = shape[:1] + shape[2:]
    t = torch.randint(0, num_classes, tshape, generator=g)
    t[torch.rand(tshape, generator=g) < frac] = ignore
    return t.to(device)


SOFTMAX_OPTIONS = [
    dict(poly1_epsilon=1.0),
    dict(gamma=0.0, poly1_epsilon=1.0, reduction="none"),
    dict(gamma=0.5, poly1_epsilon=-0.7, label_smoothing=0.1, reduction="sum"),
    dict(gamma=FLSD),
    dict(gamma=THREE, poly1_epsilon=2.0, weight="rand", alpha="rand", reduction="none"),
    dict(gamma=FOUR, poly1_epsilon=0.5, label_smoothing=0.2, weight="rand"),
    dict(gamma=THREE, poly1_epsilon=1.0, label_smoothing=0.3, detach_modulator=True),
    dict(gamma=1.5, poly1_epsilon=1.0, weight="rand", label_smoothing=1.0, reduction="none"),
]


@pytest.mark.parametrize("shape", [(7, 1), (5, 2), (4, 3, 37), (2, 19, 5, 13), (3, 300)], ids=str)
@pytest.mark.parametrize("options", SOFTMAX_OPTIONS, ids=lambda o: str(sorted(o.items())))
def test_softmax_matches_torch_and_the_reference(shape, options, device):
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
    loss, grad, go = _compare(focal_loss, x, t, ignore_index=255, **options)
    gamma = options.pop("gamma", 2.0)
    if isinstance(gamma, GammaSchedule):
        gamma = (gamma.thresholds, gamma.values)
    ref_opts = dict(
        gamma=gamma,
        poly1=options.pop("poly1_epsilon", 0.0),
        detach=options.pop("detach_modulator", False),
        **options,
    )
    leaf = x.detach().clone().requires_grad_()
    ref = softmax_ref(leaf, t, ignore_index=255, **ref_opts)
    torch.testing.assert_close(loss, ref, **TOL[torch.float64])
    if num_classes > 1:  # C = 1: p = 1, where the re-statement's autograd of (1 - p)^0.5 is NaN
        ref.backward(go)
        torch.testing.assert_close(grad, leaf.grad, **TOL[torch.float64])


SIGMOID_OPTIONS = [
    dict(poly1_epsilon=1.0),
    dict(gamma=0.0, alpha=None, poly1_epsilon=1.0, reduction="sum", weights=True),
    dict(gamma=FLSD, poly1_epsilon=-0.5, reduction="none"),
    dict(gamma=THREE, alpha="per-class", poly1_epsilon=2.0, weights=True, reduction="none"),
    dict(gamma=FOUR, alpha=0.7, detach_modulator=True, poly1_epsilon=0.3, normalizer=3.0),
]


@pytest.mark.parametrize("shape", [(13,), (6, 4), (2, 3, 17), (2, 5, 3, 7)], ids=str)
@pytest.mark.parametrize("kind", ["float", "soft", "index"])
@pytest.mark.parametrize("options", SIGMOID_OPTIONS, ids=lambda o: str(sorted(o.items())))
def test_sigmoid_matches_torch_and_the_reference(shape, kind, options, device):
    if kind == "index" and len(shape) < 2:
        return
    g = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(device)
    options = dict(options)
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
    keep = None
    if kind == "index":
        t = torch.randint(-1, shape[1] + 1, shape[:1] + shape[2:], generator=g).to(device)
        options["ignore_index"] = -1
        labels, keep = index_labels(t, shape[1], -1)
    else:
        t = torch.rand(shape, generator=g, dtype=torch.float64)
        t = (t if kind == "soft" else t.round()).to(device)
        labels = t
    loss, _, _ = _compare(sigmoid_focal_loss, x, t, **options)
    if "weight" in options or "pos_weight" in options:
        return  # broadcast like BCE-with-logits; the reference comparison is in tests/
    gamma = options.pop("gamma", 2.0)
    if isinstance(gamma, GammaSchedule):
        gamma = (gamma.thresholds, gamma.values)
    options.pop("ignore_index", None)
    ref = sigmoid_ref(
        x,
        labels,
        gamma=gamma,
        poly1=options.pop("poly1_epsilon", 0.0),
        detach=options.pop("detach_modulator", False),
        keep=keep,
        **{"reduction": "mean", **options},
    )
    torch.testing.assert_close(loss, ref, **TOL[torch.float64])


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_one_value_is_the_number_exactly(gamma, device):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 11, generator=g, dtype=torch.float64).to(device)
    t = _index_target(x.shape, 5, device)
    one = GammaSchedule.constant(gamma)
    for smoothing in (0.0, 0.1):
        kw = dict(ignore_index=255, label_smoothing=smoothing, poly1_epsilon=1.0, backend="triton")
        a = _run(focal_loss, x, t, gamma=one, **kw)
        b = _run(focal_loss, x, t, gamma=gamma, **kw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ts = torch.randint(-1, 6, (3, 11), generator=g).to(device)
    kw = dict(ignore_index=-1, poly1_epsilon=0.5, backend="triton")
    a = _run(sigmoid_focal_loss, x, ts, gamma=one, **kw)
    b = _run(sigmoid_focal_loss, x, ts, gamma=gamma, **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("z", "expected"), [(0.0, 3.0), (-1e-9, 5.0), (1e-9, 3.0), (-0.3, 5.0), (0.3, 3.0)]
)
def test_flsd53_at_and_around_the_threshold(z, expected, device):
    # Five classes, target logit z, the others 0: p_t = 0.2 exactly at z = 0 (float64).
    x = torch.zeros(2, 5, dtype=torch.float64)
    x[:, 0] = z
    x = x.to(device)
    t = torch.zeros(2, dtype=torch.long, device=device)
    for smoothing in (0.0,):
        got = _run(focal_loss, x, t, gamma=FLSD, backend="triton", label_smoothing=smoothing)
        want = _run(focal_loss, x, t, gamma=expected, backend="triton", label_smoothing=smoothing)
        torch.testing.assert_close(got[0], want[0], rtol=1e-14, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=1e-14, atol=0)
        other = _run(focal_loss, x, t, gamma=8.0 - expected, backend="triton")
        assert not torch.allclose(got[0], other[0])


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, FLSD, THREE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_saturated_logits_and_half_precision(gamma, dtype, device):
    x = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [30.0, -30.0, 0.5], [0.1, 0.2, 0.3]], dtype=dtype
    ).to(device)
    t = torch.tensor([0, 0, 1, 2], device=device)
    for fn in (focal_loss, sigmoid_focal_loss):
        loss, grad, _ = _run(fn, x, t, gamma=gamma, poly1_epsilon=1.0, backend="triton")
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
        _compare(fn, x, t, dtype=dtype, gamma=gamma, poly1_epsilon=1.0)
    g = torch.Generator().manual_seed(4)
    xh = torch.randn(3, 7, 9, 11, generator=g).to(device, dtype)
    th = _index_target(xh.shape, 7, device)
    kw = dict(ignore_index=255, gamma=gamma, label_smoothing=0.1, poly1_epsilon=-1.0)
    _compare(focal_loss, xh, th, dtype=dtype, **kw)


def test_modules(device):
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=device)
    t = torch.randint(0, 3, (2, 4), device=device)
    for cls in (FocalLoss, SigmoidFocalLoss):
        kw = dict(gamma=THREE, poly1_epsilon=0.5)
        torch.testing.assert_close(
            cls(backend="triton", **kw)(x, t),
            cls(backend="torch", **kw)(x, t),
            **TOL[torch.float64],
        )


def test_compiled_training_step(device):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 6, generator=g).to(device)
    t = _index_target(x.shape, 5, device)
    ts = torch.randint(0, 6, (2, 6), generator=g).to(device)

    def step(inp):
        kw = dict(gamma=FLSD, poly1_epsilon=1.0, backend="triton")
        return focal_loss(inp, t, ignore_index=255, **kw) + sigmoid_focal_loss(inp, ts, **kw)

    compiled = torch.compile(step, fullgraph=True)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, expected = compiled(xc), step(xe)
    got.backward()
    expected.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(xc.grad, xe.grad)
    torch._dynamo.reset()


def test_double_backward_and_func_grad(device):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 4, 2, generator=g, dtype=torch.float64).to(device)
    t = _index_target(x.shape, 4, device, frac=0.3)
    ts = torch.randint(-1, 5, (3, 2), generator=g).to(device)
    calls = [
        lambda z: focal_loss(
            z, t, gamma=THREE, poly1_epsilon=1.0, ignore_index=255, label_smoothing=0.1,
            backend="triton",
        ),
        lambda z: sigmoid_focal_loss(
            z, ts, gamma=FLSD, poly1_epsilon=-0.5, ignore_index=-1, reduction="sum",
            backend="triton",
        ),
    ]  # fmt: skip
    for call in calls:
        leaf = x.clone().requires_grad_()
        (with_graph,) = torch.autograd.grad(call(leaf), leaf, create_graph=True)
        (kernel,) = torch.autograd.grad(call(leaf), leaf)
        torch.testing.assert_close(with_graph, kernel, **TOL[torch.float64])
        torch.testing.assert_close(torch.func.grad(call)(x), kernel, **TOL[torch.float64])
