"""Integer-valued GammaSchedules (FLSD-53: 5 and 3) on the per-element paths of the PyTorch
backend (the dense softmax path: label smoothing or probability targets; sigmoid_focal_loss),
where ``u ** gamma`` is formed by multiplication and selected along the 0/1 threshold steps
instead of ``exp(gamma log u)``: the helpers against float64 powers, the losses and gradients
against float64 re-statements (tests/refs_poly.py and the saturation-safe ones below) for
schedules that reach every branch, at and around the thresholds, at saturated logits
(``u = 0`` and ``u = 1`` exactly), in float32 and bfloat16, over inputs large enough to be cut
into pieces, and one-value schedules against the number."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focalloss import GammaSchedule, focal_loss, sigmoid_focal_loss
from focalloss._torch.common import CHUNK_ELEMENTS
from focalloss._torch.softmax import (
    _int_power,
    gamma_of_steps,
    integer_schedule,
    schedule_steps,
    stepped_power,
)
from refs import input_grad as _grad
from refs_poly import gamma_of, index_labels, sigmoid_ref, softmax_ref

SCHEDULES = {
    "flsd53": GammaSchedule.flsd53(),  # high value first: u^2, then u^3 in place, u^5 = u^2 u^3
    "zero-low": GammaSchedule((0.4,), (0.0, 2.0)),  # a piece of gamma 0 (u ** 0 = 1)
    "one-high": GammaSchedule((0.3,), (4.0, 1.0)),  # u itself is a piece
    "both-large": GammaSchedule((0.5,), (7.0, 8.0)),  # neither piece has a fast kernel
    "equal": GammaSchedule((0.5,), (3.0, 3.0)),
    "three": GammaSchedule((0.1, 0.6), (6.0, 0.0, 5.0)),  # two thresholds: the general path
    "three-up": GammaSchedule((0.15, 0.5), (2.0, 7.0, 4.0)),
}
IDS = list(SCHEDULES)


def _pieces(schedule):
    return (schedule.thresholds, schedule.values)


def test_the_schedules_take_the_integer_path():
    # Otherwise the tests below would test the exp/log path.
    assert all(integer_schedule(s.values) for s in SCHEDULES.values())
    assert not integer_schedule((5.0, 2.5)) and not integer_schedule((9.0, 3.0))


# --------------------------------------------------------------------------------------------
# the helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_int_power(dtype):
    u = torch.cat([torch.tensor([0.0, 1.0, 0.5, 1e-30]), torch.rand(200, dtype=torch.float64)])
    u = u.to(dtype)
    for n in range(9):
        want = u.double() ** n  # float64 pow of the same values; 0 ** 0 = 1
        # float32: (1e-30) ** 2 underflows to 0
        tol = dict(rtol=1e-14, atol=0) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-38)
        torch.testing.assert_close(_int_power(u, n).double(), want, **tol)
        out = torch.full_like(u, math.nan)
        got = _int_power(u, n, out=out)
        assert got.data_ptr() == out.data_ptr()
        torch.testing.assert_close(got.double(), want, **tol)
    assert torch.equal(_int_power(u, 3), u.pow(3))  # the cube kernel


PAIRS = [(a, b) for a in range(9) for b in range(9)]


@pytest.mark.parametrize(("low", "high"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_stepped_power_two_values(low, high):
    g = torch.Generator().manual_seed(low * 9 + high)
    u = torch.cat([torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.rand(60, generator=g)]).double()
    u = u.view(4, 16)
    p_t = torch.rand(4, 16, generator=g, dtype=torch.float64)
    p_t[0, :4] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # u = 0 and u = 1 on both sides
    values = (float(low), float(high))
    want = (torch.where(p_t >= 0.5, u**high, u**low)).clone()
    for overwrite in (False, True):
        for use_out in (False, True):
            base = u.clone()
            steps = schedule_steps(p_t, (0.5,))
            out = torch.full_like(u, math.nan) if use_out else None
            got = stepped_power(base, steps, values, overwrite=overwrite, out=out)
            torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
            if use_out:
                assert got.data_ptr() == out.data_ptr()  # type: ignore[union-attr]
            if not overwrite:
                assert torch.equal(base, u)
            assert torch.equal(steps[0], (p_t >= 0.5).double())  # left as they are
            gamma = gamma_of_steps(steps, values)
            assert torch.equal(gamma, torch.where(p_t >= 0.5, float(high), float(low)))
            assert torch.equal(gamma_of_steps(steps, values, consume=True), gamma)


def test_stepped_power_broadcast_steps_and_three_values():
    g = torch.Generator().manual_seed(3)
    u = torch.rand(5, 4, 7, generator=g, dtype=torch.float64)
    p_t = torch.rand(5, 1, 7, generator=g, dtype=torch.float64)  # one per position
    thresholds, values = (0.3, 0.7), (8.0, 2.0, 5.0)
    steps = schedule_steps(p_t, thresholds)
    k = (p_t >= 0.3).long() + (p_t >= 0.7).long()
    assert {0, 1, 2} <= set(k.unique().tolist())
    want = torch.stack([u**8, u**2, u**5]).gather(0, k.expand_as(u)[None])[0]
    torch.testing.assert_close(stepped_power(u, steps, values), want, rtol=1e-14, atol=0)
    out = torch.empty_like(u)
    assert stepped_power(u, steps, values, out=out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, want, rtol=1e-14, atol=0)
    gamma = gamma_of_steps(steps, values)
    assert torch.equal(gamma, torch.tensor(values, dtype=torch.float64)[k])
    # the last step into a given buffer, the others fresh
    buffer = p_t.clone()
    steps = schedule_steps(buffer, thresholds, out=buffer)
    assert steps[1].data_ptr() == buffer.data_ptr() and steps[0].data_ptr() != buffer.data_ptr()
    assert torch.equal(steps[0], (p_t >= 0.3).double())
    assert torch.equal(steps[1], (p_t >= 0.7).double())


# --------------------------------------------------------------------------------------------
# against the re-statements
# --------------------------------------------------------------------------------------------


def _softmax_case(kind, shape=(3, 5, 6, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (2.5 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    if kind == "prob":
        return x, torch.softmax(2 * torch.randn(shape, generator=g, dtype=torch.float64), 1), {}
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    t[torch.rand(t.shape, generator=g) < 0.2] = 255
    return x, t, dict(ignore_index=255, label_smoothing=0.15)


def _both_sides(p, schedule):
    """Some values of the detached P on each side of every threshold (else the test could not
    see a wrong selection)."""
    for bound in schedule.thresholds:
        assert bool((p < bound).any()) and bool((p >= bound).any()), bound


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("kind", ["smoothed", "prob"])
@pytest.mark.parametrize("options", ["plain", "weighted-poly", "detach"])
def test_softmax_dense_matches_reference(name, kind, options):
    schedule = SCHEDULES[name]
    x, t, kw = _softmax_case(kind, seed=IDS.index(name))
    if options == "weighted-poly":
        kw.update(weight=[1.0, 2.0, 0.5, 1.5, 0.3], alpha=[0.1, 0.4, 0.3, 0.2, 0.9])
    poly1 = 0.7 if options == "weighted-poly" else 0.0
    detach = options == "detach"
    kw.update(reduction="none", poly1_epsilon=poly1, detach_modulator=detach)
    ours = focal_loss(x, t, gamma=schedule, **kw)
    kw.pop("poly1_epsilon"), kw.pop("detach_modulator")
    ref = softmax_ref(x, t, gamma=_pieces(schedule), poly1=poly1, detach=detach, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-13)
    go = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-10, atol=1e-13)
    eps = kw.get("label_smoothing", 0.0)
    p = torch.softmax(x.detach(), 1)
    if kind == "prob":
        big_p = (t * p).sum(1)
    else:
        p_t = p.gather(1, torch.where(t == 255, 0, t).unsqueeze(1)).squeeze(1)
        big_p = ((1 - eps) * p_t + eps / x.shape[1])[t != 255]
    _both_sides(big_p, schedule)


def _sigmoid_case(kind, shape=(3, 4, 5, 6), seed=0):
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


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=IDS)
@pytest.mark.parametrize("kind", ["binary", "soft", "index"])
@pytest.mark.parametrize("options", ["plain", "weighted-poly", "detach"])
def test_sigmoid_matches_reference(schedule, kind, options):
    x, t, labels, keep, kw = _sigmoid_case(kind, seed=len(kind) + len(options))
    shape = x.shape
    g = torch.Generator().manual_seed(5)
    ref_kw: dict = dict(keep=keep)
    if options == "weighted-poly":
        weight = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
        alpha = torch.tensor([0.1, 0.4, 0.7, 0.25], dtype=torch.float64)
        kw.update(weight=weight, alpha=alpha)
        ref_kw.update(weight=weight, alpha=alpha)
    poly1 = -0.4 if options == "weighted-poly" else 0.0
    detach = options == "detach"
    ours = sigmoid_focal_loss(
        x, t, gamma=schedule, poly1_epsilon=poly1, detach_modulator=detach, reduction="none", **kw
    )
    ref = sigmoid_ref(x, labels, gamma=_pieces(schedule), poly1=poly1, detach=detach, **ref_kw)
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-13)
    go = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(_grad(ours, x, go), _grad(ref, x, go), rtol=1e-10, atol=1e-13)
    p = torch.sigmoid(x.detach())
    p_t = p * labels + (1 - p) * (1 - labels)
    _both_sides(p_t if keep is None else p_t[keep.expand_as(p_t)], schedule)


# --------------------------------------------------------------------------------------------
# cut into pieces (the gradient's buffer and the dead softplus / -x buffers are reused), float32
# --------------------------------------------------------------------------------------------

LARGE = (2, 19, 128, 128)


def _far_from(p, schedule, margin=1e-5):
    """Where float32 and float64 agree on the piece (both sides more than ``margin`` away)."""
    far = torch.ones_like(p, dtype=torch.bool)
    for bound in schedule.thresholds:
        far &= (p - bound).abs() > margin
    return far


@pytest.mark.parametrize(
    "schedule", [SCHEDULES["flsd53"], SCHEDULES["three"]], ids=["flsd53", "three"]
)
@pytest.mark.parametrize("kind", ["smoothed", "prob"])
def test_softmax_dense_large_float32(schedule, kind):
    assert math.prod(LARGE) > 2 * CHUNK_ELEMENTS  # several pieces
    g = torch.Generator().manual_seed(7)
    x64 = 2.5 * torch.randn(LARGE, generator=g, dtype=torch.float64)
    if kind == "prob":
        t = torch.softmax(2 * torch.randn(LARGE, generator=g, dtype=torch.float64), 1)
        kw: dict = {}
    else:
        t = torch.randint(0, LARGE[1], LARGE[:1] + LARGE[2:], generator=g)
        kw = dict(label_smoothing=0.1)
    x = x64.float().requires_grad_()
    ours = focal_loss(x, t.float() if kind == "prob" else t, gamma=schedule, reduction="none", **kw)
    xr = x.detach().double().requires_grad_()
    ref = softmax_ref(xr, t, gamma=_pieces(schedule), reduction="none", **kw)
    p = torch.softmax(xr.detach(), 1)
    if kind == "prob":
        big_p = (t * p).sum(1)
    else:
        big_p = 0.9 * p.gather(1, t.unsqueeze(1)).squeeze(1) + 0.1 / LARGE[1]
    far = _far_from(big_p, schedule)
    assert far.float().mean() > 0.999
    _both_sides(big_p, schedule)
    torch.testing.assert_close(ours.double()[far], ref.detach()[far], rtol=2e-5, atol=1e-6)
    go = torch.rand(ours.shape, generator=g, dtype=torch.float64)
    rows = far.unsqueeze(1).expand(LARGE)
    got, want = _grad(ours, x, go.float()).double(), _grad(ref, xr, go)
    torch.testing.assert_close(got[rows], want[rows], rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("poly1", [0.0, 1.0])
def test_sigmoid_large_float32(kind, poly1):
    schedule = SCHEDULES["flsd53"]
    g = torch.Generator().manual_seed(8)
    x64 = 3 * torch.randn(LARGE, generator=g, dtype=torch.float64)
    if kind == "index":
        t = torch.randint(0, LARGE[1] + 1, LARGE[:1] + LARGE[2:], generator=g)
        labels, keep = index_labels(t, LARGE[1], None)
    else:
        t = labels = torch.rand(LARGE, generator=g, dtype=torch.float64)
        keep = None
    x = x64.float().requires_grad_()
    ours = sigmoid_focal_loss(
        x,
        t if kind == "index" else t.float(),
        gamma=schedule,
        poly1_epsilon=poly1,
        reduction="none",
    )
    xr = x.detach().double().requires_grad_()
    ref = sigmoid_ref(xr, labels, gamma=_pieces(schedule), poly1=poly1, keep=keep)
    p = torch.sigmoid(xr.detach())
    far = _far_from(p * labels + (1 - p) * (1 - labels), schedule)
    assert far.float().mean() > 0.999
    torch.testing.assert_close(ours.double()[far], ref.detach()[far], rtol=2e-5, atol=1e-7)
    go = torch.rand(LARGE, generator=g, dtype=torch.float64)
    got, want = _grad(ours, x, go.float()).double(), _grad(ref, xr, go)
    torch.testing.assert_close(got[far], want[far], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# at and around the thresholds
# --------------------------------------------------------------------------------------------


def _one_hot_at(z, dtype):
    """Five classes, probability target one-hot at class 0 whose logit is z, the others 0: the
    dense path with P = p_t = e^z / (e^z + 4) exactly (0.2 at z = 0 in float64)."""
    x = torch.zeros(1, 5, dtype=dtype)
    x[0, 0] = z
    return x.requires_grad_(), F.one_hot(torch.tensor([0]), 5).to(dtype)


@pytest.mark.parametrize(
    ("z", "dtype", "expected"),
    [
        (0.0, torch.float64, 3.0),  # P == 0.2: the piece above
        (-1e-12, torch.float64, 5.0),
        (1e-12, torch.float64, 3.0),
        (-1e-6, torch.float32, 5.0),
        (1e-6, torch.float32, 3.0),
    ],
)
def test_flsd53_dense_at_and_around_the_threshold(z, dtype, expected):
    x, t = _one_hot_at(z, dtype)
    p_t = torch.softmax(x.detach().double(), 1)[0, 0]
    if z == 0.0:
        assert p_t.item() == 0.2
    got = focal_loss(x, t, gamma=SCHEDULES["flsd53"], reduction="none")
    # Independent of the library: (1 - p_t)^gamma (-log p_t), and its derivative by autograd.
    xr = x.detach().double().requires_grad_()
    pr = torch.softmax(xr, 1)[0, 0]
    formula = (1 - pr) ** expected * -pr.log()
    wrong = (1 - pr) ** (8.0 - expected) * -pr.log()
    tol = dict(rtol=1e-13, atol=0) if dtype == torch.float64 else dict(rtol=2e-6, atol=0)
    torch.testing.assert_close(got.double()[0], formula.detach(), **tol)
    assert not torch.allclose(got.double()[0], wrong.detach(), rtol=1e-3)
    torch.testing.assert_close(_grad(got, x).double(), _grad(formula, xr), **tol)


@pytest.mark.parametrize("delta", [-1e-9, 1e-9])
def test_flsd53_smoothed_around_the_threshold(delta):
    # Label smoothing 0.1, five classes: P = 0.9 p_t + 0.02 = 0.2 + delta for every position.
    eps, num_classes = 0.1, 5
    p_t = (0.2 + delta - eps / num_classes) / (1 - eps)
    z = math.log(4 * p_t / (1 - p_t))
    x = torch.zeros(2, num_classes, dtype=torch.float64)
    x[0, 0] = x[1, 3] = z
    x.requires_grad_()
    t = torch.tensor([0, 3])
    got = focal_loss(x, t, gamma=SCHEDULES["flsd53"], label_smoothing=eps, reduction="none")
    expected = 5.0 if delta < 0 else 3.0
    ref = softmax_ref(x, t, gamma=expected, label_smoothing=eps, reduction="none")
    wrong = softmax_ref(x, t, gamma=8.0 - expected, label_smoothing=eps, reduction="none")
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)
    assert not torch.allclose(got, wrong, rtol=1e-3)
    torch.testing.assert_close(_grad(got, x), _grad(ref, x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["binary", "index"])
@pytest.mark.parametrize("delta", [-1e-5, 1e-5])
def test_flsd53_sigmoid_around_the_threshold_float32(kind, delta):
    # A positive with p near 0.2 and a negative with 1 - p the same, in float32.
    z = math.log(0.25) + delta
    x = torch.tensor([[z, -z]], dtype=torch.float32, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0]])
    t = labels if kind == "binary" else torch.tensor([0])
    got = sigmoid_focal_loss(x, t, gamma=SCHEDULES["flsd53"], alpha=None, reduction="none")
    expected = 5.0 if delta < 0 else 3.0
    xr = x.detach().double().requires_grad_()
    ref = sigmoid_ref(xr, labels.double(), gamma=expected, alpha=None)
    wrong = sigmoid_ref(xr, labels.double(), gamma=8.0 - expected, alpha=None)
    torch.testing.assert_close(got.double(), ref.detach(), rtol=2e-6, atol=0)
    assert not torch.allclose(got.double(), wrong.detach(), rtol=1e-3)
    torch.testing.assert_close(_grad(got, x).double(), _grad(ref, xr), rtol=2e-6, atol=0)


# --------------------------------------------------------------------------------------------
# saturated logits: u = 0 and u = 1 exactly
# --------------------------------------------------------------------------------------------


def _dense_saturated_ref(x, target, eps, schedule):
    """Float64 ``-sum_c q_c (1 - p_c)^g (-log p_c)``, ``q`` the smoothed one-hot target, ``g``
    the schedule at the detached ``P = sum_c q_c p_c``; the textbook ``1 - p``."""
    num_classes = x.shape[1]
    lp = torch.log_softmax(x, 1)
    p = lp.exp()
    q = (1 - eps) * F.one_hot(target, num_classes).double() + eps / num_classes
    big_p = (q * p).sum(1).detach()
    g = gamma_of(big_p, _pieces(schedule))
    m = torch.where(g.unsqueeze(1) == 0, 1.0, (1 - p) ** g.unsqueeze(1))
    return -(q * m * lp).sum(1), big_p, p


_TOL = {
    torch.float64: dict(rtol=1e-13, atol=1e-13),
    torch.float32: dict(rtol=2e-6, atol=1e-6),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-3),
}

SATURATED = torch.tensor(
    [
        [1000.0, -1000.0, 0.0, -1000.0],  # p_t = 1 (u_t = 0), others 0 (u = 1): P above
        [-1000.0, 1000.0, -1000.0, -1000.0],  # p_t = 0 (u_t = 1), class 1 p = 1 (u = 0): P below
        [1000.0, 1000.0, -1000.0, -1000.0],  # p_t = 0.5
        [0.0, 0.0, 0.0, 0.0],
    ]
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=IDS)
def test_dense_saturated(dtype, schedule):
    x = SATURATED.to(dtype).requires_grad_()
    t = torch.tensor([0, 0, 0, 2])
    got = focal_loss(x, t, gamma=schedule, label_smoothing=0.1, reduction="none")
    xr = x.detach().double().requires_grad_()
    ref, _, p = _dense_saturated_ref(xr, t, 0.1, schedule)
    assert bool((p[:2] == 0).any()) and bool((p[:2] == 1).any())  # u = 1 and u = 0 exactly
    # half inputs are computed in float32: a float32 loss, a gradient in the input's dtype
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = _TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    grad_tol = _TOL[dtype]
    torch.testing.assert_close(got.double(), ref.detach(), **tol)
    got_grad = _grad(got, x)
    assert bool(torch.isfinite(got_grad).all())
    want = _grad(ref, xr)
    if not schedule.values.count(0.0):  # with a piece of 0 the autograd reference is NaN at u = 0
        torch.testing.assert_close(got_grad.double(), want, **grad_tol)
    else:
        finite = torch.isfinite(want)
        torch.testing.assert_close(got_grad.double()[finite], want[finite], **grad_tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=IDS)
@pytest.mark.parametrize("kind", ["binary", "index"])
def test_sigmoid_saturated(dtype, schedule, kind):
    # Positives and negatives at +-1000: u = 1 - p_t is exactly 0 or 1 (sigmoid(-1000) = 0).
    row = [1000.0, -1000.0, 1000.0, -1000.0, 0.5]
    x = torch.tensor([row, [-v for v in row]], dtype=dtype, requires_grad=True)
    if kind == "binary":  # positives at +-1000 (u = 0, 1), negatives at +-1000 (u = 1, 0)
        labels = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0]])
        t = labels.to(dtype)
    else:  # class 0 is the positive: u = 0 in row 0, u = 1 in row 1
        labels = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
        t = torch.tensor([0, 0])
    got = sigmoid_focal_loss(x, t, gamma=schedule, alpha=0.25, reduction="none")
    xr = x.detach().double().requires_grad_()
    p = torch.sigmoid(xr)
    lab = labels.double()
    u = lab * (1 - p) + (1 - lab) * p
    assert bool((u == 0).any()) and bool((u == 1).any())
    g = gamma_of((1 - u).detach(), _pieces(schedule))
    ce = F.binary_cross_entropy_with_logits(xr, lab, reduction="none")
    a_t = 0.25 * lab + 0.75 * (1 - lab)
    ref = a_t * torch.where(g == 0, 1.0, u) ** torch.where(g == 0, 1.0, g) * ce
    # half inputs are computed in float32: a float32 loss, a gradient in the input's dtype
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = _TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    grad_tol = _TOL[dtype]
    torch.testing.assert_close(got.double(), ref.detach(), **tol)
    torch.testing.assert_close(_grad(got, x).double(), _grad(ref, xr), **grad_tol)


# --------------------------------------------------------------------------------------------
# one value: the number
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 4.0, 5.0])
def test_one_value_is_the_number_exactly(gamma):
    x, t, kw = _softmax_case("smoothed", seed=9)
    for schedule in (GammaSchedule.constant(gamma), GammaSchedule([], [gamma])):
        a = focal_loss(x, t, gamma=schedule, reduction="none", **kw)
        b = focal_loss(x, t, gamma=gamma, reduction="none", **kw)
        assert torch.equal(a, b) and torch.equal(_grad(a, x), _grad(b, x))
    x, t, _, _, kw = _sigmoid_case("index", seed=10)
    a = sigmoid_focal_loss(x, t, gamma=GammaSchedule.constant(gamma), reduction="sum", **kw)
    b = sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum", **kw)
    assert torch.equal(a, b) and torch.equal(_grad(a, x), _grad(b, x))
