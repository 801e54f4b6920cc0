"""prior_bias, init_prior_bias_ and class_balanced_weights against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from focalloss import class_balanced_weights, focal_loss, init_prior_bias_, prior_bias


def test_prior_bias_values():
    # -log((1 - 0.01) / 0.01) = -log(99) = -4.59511985...
    assert prior_bias(0.01) == pytest.approx(-4.59511985013459, abs=1e-12)
    assert prior_bias() == prior_bias(0.01)
    assert prior_bias(0.5) == 0.0
    assert 1 / (1 + math.exp(-prior_bias(0.2))) == pytest.approx(0.2)


def test_init_prior_bias_fills_in_place():
    layer = torch.nn.Linear(8, 80)
    out = init_prior_bias_(layer.bias, prior=0.01)
    assert out is layer.bias
    assert torch.all(layer.bias == torch.tensor(prior_bias(0.01), dtype=torch.float32))
    assert layer.bias.requires_grad  # still a parameter


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_prior_bias_rejects_out_of_range(prior):
    with pytest.raises(ValueError, match=r"prior: expected a number in \(0, 1\)"):
        prior_bias(prior)


def test_prior_errors():
    with pytest.raises(TypeError, match="prior: expected a number"):
        prior_bias("0.01")
    with pytest.raises(TypeError, match="bias: expected a tensor"):
        init_prior_bias_([0.0, 0.0])
    with pytest.raises(TypeError, match="bias: expected a floating-point tensor"):
        init_prior_bias_(torch.zeros(3, dtype=torch.long))


def test_class_balanced_weights_hand_computed():
    # beta = 0.99, counts (1000, 10): (1 - b)/(1 - b^n) = 0.0100004317..., 0.1045826...
    w0 = 0.01 / (1 - 0.99**1000)
    w1 = 0.01 / (1 - 0.99**10)
    expected = torch.tensor([w0, w1]) * 2 / (w0 + w1)
    got = class_balanced_weights([1000, 10], beta=0.99)
    torch.testing.assert_close(got, expected.float())
    assert got.dtype == torch.float32
    assert got.sum().item() == pytest.approx(2.0)


def test_class_balanced_weights_limits_and_tensor_input():
    counts = torch.tensor([5000, 500, 50])
    torch.testing.assert_close(class_balanced_weights(counts, beta=0.0), torch.ones(3))
    # beta -> 1: inverse frequency.
    inv = 1 / counts.double()
    torch.testing.assert_close(
        class_balanced_weights(counts, beta=1 - 1e-12).double(),
        inv * 3 / inv.sum(),
        rtol=1e-5,
        atol=0,
    )
    # Default beta 0.9999 with large counts stays finite and ordered.
    w = class_balanced_weights([10**7, 10**4, 10])
    assert bool(torch.isfinite(w).all()) and w[0] < w[1] < w[2]


def test_class_balanced_weights_usable_as_weight_and_alpha():
    w = class_balanced_weights([900, 90, 10])
    x = torch.randn(4, 3, 5)
    t = torch.randint(0, 3, (4, 5))
    assert torch.isfinite(focal_loss(x, t, weight=w, alpha=w))


@pytest.mark.parametrize(
    ("counts", "beta", "exc", "match"),
    [
        (
            [10, 0, 3],
            0.99,
            ValueError,
            r"counts: every class needs a finite count > 0, got 0.0 for class 1",
        ),
        ([10, -2], 0.99, ValueError, r"got -2.0 for class 1"),
        ([], 0.99, ValueError, r"counts: expected a non-empty 1-D sequence"),
        (torch.ones(2, 2), 0.99, ValueError, r"counts: expected a non-empty 1-D sequence"),
        ([10, 20], 1.0, ValueError, r"beta: expected a number in \[0, 1\), got 1.0"),
        ([10, 20], -0.5, ValueError, r"beta: .* got -0.5"),
        ("abc", 0.9, TypeError, r"counts: expected a sequence or 1-D tensor"),
    ],
)
def test_class_balanced_weights_errors(counts, beta, exc, match):
    with pytest.raises(exc, match=match):
        class_balanced_weights(counts, beta=beta)
