"""Run-to-run determinism: the same inputs give bit-identical losses and input gradients.

Each case calls the loss twice, on fresh copies of the same inputs, and compares the two
results with ``torch.equal`` (equality across runs is the property here, so the comparison is
with the same computation's output). Every case also checks that the result is the loss it
should be (close to the float64 references of ``tests/refs.py``), so a constant cannot pass.

Covered: the softmax hard-target path, the dense path (label smoothing, probability targets),
inputs above ``2 * _CHUNK_ELEMENTS`` where the dense and sigmoid paths run over chunks (split
along N and along dim 2), and the sigmoid loss with float and class-index targets, each with
``reduction="none"`` and ``"mean"``.

Not asserted: equality across ``torch.set_num_threads`` values. The README promises
bit-identical reruns only for the Triton kernels; on the CPU a sum over more than PyTorch's
parallel grain (32768 elements) is split by thread, so the last bit of a reduced loss may
depend on the thread count, as it does for ``torch.sum`` itself.
"""

from __future__ import annotations

import pytest
import torch

from focalloss import focal_loss, sigmoid_focal_loss
from focalloss._torch.common import CHUNK_ELEMENTS as _CHUNK_ELEMENTS
from focalloss._torch.common import chunk_slices as _chunk_slices
from refs import one_hot_with_background, sigmoid_focal_ref, softmax_focal_ref

C = 19


def _softmax_inputs(shape, kind, seed):
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(shape, generator=g)
    if kind == "prob":
        return x, torch.softmax(2 * torch.randn(shape, generator=g), 1)
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    t.view(-1)[::7] = 255
    return x, t


def _sigmoid_inputs(shape, kind, seed):
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(shape, generator=g)
    if kind == "float":
        return x, torch.rand(shape, generator=g)
    t = torch.randint(0, shape[1] + 1, shape[:1] + shape[2:], generator=g)
    t.view(-1)[::5] = -1
    return x, t


_G = torch.Generator().manual_seed(99)
ALPHA = torch.rand(C, generator=_G)
WEIGHT = torch.rand(C, generator=_G) + 0.5
POS_WEIGHT = torch.rand(8, 1, 1, generator=_G) * 3  # per class along dim 1

SMALL = (3, C, 24, 20)  # 27360 elements: one piece
LARGE = (2, C, 130, 110)  # 543400 elements: chunked along dim 2 of each sample
LARGE_ROWS = (7000, 80)  # 560000 elements: chunked along N

SOFTMAX_CASES = [
    pytest.param(
        SMALL, "index", dict(ignore_index=255, alpha=ALPHA, weight=WEIGHT), id="hard-mean"
    ),
    pytest.param(SMALL, "index", dict(ignore_index=255, reduction="none"), id="hard-none"),
    pytest.param(
        SMALL,
        "index",
        dict(ignore_index=255, label_smoothing=0.1, weight=WEIGHT, gamma=0.5),
        id="smoothing-mean",
    ),
    pytest.param(
        SMALL,
        "index",
        dict(ignore_index=255, label_smoothing=0.2, reduction="none"),
        id="smoothing-none",
    ),
    pytest.param(SMALL, "prob", dict(alpha=ALPHA), id="prob-mean"),
    pytest.param(SMALL, "prob", dict(gamma=1.5, reduction="none"), id="prob-none"),
    pytest.param(LARGE, "index", dict(ignore_index=255, weight=WEIGHT), id="large-hard-mean"),
    pytest.param(
        LARGE,
        "index",
        dict(ignore_index=255, label_smoothing=0.1, weight=WEIGHT),
        id="chunked-smoothing-mean",
    ),
    pytest.param(LARGE, "prob", dict(reduction="none"), id="chunked-prob-none"),
    pytest.param(
        LARGE_ROWS,
        "index",
        dict(ignore_index=255, label_smoothing=0.1, reduction="none"),
        id="chunked-rows-smoothing-none",
    ),
    pytest.param(LARGE_ROWS, "prob", dict(gamma=0.5), id="chunked-rows-prob-mean"),
]

SIGMOID_CASES = [
    pytest.param((4, 8, 15, 13), "float", dict(pos_weight=POS_WEIGHT), id="float-mean"),
    pytest.param((4, 8, 15, 13), "float", dict(gamma=0.5, reduction="none"), id="float-none"),
    pytest.param((4, 8, 15, 13), "index", dict(ignore_index=-1, alpha=None), id="index-mean"),
    pytest.param((4, 8, 15, 13), "index", dict(ignore_index=-1, reduction="none"), id="index-none"),
    pytest.param((2, 80, 100, 90), "float", dict(reduction="none"), id="chunked-float-none"),
    pytest.param((2, 80, 100, 90), "float", dict(gamma=1.0), id="chunked-float-mean"),
    pytest.param((20000, 80), "index", dict(ignore_index=-1), id="chunked-rows-index-mean"),
    pytest.param(
        (20000, 80), "index", dict(ignore_index=-1, reduction="none"), id="chunked-rows-index-none"
    ),
]


def _twice(loss_fn, x, target):
    """Two independent calls on fresh copies of the inputs: [(loss, input grad), ...]."""
    results = []
    for _ in range(2):
        xi, ti = x.clone().requires_grad_(), target.clone()
        loss = loss_fn(xi, ti)
        g = torch.Generator().manual_seed(1)
        go = None if loss.dim() == 0 else torch.randn(loss.shape, generator=g).to(loss)
        loss.backward(go)
        results.append((loss.detach(), xi.grad))
    return results


def _assert_bit_identical(results):
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert torch.equal(loss_a, loss_b), f"loss differs by {(loss_a - loss_b).abs().max()}"
    assert torch.equal(grad_a, grad_b), f"gradient differs by {(grad_a - grad_b).abs().max()}"


def _softmax_reference(x, target, kwargs):
    return softmax_focal_ref(x.cpu(), target.cpu(), **kwargs)


def _sigmoid_reference(x, target, kwargs):
    x, target = x.cpu(), target.cpu()
    kwargs = dict(kwargs)
    ignore_index = kwargs.pop("ignore_index", None)
    reduction = kwargs.pop("reduction", "mean")
    if "pos_weight" in kwargs:
        kwargs["pos_weight"] = kwargs["pos_weight"].cpu()
    if target.is_floating_point():
        loss = sigmoid_focal_ref(x, target, **kwargs)
        count = float(loss.numel())
    else:
        num_classes = x.shape[1]
        keep = target != ignore_index
        labels = one_hot_with_background(torch.where(keep, target, num_classes), num_classes)
        loss = sigmoid_focal_ref(x, labels, weight=keep.unsqueeze(1).double(), **kwargs)
        count = keep.sum() * num_classes
    return loss if reduction == "none" else loss.sum() / count


def _check_is_the_loss(results, reference):
    loss, grad = results[0]
    assert bool(torch.isfinite(grad).all()) and bool((grad != 0).any())
    torch.testing.assert_close(loss.cpu().double(), reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("shape", "kind", "kwargs"), SOFTMAX_CASES)
def test_focal_loss_is_deterministic_cpu(shape, kind, kwargs):
    x, target = _softmax_inputs(shape, kind, seed=0)
    if shape != SMALL and (kind == "prob" or "label_smoothing" in kwargs):
        assert x.numel() > 2 * _CHUNK_ELEMENTS
        assert len(_chunk_slices(x)) > 1  # the chunked dense path runs
    results = _twice(lambda xi, ti: focal_loss(xi, ti, **kwargs), x, target)
    _assert_bit_identical(results)
    _check_is_the_loss(results, _softmax_reference(x, target, kwargs))


@pytest.mark.parametrize(("shape", "kind", "kwargs"), SIGMOID_CASES)
def test_sigmoid_focal_loss_is_deterministic_cpu(shape, kind, kwargs):
    x, target = _sigmoid_inputs(shape, kind, seed=0)
    if x.numel() > 2 * _CHUNK_ELEMENTS:
        assert len(_chunk_slices(x)) > 1  # the chunked path runs
    results = _twice(lambda xi, ti: sigmoid_focal_loss(xi, ti, **kwargs), x, target)
    _assert_bit_identical(results)
    _check_is_the_loss(results, _sigmoid_reference(x, target, kwargs))


@pytest.mark.parametrize(
    ("loss", "kind", "kwargs"),
    [
        ("softmax", "index", dict(ignore_index=255, weight=WEIGHT)),
        ("softmax", "index", dict(ignore_index=255, label_smoothing=0.1)),
        ("softmax", "prob", dict(reduction="none")),
        ("sigmoid", "float", dict(reduction="sum")),
        ("sigmoid", "index", dict(ignore_index=-1)),
    ],
)
def test_second_backward_through_retained_graph_is_identical(loss, kind, kwargs):
    """The first backward hands over the gradient computed with the loss; a second one through
    the retained graph recomputes it from the saved inputs: both must be the same bits."""
    make, fn = (
        (_softmax_inputs, focal_loss)
        if loss == "softmax"
        else (_sigmoid_inputs, sigmoid_focal_loss)
    )
    x, target = make(SMALL if loss == "softmax" else (4, 8, 15, 13), kind, seed=2)
    x.requires_grad_()
    out = fn(x, target, **kwargs)
    go = torch.rand(out.shape, generator=torch.Generator().manual_seed(3))
    (first,) = torch.autograd.grad(out, x, go, retain_graph=True)
    (second,) = torch.autograd.grad(out, x, go)
    assert bool((first != 0).any())
    assert torch.equal(first, second), f"gradient differs by {(first - second).abs().max()}"


# ------------------------------------------------------------------------------------------
# CUDA: the README promises bit-identical reruns for the Triton kernels (no atomics).
# ------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize(("shape", "kind", "kwargs"), SOFTMAX_CASES)
def test_focal_loss_is_deterministic_cuda(shape, kind, kwargs, backend):
    x, target = _softmax_inputs(shape, kind, seed=0)
    cuda_kwargs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    results = _twice(
        lambda xi, ti: focal_loss(xi, ti, backend=backend, **cuda_kwargs), x.cuda(), target.cuda()
    )
    _assert_bit_identical(results)
    _check_is_the_loss(results, _softmax_reference(x, target, kwargs))


@needs_cuda
@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize(("shape", "kind", "kwargs"), SIGMOID_CASES)
def test_sigmoid_focal_loss_is_deterministic_cuda(shape, kind, kwargs, backend):
    x, target = _sigmoid_inputs(shape, kind, seed=0)
    cuda_kwargs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    results = _twice(
        lambda xi, ti: sigmoid_focal_loss(xi, ti, backend=backend, **cuda_kwargs),
        x.cuda(),
        target.cuda(),
    )
    _assert_bit_identical(results)
    _check_is_the_loss(results, _sigmoid_reference(x, target, kwargs))
