"""The engine and the review's findings (issue 11), on the PyTorch backend and without a GPU:
binary masks for one output, per-class sigmoid weights along dim 1, the kernels' frame and
launch grid, compiled gradient strides, import cost, and the spec's canonical fields."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from focalloss import SigmoidFocalLoss, focal_loss, sigmoid_focal_loss
from focalloss._triton.frames import blocks, frame, grad_buffer, grid


def _grad(fn, x, *args, **kwargs):
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, *args, **kwargs)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), leaf.grad


# Finding 2: with one output, an integer target is a binary mask (1 positive, 0 negative).


@pytest.mark.parametrize("shape", [(3, 1), (2, 1, 4, 5)])
@pytest.mark.parametrize("same_shape", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_binary_mask_equals_the_float_mask(shape, same_shape, reduction):
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    mask = torch.randint(0, 2, shape, generator=g)
    target = mask if same_shape else mask.squeeze(1)
    got, got_grad = _grad(sigmoid_focal_loss, x, target, reduction=reduction)
    want, want_grad = _grad(sigmoid_focal_loss, x, mask.double(), reduction=reduction)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)
    # Independent of the library: gamma 0 and no alpha is BCE with the mask as labels.
    bce = F.binary_cross_entropy_with_logits(x, mask.double(), reduction=reduction)
    torch.testing.assert_close(
        sigmoid_focal_loss(x, target, gamma=0.0, alpha=None, reduction=reduction), bce
    )


def test_binary_mask_with_ignore_index_drops_the_positions():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 3, 4, generator=g, dtype=torch.float64)
    mask = torch.randint(0, 2, (2, 3, 4), generator=g)
    target = mask.clone()
    target[0, 0] = 255
    keep = target != 255
    loss = sigmoid_focal_loss(x, target, ignore_index=255, reduction="sum")
    labels = mask.double().unsqueeze(1)
    per_element = sigmoid_focal_loss(x, labels, reduction="none")
    torch.testing.assert_close(loss, per_element[keep.unsqueeze(1)].sum())
    mean = sigmoid_focal_loss(x, target, ignore_index=255)
    torch.testing.assert_close(mean, per_element[keep.unsqueeze(1)].mean())


def test_binary_mask_errors():
    x = torch.randn(2, 1, 3)
    with pytest.raises(
        ValueError, match=r"binary mask of 0 \(negative\) and 1 \(positive\).*got 2"
    ):
        sigmoid_focal_loss(x, torch.tensor([[0, 1, 2], [1, 1, 0]]))
    with pytest.raises(ValueError, match=r"ignore_index: .* cannot be 1"):
        sigmoid_focal_loss(x, torch.zeros(2, 3, dtype=torch.long), ignore_index=1)
    # Two or more outputs: an integer target of the input's shape is still an error.
    with pytest.raises(TypeError, match="must be floating point"):
        sigmoid_focal_loss(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long))


# Finding 8: a 1-D (C,) weight/pos_weight is per class along dim 1, like alpha.


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_per_class_weight_goes_along_dim_1(name):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 4, generator=g, dtype=torch.float64)  # W == C: the trap
    t = torch.rand(x.shape, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    got = sigmoid_focal_loss(x, t, **{name: w}, reduction="none")
    along_dim_1 = sigmoid_focal_loss(x, t, **{name: w.view(1, 4, 1, 1)}, reduction="none")
    last_dim = sigmoid_focal_loss(x, t, **{name: w.view(1, 1, 1, 4)}, reduction="none")
    torch.testing.assert_close(got, along_dim_1)
    assert not torch.allclose(got, last_dim)
    # gamma 0, no alpha: BCE-with-logits with the explicitly shaped weight.
    bce = F.binary_cross_entropy_with_logits(
        x, t, **{name: w.view(1, 4, 1, 1) if name == "weight" else w.view(4, 1, 1)}
    )
    torch.testing.assert_close(sigmoid_focal_loss(x, t, gamma=0.0, alpha=None, **{name: w}), bce)
    module = SigmoidFocalLoss(**{name: w}, reduction="none")
    torch.testing.assert_close(module(x, t), got)


def test_other_weight_shapes_broadcast_as_in_bce():
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.rand(3, 2, dtype=torch.float64)
    w = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    torch.testing.assert_close(
        sigmoid_focal_loss(x, t, gamma=0.0, alpha=None, weight=w),
        F.binary_cross_entropy_with_logits(x, t, weight=w),
    )


# Findings 3 and 4: the frame and the grid (plain Python, testable without a GPU).


def test_grid_folds_positions_into_one_axis_without_the_65535_cap():
    x = torch.empty(70000, 5)
    (n, c, s), strides = frame(x, class_dim=True)
    assert (n, c, s) == (1, 5, 70000) and strides == (0, 1, 5)
    _, block_s = blocks(c, s)
    programs = grid(n, s, block_s)
    assert len(programs) == 1 and programs[0] * block_s >= 70000
    # (N, C, 1): no spatial extent, positions are the batch (not N programs of one position).
    (n, c, s), strides = frame(torch.empty(70000, 5, 1), class_dim=True)
    assert (n, c, s) == (1, 5, 70000) and strides == (0, 1, 5)
    (n, _, s), (_, _, t_s) = frame(torch.empty(70000, 1, dtype=torch.long), class_dim=False)
    assert (n, s, t_s) == (1, 70000, 1)
    # A batch beyond 65535 with a spatial dimension: every (n, tile) is one program on axis 0.
    (n, c, s), _ = frame(torch.empty(70000, 3, 7), class_dim=True)
    assert (n, s) == (70000, 7)
    assert grid(n, s, blocks(c, s)[1]) == (70000,)
    assert grid(3, 2**31, 1024) == (3 * 2**21,)  # Python ints: no overflow


def test_fake_and_real_gradient_layouts_agree():
    x = torch.empty(2, 3, 4, 5).transpose(2, 3)  # spatial dims swapped: cannot be framed
    assert frame(x, class_dim=True) is None
    assert grad_buffer(x).is_contiguous()
    cl = torch.empty(2, 3, 4, 5).to(memory_format=torch.channels_last)
    assert grad_buffer(cl).stride() == cl.stride()


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_compiled_gradient_has_the_eager_strides(loss):
    """Finding 6: what compiled code is told about the gradient is what it gets."""
    fn = focal_loss if loss == "softmax" else sigmoid_focal_loss
    x = torch.randn(2, 3, 5, 4).transpose(2, 3)  # (2, 3, 4, 5) with H and W swapped
    t = torch.randint(0, 3, (2, 4, 5))
    compiled = torch.compile(lambda a, b: fn(a, b), fullgraph=True)
    eager_loss, eager_grad = _grad(fn, x, t)
    got_loss, got_grad = _grad(compiled, x, t)
    torch.testing.assert_close(got_loss, eager_loss)
    torch.testing.assert_close(got_grad, eager_grad)
    assert got_grad.stride() == eager_grad.stride()


def test_import_is_light():
    """Nothing from torch._dynamo, triton or CUDA is touched until a call needs it."""
    code = (
        "import sys, torch\n"
        "loaded = set(sys.modules)\n"
        "import focalloss\n"
        "new = set(sys.modules) - loaded\n"
        "heavy = sorted(m for m in new if m.startswith(('torch._dynamo', 'triton', "
        "'torch._inductor')))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_value_checks_off_out_of_range_sigmoid_counts_as_ignored():
    import focalloss

    x = torch.randn(4, 3, dtype=torch.float64)
    target = torch.tensor([0, 9, 3, -7])  # 3 = background; 9 and -7 out of range
    previous = focalloss.set_value_checks(False)
    try:
        got = sigmoid_focal_loss(x, target, reduction="sum")
    finally:
        focalloss.set_value_checks(previous)
    keep = torch.tensor([0, 2])
    torch.testing.assert_close(got, sigmoid_focal_loss(x[keep], target[keep], reduction="sum"))
