"""torch.compile(fullgraph=True) over the public losses: no graph break, values equal eager."""

from __future__ import annotations

import pytest
import torch

from focalloss import FocalLoss, focal_loss
from refs import softmax_focal_ref


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("index", dict(ignore_index=255, alpha=[0.2, 0.3, 0.5], weight=[1.0, 2.0, 0.5])),
        ("index", dict(ignore_index=255, label_smoothing=0.1, reduction="none")),
        ("prob", dict(gamma=0.5, reduction="sum")),
    ],
)
def test_compiled_function_matches_eager(kind, kwargs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)
    if kind == "prob":
        t = torch.softmax(torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64), 1)
    else:
        t = torch.randint(0, 3, (2, 6, 5), generator=g)
        t[0, 0] = 255

    def step(inp):
        return focal_loss(inp, t, **kwargs)

    compiled = torch.compile(step, fullgraph=True)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, expected = compiled(xc), step(xe)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, softmax_focal_ref(x, t, **kwargs))
    go = torch.randn_like(got)
    got.backward(go)
    expected.backward(go)
    torch.testing.assert_close(xc.grad, xe.grad)


def test_compiled_training_step_with_module_dynamic_shapes():
    torch.manual_seed(0)
    head = torch.nn.Conv2d(4, 3, 1)
    criterion = FocalLoss(gamma=2.0, ignore_index=255, weight=[1.0, 2.0, 3.0])

    def forward(features, target):
        return criterion(head(features), target)

    compiled = torch.compile(forward, fullgraph=True, dynamic=True)
    for size in (6, 9):
        features = torch.randn(2, 4, size, size)
        target = torch.randint(0, 3, (2, size, size))
        target[:, 0] = 255
        head.zero_grad()
        loss = compiled(features, target)
        loss.backward()
        grads = [p.grad.clone() for p in head.parameters()]
        head.zero_grad()
        expected = forward(features, target)
        expected.backward()
        torch.testing.assert_close(loss, expected)
        for got, want in zip(grads, (p.grad for p in head.parameters()), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["float", "index"])
def test_compiled_sigmoid_matches_eager(kind):
    from focalloss import sigmoid_focal_loss

    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    x[0, :, 0] = torch.tensor([1e4, -1e4, 40.0, -40.0], dtype=torch.float64)  # saturated
    if kind == "float":
        t = torch.rand(6, 4, 3, generator=g, dtype=torch.float64)
        kwargs = dict(gamma=0.5, weight=torch.rand(4, 1, dtype=torch.float64), reduction="none")
    else:
        t = torch.randint(-1, 5, (6, 3), generator=g)
        kwargs = dict(ignore_index=-1, normalizer=torch.tensor(3.0, dtype=torch.float64))

    def step(inp):
        return sigmoid_focal_loss(inp, t, **kwargs)

    compiled = torch.compile(step, fullgraph=True)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, expected = compiled(xc), step(xe)
    torch.testing.assert_close(got, expected)
    go = torch.randn_like(got)
    got.backward(go)
    expected.backward(go)
    torch.testing.assert_close(xc.grad, xe.grad)
