"""GammaSchedule (sample-dependent gamma, FLSD-53) on focal_loss and sigmoid_focal_loss
(PyTorch backend): construction and errors, one value == the number exactly, FLSD-53 at and
around p_t = 0.2, float64 re-statements (values, gradients) with weight/alpha/ignore/smoothing/
probabilities and every reduction, per-piece gradients == constant-gamma gradients, gradcheck,
saturated logits, torch.compile without recompiles, no host synchronisation, modules."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
from torch._dynamo.utils import counters

import focalloss
from focalloss import FocalLoss, GammaSchedule, SigmoidFocalLoss, focal_loss, sigmoid_focal_loss
from refs import input_grad as _grad
from refs_poly import index_labels, sigmoid_ref, softmax_ref

FLSD = GammaSchedule.flsd53()
THREE = GammaSchedule((0.25, 0.6), (4.0, 0.0, 1.5))  # a piece of gamma 0 in the middle
# 0.4 + (0.1 - 0.4) != 0.1 in floating point: the values are selected, not summed
INEXACT = GammaSchedule((0.3,), (0.4, 0.1))
REDUCTIONS = ["none", "mean", "sum"]


def _as_ref(schedule):
    return (schedule.thresholds, schedule.values)


# --------------------------------------------------------------------------------------------
# the object
# --------------------------------------------------------------------------------------------


def test_flsd53_and_construction():
    assert GammaSchedule([0.2], [5, 3]) == FLSD  # sequences of any numbers, stored as floats
    assert FLSD.thresholds == (0.2,) and FLSD.values == (5.0, 3.0)
    assert all(type(v) is float for v in FLSD.thresholds + FLSD.values)
    assert repr(FLSD) == "GammaSchedule(thresholds=(0.2,), values=(5.0, 3.0))"
    assert hash(FLSD) == hash(GammaSchedule((0.2,), (5.0, 3.0)))
    assert FLSD != THREE
    assert FLSD.pieces() == (FLSD.thresholds, FLSD.values)
    assert THREE.pieces() == (THREE.thresholds, THREE.values)
    assert GammaSchedule.constant(2.0) == GammaSchedule((), (2.0,))
    assert GammaSchedule.constant(2.0).is_constant and not FLSD.is_constant
    with pytest.raises(dataclasses.FrozenInstanceError):
        FLSD.values = (1.0, 2.0)  # type: ignore[misc]


BAD_SCHEDULES = [
    (0.2, (5.0, 3.0), TypeError, r"thresholds: expected a sequence of numbers, got float"),
    ("0.2", (5.0, 3.0), TypeError, r"thresholds: expected a sequence of numbers, got str"),
    ((True,), (5.0, 3.0), TypeError, r"thresholds: expected a sequence of numbers, got \(True,\)"),
    ((0.2,), 5.0, TypeError, r"values: expected a sequence of numbers, got float"),
    ((0.2,), (5.0, None), TypeError, r"values: expected a sequence of numbers, got \(5.0, None\)"),
    ((0.0,), (5.0, 3.0), ValueError, r"thresholds: expected numbers in the open interval \(0, 1\)"),
    ((1.0,), (5.0, 3.0), ValueError, r"open interval \(0, 1\) \(probabilities p_t\), got 1.0"),
    ((-0.1,), (5.0, 3.0), ValueError, r"open interval \(0, 1\) \(probabilities p_t\), got -0.1"),
    ((math.nan,), (5.0, 3.0), ValueError, r"open interval \(0, 1\) \(probabilities p_t\), got nan"),
    ((0.5, 0.5), (1.0, 2.0, 3.0), ValueError, r"thresholds: expected strictly increasing"),
    ((0.6, 0.3), (1.0, 2.0, 3.0), ValueError, r"strictly increasing numbers, got 0.6 before 0.3"),
    ((0.2,), (5.0,), ValueError, r"values: expected len\(thresholds\) \+ 1 = 2 numbers .*got 1"),
    ((), (), ValueError, r"values: expected len\(thresholds\) \+ 1 = 1 numbers .*got 0"),
    ((0.2,), (5.0, -1.0), ValueError, r"values: expected finite numbers >= 0, got -1.0"),
    ((0.2,), (math.inf, 3.0), ValueError, r"values: expected finite numbers >= 0, got inf"),
    ((0.2,), (5.0, math.nan), ValueError, r"values: expected finite numbers >= 0, got nan"),
]


@pytest.mark.parametrize(
    ("thresholds", "values", "exc", "match"), BAD_SCHEDULES, ids=[b[3][:40] for b in BAD_SCHEDULES]
)
def test_construction_errors(thresholds, values, exc, match):
    with pytest.raises(exc, match=match):
        GammaSchedule(thresholds, values)


BAD_GAMMA = [
    ("2", TypeError, r"gamma: expected a real number >= 0, got str \(or a GammaSchedule\)"),
    ((0.2, 5.0), TypeError, r"gamma: expected a real number >= 0, got tuple"),
    (-1.0, ValueError, r"gamma: expected a finite number >= 0, got -1.0"),
]


@pytest.mark.parametrize(("gamma", "exc", "match"), BAD_GAMMA, ids=[repr(b[0]) for b in BAD_GAMMA])
def test_gamma_errors_through_functions_and_modules(gamma, exc, match):
    x, t = torch.randn(2, 3), torch.tensor([0, 2])
    for call in (
        lambda: focal_loss(x, t, gamma=gamma),
        lambda: sigmoid_focal_loss(x, t, gamma=gamma),
        lambda: FocalLoss(gamma=gamma),
        lambda: SigmoidFocalLoss(gamma=gamma),
    ):
        with pytest.raises(exc, match=match):
            call()


# --------------------------------------------------------------------------------------------
# one value == the number
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
@pytest.mark.parametrize("poly1", [0.0, 1.0])
def test_one_value_is_the_number_exactly_softmax(gamma, kind, poly1):
    x, t, kw = _softmax_case(kind, seed=1)
    kw.update(reduction="none", poly1_epsilon=poly1, weight=[1.0, 2.0, 0.5, 1.5, 0.3])
    for schedule in (GammaSchedule.constant(gamma), GammaSchedule([], [gamma])):
        a = focal_loss(x, t, gamma=schedule, **kw)
        b = focal_loss(x, t, gamma=gamma, **kw)
        assert torch.equal(a, b)
        assert torch.equal(_grad(a, x), _grad(b, x))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("kind", ["soft", "index"])
def test_one_value_is_the_number_exactly_sigmoid(gamma, kind):
    x, t, _, _, kw = _sigmoid_case(kind, seed=2)
    kw.update(reduction="sum", poly1_epsilon=0.5)
    a = sigmoid_focal_loss(x, t, gamma=GammaSchedule.constant(gamma), **kw)
    b = sigmoid_focal_loss(x, t, gamma=gamma, **kw)
    assert torch.equal(a, b) and torch.equal(_grad(a, x), _grad(b, x))
    module = SigmoidFocalLoss(gamma=GammaSchedule.constant(gamma), **kw)
    assert torch.equal(module(x, t), b)


# --------------------------------------------------------------------------------------------
# FLSD-53 at and around the threshold
# --------------------------------------------------------------------------------------------


def _softmax_at(p_t_logit: float, dtype=torch.float64):
    """Five classes, target 0 with logit z, the others 0: p_t = e^z / (e^z + 4) (0.2 at z=0)."""
    x = torch.zeros(1, 5, dtype=dtype)
    x[0, 0] = p_t_logit
    return x, torch.tensor([0])


@pytest.mark.parametrize(
    ("z", "dtype", "expected"),
    [
        (0.0, torch.float64, 3.0),  # p_t == 0.2 exactly: the interval above (p_t >= 0.2)
        (-1e-12, torch.float64, 5.0),
        (1e-12, torch.float64, 3.0),
        (-1e-9, torch.float64, 5.0),
        (1e-9, torch.float64, 3.0),
        (-1e-6, torch.float32, 5.0),
        (1e-6, torch.float32, 3.0),
        (-0.5, torch.float64, 5.0),
        (2.0, torch.float64, 3.0),
    ],
)
@pytest.mark.parametrize("poly1", [0.0, 1.0])
def test_flsd53_softmax_at_and_around_the_threshold(z, dtype, expected, poly1):
    x, t = _softmax_at(z, dtype)
    p_t = torch.softmax(x, 1)[0, 0].item()
    if z == 0.0:
        assert p_t == 0.2  # exp(-log 5) rounds to 0.2 in float64
    else:
        assert (p_t < 0.2) == (z < 0)
    x.requires_grad_()
    got = focal_loss(x, t, gamma=FLSD, poly1_epsilon=poly1)
    want = focal_loss(x, t, gamma=expected, poly1_epsilon=poly1)
    other = focal_loss(x, t, gamma=8.0 - expected, poly1_epsilon=poly1)
    tight = dict(rtol=1e-14, atol=1e-16) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got, want, **tight)
    assert not torch.allclose(got, other)
    torch.testing.assert_close(_grad(got, x), _grad(want, x), **tight)
    # Independent of the library: (1 - p_t)^gamma (-log p_t) + e (1 - p_t)^(gamma + 1).
    p = torch.softmax(x.detach().double(), 1)[0, 0]
    formula = (1 - p) ** expected * -p.log() + poly1 * (1 - p) ** (expected + 1)
    torch.testing.assert_close(
        got.double(), formula, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0
    )


@pytest.mark.parametrize("kind", ["binary", "index"])
@pytest.mark.parametrize("delta", [-1e-7, 1e-7])
def test_flsd53_sigmoid_around_the_threshold(kind, delta):
    # A positive with p = 0.2 + ~delta/6.25 and a negative with 1 - p the same.
    z = math.log(0.25) + delta
    x = torch.tensor([[z, -z]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    t = labels if kind == "binary" else torch.tensor([0])
    expected = 5.0 if delta < 0 else 3.0
    got = sigmoid_focal_loss(x, t, gamma=FLSD, alpha=None, reduction="none", poly1_epsilon=0.5)
    want = sigmoid_focal_loss(x, t, gamma=expected, alpha=None, reduction="none", poly1_epsilon=0.5)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    torch.testing.assert_close(_grad(got, x), _grad(want, x), rtol=1e-14, atol=0)
    other = sigmoid_focal_loss(x, t, gamma=8.0 - expected, alpha=None, reduction="none")
    assert not torch.allclose(got, other)


@pytest.mark.parametrize("kind", ["binary", "index"])
def test_sigmoid_exactly_at_a_threshold(kind):
    # x = 0 gives p_t = 0.5 exactly in every formula: a threshold of 0.5 takes the upper value.
    schedule = GammaSchedule((0.5,), (1.0, 4.0))
    x = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 0.0]], dtype=torch.float64) if kind == "binary" else torch.tensor([0])
    got = sigmoid_focal_loss(x, t, gamma=schedule, alpha=None, reduction="none")
    assert torch.equal(got, sigmoid_focal_loss(x, t, gamma=4.0, alpha=None, reduction="none"))
    torch.testing.assert_close(got, torch.full_like(got, 0.5**4 * math.log(2)), rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------------
# against the re-statement; gradients piece by piece
# --------------------------------------------------------------------------------------------


def _softmax_case(kind, shape=(3, 5, 4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (2.5 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    if kind == "prob":
        return x, torch.softmax(2 * torch.randn(shape, generator=g, dtype=torch.float64), 1), {}
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    t[torch.rand(t.shape, generator=g) < 0.25] = 255
    smoothing = 0.15 if kind == "smoothed" else 0.0
    return x, t, dict(ignore_index=255, label_smoothing=smoothing)


def _sigmoid_case(kind, shape=(3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    if kind == "index":
        t = torch.randint(-1, shape[1] + 1, shape[:1] + shape[2:], generator=g)
        labels, keep = index_labels(t, shape[1], -1)
        return x, t, labels, keep, dict(ignore_index=-1)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == "binary":
        t = t.round()
    return x, t, t, None, {}


@pytest.mark.parametrize("schedule", [FLSD, THREE], ids=["flsd53", "three"])
@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", ["plain", "weighted-poly", "detach"])
def test_softmax_matches_reference(schedule, kind, reduction, options):
    x, t, kw = _softmax_case(kind, seed=hash((kind, options)) % 1000)
    kw["reduction"] = reduction
    if options == "weighted-poly":
        kw.update(weight=[1.0, 2.0, 0.5, 1.5, 0.3], alpha=[0.1, 0.4, 0.3, 0.2, 0.9])
    poly1 = -0.5 if options == "weighted-poly" else 0.0
    detach = options == "detach"
    ours = focal_loss(x, t, gamma=schedule, poly1_epsilon=poly1, detach_modulator=detach, **kw)
    ref = softmax_ref(x, t, gamma=_as_ref(schedule), poly1=poly1, detach=detach, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    go = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-9, atol=1e-12)


def _pieces(p_t, schedule):
    return sum((p_t >= b).long() for b in schedule.thresholds)


@pytest.mark.parametrize("schedule", [THREE, INEXACT], ids=["three", "inexact-sums"])
@pytest.mark.parametrize("kind", ["index", "smoothed", "prob"])
def test_softmax_gradient_is_the_constant_gamma_one_per_piece(kind, schedule):
    """gamma is a constant of each position: where a position's P falls in piece k, its loss
    and gradient are those of gamma = values[k] (THREE has a piece of gamma 0)."""
    x, t, kw = _softmax_case(kind, seed=3)
    kw.update(reduction="none", poly1_epsilon=0.8, weight=[1.0, 2.0, 0.5, 1.5, 0.3])
    go = torch.randn(x.shape[:1] + x.shape[2:], dtype=torch.float64)
    sched = focal_loss(x, t, gamma=schedule, **kw)
    grad = _grad(sched, x, go)
    p = torch.softmax(x.detach(), 1)
    eps, num_classes = kw.get("label_smoothing", 0.0), x.shape[1]
    if t.is_floating_point():
        q = t
    else:
        q = torch.nn.functional.one_hot(t.masked_fill(t == 255, 0), 5).movedim(-1, 1).double()
    big_p = (((1 - eps) * q + eps / num_classes) * p).sum(1)
    piece = _pieces(big_p, schedule)
    seen = set()
    for k, gamma in enumerate(schedule.values):
        where = piece == k
        seen.add(bool(where.any()))
        const = focal_loss(x, t, gamma=gamma, **kw)
        torch.testing.assert_close(sched[where], const[where], rtol=1e-13, atol=0)
        g_const = _grad(const, x, go)
        torch.testing.assert_close(
            grad.movedim(1, -1)[where], g_const.movedim(1, -1)[where], rtol=1e-12, atol=1e-15
        )
    assert seen == {True}  # every piece is exercised


@pytest.mark.parametrize("schedule", [THREE, INEXACT], ids=["three", "inexact-sums"])
@pytest.mark.parametrize("kind", ["soft", "index"])
@pytest.mark.parametrize("detach", [False, True])
def test_sigmoid_gradient_is_the_constant_gamma_one_per_piece(schedule, kind, detach):
    x, t, labels, _, kw = _sigmoid_case(kind, seed=8)
    kw.update(reduction="none", alpha=0.25, detach_modulator=detach)
    go = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sched = sigmoid_focal_loss(x, t, gamma=schedule, **kw)
    grad = _grad(sched, x, go)
    p = torch.sigmoid(x.detach())
    piece = _pieces(p * labels + (1 - p) * (1 - labels), schedule)
    seen = set()
    for k, gamma in enumerate(schedule.values):
        where = piece == k
        seen.add(bool(where.any()))
        const = sigmoid_focal_loss(x, t, gamma=gamma, **kw)
        torch.testing.assert_close(sched[where], const[where], rtol=1e-13, atol=0)
        torch.testing.assert_close(grad[where], _grad(const, x, go)[where], rtol=1e-12, atol=1e-15)
    assert seen == {True}


@pytest.mark.parametrize("schedule", [FLSD, THREE], ids=["flsd53", "three"])
@pytest.mark.parametrize("kind", ["binary", "soft", "index"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", ["plain", "weighted-poly", "detach"])
def test_sigmoid_matches_reference(schedule, kind, reduction, options):
    x, t, labels, keep, kw = _sigmoid_case(kind, seed=hash((kind, options)) % 1000)
    args = dict(reduction=reduction, alpha=0.25)
    if options == "weighted-poly":
        g = torch.Generator().manual_seed(4)
        args.update(
            weight=torch.rand(3, 4, 5, generator=g, dtype=torch.float64) + 0.2,
            pos_weight=torch.rand(4, 1, generator=g, dtype=torch.float64) * 3,
            alpha=torch.tensor([0.1, 0.5, 0.75, 0.9], dtype=torch.float64),
        )
    poly1 = 0.7 if options == "weighted-poly" else 0.0
    detach = options == "detach"
    ours = sigmoid_focal_loss(
        x, t, gamma=schedule, poly1_epsilon=poly1, detach_modulator=detach, **kw, **args
    )
    ref = sigmoid_ref(
        x, labels, gamma=_as_ref(schedule), poly1=poly1, detach=detach, keep=keep, **args
    )
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    go = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-9, atol=1e-12)


def _away_from(p_t: torch.Tensor, schedule, margin=1e-3) -> bool:
    return all(bool(((p_t - b).abs() > margin).all()) for b in schedule.thresholds)


def test_gradcheck_double_backward_and_func():
    # Inputs whose p_t keep 1e-3 from the thresholds: a finite difference must not cross one.
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
        t = torch.randint(0, 3, (2, 3, 2), generator=g)
        labels = (torch.rand(2, 3, 3, 2, generator=g) < 0.4).double()
        p_t = torch.softmax(x.detach(), 1).gather(1, t.unsqueeze(1))
        p = torch.sigmoid(x.detach())
        if _away_from(p_t, THREE) and _away_from(p * labels + (1 - p) * (1 - labels), THREE):
            break

    def softmax(inp):
        return focal_loss(inp, t, gamma=THREE, poly1_epsilon=0.5, reduction="none")

    def sigmoid(inp):
        return sigmoid_focal_loss(inp, labels, gamma=THREE, poly1_epsilon=0.5, reduction="none")

    for fn in (softmax, sigmoid):
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(lambda z, f=fn: f(z).sum(), (x,), fast_mode=True)
        closed = _grad(fn(x).sum(), x)
        (graph,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        torch.testing.assert_close(graph, closed, rtol=1e-12, atol=1e-15)
        func = torch.func.grad(lambda z, f=fn: f(z).sum())(x.detach())
        torch.testing.assert_close(func, closed, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("schedule", [FLSD, THREE], ids=["flsd53", "three"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_finite_at_saturated_logits(dtype, schedule, label_smoothing):
    x = torch.tensor(
        [[1e4, -1e4, -1e4], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4], [0.0, 0.0, 0.0]], dtype=dtype
    ).requires_grad_()
    t = torch.tensor([0, 0, 1, 2])
    kw = dict(gamma=schedule, poly1_epsilon=1.0)
    loss = focal_loss(x, t, label_smoothing=label_smoothing, **kw)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(x.grad).all())
    xs = x.detach().clone().requires_grad_()
    loss = sigmoid_focal_loss(xs, t, **kw)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(xs.grad).all())


# --------------------------------------------------------------------------------------------
# modules, compile, no synchronisation
# --------------------------------------------------------------------------------------------


def test_modules_hold_the_schedule():
    x, t, kw = _softmax_case("index", seed=6)
    criterion = FocalLoss(FLSD, None, None, 255, poly1_epsilon=1.0)
    assert criterion.gamma is FLSD and list(criterion.state_dict()) == []
    assert "gamma=GammaSchedule(thresholds=(0.2,), values=(5.0, 3.0))" in repr(criterion)
    assert torch.equal(criterion(x, t), focal_loss(x, t, gamma=FLSD, poly1_epsilon=1.0, **kw))
    x, t, _, _, kw = _sigmoid_case("index", seed=7)
    criterion = SigmoidFocalLoss(gamma=THREE, ignore_index=-1)
    assert torch.equal(criterion(x, t), sigmoid_focal_loss(x, t, gamma=THREE, **kw))


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _check_compiled(fn, make, shapes):
    """fullgraph, dynamic=True; every call after the first under fail_on_recompile; one graph;
    values and gradients equal eager."""
    counters.clear()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for i, shape in enumerate(shapes):
        x, args = make(shape, torch.Generator().manual_seed(i))
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        stance = torch.compiler.set_stance("fail_on_recompile") if i else contextlib.nullcontext()
        with stance:
            got = compiled(xc, *args)
        expected = fn(xe, *args)
        torch.testing.assert_close(got, expected)
        got.backward()
        expected.backward()
        torch.testing.assert_close(xc.grad, xe.grad)
    assert counters["stats"]["unique_graphs"] == 1


def _make_index(shape, g):
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    t[0, 0] = 255
    return x, (t,)


SHAPES = [(2, 3, 6, 5), (3, 3, 4, 7), (2, 5, 3, 4)]


def test_compiled_same_schedule_twice_in_one_graph(fresh_dynamo):
    def fn(x, t):
        softmax = focal_loss(x, t, gamma=FLSD, poly1_epsilon=1.0, ignore_index=255)
        sigmoid = sigmoid_focal_loss(x, t, gamma=FLSD, poly1_epsilon=0.5, ignore_index=255)
        return softmax + sigmoid + focal_loss(x, t, gamma=FLSD, ignore_index=255)

    _check_compiled(fn, _make_index, SHAPES)


def test_compiled_module_and_schedule_built_inside(fresh_dynamo):
    criterion = FocalLoss(gamma=THREE, ignore_index=255, label_smoothing=0.1, poly1_epsilon=-0.5)
    _check_compiled(criterion, _make_index, SHAPES)
    torch._dynamo.reset()

    def fn(x, t):
        return focal_loss(x, t, gamma=GammaSchedule.flsd53(), ignore_index=255)

    _check_compiled(fn, _make_index, SHAPES)


def test_compiled_sees_a_changed_schedule(fresh_dynamo):
    # The schedule is guarded by value: another one is not served a stale graph.
    holder = {"gamma": FLSD}

    def fn(x, t):
        return focal_loss(x, t, gamma=holder["gamma"], ignore_index=255)

    compiled = torch.compile(fn, fullgraph=True)
    x, (t,) = _make_index((2, 3, 4, 4), torch.Generator().manual_seed(0))
    for schedule in (FLSD, THREE, GammaSchedule((0.2,), (5.0, 2.0))):
        holder["gamma"] = schedule
        torch.testing.assert_close(compiled(x, t), fn(x, t), rtol=1e-14, atol=0)


@pytest.mark.parametrize("fn", ["softmax", "sigmoid"])
@pytest.mark.parametrize("kind", ["index", "float"])
def test_training_call_reads_nothing(fn, kind):
    from test_no_sync import Probe, no_host_tensors

    previous = focalloss.set_value_checks(False)
    try:
        x = torch.empty(4, 3, 5, device="meta")
        if kind == "index":
            target = torch.empty(4, 5, device="meta", dtype=torch.long)
        else:
            target = torch.empty(4, 3, 5, device="meta")
        loss_fn = focal_loss if fn == "softmax" else sigmoid_focal_loss
        kwargs = dict(gamma=THREE, poly1_epsilon=0.5)
        if fn == "softmax":
            kwargs.update(label_smoothing=0.1, weight=torch.ones(3, device="meta"))

        def step():
            leaf = x.detach().requires_grad_()
            loss = loss_fn(leaf, target, **kwargs)
            loss.backward(torch.ones_like(loss))
            return leaf.grad

        step()
        with no_host_tensors(), Probe() as probe:
            grad = step()
        assert probe.bad == []
        assert grad.shape == x.shape
    finally:
        focalloss.set_value_checks(previous)
