"""linear_focal_loss / LinearFocalLoss: against independent float64 references (values and the
gradients of input, classifier and bias), F.cross_entropy anchors, the unfused focal_loss,
class blocks, ignored rows, dtypes, gradcheck, torch.compile, memory (profiler allocation
events) and every argument error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import focalloss._linear_torch as engine
from compiled_steps import check_compiled_linear_step
from focalloss import LinearFocalLoss, focal_loss, linear_focal_loss

# --------------------------------------------------------------------------------------------
# Independent reference: the formulas of the issue, differentiated by autograd in float64
# --------------------------------------------------------------------------------------------


def linear_focal_ref(
    x,
    w,
    t,
    b=None,
    *,
    gamma=2.0,
    alpha=None,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    reduction="mean",
    poly1_epsilon=0.0,
    logit_softcap=None,
    z_loss=0.0,
):
    """Lin et al.'s focal loss of the logits x W^T + b, with F.cross_entropy's smoothing,
    weight, ignore_index and mean divisor; Poly-1 (Leng et al.) eps1 * w_t * (1 - P)^(gamma+1)
    with P = sum_c q_c p_c; PaLM's z-loss lam * logsumexp^2 per kept row; Gemma's softcap."""
    z = x.double() @ w.double().T
    if b is not None:
        z = z + b.double()
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    v = z.shape[1]
    wv = torch.ones(v, dtype=torch.float64) if weight is None else weight.double()
    if alpha is None:
        av = torch.ones(v, dtype=torch.float64)
    elif isinstance(alpha, float):
        av = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    else:
        av = alpha.double()
    keep = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    safe = torch.where(keep, t, 0)
    onehot = F.one_hot(safe, v).double()
    q = (1 - label_smoothing) * onehot + label_smoothing / v
    lp = torch.log_softmax(z, dim=1)
    p = lp.exp()
    focal = (wv * av * q * (1 - p) ** gamma * (-lp)).sum(1)
    big_p = (q * p).sum(1)
    poly = poly1_epsilon * wv[safe] * (1 - big_p) ** (gamma + 1)
    zl = z_loss * torch.logsumexp(z, 1) ** 2
    loss = torch.where(keep, focal + poly + zl, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (wv[safe] * keep).sum()


def _data(n=13, d=6, v=29, seed=0, dtype=torch.float64, ignore=(3, 8), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype) * scale
    w = torch.randn(v, d, generator=g, dtype=dtype)
    b = torch.randn(v, generator=g, dtype=dtype)
    t = torch.randint(0, v, (n,), generator=g)
    for i in ignore:
        if i < n:
            t[i] = -100
    return x, w, b, t


def _grads(fn, x, w, b, t, go_seed=1, **kwargs):
    """(loss, dx, dW, db) of fn with a random grad_output (reduction 'none') or 1.7."""
    xl = x.detach().clone().requires_grad_()
    wl = w.detach().clone().requires_grad_()
    bl = None if b is None else b.detach().clone().requires_grad_()
    loss = fn(xl, wl, t, bl, **kwargs)
    if loss.dim() == 0:
        go = torch.tensor(1.7, dtype=loss.dtype)
    else:
        g = torch.Generator().manual_seed(go_seed)
        go = torch.randn(loss.shape, generator=g, dtype=loss.dtype)
    loss.backward(go)
    return loss.detach(), xl.grad, wl.grad, None if bl is None else bl.grad


def _assert_all_close(got, expected, rtol=1e-10, atol=1e-12):
    for name, a, e in zip(("loss", "input", "classifier", "bias"), got, expected, strict=True):
        if e is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=atol, msg=name)


OPTIONS = [
    dict(),
    dict(gamma=0.0),
    dict(gamma=0.5, weight="w", alpha="a"),
    dict(gamma=1.0, label_smoothing=0.2),
    dict(gamma=2.0, label_smoothing=0.1, weight="w", alpha="a"),
    dict(gamma=3.0, label_smoothing=1.0),
    dict(gamma=2.0, poly1_epsilon=1.0),
    dict(gamma=0.0, poly1_epsilon=-0.5, label_smoothing=0.15, weight="w"),
    dict(gamma=1.5, poly1_epsilon=2.0, label_smoothing=0.1, weight="w", alpha="a"),
    dict(gamma=2.0, logit_softcap=2.5),
    dict(gamma=2.0, z_loss=1e-2),
    dict(gamma=0.7, logit_softcap=3.0, z_loss=0.05, label_smoothing=0.1, weight="w"),
    dict(
        gamma=2.0,
        logit_softcap=4.0,
        z_loss=1e-3,
        poly1_epsilon=1.0,
        label_smoothing=0.05,
        weight="w",
        alpha="a",
    ),
    dict(gamma=2.0, ignore_index=None),
    dict(gamma=2.0, ignore_index=5, weight="w"),
]


def _resolve(options, v, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = dict(options)
    if out.get("weight") == "w":
        out["weight"] = torch.rand(v, generator=g, dtype=torch.float64) + 0.2
    if out.get("alpha") == "a":
        out["alpha"] = torch.rand(v, generator=g, dtype=torch.float64)
    return out


def _fused(x, w, t, b, **kw):
    return linear_focal_loss(x, w, t, b, **kw)


def _ref(x, w, t, b, **kw):
    kw.pop("chunk_size", None)
    kw.pop("backend", None)
    return linear_focal_ref(x, w, t, b, **kw)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("chunk_size", "with_bias"), [(None, False), (4, True)], ids=["one-chunk", "chunks-of-4+bias"]
)
def test_matches_reference(options, reduction, chunk_size, with_bias):
    x, w, b, t = _data()
    if options.get("ignore_index") == 5:
        t[t == -100] = 5
    if "ignore_index" in options and options["ignore_index"] is None:
        t = t.clamp(min=0)
    if not with_bias:
        b = None
    kw = _resolve(options, w.shape[0])
    got = _grads(_fused, x, w, b, t, reduction=reduction, chunk_size=chunk_size, **kw)
    expected = _grads(_ref, x, w, b, t, reduction=reduction, **kw)
    _assert_all_close(got, expected)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(gamma=0.5, weight="w", alpha="a", reduction="sum"),
        dict(gamma=2.0, label_smoothing=0.3, reduction="none"),
        dict(gamma=0.0, label_smoothing=0.1, weight="w"),
        dict(gamma=1.0, ignore_index=None),
    ],
)
def test_matches_unfused_focal_loss(options):
    """The library's own unfused composition: focal_loss(F.linear(...))."""
    x, w, b, t = _data(n=17, v=31, seed=2)
    kw = _resolve(options, w.shape[0])
    if kw.get("ignore_index", -100) is None:
        t = t.clamp(min=0)

    def unfused(x, w, t, b, **kw):
        kw.pop("chunk_size", None)
        return focal_loss(F.linear(x, w, b), t, **kw)

    got = _grads(_fused, x, w, b, t, chunk_size=5, **kw)
    expected = _grads(unfused, x, w, b, t, **kw)
    _assert_all_close(got, expected)


@pytest.mark.parametrize(
    "ce_kwargs",
    [
        dict(),
        dict(reduction="sum"),
        dict(reduction="none"),
        dict(label_smoothing=0.2),
        dict(weight="w"),
        dict(weight="w", label_smoothing=0.1, reduction="sum"),
        dict(ignore_index=7),
    ],
)
def test_gamma_zero_is_cross_entropy(ce_kwargs):
    x, w, b, t = _data(n=15, v=23, seed=4)
    kw = _resolve(ce_kwargs, w.shape[0])
    if kw.get("ignore_index") == 7:
        t[t == -100] = 7

    def ce(x, w, t, b, **kw):
        kw.pop("chunk_size", None)
        return F.cross_entropy(F.linear(x, w, b), t, **kw)

    got = _grads(_fused, x, w, b, t, gamma=0.0, chunk_size=4, **kw)
    expected = _grads(ce, x, w, b, t, **kw)
    _assert_all_close(got, expected)


def test_anchors_poly1_softcap_z_loss():
    """Poly-1 CE, softcapped CE and z-loss from F.cross_entropy and their published forms."""
    x, w, b, t = _data(n=11, v=19, seed=5)
    keep = t != -100
    z = F.linear(x, w, b)
    ce = F.cross_entropy(z, t, reduction="none")
    p_t = torch.softmax(z, 1).gather(1, t.clamp(min=0)[:, None]).squeeze(1)
    # Poly-1 cross-entropy (Leng et al. 2022, eq. 3): CE + eps * (1 - p_t).
    poly = torch.where(keep, ce + 2.0 * (1 - p_t), 0.0)
    got = linear_focal_loss(x, w, t, b, gamma=0.0, poly1_epsilon=2.0, reduction="none")
    torch.testing.assert_close(got, poly)
    # Softcap: CE of c * tanh(z / c).
    capped = F.cross_entropy(3.0 * torch.tanh(z / 3.0), t)
    torch.testing.assert_close(linear_focal_loss(x, w, t, b, gamma=0.0, logit_softcap=3.0), capped)
    # z-loss: CE + lam * mean over kept rows of logsumexp^2.
    zl = F.cross_entropy(z, t) + 1e-2 * (torch.logsumexp(z, 1)[keep] ** 2).mean()
    torch.testing.assert_close(linear_focal_loss(x, w, t, b, gamma=0.0, z_loss=1e-2), zl)


def test_poly1_is_weighted_not_alpha_scaled():
    """Poly-1's term carries weight[t] but not alpha (issue 13), and is 0 at ignored rows."""
    x, w, b, t = _data(n=9, v=7, seed=6)
    wv = torch.rand(7, dtype=torch.float64) + 0.5
    av = torch.rand(7, dtype=torch.float64)
    opts = dict(gamma=1.5, weight=wv, alpha=av, reduction="none")
    with_poly = linear_focal_loss(x, w, t, b, poly1_epsilon=1.0, **opts)
    without = linear_focal_loss(x, w, t, b, **opts)
    p = torch.softmax(F.linear(x, w, b), 1)
    safe = t.clamp(min=0)
    expected = wv[safe] * (1 - p.gather(1, safe[:, None]).squeeze(1)) ** 2.5
    torch.testing.assert_close(with_poly - without, torch.where(t != -100, expected, 0.0))


# --------------------------------------------------------------------------------------------
# Chunks and class blocks
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_budget(monkeypatch):
    """A budget that forces class blocks on tiny shapes (V not a multiple of the block)."""
    monkeypatch.setitem(engine.BUDGET_BYTES, "cpu", 5 * 6 * 8)
    monkeypatch.setattr(engine, "MIN_BLOCK", 4)
    monkeypatch.setattr(engine, "MIN_ROWS", 6)


@pytest.mark.parametrize("options", OPTIONS[:13], ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_blocks_match_reference(small_budget, options, reduction):
    x, w, b, t = _data(n=13, v=29)
    kw = _resolve(options, w.shape[0])
    spec = engine.Spec(kw.get("gamma", 2.0), kw.get("label_smoothing", 0.0), 0, 0, 0, 0, True)
    rows, block = engine.plan(13, 29, torch.float64, "cpu", spec, 0, False)
    assert rows == 6 and block < 29 and 29 % block != 0
    got = _grads(_fused, x, w, b, t, reduction=reduction, **kw)
    expected = _grads(_ref, x, w, b, t, reduction=reduction, **kw)
    _assert_all_close(got, expected)


def test_chunk_rule():
    spec = engine.Spec(2.0, 0.0, 0.0, 0.0, 0.0, -100, True)
    plan = engine.plan
    # The benchmark rows: 64 MiB / (V * 4 bytes), evened out.
    assert plan(4096, 32000, torch.float32, "cpu", spec, 0, False) == (512, 32000)
    assert plan(1024, 128000, torch.float32, "cpu", spec, 0, False) == (128, 128000)
    assert plan(100, 1000, torch.float32, "cpu", spec, 0, False) == (100, 1000)  # one chunk
    assert plan(1000, 50000, torch.float32, "cpu", spec, 0, False) == (334, 50000)
    # bfloat16: 2 bytes of logits + 4 of float32 work per logit; CUDA budget 256 MiB.
    assert plan(8192, 128000, torch.bfloat16, "cuda", spec, 0, False) == (342, 128000)
    assert plan(8192, 128000, torch.bfloat16, "cuda", spec, 0, True) == (1024, 128000)
    # Smoothing needs about five compute buffers.
    smooth = spec._replace(eps=0.1)
    assert plan(4096, 32000, torch.float32, "cpu", smooth, 0, False) == (103, 32000)
    # Huge V: 32 rows and class blocks.
    assert plan(4096, 2_000_000, torch.float32, "cpu", spec, 0, False) == (32, 524288)
    # A given chunk size is used as it is.
    assert plan(4096, 2_000_000, torch.float32, "cpu", spec, 7, False) == (7, 2_000_000)
    assert plan(5, 10, torch.float32, "cpu", spec, 100, False) == (5, 10)


# --------------------------------------------------------------------------------------------
# Ignored rows, shapes, requires_grad combinations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("blocks", [False, True])
def test_all_ignored(reduction, blocks, monkeypatch):
    if blocks:
        monkeypatch.setitem(engine.BUDGET_BYTES, "cpu", 64)
        monkeypatch.setattr(engine, "MIN_BLOCK", 4)
    x, w, b, t = _data(n=5, v=9)
    t[:] = -100
    loss, dx, dw, db = _grads(
        _fused, x, w, b, t, reduction=reduction, z_loss=0.1, poly1_epsilon=1.0, label_smoothing=0.1
    )
    assert torch.equal(loss, torch.zeros_like(loss))
    for g in (dx, dw, db):
        assert torch.equal(g, torch.zeros_like(g))


def test_ignored_rows_contribute_nothing():
    x, w, b, t = _data(n=10, v=12)
    kept = t != -100
    opts = dict(gamma=1.5, z_loss=0.01, poly1_epsilon=1.0, label_smoothing=0.1, reduction="sum")
    full = _grads(_fused, x, w, b, t, **opts)
    only = _grads(_fused, x[kept], w, b, t[kept], **opts)
    torch.testing.assert_close(full[0], only[0])
    torch.testing.assert_close(full[2], only[2])
    torch.testing.assert_close(full[3], only[3])
    assert torch.equal(full[1][~kept], torch.zeros_like(full[1][~kept]))


def test_leading_shape_and_empty_batch():
    x, w, b, t = _data(n=12, v=10, ignore=())
    x3, t3 = x.view(3, 4, 6), t.view(3, 4)
    loss = linear_focal_loss(x3, w, t3, b, reduction="none")
    assert loss.shape == (3, 4)
    torch.testing.assert_close(loss.reshape(-1), linear_focal_ref(x, w, t, b, reduction="none"))
    xl = x3.clone().requires_grad_()
    linear_focal_loss(xl, w, t3, b).backward()
    assert xl.grad.shape == (3, 4, 6)
    # Empty batch: "mean" is 0 with zero gradients, "none" is empty.
    xe = torch.zeros(0, 6, dtype=torch.float64, requires_grad=True)
    we = w.clone().requires_grad_()
    te = torch.zeros(0, dtype=torch.long)
    out = linear_focal_loss(xe, we, te, b)
    out.backward()
    assert out.item() == 0.0 and torch.equal(we.grad, torch.zeros_like(we))
    assert linear_focal_loss(xe, w, te, b, reduction="none").shape == (0,)
    # Unbatched: input (D,), target ().
    one = linear_focal_loss(x[0], w, t[0], b, reduction="none")
    assert one.shape == ()
    torch.testing.assert_close(one, linear_focal_ref(x[:1], w, t[:1], b, reduction="none")[0])


@pytest.mark.parametrize("which", ["input", "classifier", "bias", "input+bias", "none"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_requires_grad_combinations(which, reduction):
    x, w, b, t = _data(n=9, v=11)
    names = which.split("+")
    leaves = {
        "input": x.clone().requires_grad_("input" in names),
        "classifier": w.clone().requires_grad_("classifier" in names),
        "bias": b.clone().requires_grad_("bias" in names),
    }
    loss = linear_focal_loss(
        leaves["input"], leaves["classifier"], t, leaves["bias"], reduction=reduction, chunk_size=4
    )
    expected = _grads(_ref, x, w, b, t, reduction=reduction)
    go_loss = expected[0]
    torch.testing.assert_close(loss.detach(), go_loss)
    if which == "none":
        assert not loss.requires_grad
        return
    go = torch.tensor(1.7, dtype=torch.float64)
    if loss.dim():
        go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype)
    loss.backward(go)
    for name, e in zip(("input", "classifier", "bias"), expected[1:], strict=True):
        grad = leaves[name].grad
        if name in names:
            torch.testing.assert_close(grad, e)
        else:
            assert grad is None


def test_grad_accumulation_and_retain_graph():
    """A second backward through the graph (retain_graph) recomputes the gradients the first
    one handed over, and both accumulate into existing .grad tensors."""
    x, w, b, t = _data(n=9, v=11)
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_focal_loss(xl, wl, t, b, chunk_size=2)
    loss.backward(retain_graph=True)
    loss.backward()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    (2 * linear_focal_ref(xr, wr, t, b)).backward()
    torch.testing.assert_close(loss.detach(), linear_focal_ref(x, w, t, b))
    torch.testing.assert_close(xl.grad, xr.grad)
    torch.testing.assert_close(wl.grad, wr.grad)


def test_saturated_logits_finite_for_small_gamma():
    """0 < gamma < 1 at p_t -> 1: the bounded closed form stays finite (the textbook
    (1 - p)^(gamma - 1) is infinite there) and equals the unfused closed form."""
    x, w, b, t = _data(n=8, v=6, ignore=(), dtype=torch.float32)
    w = w * 0.0
    b = torch.zeros(6)
    w[t[0]] = x[0] * 50  # row 0's target logit ~ 50 * |x_0|^2: p_t rounds to 1
    for gamma in (0.25, 0.5):
        got = _grads(_fused, x, w, b, t, gamma=gamma, z_loss=1e-3, poly1_epsilon=1.0)
        for g in got:
            assert torch.isfinite(g).all()
        unf = _grads(
            lambda x, w, t, b, **k: focal_loss(F.linear(x, w, b), t, **k), x, w, b, t, gamma=gamma
        )
        plain = _grads(_fused, x, w, b, t, gamma=gamma)
        _assert_all_close(plain, unf, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Half precision, gradcheck, double backward, torch.func
# --------------------------------------------------------------------------------------------


# Stated tolerances of float16/bfloat16 against float32 on the same (rounded) inputs: the
# logits and gradients are rounded to the input dtype (8 bits of mantissa for bfloat16, 11
# for float16) and the classifier gradient is accumulated in that dtype chunk by chunk.
HALF_TOL = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "options",
    [dict(), dict(label_smoothing=0.1, z_loss=1e-3, logit_softcap=5.0, poly1_epsilon=1.0)],
)
def test_half_against_float32(dtype, options):
    x, w, b, t = _data(n=40, d=16, v=300, dtype=torch.float32)
    w = w * 0.25
    xh, wh, bh = x.to(dtype), w.to(dtype), b.to(dtype)
    got = _grads(_fused, xh, wh, bh, t, chunk_size=16, **options)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == got[3].dtype == dtype
    expected = _grads(_fused, xh.float(), wh.float(), bh.float(), t, chunk_size=16, **options)
    tol = HALF_TOL[dtype]
    for a, e in zip(got, expected, strict=True):
        err = (a.float() - e).abs().max().item()
        assert err <= tol * max(e.abs().max().item(), 1e-3), (err, e.abs().max().item())


@pytest.mark.parametrize(
    "options",
    [
        dict(gamma=1.5, reduction="mean"),
        dict(gamma=2.0, label_smoothing=0.2, poly1_epsilon=1.0, reduction="sum"),
        dict(gamma=0.5, logit_softcap=2.0, z_loss=0.1, weight="w", reduction="none"),
    ],
)
def test_gradcheck(options):
    x, w, b, t = _data(n=5, d=3, v=7, ignore=(2,))
    kw = _resolve(options, 7)
    inputs = tuple(v.clone().requires_grad_() for v in (x, w, b))

    def fn(x, w, b):
        return linear_focal_loss(x, w, t, b, chunk_size=2, **kw)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_torch_func_grad():
    x, w, b, t = _data(n=6, v=8)

    def fn(w):
        return linear_focal_loss(x, w, t, b, gamma=1.0, z_loss=0.01)

    got = torch.func.grad(fn)(w)
    wr = w.clone().requires_grad_()
    linear_focal_ref(x, wr, t, b, gamma=1.0, z_loss=0.01).backward()
    torch.testing.assert_close(got, wr.grad)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_training_step(reduction):
    torch.manual_seed(0)
    criterion = LinearFocalLoss(
        gamma=2.0, z_loss=1e-3, logit_softcap=5.0, poly1_epsilon=1.0, reduction=reduction,
        chunk_size=4, weight=torch.rand(37) + 0.5,
    )  # fmt: skip
    check_compiled_linear_step(criterion)


# --------------------------------------------------------------------------------------------
# Memory: the peak of the profiler's allocation events
# --------------------------------------------------------------------------------------------


def _peak_bytes(fn):
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    events.sort()
    current = peak = 0
    for _, size in events:
        current += size
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_peak_memory_is_chunk_sized(reduction, smoothing):
    n, d, v, chunk = 512, 32, 4096, 32
    x, w, _, t = _data(n=n, d=d, v=v, dtype=torch.float32)
    xl, wl = x.requires_grad_(), w.requires_grad_()
    logits_bytes = n * v * 4
    chunk_bytes = chunk * v * 4
    param_grad = wl.numel() * 4
    input_grad = xl.numel() * 4

    def fused():
        loss = linear_focal_loss(
            xl, wl, t, reduction=reduction, label_smoothing=smoothing, chunk_size=chunk
        )
        (loss.sum() if loss.dim() else loss).backward()

    def unfused():
        loss = focal_loss(F.linear(xl, wl), t, reduction=reduction, label_smoothing=smoothing)
        (loss.sum() if loss.dim() else loss).backward()

    unfused_peak = _peak_bytes(unfused) - param_grad
    xl.grad = wl.grad = None
    fused_peak = _peak_bytes(fused) - param_grad
    # The measurement sees the unfused logits (and their gradient) ...
    assert unfused_peak >= 2 * logits_bytes
    # ... and the fused step stays within a few chunk buffers (6 with smoothing), whatever N.
    buffers = 6 if smoothing else 2
    assert fused_peak <= buffers * chunk_bytes + input_grad + 64 * 1024, fused_peak / chunk_bytes
    assert fused_peak <= 0.2 * unfused_peak


def test_peak_memory_class_blocks(monkeypatch):
    """The automatic rule with a 256 KiB budget: class blocks keep the peak near the budget
    even though one row of logits would fit it only 16 times."""
    monkeypatch.setitem(engine.BUDGET_BYTES, "cpu", 256 << 10)
    n, d, v = 64, 16, 4096 + 37
    x, w, _, t = _data(n=n, d=d, v=v, dtype=torch.float32)
    spec = engine.Spec(2.0, 0.0, 0.0, 0.0, 0.0, -100, True)
    rows, block = engine.plan(n, v, torch.float32, "cpu", spec, 0, False)
    assert rows == 32 and block < v
    xl, wl = x.requires_grad_(), w.requires_grad_()

    def fused():
        linear_focal_loss(xl, wl, t).backward()

    peak = _peak_bytes(fused) - wl.numel() * 4
    assert peak <= (256 << 10) + xl.numel() * 4 + 64 * 1024
    expected = _grads(_ref, x.detach().double(), w.detach().double(), None, t)
    torch.testing.assert_close(wl.grad.double(), expected[2] / 1.7, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Module, backends, errors
# --------------------------------------------------------------------------------------------


def test_module_holds_configuration():
    wv = torch.rand(11, dtype=torch.float64) + 0.1
    criterion = LinearFocalLoss(
        gamma=1.5, weight=wv, label_smoothing=0.1, z_loss=1e-3, logit_softcap=8.0,
        poly1_epsilon=0.5, chunk_size=3, reduction="sum",
    )  # fmt: skip
    assert sorted(criterion.state_dict()) == ["weight"]
    assert "z_loss=0.001" in repr(criterion) and "chunk_size=3" in repr(criterion)
    x, w, b, t = _data(n=7, v=11)
    got = criterion(x, w, t, b)
    expected = linear_focal_ref(
        x, w, t, b, gamma=1.5, weight=wv, label_smoothing=0.1, z_loss=1e-3, logit_softcap=8.0,
        poly1_epsilon=0.5, reduction="sum",
    )  # fmt: skip
    torch.testing.assert_close(got, expected)
    two = LinearFocalLoss(alpha=0.25)
    x2, w2, _, t2 = _data(n=6, v=2, ignore=())
    torch.testing.assert_close(two(x2, w2, t2), linear_focal_ref(x2, w2, t2, alpha=0.25))


def test_backend_selection(monkeypatch):
    x, w, _, t = _data(n=4, v=5, ignore=())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend: expected one of .*got 'gpu'"):
        linear_focal_loss(x, w, t, backend="gpu")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        linear_focal_loss(x, w, t, backend="triton")
    monkeypatch.setenv("FOCALLOSS_BACKEND", "torch")
    torch.testing.assert_close(linear_focal_loss(x, w, t), linear_focal_ref(x, w, t))
    monkeypatch.setenv("FOCALLOSS_BACKEND", "fast")
    with pytest.raises(ValueError, match="FOCALLOSS_BACKEND: expected one of"):
        linear_focal_loss(x, w, t)


def test_value_checks_target_range():
    x, w, _, t = _data(n=4, v=5, ignore=())
    t[1] = 5
    with pytest.raises(ValueError, match=r"target: class indices must lie in \[0, 5\)"):
        linear_focal_loss(x, w, t)
    t[1] = -3
    with pytest.raises(ValueError, match="got -3"):
        linear_focal_loss(x, w, t)


X, W, B, T = _data(n=4, d=3, v=5, ignore=(), dtype=torch.float32)

BAD = [
    (dict(input=X.long()), TypeError, "input: expected floating-point"),
    (dict(input=torch.tensor(1.0)), ValueError, "input: expected shape"),
    (dict(input=torch.randn(4, 2)), ValueError, "input: the last dimension must equal"),
    (dict(classifier=torch.randn(5)), ValueError, r"classifier: expected a \(V, D\)"),
    (dict(classifier=torch.randn(0, 3)), ValueError, "classifier: expected V >= 1 classes"),
    (dict(input=torch.randn(4, 0), classifier=torch.randn(5, 0)), ValueError, "D >= 1"),
    (dict(classifier=W.double()), TypeError, "classifier: expected the input's dtype"),
    (dict(bias=torch.randn(4)), ValueError, r"bias: expected shape \(5,\)"),
    (dict(bias=B.double()), TypeError, "bias: expected the input's dtype"),
    (dict(target=T[:3]), ValueError, r"target: expected class indices of the input's leading"),
    (dict(target=T.float()), TypeError, "target: expected class indices of an integer"),
    (dict(target=[0, 1]), TypeError, "target: expected a torch.Tensor"),
    (dict(classifier="W"), TypeError, "classifier: expected a torch.Tensor"),
    (dict(gamma=-1.0), ValueError, "gamma: expected a finite number >= 0"),
    (dict(gamma="2"), TypeError, "gamma: expected a real number"),
    (dict(label_smoothing=1.5), ValueError, r"label_smoothing: expected a number in \[0, 1\]"),
    (dict(logit_softcap=0.0), ValueError, "logit_softcap: expected None or a finite number > 0"),
    (dict(logit_softcap=-3.0), ValueError, "logit_softcap"),
    (dict(logit_softcap=math.inf), ValueError, "logit_softcap"),
    (dict(z_loss=-1e-4), ValueError, "z_loss: expected a finite number >= 0"),
    (dict(z_loss=math.nan), ValueError, "z_loss"),
    (dict(poly1_epsilon=math.inf), ValueError, "poly1_epsilon: expected a finite number"),
    (dict(poly1_epsilon=None), TypeError, "poly1_epsilon: expected a real number"),
    (dict(chunk_size=0), ValueError, "chunk_size: expected None or an int >= 1, got 0"),
    (dict(chunk_size=2.0), TypeError, "chunk_size: expected None or an int"),
    (dict(reduction="avg"), ValueError, "reduction: expected one of"),
    (dict(ignore_index=1.5), TypeError, "ignore_index: expected an int or None"),
    (dict(weight=[1.0, 2.0]), ValueError, r"weight: expected one factor per class, shape \(5,\)"),
    (dict(weight=[1.0, -1.0, 1.0, 1.0, 1.0]), ValueError, "weight: expected finite values >= 0"),
    (dict(alpha=0.25), ValueError, "alpha: a single number a means factors"),
    (dict(alpha=torch.ones(5, requires_grad=True)), ValueError, "alpha: expected a tensor that"),
    (dict(backend="cuda"), ValueError, "backend: expected one of"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD, ids=lambda v: str(v)[:40])
def test_bad_input(change, error, message):
    args = dict(input=X, classifier=W, target=T, bias=B)
    kwargs = {}
    for key, value in change.items():
        (args if key in args else kwargs)[key] = value
    with pytest.raises(error, match=message):
        linear_focal_loss(args["input"], args["classifier"], args["target"], args["bias"], **kwargs)


def test_bad_devices_and_module_arguments():
    meta = torch.empty(5, 3, device="meta")
    with pytest.raises(ValueError, match="classifier: expected a tensor on the input's device"):
        linear_focal_loss(X, meta, T)
    with pytest.raises(ValueError, match="target: expected a tensor on the input's device"):
        linear_focal_loss(X, W, T.to("meta"))
    with pytest.raises(ValueError, match="bias: expected a tensor on the input's device"):
        linear_focal_loss(X, W, T, torch.empty(5, device="meta"))
    for kwargs, match in [
        (dict(gamma=-1.0), "gamma"),
        (dict(logit_softcap=0), "logit_softcap"),
        (dict(z_loss=-1), "z_loss"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(backend="x"), "backend"),
        (dict(weight=[[1.0]]), "weight: expected a sequence of numbers"),
        (dict(alpha=1.5), "alpha: expected a number in"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            LinearFocalLoss(**kwargs)
