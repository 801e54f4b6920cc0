"""The Triton kernel of linear_focal_loss against its PyTorch backend: values and the gradients
of input, classifier and bias, every option; small shapes (Triton's interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from focalloss import GammaSchedule, LinearFocalLoss, focal_loss, linear_focal_loss

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter

TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
}


def _data(n, d, v, dtype, device, seed=0, ignore=(1,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(v, generator=g, dtype=torch.float64)
    t = torch.randint(0, v, (n,), generator=g)
    for i in ignore:
        t[i] = -100
    return x.to(device, dtype), w.to(device, dtype), b.to(device, dtype), t.to(device)


def _run(x, w, b, t, **kwargs):
    leaves = [v.detach().clone().requires_grad_() for v in (x, w, b)]
    loss = linear_focal_loss(leaves[0], leaves[1], t, leaves[2], **kwargs)
    if loss.dim():
        g = torch.Generator().manual_seed(1)
        go = torch.randn(loss.shape, generator=g, dtype=loss.dtype).to(loss.device)
    else:
        go = torch.tensor(1.3, dtype=loss.dtype, device=loss.device)
    loss.backward(go)
    return [loss.detach()] + [v.grad for v in leaves]


def _compare(x, w, b, t, tol, **kwargs):
    got = _run(x, w, b, t, backend="triton", **kwargs)
    expected = _run(x, w, b, t, backend="torch", **kwargs)
    for a, e in zip(got, expected, strict=True):
        assert a.dtype == e.dtype
        scale = max(e.abs().max().item(), 1e-3)
        torch.testing.assert_close(a, e, rtol=tol["rtol"], atol=tol["atol"] * scale)


OPTIONS = [
    dict(),
    dict(gamma=0.0, reduction="sum"),
    dict(gamma=0.5, weight="w", alpha="a", reduction="none"),
    dict(gamma=2.0, label_smoothing=0.2),
    dict(gamma=1.0, label_smoothing=0.1, weight="w", alpha="a", reduction="none"),
    dict(gamma=2.0, poly1_epsilon=1.0, weight="w"),
    dict(gamma=0.0, poly1_epsilon=-0.5, label_smoothing=0.3),
    dict(gamma=2.0, logit_softcap=2.0),
    dict(gamma=1.5, z_loss=0.01, reduction="sum"),
    dict(
        gamma=2.0,
        label_smoothing=0.1,
        poly1_epsilon=1.0,
        logit_softcap=3.0,
        z_loss=1e-3,
        weight="w",
        alpha="a",
    ),
    dict(gamma=2.0, ignore_index=None),
]


def _resolve(options, v, device, dtype):
    g = torch.Generator().manual_seed(3)
    out = dict(options)
    if out.get("weight") == "w":
        out["weight"] = (torch.rand(v, generator=g) + 0.2).to(device, dtype)
    if out.get("alpha") == "a":
        out["alpha"] = torch.rand(v, generator=g).to(device, dtype)
    return out


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_matches_torch_backend(device, options, dtype):
    # N = 11 rows in chunks of 4 (not a multiple); V = 37 (not a power of two).
    x, w, b, t = _data(11, 5, 37, dtype, device)
    kw = _resolve(options, 37, device, dtype)
    if kw.get("ignore_index", -100) is None:
        t = t.clamp(min=0)
    _compare(x, w, b, t, TOL[dtype], chunk_size=4, **kw)


@pytest.mark.parametrize(
    "options", [dict(), dict(label_smoothing=0.1, logit_softcap=5.0, poly1_epsilon=1.0)]
)
def test_kernel_several_class_blocks(device, options):
    """V = 1500 > one kernel block (1024 on the CPU): the online logsumexp over blocks."""
    x, w, b, t = _data(6, 4, 1500, torch.float64, device)
    _compare(x, w, b, t, TOL[torch.float64], chunk_size=4, **options)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_half(device, dtype):
    """Half logits: the kernel's float32 math against the PyTorch backend's, same dtype."""
    x, w, b, t = _data(9, 8, 40, dtype, device)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=4e-3, atol=4e-3)
    _compare(x, w, b, t, tol, chunk_size=4, label_smoothing=0.1, z_loss=1e-3)


def test_kernel_equals_unfused_and_saturates(device):
    """Against the unfused focal_loss(F.linear(...)), with saturated logits (p_t -> 1) and
    0 < gamma < 1: finite, equal gradients."""
    x, w, b, t = _data(8, 4, 6, torch.float32, device, ignore=())
    w = w.clone()
    w[t[0]] = x[0] * 40
    for gamma in (0.5, 2.0):
        got = _run(x, w, b, t, backend="triton", gamma=gamma)
        leaves = [v.detach().clone().requires_grad_() for v in (x, w, b)]
        loss = focal_loss(F.linear(*leaves), t, gamma=gamma)
        (loss * 1.3).backward()
        for a, e in zip(got, [loss.detach()] + [v.grad for v in leaves], strict=True):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-6)


def test_kernel_all_ignored_and_module(device):
    x, w, b, t = _data(5, 3, 9, torch.float64, device)
    t[:] = -100
    loss, dx, dw, db = _run(x, w, b, t, backend="triton", z_loss=0.1)
    assert loss.item() == 0.0
    for g in (dx, dw, db):
        assert torch.equal(g, torch.zeros_like(g))
    criterion = LinearFocalLoss(gamma=1.0, backend="triton", chunk_size=2)
    x, w, b, t = _data(5, 3, 9, torch.float64, device)
    torch.testing.assert_close(
        criterion(x, w, t, b), linear_focal_loss(x, w, t, b, gamma=1.0, backend="torch")
    )


# --------------------------------------------------------------------------------------------
# Gamma schedules
# --------------------------------------------------------------------------------------------

SCHEDULES = {
    "flsd53": GammaSchedule.flsd53(),
    "three": GammaSchedule((0.1, 0.45), (4.0, 2.0, 0.5)),
    "zero-piece": GammaSchedule((0.05, 0.3), (0.0, 3.0, 1.5)),
}


def _crossing_data(n, d, v, dtype, device, seed=0):
    """Half the rows target their most likely class (large p_t), so rows fall in every piece."""
    x, w, b, t = _data(n, d, v, torch.float64, device, seed=seed)
    x = x * 3
    top = F.linear(x, w, b).argmax(1)
    t[::2] = top[::2]
    p = torch.softmax(F.linear(x, w, b), 1)
    kept = t >= 0
    p_t = p[kept].gather(1, t[kept, None]).squeeze(1)
    for schedule in SCHEDULES.values():
        pieces = {sum(int(value >= bound) for bound in schedule.thresholds) for value in p_t}
        assert len(pieces) == len(schedule.values), (schedule, p_t)
    return x.to(dtype), w.to(dtype), b.to(dtype), t


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(label_smoothing=0.1, reduction="none"),
        dict(
            label_smoothing=0.1,
            poly1_epsilon=1.0,
            logit_softcap=5.0,
            z_loss=1e-3,
            weight="w",
            alpha="a",
        ),
    ],
    ids=["default", "smooth-none", "all"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_schedule_matches_torch_backend(device, schedule, options, dtype):
    # N = 11 in chunks of 4, V = 37: neither divides.
    x, w, b, t = _crossing_data(11, 5, 37, dtype, device)
    kw = _resolve(options, 37, device, dtype)
    _compare(x, w, b, t, TOL[dtype], chunk_size=4, gamma=schedule, **kw)


@pytest.mark.parametrize("schedule", list(SCHEDULES.values())[:2], ids=["flsd53", "three"])
def test_kernel_schedule_equals_unfused(device, schedule):
    """float64 against focal_loss(F.linear(...), gamma=schedule): values and all gradients."""
    x, w, b, t = _crossing_data(11, 5, 37, torch.float64, device)
    for options in (dict(), dict(label_smoothing=0.2, poly1_epsilon=1.0)):
        got = _run(x, w, b, t, backend="triton", gamma=schedule, chunk_size=3, **options)
        leaves = [v.detach().clone().requires_grad_() for v in (x, w, b)]
        loss = focal_loss(F.linear(*leaves), t, gamma=schedule, **options)
        (loss * 1.3).backward()
        for a, e in zip(got, [loss.detach()] + [v.grad for v in leaves], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [dict(gamma=2.0), dict(gamma=0.0, label_smoothing=0.1), dict(gamma=1.5, poly1_epsilon=1.0)],
    ids=["2", "0-smooth", "1.5-poly"],
)
def test_kernel_one_value_schedule_is_the_constant(device, options):
    x, w, b, t = _crossing_data(11, 5, 37, torch.float32, device)
    gamma = options.pop("gamma")
    expected = _run(x, w, b, t, backend="triton", gamma=gamma, chunk_size=4, **options)
    schedule = GammaSchedule.constant(gamma)
    got = _run(x, w, b, t, backend="triton", gamma=schedule, chunk_size=4, **options)
    for a, e in zip(got, expected, strict=True):
        assert torch.equal(a, e)


def test_kernel_schedule_several_class_blocks(device):
    """V = 1500 > one kernel block: the schedule's gamma is chosen after the online
    logsumexp over every block."""
    x, w, b, t = _data(6, 4, 1500, torch.float64, device)
    t[::2] = F.linear(x * 4, w, b).argmax(1)[::2]
    schedule = GammaSchedule((0.01, 0.5), (4.0, 2.0, 1.0))
    p = torch.softmax(F.linear(x * 4, w, b), 1)
    big_p = p[t >= 0].gather(1, t[t >= 0, None]).squeeze(1) * 0.9 + 0.1 / 1500
    assert {int(v >= 0.01) + int(v >= 0.5) for v in big_p.tolist()} == {0, 1, 2}
    _compare(
        x * 4, w, b, t, TOL[torch.float64], chunk_size=4, gamma=schedule,
        label_smoothing=0.1, logit_softcap=8.0, poly1_epsilon=1.0,
    )  # fmt: skip


def test_kernel_schedule_reads_smoothed_p(device):
    """With smoothing the piece is chosen by P = (1 - eps) p_t + eps / V, not by p_t: a
    threshold between the two for one row tells them apart."""
    x, w, b, t = _crossing_data(11, 5, 37, torch.float64, device)
    eps = 0.5
    p_t = torch.softmax(F.linear(x, w, b), 1)[0, t[0]].item()
    big_p = (1 - eps) * p_t + eps / 37
    assert p_t - big_p > 0.05
    schedule = GammaSchedule(((p_t + big_p) / 2,), (5.0, 1.0))
    got = _run(x, w, b, t, backend="triton", gamma=schedule, label_smoothing=eps, chunk_size=4)
    leaves = [v.detach().clone().requires_grad_() for v in (x, w, b)]
    loss = focal_loss(F.linear(*leaves), t, gamma=schedule, label_smoothing=eps)
    (loss * 1.3).backward()
    for a, e in zip(got, [loss.detach()] + [v.grad for v in leaves], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [dict(gamma=2.0, alpha=[0.5] * 7), dict(gamma=GammaSchedule.flsd53(), label_smoothing=0.1)],
    ids=["constant", "schedule"],
)
def test_kernel_steady_state_builds_no_host_tensor(device, kwargs, monkeypatch):
    """After a first call (which may build the cached kernel parameters and per-class vectors
    from Python numbers), a training call builds no tensor from host data: with a schedule the
    gamma slot (NaN, unused) must not defeat the cache."""
    x, w, b, t = _data(5, 4, 7, torch.float32, device)
    _run(x, w, b, t, backend="triton", **kwargs)
    built = []
    original = torch.tensor

    def spy(*args, **kw):
        built.append(args[0] if args else kw.get("data"))
        return original(*args, **kw)

    monkeypatch.setattr(torch, "tensor", spy)
    for _ in range(2):
        _run(x, w, b, t, backend="triton", **kwargs)
    # (the test's own grad_output is a 0-d tensor from a number; vectors come from lists)
    assert [v for v in built if isinstance(v, (list, tuple))] == []
