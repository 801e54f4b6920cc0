"""Every documented argument error of sigmoid_focal_loss and SigmoidFocalLoss."""

from __future__ import annotations

import math

import pytest
import torch

from focalloss import SigmoidFocalLoss, sigmoid_focal_loss

X = torch.randn(4, 3, 5)
T = torch.rand(4, 3, 5)
I = torch.randint(0, 4, (4, 5))  # noqa: E741

CASES = [
    ("reduction", X, T, dict(reduction="avg"), ValueError, r"reduction: expected one of"),
    (
        "gamma",
        X,
        T,
        dict(gamma=-1.0),
        ValueError,
        r"gamma: expected a finite number >= 0, got -1.0",
    ),
    (
        "alpha > 1",
        X,
        T,
        dict(alpha=1.5),
        ValueError,
        r"alpha: expected a number in \[0, 1\], got 1.5",
    ),
    (
        "alpha nan",
        X,
        T,
        dict(alpha=math.nan),
        ValueError,
        r"alpha: expected a number in \[0, 1\], got nan",
    ),
    (
        "alpha per-class > 1",
        X,
        T,
        dict(alpha=[0.5, 2.0, 0.1]),
        ValueError,
        r"alpha: per-class factors must lie in \[0, 1\], got 2.0",
    ),
    (
        "alpha per-class length",
        X,
        T,
        dict(alpha=[0.5, 0.5]),
        ValueError,
        r"alpha: expected one factor per class, shape \(3,\), got shape \(2,\)",
    ),
    (
        "alpha per-class 1-D input",
        X[:, 0, 0],
        T[:, 0, 0],
        dict(alpha=[0.5]),
        ValueError,
        r"alpha: per-class factors need \(N, C, ...\) logits",
    ),
    (
        "float target above 1",
        X,
        T + 1,
        {},
        ValueError,
        r"target: float labels must lie in \[0, 1\], got",
    ),
    (
        "float target negative",
        X,
        -T,
        {},
        ValueError,
        r"target: float labels must lie in \[0, 1\], got -",
    ),
    (
        "float target nan",
        X,
        T.masked_fill(T > 0.5, math.nan),
        {},
        ValueError,
        r"target: float labels must lie in \[0, 1\], got nan",
    ),
    (
        "index above C",
        X,
        torch.full((4, 5), 4),
        {},
        ValueError,
        r"target: class indices must lie in \[0, 3\] for C=3 classes, got 4",
    ),
    (
        "index negative",
        X,
        torch.full((4, 5), -1),
        {},
        ValueError,
        r"target: class indices must lie in \[0, 3\] for C=3 classes, got -1",
    ),
    (
        "index wrong ignore",
        X,
        torch.full((4, 5), -1),
        dict(ignore_index=-2),
        ValueError,
        r"\[0, 3\] or ignore_index=-2 .* got -1",
    ),
    (
        "shape",
        X,
        T[:, :, :4],
        {},
        ValueError,
        r"target: expected labels of shape \(4, 3, 5\) or class indices of shape \(4, 5\) for input of shape \(4, 3, 5\), got shape \(4, 3, 4\)",
    ),
    (
        "integer labels",
        X,
        T.round().long(),
        {},
        TypeError,
        r"target: labels of the input's shape \(4, 3, 5\) must be floating point",
    ),
    (
        "float indices",
        X,
        I.float(),
        {},
        TypeError,
        r"target: class indices of shape \(4, 5\) must have an integer dtype",
    ),
    (
        "ignore_index with float target",
        X,
        T,
        dict(ignore_index=-1),
        ValueError,
        r"ignore_index: only applies to class-index targets",
    ),
    (
        "normalizer negative",
        X,
        T,
        dict(normalizer=-1.0),
        ValueError,
        r"normalizer: expected a finite number >= 0, got -1.0",
    ),
    (
        "normalizer nan",
        X,
        T,
        dict(normalizer=math.nan),
        ValueError,
        r"normalizer: expected a finite number >= 0, got nan",
    ),
    (
        "normalizer inf tensor",
        X,
        T,
        dict(normalizer=torch.tensor(math.inf)),
        ValueError,
        r"normalizer: expected a finite number >= 0, got inf",
    ),
    (
        "normalizer shape",
        X,
        T,
        dict(normalizer=torch.ones(2)),
        ValueError,
        r"normalizer: expected a number or a 0-d tensor, got shape \(2,\)",
    ),
    (
        "normalizer type",
        X,
        T,
        dict(normalizer="3"),
        TypeError,
        r"normalizer: expected a number or a 0-d tensor, got str",
    ),
    (
        "normalizer with sum",
        X,
        T,
        dict(normalizer=3.0, reduction="sum"),
        ValueError,
        r"normalizer: replaces the divisor of reduction='mean'; it cannot be used with reduction='sum'",
    ),
    (
        "normalizer with none",
        X,
        T,
        dict(normalizer=3.0, reduction="none"),
        ValueError,
        r"reduction='none'",
    ),
    (
        "weight broadcast",
        X,
        T,
        dict(weight=torch.ones(2)),
        ValueError,
        r"weight: expected a shape that broadcasts to the input's \(4, 3, 5\) .* got \(2,\)",
    ),
    (
        "pos_weight broadcast",
        X,
        T,
        dict(pos_weight=torch.ones(4)),
        ValueError,
        r"pos_weight: expected a shape that broadcasts .* got \(4,\)",
    ),
    (
        "weight negative",
        X,
        T,
        dict(weight=-torch.ones(3, 1)),
        ValueError,
        r"weight: expected finite values >= 0, got -1.0",
    ),
    (
        "weight type",
        X,
        T,
        dict(weight=[1.0, 2.0]),
        TypeError,
        r"weight: expected a tensor or None, got list",
    ),
    (
        "weight integer",
        X,
        T,
        dict(weight=torch.ones(5, dtype=torch.long)),
        TypeError,
        r"weight: expected a floating-point tensor",
    ),
    ("input integer", I, I, {}, TypeError, r"input: expected floating-point logits"),
    (
        "target device",
        X,
        T.to("meta"),
        {},
        ValueError,
        r"target: expected a tensor on the input's device cpu, got one on meta",
    ),
    (
        "pos_weight device",
        X,
        T,
        dict(pos_weight=torch.ones(5, device="meta")),
        ValueError,
        r"pos_weight: expected a tensor on the input's device",
    ),
]


@pytest.mark.parametrize(
    ("input", "target", "kwargs", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_sigmoid_focal_loss_rejects(input, target, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sigmoid_focal_loss(input, target, **kwargs)


def test_negative_alpha_disables_like_torchvision():
    assert torch.equal(
        sigmoid_focal_loss(X, T, alpha=-1.0, reduction="none"),
        sigmoid_focal_loss(X, T, alpha=None, reduction="none"),
    )


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"normalizer: .* reduction='sum'"):
        SigmoidFocalLoss(reduction="sum", normalizer=2.0)
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\], got 3"):
        SigmoidFocalLoss(alpha=3)
    with pytest.raises(TypeError, match="weight: expected a tensor or None"):
        SigmoidFocalLoss(weight=[1.0])
