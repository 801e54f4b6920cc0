"""torch.compile(fullgraph=True) over the public losses: no graph break, values equal eager.

``fullgraph=True`` turns any graph break into an error. The ``dynamic=True`` tests call each
compiled function or module with several shapes (another batch size and spatial size, and
another number of classes C where the configuration holds no per-class tensor) and make every
call after the first under ``torch.compiler.set_stance("fail_on_recompile")``, so a recompile
is an error too; they also check that exactly one graph was compiled (the loss was traced, not
skipped). Values and input gradients are compared with eager mode and with the independent
float64 references of ``tests/refs.py``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from focalloss import FocalLoss, SigmoidFocalLoss, focal_loss, sigmoid_focal_loss
from refs import SeedFocalLoss, one_hot_with_background, sigmoid_focal_ref, softmax_focal_ref


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
        _compare_training_step(compiled, forward, head, features, target)


def _compare_training_step(compiled, forward, head, *inputs):
    """Loss and parameter gradients of a compiled step equal those of the eager step."""
    head.zero_grad()
    loss = compiled(*inputs)
    loss.backward()
    grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    expected = forward(*inputs)
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


# --------------------------------------------------------------------------------------------
# dynamic=True: every public function and module, the main option groups
# --------------------------------------------------------------------------------------------

# (N, C, H, W): the second shape changes the batch and spatial sizes, the third also C.
SOFTMAX_SAME_C = [(2, 3, 6, 5), (3, 3, 4, 7)]
SOFTMAX_ANY_C = [*SOFTMAX_SAME_C, (2, 5, 3, 4)]
# (N, C, L) for the sigmoid loss, the same pattern.
SIGMOID_SAME_C = [(6, 4, 3), (3, 4, 7)]
SIGMOID_ANY_C = [*SIGMOID_SAME_C, (4, 6, 2)]


def _check_dynamic(fn, make, shapes, reference, *, dtype=torch.float64, ref_tol=None):
    """Compile ``fn(x, *args)`` with ``dynamic=True`` and call it once per shape: no recompile
    after the first call, and each value and input gradient (for a random ``grad_output``)
    equals eager ``fn`` and ``reference(x.double(), *args)``."""
    ref_tol = ref_tol or {}
    counters.clear()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for i, shape in enumerate(shapes):
        g = torch.Generator().manual_seed(i)
        x, args = make(shape, g)
        x = x.to(dtype)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        stance = torch.compiler.set_stance("fail_on_recompile") if i else contextlib.nullcontext()
        with stance:
            got = compiled(xc, *args)
        expected = fn(xe, *args)
        torch.testing.assert_close(got, expected)
        go = torch.randn(got.shape, generator=g, dtype=got.dtype)
        got.backward(go)
        expected.backward(go)
        torch.testing.assert_close(xc.grad, xe.grad)

        xr = x.double().requires_grad_()
        want = reference(xr, *args)
        want.backward(go.double())
        torch.testing.assert_close(got.double(), want, **ref_tol)
        torch.testing.assert_close(xc.grad.double(), xr.grad, **ref_tol)
    assert counters["stats"]["unique_graphs"] == 1


def _softmax_inputs(kind, with_ignore):
    def make(shape, g):
        x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
        if kind == "prob":
            return x, (torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1),)
        t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
        if with_ignore:
            t[0, 0] = 255
            t[-1, :, -1] = 255
        return x, (t,)

    return make


def _softmax_reference(kwargs):
    if kwargs.get("detach_modulator"):
        # The seed module detaches p_t: the same value, and the gradient detach_modulator gives.
        seed = SeedFocalLoss(kwargs["gamma"], kwargs.get("alpha"), True, kwargs["ignore_index"])
        return seed
    return lambda x, t: softmax_focal_ref(x, t, **kwargs)


SOFTMAX_CASES = [
    pytest.param(
        "index",
        dict(gamma=1.5, ignore_index=255, label_smoothing=0.1, reduction="none"),
        SOFTMAX_ANY_C,
        id="index-ignore-smoothing-none",
    ),
    pytest.param(
        "prob",
        dict(gamma=0.5, label_smoothing=0.05, reduction="sum"),
        SOFTMAX_ANY_C,
        id="prob-smoothing-sum",
    ),
    pytest.param(
        "index",
        dict(gamma=2.0, alpha=[0.2, 0.3, 0.5], ignore_index=255, detach_modulator=True),
        SOFTMAX_SAME_C,
        id="index-ignore-alpha-detach-mean",
    ),
]


@pytest.mark.parametrize(("kind", "kwargs", "shapes"), SOFTMAX_CASES)
def test_compiled_focal_loss_dynamic(kind, kwargs, shapes):
    def fn(x, t):
        return focal_loss(x, t, **kwargs)

    make = _softmax_inputs(kind, "ignore_index" in kwargs)
    _check_dynamic(fn, make, shapes, _softmax_reference(kwargs))


def test_compiled_focal_loss_module_dynamic():
    """The module (alpha and weight as buffers) compiled itself, float32, "mean" with weight:
    the divisor is the weight sum of the non-ignored positions."""
    kwargs = dict(
        gamma=2.0,
        alpha=torch.tensor([0.2, 0.3, 0.5]),
        ignore_index=255,
        weight=[1.0, 2.0, 0.5],
    )
    criterion = FocalLoss(**kwargs)
    _check_dynamic(
        criterion,
        _softmax_inputs("index", with_ignore=True),
        SOFTMAX_SAME_C,
        _softmax_reference(kwargs),
        dtype=torch.float32,
        ref_tol=dict(rtol=2e-5, atol=2e-6),
    )


def _sigmoid_inputs(kind, *, ignore=False, normalizer=False):
    """``(N, C, *)`` logits with float labels, or class indices in ``[0, C]`` (C: background;
    -1 where ``ignore``), plus the number of positives as a tensor normalizer when asked."""

    def make(shape, g):
        x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
        if kind == "float":
            return x, (torch.rand(shape, generator=g, dtype=torch.float64),)
        num_classes = shape[1]
        t = torch.randint(0, num_classes + 1, shape[:1] + shape[2:], generator=g)
        if ignore:
            t.view(-1)[::4] = -1
        if not normalizer:
            return x, (t,)
        positives = ((t >= 0) & (t < num_classes)).sum()
        return x, (t, positives)

    return make


def _sigmoid_reference(
    x,
    t,
    normalizer=None,
    *,
    gamma=2.0,
    alpha=0.25,
    weight=None,
    pos_weight=None,
    ignore_index=None,
    reduction="mean",
    detach_modulator=False,
):
    """``sigmoid_focal_ref`` (or, for ``detach_modulator``, the same formula with
    ``(1 - p_t)^gamma`` detached) on float labels; class indices become one-hot labels with
    ignored positions weighted 0; ``"mean"`` divides by the non-ignored elements or by
    ``max(normalizer, 1)``."""
    num_classes = x.shape[1]
    count = float(t.numel())
    if not t.is_floating_point():
        keep = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=bool)
        t = one_hot_with_background(torch.where(keep, t, num_classes), num_classes)
        keep = keep.unsqueeze(1).double()
        weight = keep if weight is None else weight.double() * keep
        count = keep.sum() * num_classes
    if detach_modulator:
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        loss = ((1 - p_t) ** gamma).detach() * ce
        if alpha is not None and alpha >= 0:
            loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
        if weight is not None:
            loss = loss * weight
    else:
        loss = sigmoid_focal_ref(
            x, t, gamma=gamma, alpha=alpha, weight=weight, pos_weight=pos_weight
        )
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if normalizer is not None:
        return loss.sum() / normalizer.double().clamp(min=1.0)
    return loss.sum() / count


PER_CLASS = torch.tensor([[3.0], [1.0], [0.5], [2.0]], dtype=torch.float64)  # (C, 1): dim 1

SIGMOID_CASES = [
    pytest.param(
        _sigmoid_inputs("float"),
        dict(
            alpha=[0.1, 0.25, 0.5, 0.9],
            weight=PER_CLASS.flip(0) - 0.5,  # one class with weight 0
            pos_weight=PER_CLASS,
            reduction="none",
        ),
        SIGMOID_SAME_C,
        id="float-per-class-alpha-weight-pos_weight-none",
    ),
    pytest.param(
        _sigmoid_inputs("index", ignore=True, normalizer=True),
        dict(ignore_index=-1),
        SIGMOID_ANY_C,
        id="index-ignore-normalizer-mean",
    ),
    pytest.param(
        _sigmoid_inputs("index"),
        dict(gamma=1.0, alpha=None, pos_weight=PER_CLASS, reduction="sum", detach_modulator=True),
        SIGMOID_SAME_C,
        id="index-pos_weight-detach-sum",
    ),
]


@pytest.mark.parametrize(("make", "kwargs", "shapes"), SIGMOID_CASES)
def test_compiled_sigmoid_focal_loss_dynamic(make, kwargs, shapes):
    def fn(x, t, *normalizer):
        return sigmoid_focal_loss(x, t, normalizer=normalizer[0] if normalizer else None, **kwargs)

    def reference(x, t, *normalizer):
        return _sigmoid_reference(x, t, *normalizer, **kwargs)

    _check_dynamic(fn, make, shapes, reference)


def test_compiled_sigmoid_focal_loss_module_dynamic():
    """The module compiled itself: float soft labels, scalar alpha, "mean" over every element;
    nothing per-class, so the third shape changes C too."""
    kwargs = dict(gamma=0.5, alpha=0.75)
    criterion = SigmoidFocalLoss(**kwargs)

    def reference(x, t):
        return _sigmoid_reference(x, t, **kwargs)

    shapes = [(2, 4, 5, 3), (3, 4, 4, 6), (2, 6, 3, 5)]
    _check_dynamic(criterion, _sigmoid_inputs("float"), shapes, reference)


def test_compiled_training_step_with_sigmoid_module_dynamic_shapes():
    """RetinaNet-style: conv head, (anchors, C) logits, matched classes (C: background, -1:
    ignored), normalizer = number of positive anchors computed in the step.

    No recompile check here: with a conv in the graph inductor recompiles at the second shape
    on the CPU (a guard on the input's size from the conv's stride-order check), even for
    ``conv(x).sigmoid().sum()`` without any loss of this library. The loss alone does not
    recompile (the tests above)."""
    torch.manual_seed(0)
    num_classes, anchors = 3, 2
    head = torch.nn.Conv2d(4, anchors * num_classes, 3, padding=1)
    criterion = SigmoidFocalLoss(gamma=2.0, alpha=0.25, ignore_index=-1)

    def forward(features, matched):
        n, _, h, w = features.shape
        logits = head(features).view(n, anchors, num_classes, h, w)
        logits = logits.permute(0, 1, 3, 4, 2).reshape(-1, num_classes)
        positives = ((matched >= 0) & (matched < num_classes)).sum()
        return criterion(logits, matched, normalizer=positives)

    compiled = torch.compile(forward, fullgraph=True, dynamic=True)
    for n, h, w in [(2, 6, 5), (3, 4, 7)]:
        features = torch.randn(n, 4, h, w)
        matched = torch.full((n * anchors * h * w,), num_classes)
        matched[::5] = torch.randint(0, num_classes, matched[::5].shape)
        matched[1::7] = -1
        _compare_training_step(compiled, forward, head, features, matched)
