"""The Triton kernel of linear_focal_loss against its PyTorch backend: values and the gradients
of input, classifier and bias, every option; small shapes (Triton's interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from focalloss import LinearFocalLoss, focal_loss, linear_focal_loss

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
