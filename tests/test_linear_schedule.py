"""linear_focal_loss / LinearFocalLoss with a GammaSchedule: against the unfused
focal_loss(F.linear(...), gamma=schedule) and an independent float64 restatement (values and
the gradients of input, classifier and bias) with every option and reduction; one-value
schedule == constant gamma bit for bit; chunks and class blocks that do not divide N and V;
double backward, torch.func, torch.compile; argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import focalloss._linear_torch as engine
from compiled_steps import check_compiled_linear_step
from focalloss import GammaSchedule, LinearFocalLoss, focal_loss, linear_focal_loss

FLSD53 = GammaSchedule.flsd53()  # 5 below p_t = 0.2, 3 above
THREE = GammaSchedule((0.1, 0.45), (4.0, 2.0, 0.5))
WITH_ZERO = GammaSchedule((0.05, 0.3), (0.0, 3.0, 1.5))  # a piece of gamma 0: 0 ** 0 = 1
SCHEDULES = {"flsd53": FLSD53, "three": THREE}

# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def schedule_ref(
    x,
    w,
    t,
    b=None,
    *,
    gamma,
    alpha=None,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    reduction="mean",
    poly1_epsilon=0.0,
    logit_softcap=None,
    z_loss=0.0,
):
    """Independent float64 restatement: per row gamma_i = values[#{thresholds <= P_i}] at the
    detached P_i = sum_c q_ic p_ic (Mukhoti et al.'s sample-dependent gamma, with issue 13's
    P for smoothing), then Lin et al.'s focal loss with F.cross_entropy's smoothing, weight,
    ignore_index and divisor, Poly-1 w_t (1 - P)^(gamma_i + 1), PaLM's z-loss, Gemma's cap."""
    z = x.double() @ w.double().T
    if b is not None:
        z = z + b.double()
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    v = z.shape[1]
    wv = torch.ones(v, dtype=torch.float64) if weight is None else weight.double()
    av = torch.ones(v, dtype=torch.float64) if alpha is None else alpha.double()
    keep = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    safe = torch.where(keep, t, 0)
    q = (1 - label_smoothing) * F.one_hot(safe, v).double() + label_smoothing / v
    lp = torch.log_softmax(z, dim=1)
    p = lp.exp()
    big_p = (q * p).sum(1)
    pieces = torch.tensor(gamma.values, dtype=torch.float64)
    count = sum((big_p.detach() >= bound).long() for bound in gamma.thresholds)
    g = pieces[count]
    focal = (wv * av * q * (1 - p) ** g[:, None] * (-lp)).sum(1)
    poly = poly1_epsilon * wv[safe] * (1 - big_p) ** (g + 1)
    zl = z_loss * torch.logsumexp(z, 1) ** 2
    loss = torch.where(keep, focal + poly + zl, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (wv[safe] * keep).sum()


def unfused(x, w, t, b=None, *, logit_softcap=None, z_loss=0.0, reduction="mean", **kw):
    """The library's own composition focal_loss(F.linear(...), gamma=schedule), with the cap
    applied to the logits before and the z-loss added after (focal_loss has neither)."""
    z = F.linear(x, w, b)
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    loss = focal_loss(z, t, reduction=reduction, **kw)
    if z_loss == 0.0:
        return loss
    ignore = kw.get("ignore_index", -100)
    keep = (t != ignore) if ignore is not None else torch.ones_like(t, dtype=torch.bool)
    zl = torch.where(keep, z_loss * torch.logsumexp(z, 1) ** 2, 0.0)
    if reduction == "none":
        return loss + zl
    if reduction == "sum":
        return loss + zl.sum()
    weight = kw.get("weight")
    w_t = keep.double() if weight is None else torch.where(keep, weight[t.clamp(min=0)], 0.0)
    return loss + zl.sum() / w_t.sum()


def _data(n=13, d=6, v=29, seed=0, ignore=(3, 8)):
    """float64 data whose rows' P fall in every piece of the schedules: half the rows get
    their most likely class as target (large p_t), the others a random class (small p_t)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5
    w = torch.randn(v, d, generator=g, dtype=torch.float64)
    b = torch.randn(v, generator=g, dtype=torch.float64)
    t = torch.randint(0, v, (n,), generator=g)
    top = F.linear(x, w, b).argmax(1)
    t[::2] = top[::2]
    for i in ignore:
        if i < n:
            t[i] = -100
    return x, w, b, t


def _grads(fn, x, w, b, t, **kwargs):
    """(loss, dx, dW, db) of fn with a random grad_output (reduction 'none') or 1.7."""
    xl = x.detach().clone().requires_grad_()
    wl = w.detach().clone().requires_grad_()
    bl = None if b is None else b.detach().clone().requires_grad_()
    loss = fn(xl, wl, t, bl, **kwargs)
    if loss.dim() == 0:
        go = torch.tensor(1.7, dtype=loss.dtype)
    else:
        go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype)
    loss.backward(go)
    return loss.detach(), xl.grad, wl.grad, None if bl is None else bl.grad


def _assert_all_close(got, expected, rtol=1e-10, atol=1e-12):
    for name, a, e in zip(("loss", "input", "classifier", "bias"), got, expected, strict=True):
        if e is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=atol, msg=name)


def _assert_equal(got, expected):
    for name, a, e in zip(("loss", "input", "classifier", "bias"), got, expected, strict=True):
        assert (a is None) == (e is None), name
        if e is not None:
            assert torch.equal(a, e), name


OPTIONS = [
    dict(),
    dict(label_smoothing=0.1),
    dict(weight="w", alpha="a"),
    dict(label_smoothing=0.2, weight="w", alpha="a"),
    dict(poly1_epsilon=1.0),
    dict(poly1_epsilon=-0.5, label_smoothing=0.15, weight="w"),
    dict(logit_softcap=2.5),
    dict(z_loss=1e-2),
    dict(
        logit_softcap=4.0,
        z_loss=1e-3,
        poly1_epsilon=1.0,
        label_smoothing=0.05,
        weight="w",
        alpha="a",
    ),
    dict(label_smoothing=1.0, poly1_epsilon=0.5),
    dict(ignore_index=None),
    dict(ignore_index=5, weight="w"),
]


def _resolve(options, v, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = dict(options)
    if out.get("weight") == "w":
        out["weight"] = torch.rand(v, generator=g, dtype=torch.float64) + 0.2
    if out.get("alpha") == "a":
        out["alpha"] = torch.rand(v, generator=g, dtype=torch.float64)
    return out


def _targets(options, t):
    if options.get("ignore_index", -100) is None:
        return t.clamp(min=0)
    if options.get("ignore_index") == 5:
        t = t.clone()
        t[t == -100] = 5
    return t


def _pieces_hit(x, w, b, t, schedule, eps=0.0):
    """The set of pieces the kept rows' P fall in."""
    p = torch.softmax(F.linear(x, w, b), 1)
    keep = t >= 0
    big_p = p[keep].gather(1, t[keep, None]).squeeze(1) * (1 - eps) + eps / w.shape[0]
    return {sum(int(value >= bound) for bound in schedule.thresholds) for value in big_p.tolist()}


def _fused(x, w, t, b, **kw):
    return linear_focal_loss(x, w, t, b, **kw)


def _strip(fn):
    def call(x, w, t, b, **kw):
        kw.pop("chunk_size", None)
        kw.pop("backend", None)
        return fn(x, w, t, b, **kw)

    return call


# --------------------------------------------------------------------------------------------
# Values and gradients
# --------------------------------------------------------------------------------------------


def test_data_crosses_the_thresholds():
    """The tests below are meaningful only if rows fall in several pieces."""
    x, w, b, t = _data()
    assert _pieces_hit(x, w, b, t, FLSD53) == {0, 1}
    assert _pieces_hit(x, w, b, t, THREE) == {0, 1, 2}
    assert _pieces_hit(x, w, b, t, WITH_ZERO) == {0, 1, 2}
    assert _pieces_hit(x, w, b, t, THREE, eps=0.2) == {0, 1, 2}


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("chunk_size", "with_bias"), [(None, False), (4, True)], ids=["one-chunk", "chunks-of-4+bias"]
)
def test_matches_unfused_and_reference(schedule, options, reduction, chunk_size, with_bias):
    x, w, b, t = _data()
    t = _targets(options, t)
    if not with_bias:
        b = None
    kw = _resolve(options, w.shape[0])
    kw.update(gamma=schedule, reduction=reduction)
    got = _grads(_fused, x, w, b, t, chunk_size=chunk_size, **kw)
    _assert_all_close(got, _grads(_strip(unfused), x, w, b, t, **kw))
    _assert_all_close(got, _grads(_strip(schedule_ref), x, w, b, t, **kw))


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.1, poly1_epsilon=1.0)])
def test_zero_piece(options, reduction):
    """A piece of gamma 0 (cross-entropy there): 0 ** 0 = 1 in the focal and Poly-1 terms."""
    x, w, b, t = _data()
    kw = dict(options, gamma=WITH_ZERO, reduction=reduction)
    got = _grads(_fused, x, w, b, t, chunk_size=5, **kw)
    _assert_all_close(got, _grads(_strip(unfused), x, w, b, t, **kw))
    _assert_all_close(got, _grads(_strip(schedule_ref), x, w, b, t, **kw))


@pytest.mark.parametrize("blocks", [False, True])
def test_piece_chosen_by_smoothed_p(blocks, monkeypatch):
    """With smoothing the piece is chosen by P = (1 - eps) p_t + eps / V, not by p_t: a
    threshold between the two for one row tells them apart."""
    if blocks:
        monkeypatch.setitem(engine.BUDGET_BYTES, "cpu", 5 * 6 * 8)
        monkeypatch.setattr(engine, "MIN_BLOCK", 4)
        monkeypatch.setattr(engine, "MIN_ROWS", 6)
    x, w, b, t = _data()
    eps = 0.5
    p_t = torch.softmax(F.linear(x, w, b), 1)[0, t[0]].item()
    big_p = (1 - eps) * p_t + eps / w.shape[0]
    assert p_t - big_p > 0.05
    kw = dict(gamma=GammaSchedule(((p_t + big_p) / 2,), (5.0, 1.0)), label_smoothing=eps)
    got = _grads(_fused, x, w, b, t, **kw)
    _assert_all_close(got, _grads(_strip(unfused), x, w, b, t, **kw))
    _assert_all_close(got, _grads(_strip(schedule_ref), x, w, b, t, **kw))


def test_schedule_is_not_a_constant():
    """FLSD-53 differs from both of its constants on data that crosses its threshold."""
    x, w, b, t = _data()
    scheduled = linear_focal_loss(x, w, t, b, gamma=FLSD53, reduction="none")
    for gamma in (5.0, 3.0):
        constant = linear_focal_loss(x, w, t, b, gamma=gamma, reduction="none")
        assert not torch.allclose(scheduled, constant)


@pytest.fixture
def small_budget(monkeypatch):
    """A budget that forces class blocks on tiny shapes (V not a multiple of the block)."""
    monkeypatch.setitem(engine.BUDGET_BYTES, "cpu", 5 * 6 * 8)
    monkeypatch.setattr(engine, "MIN_BLOCK", 4)
    monkeypatch.setattr(engine, "MIN_ROWS", 6)


@pytest.mark.parametrize("schedule", [FLSD53, THREE, WITH_ZERO], ids=["flsd53", "three", "zero"])
@pytest.mark.parametrize(
    "options",
    [dict(), OPTIONS[3], OPTIONS[5], OPTIONS[8]],
    ids=["default", "smooth+w+a", "poly+smooth", "all"],
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_blocks(small_budget, schedule, options, reduction):
    x, w, b, t = _data()
    kw = _resolve(options, w.shape[0])
    spec = engine.Spec(
        float("nan"), kw.get("label_smoothing", 0.0), 0, 0, 0, 0, True,
        schedule.thresholds, schedule.values,
    )  # fmt: skip
    rows, block = engine.plan(13, 29, torch.float64, "cpu", spec, 0, False)
    assert rows == 6 and 13 % rows != 0 and block < 29 and 29 % block != 0
    kw.update(gamma=schedule, reduction=reduction)
    got = _grads(_fused, x, w, b, t, **kw)
    _assert_all_close(got, _grads(_strip(unfused), x, w, b, t, **kw))


@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(gamma=0.0),
        dict(gamma=1.0, label_smoothing=0.1),
        dict(gamma=2.0, label_smoothing=0.2, poly1_epsilon=1.0, weight="w", alpha="a"),
        dict(gamma=0.5, logit_softcap=3.0, z_loss=1e-2, poly1_epsilon=1.0),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default",
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_one_value_schedule_is_the_constant(options, reduction, blocks, monkeypatch):
    """GammaSchedule.constant(g) computes bit for bit what gamma=g does (the fast paths)."""
    if blocks:
        monkeypatch.setitem(engine.BUDGET_BYTES, "cpu", 5 * 6 * 8)
        monkeypatch.setattr(engine, "MIN_BLOCK", 4)
        monkeypatch.setattr(engine, "MIN_ROWS", 6)
    x, w, b, t = _data()
    kw = _resolve(options, w.shape[0])
    gamma = kw.pop("gamma", 2.0)
    expected = _grads(_fused, x, w, b, t, gamma=gamma, reduction=reduction, chunk_size=None, **kw)
    schedule = GammaSchedule.constant(gamma)
    got = _grads(_fused, x, w, b, t, gamma=schedule, reduction=reduction, chunk_size=None, **kw)
    _assert_equal(got, expected)
    module = LinearFocalLoss(gamma=schedule, reduction=reduction, **kw)
    assert torch.equal(module(x, w, t, b), expected[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision_against_float64(dtype):
    x, w, b, t = _data(n=16, v=40)
    kw = dict(gamma=THREE, label_smoothing=0.1, poly1_epsilon=1.0, z_loss=1e-3)
    expected = _grads(_fused, x, w, b, t, **kw)
    got = _grads(_fused, *(v.to(dtype) for v in (x, w, b)), t, chunk_size=5, **kw)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    _assert_all_close(got, expected, **tol)


# --------------------------------------------------------------------------------------------
# Double backward, torch.func, gradcheck
# --------------------------------------------------------------------------------------------


def test_gradcheck_and_double_backward():
    """Tiny shapes, away from the thresholds (finite differences must not cross them)."""
    x, w, b, t = _data(n=5, d=3, v=7, ignore=(2,))
    schedule = GammaSchedule((0.2, 0.6), (3.0, 1.5, 0.5))
    p = torch.softmax(F.linear(x, w, b), 1)
    kept = t >= 0
    p_t = p[kept].gather(1, t[kept, None]).squeeze(1) * 0.9 + 0.1 / 7
    assert all(min(abs(v - 0.2), abs(v - 0.6)) > 1e-3 for v in p_t.tolist())
    assert len({int(v >= 0.2) + int(v >= 0.6) for v in p_t.tolist()}) >= 2
    inputs = tuple(v.clone().requires_grad_() for v in (x, w, b))

    def fn(x, w, b):
        return linear_focal_loss(
            x, w, t, b, gamma=schedule, label_smoothing=0.1, poly1_epsilon=1.0, chunk_size=2
        )

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_create_graph_and_torch_func():
    """The differentiable composite (create_graph=True, torch.func) equals the closed form."""
    x, w, b, t = _data()
    kw = dict(gamma=THREE, label_smoothing=0.1, poly1_epsilon=1.0, z_loss=1e-2, logit_softcap=3.0)
    closed = _grads(_fused, x, w, b, t, **kw)
    wl = w.clone().requires_grad_()
    loss = linear_focal_loss(x, wl, t, b, **kw)
    (grad,) = torch.autograd.grad(loss * 1.7, wl, create_graph=True)
    assert grad.requires_grad
    torch.testing.assert_close(grad, closed[2], rtol=1e-10, atol=1e-12)
    func = torch.func.grad(lambda w: linear_focal_loss(x, w, t, b, **kw) * 1.7)(w)
    torch.testing.assert_close(func, closed[2], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# torch.compile, module, errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_training_step(reduction):
    torch.manual_seed(0)
    criterion = LinearFocalLoss(
        gamma=THREE, z_loss=1e-3, logit_softcap=5.0, poly1_epsilon=1.0, label_smoothing=0.1,
        reduction=reduction, chunk_size=4, weight=torch.rand(37) + 0.5,
    )  # fmt: skip
    check_compiled_linear_step(criterion, input_scale=3.0)


def test_compiled_call_takes_the_chunked_operator(monkeypatch):
    """Under torch.compile the loss runs the chunk loop (the custom operator), not the
    composite that holds the full (N, V) logits."""
    torch._dynamo.reset()
    calls = []
    composite = engine.linear_focal_composite
    monkeypatch.setattr(
        engine, "linear_focal_composite", lambda *a, **k: calls.append(1) or composite(*a, **k)
    )
    head = torch.nn.Linear(8, 37)
    criterion = LinearFocalLoss(gamma=FLSD53, label_smoothing=0.1, chunk_size=4)
    compiled = torch.compile(
        lambda x, t: criterion(x, head.weight, t, head.bias), fullgraph=True, dynamic=True
    )
    x = torch.randn(10, 8, requires_grad=True)
    t = torch.randint(0, 37, (10,))
    loss = compiled(x, t)
    loss.backward()
    assert calls == []
    x2 = x.detach().clone().requires_grad_()
    expected = linear_focal_loss(x2, head.weight, t, head.bias, gamma=FLSD53, label_smoothing=0.1)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.grad, x2.grad)
    torch._dynamo.reset()


def test_module_holds_the_schedule():
    criterion = LinearFocalLoss(gamma=FLSD53, label_smoothing=0.1)
    assert criterion.gamma is FLSD53
    assert "GammaSchedule(thresholds=(0.2,), values=(5.0, 3.0))" in repr(criterion)
    x, w, b, t = _data()
    assert torch.equal(
        criterion(x, w, t, b), linear_focal_loss(x, w, t, b, gamma=FLSD53, label_smoothing=0.1)
    )


@pytest.mark.parametrize(
    ("gamma", "error", "message"),
    [
        ("flsd53", TypeError, "gamma: expected a real number >= 0, got str"),
        ((0.2, 5.0), TypeError, "gamma: expected a real number >= 0, got tuple"),
        (-1.0, ValueError, "gamma: expected a finite number >= 0, got -1.0"),
        (float("nan"), ValueError, "gamma: expected a finite number >= 0, got nan"),
    ],
)
def test_bad_gamma_names_the_argument(gamma, error, message):
    x, w, b, t = _data(n=4, v=5, ignore=())
    with pytest.raises(error, match=message.replace("(", r"\(")):
        linear_focal_loss(x, w, t, b, gamma=gamma)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        LinearFocalLoss(gamma=gamma)
