"""Double backward and torch.func transforms (grad, hessian, vmap) through both losses.

They run on the differentiable composite (``focalloss._reference``); these tests compare it with
finite differences (gradgradcheck), the float64 references of ``refs.py`` and the closed-form
gradient of the training path.
"""

from __future__ import annotations

import pytest
import torch

from focalloss import FocalLoss, focal_loss, sigmoid_focal_loss
from refs import sigmoid_focal_ref, softmax_focal_ref

G = torch.Generator().manual_seed(11)
X = torch.randn(3, 4, 2, generator=G, dtype=torch.float64)
T = torch.tensor([[0, 255], [3, 1], [2, 2]])
P = torch.softmax(torch.randn(3, 4, 2, generator=G, dtype=torch.float64), 1)
W = torch.rand(4, generator=G, dtype=torch.float64) + 0.2

SOFTMAX = [
    ("index", T, dict(gamma=2.0, ignore_index=255)),
    ("index-none", T, dict(gamma=0.5, ignore_index=255, weight=W, alpha=W / 2, reduction="none")),
    ("smoothing-sum", T, dict(gamma=1.5, ignore_index=255, label_smoothing=0.2, reduction="sum")),
    ("probabilities", P, dict(gamma=3.0, weight=W)),
]
XS = torch.randn(3, 4, 2, generator=G, dtype=torch.float64)
LABELS = torch.rand(3, 4, 2, generator=G, dtype=torch.float64)
INDEX = torch.tensor([[0, 4], [-1, 3], [2, 1]])  # 4: background, -1: ignored
SIGMOID = [
    ("float", LABELS, dict(gamma=2.0)),
    ("float-none", LABELS, dict(gamma=0.5, alpha=None, weight=W.view(4, 1), reduction="none")),
    ("index", INDEX, dict(gamma=1.5, ignore_index=-1, pos_weight=2 * W.view(4, 1), alpha=W / 2)),
    ("index-normalizer", INDEX, dict(gamma=2.0, ignore_index=-1, normalizer=3.0)),
]


def _cases(table):
    return pytest.mark.parametrize(
        ("target", "kwargs"), [c[1:] for c in table], ids=[c[0] for c in table]
    )


@_cases(SOFTMAX)
def test_softmax_gradgradcheck(target, kwargs):
    x = X.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: focal_loss(z, target, **kwargs), x)


@_cases(SIGMOID)
def test_sigmoid_gradgradcheck(target, kwargs):
    x = XS.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: sigmoid_focal_loss(z, target, **kwargs), x)


@_cases(SOFTMAX)
def test_softmax_hessian_and_func_grad_match_the_reference(target, kwargs):
    def total(fn):
        return lambda z: fn(z, target, **kwargs).sum()

    hessian = torch.func.hessian(total(focal_loss))(X)
    expected = torch.autograd.functional.hessian(total(softmax_focal_ref), X)
    torch.testing.assert_close(hessian, expected, rtol=1e-9, atol=1e-12)
    grad = torch.func.grad(total(focal_loss))(X)
    x = X.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(total(softmax_focal_ref)(x), x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


@_cases(SIGMOID)
def test_sigmoid_hessian_and_func_grad_match_the_reference(target, kwargs):
    def ours(z):
        return sigmoid_focal_loss(z, target, **kwargs).sum()

    def ref(z):
        kw = {
            k: v
            for k, v in kwargs.items()
            if k not in ("ignore_index", "normalizer", "detach_modulator")
        }
        labels, keep = target, torch.ones_like(z, dtype=torch.bool)
        if not target.is_floating_point():  # one-hot with background 4, ignored rows dropped
            labels = (
                torch.nn.functional.one_hot(target.clamp(min=0), 5)[..., :4].movedim(-1, 1).double()
            )
            keep = (target != -1).unsqueeze(1).expand_as(z)
        elementwise = sigmoid_focal_ref(z, labels, **{**kw, "reduction": "none"})
        total = (elementwise * keep).sum()
        if kwargs.get("reduction", "mean") == "mean":
            total = total / kwargs.get("normalizer", keep.sum())
        return total

    x = XS.clone().requires_grad_()
    torch.testing.assert_close(
        torch.func.hessian(ours)(XS),
        torch.autograd.functional.hessian(ref, XS),
        rtol=1e-9,
        atol=1e-12,
    )
    (expected_grad,) = torch.autograd.grad(ref(x), x)
    torch.testing.assert_close(torch.func.grad(ours)(XS), expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_create_graph_gradient_equals_the_closed_form_even_when_saturated(gamma):
    # The composite's first derivative must equal the training path's, also where p_t = 1
    # and 0 < gamma < 1 (the textbook derivative's (1 - p)^(gamma - 1) is infinite there).
    x = torch.tensor([[40.0, -40.0, 0.0], [1e4, 0.0, 0.0], [0.3, 0.2, -1.0]], dtype=torch.float64)
    t = torch.tensor([0, 0, 2])
    for fn, target in ((focal_loss, t), (sigmoid_focal_loss, torch.eye(3, dtype=torch.float64)[t])):
        leaf = x.clone().requires_grad_()
        (with_graph,) = torch.autograd.grad(fn(leaf, target, gamma=gamma), leaf, create_graph=True)
        (plain,) = torch.autograd.grad(fn(leaf, target, gamma=gamma), leaf)
        assert with_graph.requires_grad
        torch.testing.assert_close(with_graph, plain, rtol=1e-12, atol=1e-300)


def test_gradient_penalty_training_step():
    # A penalty on the input gradient's norm: the second-order term reaches the parameters.
    torch.manual_seed(0)
    head = torch.nn.Conv2d(2, 3, 1).double()
    features = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))

    def objective(loss_fn):
        loss = loss_fn(head(features), target)
        (g,) = torch.autograd.grad(loss, features, create_graph=True)
        return loss + g.square().sum()

    head.zero_grad()
    objective(FocalLoss(gamma=2.0)).backward()
    ours = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    objective(lambda z, t: softmax_focal_ref(z, t, gamma=2.0)).backward()
    for got, want in zip(ours, (p.grad for p in head.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_vmap_per_sample_losses_and_gradients():
    kwargs = dict(gamma=0.5, ignore_index=255, label_smoothing=0.1, reduction="sum")

    def per_sample(z, t):
        return focal_loss(z[None], t[None], **kwargs)

    losses = torch.vmap(per_sample)(X, T)
    expected = torch.stack(
        [softmax_focal_ref(X[i : i + 1], T[i : i + 1], **kwargs) for i in range(3)]
    )
    torch.testing.assert_close(losses, expected, rtol=1e-9, atol=1e-12)
    grads = torch.vmap(torch.func.grad(per_sample))(X, T)
    x = X.clone().requires_grad_()
    focal_loss(x, T, **kwargs).backward()  # the closed form: per-sample gradients stack up to it
    torch.testing.assert_close(grads, x.grad, rtol=1e-9, atol=1e-12)
    sig = torch.vmap(lambda z, t: sigmoid_focal_loss(z, t, reduction="sum"))(XS, LABELS)
    expected = torch.stack([sigmoid_focal_ref(XS[i], LABELS[i]).sum() for i in range(3)])
    torch.testing.assert_close(sig, expected, rtol=1e-9, atol=1e-12)


def test_double_backward_inside_torch_compile_raises_clearly():
    # PyTorch rejects it (never a silently wrong second derivative); eager mode supports it.
    torch._dynamo.reset()
    compiled = torch.compile(lambda z: focal_loss(z, torch.tensor([0, 1])), fullgraph=True)
    x = torch.randn(2, 3, requires_grad=True)
    (g,) = torch.autograd.grad(compiled(x), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not currently support double backward"):
        torch.autograd.grad(g.square().sum(), x)
    torch._dynamo.reset()


def test_detached_modulator_is_a_constant_to_every_order():
    # detach_modulator is the seed module's surrogate (p_t detached): its gradient and Hessian
    # are those of autograd through a composite with (1 - p_t)^gamma detached.
    t = T.clamp(max=3)

    def seed_style(z):
        lp_t = torch.log_softmax(z, 1).gather(1, t.unsqueeze(1)).squeeze(1)
        return (-((1 - lp_t.exp()).detach() ** 2) * lp_t).sum()

    def ours(z):
        return focal_loss(z, t, gamma=2.0, detach_modulator=True, reduction="sum")

    torch.testing.assert_close(
        torch.func.hessian(ours)(X), torch.autograd.functional.hessian(seed_style, X)
    )
    x = X.clone().requires_grad_()
    (g,) = torch.autograd.grad(ours(x), x, create_graph=True)
    (expected,) = torch.autograd.grad(seed_style(x), x)
    torch.testing.assert_close(g, expected)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    y = X.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(seed_style(y), y, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g_ref.square().sum(), y)
    torch.testing.assert_close(gg, gg_ref)


def test_composite_keeps_the_non_finite_logit_guarantees():
    # -inf masking and garbage at ignored positions behave as in the closed form, also under
    # create_graph and torch.func (no NaN from 0 * -inf, exact zeros where ignored).
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[2.0, -inf, 0.5], [0.1, 0.2, 0.3], [nan, inf, 1.0]], dtype=torch.float64)
    t = torch.tensor([0, 2, 255])
    kwargs = dict(gamma=0.5, ignore_index=255, reduction="sum")
    leaf = x.clone().requires_grad_()
    (closed,) = torch.autograd.grad(focal_loss(leaf, t, **kwargs), leaf)
    assert bool(torch.isfinite(closed).all()) and not bool(closed[2].any())
    (with_graph,) = torch.autograd.grad(focal_loss(leaf, t, **kwargs), leaf, create_graph=True)
    torch.testing.assert_close(with_graph, closed, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.func.grad(lambda z: focal_loss(z, t, **kwargs))(x), closed)
    per_row = torch.vmap(lambda z, c: focal_loss(z[None], c[None], **kwargs))(x, t)
    torch.testing.assert_close(per_row, focal_loss(x, t, **{**kwargs, "reduction": "none"}))

    xs = torch.tensor([[nan, inf], [0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([-1, 1])
    (closed,) = torch.autograd.grad(sigmoid_focal_loss(xs, ts, ignore_index=-1), xs)
    (with_graph,) = torch.autograd.grad(
        sigmoid_focal_loss(xs, ts, ignore_index=-1), xs, create_graph=True
    )
    assert not bool(with_graph[0].any())
    torch.testing.assert_close(with_graph, closed, rtol=1e-12, atol=0)


def test_value_checks_still_run_under_func_grad():
    # Only vmap forbids reading values; under grad an out-of-range class is still an error.
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\)"):
        torch.func.grad(lambda z: focal_loss(z, torch.tensor([5, 1])))(torch.randn(2, 3))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_vectorised_jacobian_equals_the_loop(reduction):
    # autograd.functional.jacobian(vectorize=True) sends a batch of grad_outputs through the
    # closed-form backward (is_grads_batched): it must equal the one-row-at-a-time Jacobian.
    x = XS[:, :, 0].clone()
    for fn, target in ((focal_loss, torch.tensor([0, 1, 3])), (sigmoid_focal_loss, INDEX[:, 0])):
        kw = dict(reduction=reduction)
        if fn is sigmoid_focal_loss:
            kw["ignore_index"] = -1

        def call(z, fn=fn, target=target, kw=kw):
            return fn(z, target, **kw)

        vectorised = torch.autograd.functional.jacobian(call, x, vectorize=True)
        looped = torch.autograd.functional.jacobian(call, x)
        torch.testing.assert_close(vectorised, looped, rtol=1e-12, atol=1e-15)
