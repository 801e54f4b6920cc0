"""The kernels and the review's findings (issue 11): non-contiguous per-class vectors, binary
masks, a batch beyond 65535, out-of-range indices with value checks off, and no tensor built
from Python data on the device during a launch."""

from __future__ import annotations

import pytest
import torch

import focalloss
from focalloss import focal_loss, sigmoid_focal_loss

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter


def _both(fn, x, target, **kwargs):
    """(loss, grad) from the kernels and from the PyTorch backend."""
    out = []
    for backend in ("triton", "torch"):
        leaf = x.detach().clone().requires_grad_()
        loss = fn(leaf, target, backend=backend, **kwargs)
        loss.backward(torch.ones_like(loss) * 1.3)
        out.append((loss.detach(), leaf.grad))
    return out


def _close(pair, rtol=2e-5, atol=1e-6):
    (a, ga), (b, gb) = pair
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol)


def _views(values: torch.Tensor, device: str) -> dict[str, torch.Tensor]:
    """The same C values as a strided slice, a flipped copy's flip and an expanded scalar."""
    c = values.numel()
    wide = torch.zeros(2 * c, device=device)
    wide[::2] = values
    return {
        "strided": wide[::2],
        "flipped": values.flip(0).clone().flip(0),
        "expanded": values[:1].expand(c),
    }


@pytest.mark.parametrize("layout", ["strided", "flipped", "expanded"])
def test_softmax_per_class_vectors_in_any_layout(layout, device):
    """Finding 1: kernels once read per-class vectors as if contiguous (0.58 vs 1.51)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 7, generator=g).to(device)
    t = torch.randint(0, 5, (6, 7), generator=g).to(device)
    w = (torch.rand(5, generator=g) + 0.2).to(device)
    a = torch.rand(5, generator=g).to(device)
    kwargs = dict(weight=_views(w, device)[layout], alpha=_views(a, device)[layout])
    pair = _both(focal_loss, x, t, **kwargs)
    _close(pair)
    contiguous = focal_loss(x, t, weight=kwargs["weight"].contiguous(),
                            alpha=kwargs["alpha"].contiguous(), backend="triton")  # fmt: skip
    torch.testing.assert_close(pair[0][0], contiguous)


@pytest.mark.parametrize("layout", ["strided", "flipped", "expanded"])
def test_sigmoid_per_class_alpha_in_any_layout(layout, device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 3, generator=g).to(device)
    t = torch.randint(0, 6, (6, 3), generator=g).to(device)
    a = torch.rand(5, generator=g).to(device)
    _close(_both(sigmoid_focal_loss, x, t, alpha=_views(a, device)[layout]))
    # and the per-class weight of finding 8, along dim 1
    w = (torch.rand(5, generator=g) + 0.1).to(device)
    _close(_both(sigmoid_focal_loss, x, t, weight=_views(w, device)[layout]))


@pytest.mark.parametrize("same_shape", [False, True])
def test_binary_mask_on_the_kernels(same_shape, device):
    """Finding 2: with C == 1 an integer target is a mask: 1 positive, 0 negative."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 4, 5, generator=g).to(device)
    mask = torch.randint(0, 2, (3, 1, 4, 5), generator=g).to(device)
    target = mask if same_shape else mask.squeeze(1).clone()
    if not same_shape:
        target[0, 0, :2] = -1
    kwargs = dict(ignore_index=-1) if not same_shape else {}
    pair = _both(sigmoid_focal_loss, x, target, **kwargs)
    _close(pair)
    if same_shape:
        float_mask = sigmoid_focal_loss(x, mask.float(), backend="triton")
        torch.testing.assert_close(pair[0][0], float_mask)


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_batch_beyond_65535(loss, device):
    """Finding 3: (70000, C) logits used to launch 70000 programs on grid axis 1."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(70000, 3, generator=g).to(device)
    t = torch.randint(0, 3, (70000,), generator=g).to(device)
    fn = focal_loss if loss == "softmax" else sigmoid_focal_loss
    _close(_both(fn, x, t), rtol=1e-4, atol=1e-6)
    # (N, C, 1): positions are the batch
    _close(_both(fn, x[:3000].unsqueeze(-1), t[:3000].unsqueeze(-1)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_out_of_range_indices_with_checks_off_are_ignored(loss, device):
    """Finding 7: no read outside the logits; the documented result on both backends."""
    x = torch.randn(5, 3).to(device)
    t = torch.tensor([0, 7, 2, -5, 1]).to(device)
    fn = focal_loss if loss == "softmax" else sigmoid_focal_loss
    previous = focalloss.set_value_checks(False)
    try:
        pair = _both(fn, x, t)
    finally:
        focalloss.set_value_checks(previous)
    _close(pair)
    keep = torch.tensor([0, 2, 4]).to(device)
    torch.testing.assert_close(pair[0][0], fn(x[keep], t[keep], backend="triton"))
    assert bool((pair[0][1][torch.tensor([1, 3]).to(device)] == 0).all())


def test_launch_builds_no_tensor_from_python_data(device, monkeypatch):
    """Finding 5: gamma, smoothing and alpha reach the kernels by fills, not torch.tensor."""
    x = torch.randn(4, 3, 5).to(device)
    t = torch.randint(0, 3, (4, 5)).to(device)
    focal_loss(x, t, backend="triton")  # launchers loaded, caches warm

    def refuse(*args, **kwargs):
        raise AssertionError("torch.tensor during a launch")

    monkeypatch.setattr(torch, "tensor", refuse)
    monkeypatch.setattr(torch, "as_tensor", refuse)
    previous = focalloss.set_value_checks(False)
    try:
        _both(focal_loss, x, t, gamma=0.7, label_smoothing=0.1, ignore_index=2)
        _both(sigmoid_focal_loss, x, t, gamma=1.5, alpha=0.3, ignore_index=2)
        _both(sigmoid_focal_loss, x, torch.rand(4, 3, 5).to(device), normalizer=3.0)
    finally:
        focalloss.set_value_checks(previous)
