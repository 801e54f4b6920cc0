"""Every documented argument error: type, message naming the argument, expected and got."""

from __future__ import annotations

import math

import pytest
import torch

import focalloss
from focalloss import FocalLoss, focal_loss

X = torch.randn(4, 3, 5)
T = torch.randint(0, 3, (4, 5))
P = torch.softmax(torch.randn(4, 3, 5), 1)

CASES = [
    # (id, input, target, kwargs, exception, message regex)
    ("reduction", X, T, dict(reduction="avg"), ValueError, r"reduction: expected one of .*'avg'"),
    (
        "gamma negative",
        X,
        T,
        dict(gamma=-0.5),
        ValueError,
        r"gamma: expected a finite number >= 0, got -0.5",
    ),
    ("gamma inf", X, T, dict(gamma=math.inf), ValueError, r"gamma: .* got inf"),
    ("gamma nan", X, T, dict(gamma=math.nan), ValueError, r"gamma: .* got nan"),
    ("gamma type", X, T, dict(gamma="2"), TypeError, r"gamma: expected a real number"),
    (
        "smoothing high",
        X,
        T,
        dict(label_smoothing=1.5),
        ValueError,
        r"label_smoothing: expected a number in \[0, 1\], got 1.5",
    ),
    (
        "smoothing low",
        X,
        T,
        dict(label_smoothing=-0.1),
        ValueError,
        r"label_smoothing: .* got -0.1",
    ),
    (
        "alpha length",
        X,
        T,
        dict(alpha=[0.5, 0.5]),
        ValueError,
        r"alpha: expected one factor per class, shape \(3,\), got shape \(2,\)",
    ),
    (
        "alpha negative",
        X,
        T,
        dict(alpha=[0.5, -0.1, 0.2]),
        ValueError,
        r"alpha: expected finite values >= 0, got -0.1",
    ),
    (
        "alpha scalar C!=2",
        X,
        T,
        dict(alpha=0.25),
        ValueError,
        r"alpha: .*valid only for C == 2, got C=3; pass 3 per-class factors",
    ),
    (
        "alpha scalar range",
        X[:, :2],
        T.clamp(max=1),
        dict(alpha=1.5),
        ValueError,
        r"alpha: expected a number in \[0, 1\], got 1.5",
    ),
    (
        "alpha 2-D",
        X,
        T,
        dict(alpha=torch.ones(3, 1)),
        ValueError,
        r"alpha: expected one factor per class",
    ),
    ("alpha type", X, T, dict(alpha="abc"), TypeError, r"alpha: expected None, a sequence"),
    (
        "weight length",
        X,
        T,
        dict(weight=torch.ones(4)),
        ValueError,
        r"weight: expected one factor per class, shape \(3,\), got shape \(4,\)",
    ),
    (
        "weight negative",
        X,
        T,
        dict(weight=torch.tensor([1.0, -2.0, 1.0])),
        ValueError,
        r"weight: expected finite values >= 0, got -2.0",
    ),
    (
        "weight nan",
        X,
        T,
        dict(weight=torch.tensor([1.0, math.nan, 1.0])),
        ValueError,
        r"weight: expected finite values >= 0, got nan",
    ),
    (
        "target shape",
        X,
        T[:, :4],
        {},
        ValueError,
        r"target: expected class indices of shape \(4, 5\) or probabilities of shape \(4, 3, 5\) for input of shape \(4, 3, 5\), got shape \(4, 4\)",
    ),
    (
        "float index target",
        X,
        T.float(),
        {},
        TypeError,
        r"target: class indices of shape \(4, 5\) must have an integer dtype .* got dtype torch.float32",
    ),
    (
        "integer prob target",
        X,
        P.long(),
        {},
        TypeError,
        r"target: .*must be floating point, got dtype torch.int64",
    ),
    (
        "bool index target",
        X,
        T.bool(),
        {},
        TypeError,
        r"target: class indices .* got dtype torch.bool",
    ),
    (
        "target too large",
        X,
        torch.full((4, 5), 3),
        {},
        ValueError,
        r"target: class indices must lie in \[0, 3\) or ignore_index=-100 for C=3 classes, got 3",
    ),
    (
        "target negative",
        X,
        torch.full((4, 5), -1),
        {},
        ValueError,
        r"target: class indices must lie in \[0, 3\).* got -1",
    ),
    (
        "ignore_index with probs",
        X,
        P,
        dict(ignore_index=255),
        ValueError,
        r"ignore_index: not supported with probability targets .* got 255",
    ),
    (
        "ignore_index type",
        X,
        T,
        dict(ignore_index=2.5),
        TypeError,
        r"ignore_index: expected an int or None, got 2.5",
    ),
    ("input type", X.numpy(), T, {}, TypeError, r"input: expected a torch.Tensor, got ndarray"),
    (
        "input integer",
        T.view(4, 5, 1),
        T,
        {},
        TypeError,
        r"input: expected floating-point logits, got dtype torch.int64",
    ),
    ("input 0-d", torch.tensor(1.0), T, {}, ValueError, r"input: expected logits of shape"),
    (
        "no classes",
        torch.randn(4, 0),
        torch.zeros(4, dtype=torch.long),
        {},
        ValueError,
        r"input: expected at least one class",
    ),
    (
        "target device",
        X,
        T.to("meta"),
        {},
        ValueError,
        r"target: expected a tensor on the input's device cpu, got one on meta",
    ),
    (
        "weight device",
        X,
        T,
        dict(weight=torch.ones(3, device="meta")),
        ValueError,
        r"weight: expected a tensor on the input's device cpu, got one on meta",
    ),
    (
        "detach type",
        X,
        T,
        dict(detach_modulator=1),
        TypeError,
        r"detach_modulator: expected a bool",
    ),
]


@pytest.mark.parametrize(
    ("input", "target", "kwargs", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_focal_loss_rejects(input, target, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        focal_loss(input, target, **kwargs)


def test_ignore_index_is_allowed_outside_the_range_check():
    t = T.clone()
    t[0, 0] = 255
    assert torch.isfinite(focal_loss(X, t, ignore_index=255))
    with pytest.raises(ValueError, match=r"got 255"):
        focal_loss(X, t)  # 255 without ignore_index=255 is an error, never silently dropped


def test_value_checks_can_be_switched_off():
    bad = torch.full((4, 5), 7)
    previous = focalloss.set_value_checks(False)
    try:
        # Without the check nothing is read on the host: an out-of-range index counts as
        # ignored (loss 0, zero gradient, not in the "mean" divisor), on every backend.
        x = X[:, :, 0].detach().clone().requires_grad_()  # (4, 3)
        mixed = torch.tensor([0, 7, 2, -5])
        loss = focal_loss(x, mixed, reduction="sum")
        loss.backward()
        keep = torch.tensor([0, 2])
        x_ref = X[:, :, 0].detach().clone().requires_grad_()
        expected = focal_loss(x_ref[keep], mixed[keep], reduction="sum")
        expected.backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(x.grad[keep], x_ref.grad[keep])
        assert bool((x.grad[torch.tensor([1, 3])] == 0).all())
        torch.testing.assert_close(
            focal_loss(x.detach(), mixed), focal_loss(x.detach()[keep], mixed[keep])
        )  # the divisor counts 2 positions
        assert float(focal_loss(X, bad)) == 0.0
    finally:
        focalloss.set_value_checks(previous)
    with pytest.raises(ValueError, match="got 7"):
        focal_loss(X, bad)
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        focalloss.set_value_checks("no")


def test_module_rejects_bad_configuration():
    with pytest.raises(TypeError, match="size_average: expected a bool or None"):
        FocalLoss(size_average="yes")
    with pytest.raises(
        ValueError,
        match=r"weight: expected one factor per class \(a 1-D tensor\), got shape \(2, 2\)",
    ):
        FocalLoss(weight=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\], got 2.0"):
        FocalLoss(alpha=2.0)
    with pytest.raises(TypeError, match="alpha: expected None, a sequence"):
        FocalLoss(alpha="x")
