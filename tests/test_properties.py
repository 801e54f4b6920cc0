"""Property-based tests (Hypothesis, derandomised, bounded) of both losses, PyTorch backend.

Groundwork for the hardening issue: each property compares the library with itself under a
transformation the math says is neutral, or with F.cross_entropy / BCE where they must agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from focalloss import focal_loss, sigmoid_focal_loss

settings.register_profile(
    "focalloss", derandomize=True, max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.load_profile("focalloss")


@st.composite
def softmax_case(draw):
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 6))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn((n, c, *spatial), generator=g, dtype=torch.float64)
    t = torch.randint(0, c, (n, *spatial), generator=g)
    t[torch.rand(t.shape, generator=g) < draw(st.sampled_from([0.0, 0.3]))] = 255
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    gamma = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]))
    eps = draw(st.sampled_from([0.0, 0.1]))
    return x, t, w, gamma, eps


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


@given(softmax_case())
def test_gamma0_equals_cross_entropy(case):
    x, t, w, _, eps = case
    x = x.requires_grad_()
    ours = focal_loss(
        x, t, gamma=0.0, weight=w, ignore_index=255, label_smoothing=eps, reduction="sum"
    )
    ref = F.cross_entropy(x, t, weight=w, ignore_index=255, label_smoothing=eps, reduction="sum")
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), rtol=1e-7, atol=1e-12)


@given(softmax_case(), st.floats(-50, 50))
def test_finite_nonnegative_monotone_in_gamma_and_shift_invariant(case, shift):
    x, t, w, gamma, eps = case
    kw = dict(weight=w, ignore_index=255, label_smoothing=eps, reduction="none")
    loss = focal_loss(x, t, gamma=gamma, **kw)
    assert bool(torch.isfinite(loss).all()) and bool((loss >= 0).all())
    assert bool((focal_loss(x, t, gamma=gamma + 1.0, **kw) <= loss + 1e-12).all())
    torch.testing.assert_close(
        focal_loss(x + shift, t, gamma=gamma, **kw), loss, rtol=1e-7, atol=1e-9
    )


@given(softmax_case(), st.floats(0.1, 10.0))
def test_weight_scaling(case, c):
    x, t, w, gamma, eps = case
    kw = dict(gamma=gamma, ignore_index=255, label_smoothing=eps)
    mean = focal_loss(x, t, weight=w, **kw)
    torch.testing.assert_close(focal_loss(x, t, weight=c * w, **kw), mean, rtol=1e-9, atol=1e-12)
    total = focal_loss(x, t, weight=w, reduction="sum", **kw)
    torch.testing.assert_close(
        focal_loss(x, t, weight=c * w, reduction="sum", **kw), c * total, rtol=1e-9, atol=1e-12
    )


@given(softmax_case())
def test_batch_split_and_permutation(case):
    x, t, w, gamma, eps = case
    kw = dict(gamma=gamma, weight=w, ignore_index=255, label_smoothing=eps, reduction="sum")
    whole = focal_loss(x, t, **kw)
    k = x.shape[0] // 2
    parts = focal_loss(x[:k], t[:k], **kw) + focal_loss(x[k:], t[k:], **kw)
    torch.testing.assert_close(whole, parts, rtol=1e-9, atol=1e-12)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(focal_loss(x[perm], t[perm], **kw), whole, rtol=1e-9, atol=1e-12)
    classes = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(1))
    inverse = torch.argsort(classes)
    t_perm = torch.where(t == 255, t, inverse[t.clamp(max=x.shape[1] - 1)])
    permuted = focal_loss(x[:, classes], t_perm, **{**kw, "weight": w[classes]})
    torch.testing.assert_close(permuted, whole, rtol=1e-9, atol=1e-12)


@given(
    st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**16), st.sampled_from([0.0, 0.5, 2.0])
)
def test_sigmoid_symmetry_and_bce(n, c, seed, gamma):
    g = torch.Generator().manual_seed(seed)
    x = (5 * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_()
    t = torch.rand(n, c, generator=g, dtype=torch.float64)
    a = sigmoid_focal_loss(x, t, gamma=gamma, alpha=0.3, reduction="none")
    b = sigmoid_focal_loss(-x, 1 - t, gamma=gamma, alpha=0.7, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="sum")
    ours = sigmoid_focal_loss(x, t, gamma=0.0, alpha=None, reduction="sum")
    torch.testing.assert_close(ours, ce, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_grad(ours, x), _grad(ce, x), rtol=1e-7, atol=1e-12)
