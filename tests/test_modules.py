"""FocalLoss (the module) delegates to focal_loss and keeps the seed module's signature."""

from __future__ import annotations

import pytest
import torch

from focalloss import FocalLoss, SigmoidFocalLoss, focal_loss
from refs import SeedFocalLoss, softmax_focal_ref


def test_module_equals_function():
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 5, 6))
    t[0, 0] = 255
    kw = dict(
        gamma=1.5,
        alpha=[0.1, 0.2, 0.3, 0.4],
        ignore_index=255,
        weight=[1.0, 2.0, 3.0, 4.0],
        reduction="sum",
        label_smoothing=0.05,
    )
    module = FocalLoss(**kw).double()
    torch.testing.assert_close(module(x, t), focal_loss(x, t, **kw))
    torch.testing.assert_close(module(x, t), softmax_focal_ref(x, t, **kw))


def test_buffers_follow_to_and_appear_in_state_dict():
    module = FocalLoss(alpha=[0.25, 0.75], weight=torch.tensor([1.0, 3.0]))
    assert set(module.state_dict()) == {"alpha", "weight"}
    assert {name for name, _ in module.named_buffers()} == {"alpha", "weight"}
    assert module.alpha.dtype == torch.float32  # from Python numbers (MPS has no float64)
    assert module.weight.dtype == torch.float32  # a tensor keeps its dtype
    module = module.to(torch.float16)
    assert module.alpha.dtype == torch.float16
    assert module.weight.dtype == torch.float16
    restored = FocalLoss(alpha=[0.0, 0.0], weight=[0.0, 0.0])
    restored.load_state_dict(module.state_dict())
    assert restored.weight.tolist() == [1.0, 3.0]
    # The module keeps its own copy: changing the argument afterwards changes nothing.
    w = torch.tensor([1.0, 2.0])
    m2 = FocalLoss(weight=w)
    w[0] = 100.0
    assert m2.weight[0].item() == 1.0


def test_alpha_has_one_state_dict_key_whatever_its_form():
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    t = torch.randint(0, 2, (5, 3))
    forms = [0.25, [0.25, 0.75], torch.tensor([0.25, 0.75])]
    modules = [FocalLoss(alpha=a) for a in forms]
    for module in modules:
        assert set(module.state_dict()) == {"alpha"}
        assert module.alpha.dtype == torch.float32
        torch.testing.assert_close(module.alpha, torch.tensor([0.25, 0.75]))
    expected = focal_loss(x, t, alpha=[0.25, 0.75])
    for module in modules:
        torch.testing.assert_close(module(x, t), expected)
    modules[1].load_state_dict(modules[0].state_dict())  # interchangeable
    assert set(SigmoidFocalLoss(alpha=0.25).state_dict()) == {"alpha"}
    assert set(SigmoidFocalLoss(alpha=[0.1, 0.2]).state_dict()) == {"alpha"}
    assert "alpha" not in SigmoidFocalLoss(alpha=-1).state_dict()  # disabled
    assert "alpha=0.25" in repr(SigmoidFocalLoss(alpha=0.25))


def test_half_module_keeps_float32_numbers_until_converted():
    module = FocalLoss(alpha=[0.7, 0.3])
    assert module.alpha.dtype == torch.float32
    assert module.alpha[0].item() == torch.tensor(0.7, dtype=torch.float32).item()


def test_assigning_alpha_and_weight_after_construction():
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1])
    module = FocalLoss()
    module.alpha = [0.2, 0.3, 0.5]
    module.weight = torch.tensor([1.0, 2.0, 3.0])
    assert set(module.state_dict()) == {"alpha", "weight"}
    torch.testing.assert_close(
        module(x, t), focal_loss(x, t, alpha=[0.2, 0.3, 0.5], weight=[1.0, 2.0, 3.0])
    )
    module.alpha = None
    assert "alpha" not in module.state_dict()
    with pytest.raises(ValueError, match=r"alpha: expected finite values >= 0, got -1\.0"):
        module.alpha = [0.2, -1.0, 0.5]
    with pytest.raises(
        TypeError, match="weight: expected None, a sequence of per-class numbers, a number"
    ):
        module.weight = "heavy"
    sigmoid = SigmoidFocalLoss()
    sigmoid.alpha = 0.5
    torch.testing.assert_close(sigmoid.alpha, torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\], got 2.0"):
        sigmoid.alpha = 2.0
    with pytest.raises(TypeError, match="pos_weight: expected a tensor or None, got list"):
        sigmoid.pos_weight = [1.0, 2.0]


def test_arguments_after_the_seed_four_are_keyword_only():
    with pytest.raises(TypeError):
        FocalLoss(2.0, None, None, -100, None)  # weight only by keyword
    with pytest.raises(TypeError):
        SigmoidFocalLoss(0.25)  # used to set gamma silently


def test_torchscript_gives_a_clear_error():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.criterion = FocalLoss()

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.criterion(x, t)

    for module in (FocalLoss(), SigmoidFocalLoss(), Model()):
        with pytest.raises(RuntimeError, match=r"TorchScript .* torch\.compile.* torch\.export"):
            torch.jit.script(module)


def test_size_average_maps_to_reduction_with_deprecation_warning():
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1])
    with pytest.warns(DeprecationWarning, match="size_average"):
        summed = FocalLoss(2.0, None, False)
    with pytest.warns(DeprecationWarning, match="size_average"):
        averaged = FocalLoss(2.0, None, True)
    assert summed.reduction == "sum" and averaged.reduction == "mean"
    torch.testing.assert_close(summed(x, t), focal_loss(x, t, reduction="sum"))
    torch.testing.assert_close(averaged(x, t), focal_loss(x, t, reduction="mean"))


@pytest.mark.parametrize(
    "bad", [dict(gamma=-1.0), dict(reduction="avg"), dict(label_smoothing=2.0)]
)
def test_module_validates_at_construction(bad):
    with pytest.raises(ValueError):
        FocalLoss(**bad)


def test_module_on_meta_device_shapes():
    # The module works on any device its inputs live on; the buffers move with .to().
    module = FocalLoss(weight=[1.0, 2.0, 3.0])
    out = module(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    assert out.shape == ()


@pytest.mark.parametrize("gamma", [0, 0.5, 2, 5])
@pytest.mark.parametrize("alpha", [None, 0.25, [0.2, 0.5, 0.3], 1])
@pytest.mark.parametrize("size_average", [True, False])
@pytest.mark.parametrize("ignore_index", [None, 255, 0])
@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 5, 4)], ids=str)
def test_seed_compatibility(gamma, alpha, size_average, ignore_index, shape):
    num_classes = shape[1]
    if isinstance(alpha, (int, float)):
        num_classes = 2  # the seed's scalar alpha only makes sense for two classes
        shape = (shape[0], 2, *shape[2:])
    if isinstance(alpha, list) and len(alpha) != num_classes:
        return
    g = torch.Generator().manual_seed(hash((gamma, str(alpha), size_average, ignore_index)) % 2**31)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, num_classes, shape[:1] + shape[2:], generator=g)
    if ignore_index == 255:
        t[torch.rand(t.shape, generator=g) < 0.2] = 255
    if ignore_index == 0 and bool((t == 0).all()):
        t[..., 0] = 1
    seed = SeedFocalLoss(gamma, alpha, size_average, ignore_index)
    with pytest.warns(DeprecationWarning):
        ours = FocalLoss(gamma, alpha, size_average, ignore_index)
    with pytest.warns(DeprecationWarning):
        ours_detached = FocalLoss(gamma, alpha, size_average, ignore_index, detach_modulator=True)
    xs, xo, xd = (x.clone().requires_grad_() for _ in range(3))
    expected = seed(xs, t)
    got = ours(xo, t)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    expected.backward()
    ours_detached(xd, t).backward()
    torch.testing.assert_close(xd.grad, xs.grad, rtol=1e-9, atol=1e-14)
    if gamma == 0:
        got.backward()
        torch.testing.assert_close(xo.grad, xs.grad, rtol=1e-9, atol=1e-14)
