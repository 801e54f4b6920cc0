"""No host synchronisation in a training call (forward and backward) with value checks off.

A GPU stand-in: meta tensors (no data, so any read of a value fails or shows up) under a
dispatch-mode probe that records the operators which read a tensor on the host or copy host
data to the device, plus interception of ``torch.tensor`` / ``torch.as_tensor`` with a device.
A real CUDA-graph capture runs in ``test_cuda_graph_capture`` where CUDA is available.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import focalloss
from focalloss import (
    FocalLoss,
    GammaSchedule,
    SigmoidFocalLoss,
    focal_loss,
    linear_focal_loss,
    sigmoid_focal_loss,
)

# Operators that need a value on the host (item, bool, nonzero-based indexing), or that
# bring host data to the device.
SYNCING = {
    "aten._local_scalar_dense.default",
    "aten.is_nonzero.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.lift_fresh.default",
    "aten.lift_fresh_copy.default",
}


class Probe(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name in SYNCING:
            self.bad.append(name)
        if name.startswith(("aten._to_copy", "aten.copy_", "aten._copy_from")):
            devices = {
                a.device.type
                for a in list(args) + list(kwargs.values())
                if isinstance(a, torch.Tensor)
            }
            target = kwargs.get("device")
            if "cpu" in devices and (len(devices) > 1 or (target and str(target) != "cpu")):
                self.bad.append(f"{name} from the host")
        return func(*args, **kwargs)


@pytest.fixture
def no_checks():
    previous = focalloss.set_value_checks(False)
    yield
    focalloss.set_value_checks(previous)


@contextlib.contextmanager
def no_host_tensors():
    """torch.tensor / torch.as_tensor with a device other than the CPU is a host copy."""
    originals = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}

    def guard(name):
        def guarded(*args, **kwargs):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu":
                raise AssertionError(f"torch.{name}(..., device={device}) in a training call")
            return originals[name](*args, **kwargs)

        return guarded

    try:
        for name in originals:
            setattr(torch, name, guard(name))
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


def _steady_state(fn, x, target, **kwargs):
    """The training call after a first one (which may build cached per-class vectors from
    Python numbers once), checked by the probe."""
    _step(fn, x, target, **kwargs)
    with no_host_tensors(), Probe() as probe:
        grad = _step(fn, x, target, **kwargs)
    return probe.bad, grad


SOFTMAX_CALLS = [
    dict(),
    dict(alpha=[0.2, 0.3, 0.5], weight=[1.0, 2.0, 3.0]),
    dict(label_smoothing=0.1, gamma=0.5, ignore_index=1),
    dict(reduction="none"),
    dict(reduction="sum", detach_modulator=True),
    dict(ignore_index=None, gamma=0.0),
]
SIGMOID_CALLS = [
    dict(),
    dict(alpha=[0.2, 0.3, 0.5], weight=torch.ones(3), pos_weight=torch.ones(3)),
    dict(normalizer=7.0),
    dict(reduction="none", gamma=0.5),
    dict(reduction="sum", alpha=None),
    dict(gamma=0.0),
]


def _step(fn, x, target, **kwargs):
    leaf = x.detach().requires_grad_()
    loss = fn(leaf, target, **kwargs)
    loss.backward(torch.ones_like(loss))
    return leaf.grad


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


@pytest.mark.parametrize("kwargs", SOFTMAX_CALLS, ids=str)
@pytest.mark.parametrize("kind", ["index", "probabilities"])
def test_softmax_training_call_reads_nothing(kwargs, kind, no_checks):
    if kind == "probabilities" and kwargs.get("ignore_index") not in (None,):
        kwargs = {k: v for k, v in kwargs.items() if k != "ignore_index"}
    kwargs = {
        k: (torch.tensor(v).to("meta") if isinstance(v, list) and k == "weight" else v)
        for k, v in kwargs.items()
    }
    x = _meta(4, 3, 5)
    target = (
        torch.empty(4, 5, device="meta", dtype=torch.long) if kind == "index" else _meta(4, 3, 5)
    )
    bad, grad = _steady_state(focal_loss, x, target, **kwargs)
    assert bad == []
    assert grad.shape == x.shape


@pytest.mark.parametrize("kwargs", SIGMOID_CALLS, ids=str)
@pytest.mark.parametrize("kind", ["index", "float"])
def test_sigmoid_training_call_reads_nothing(kwargs, kind, no_checks):
    kwargs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    x = _meta(4, 3, 5)
    target = (
        torch.empty(4, 5, device="meta", dtype=torch.long) if kind == "index" else _meta(4, 3, 5)
    )
    if kind == "index":
        kwargs["ignore_index"] = -1
    bad, grad = _steady_state(sigmoid_focal_loss, x, target, **kwargs)
    assert bad == []
    assert grad.shape == x.shape


def test_modules_read_nothing(no_checks):
    softmax = FocalLoss(alpha=[0.2, 0.3, 0.5], weight=[1.0, 1.0, 2.0]).to("meta")
    sigmoid = SigmoidFocalLoss(alpha=0.25, normalizer=3.0).to("meta")
    x = _meta(2, 3, 4)
    target = torch.empty(2, 4, device="meta", dtype=torch.long)
    with no_host_tensors(), Probe() as probe:
        _step(softmax, x, target)
        _step(sigmoid, x, target)
    assert probe.bad == []


LINEAR_CALLS = [
    dict(),
    dict(alpha=[0.5] * 11, weight=[2.0] * 11, label_smoothing=0.1, chunk_size=4),
    dict(poly1_epsilon=1.0, z_loss=1e-4, logit_softcap=30.0, reduction="sum"),
    dict(gamma=GammaSchedule.flsd53(), ignore_index=3),
    dict(ignore_index=None),
]


@pytest.mark.parametrize("kwargs", LINEAR_CALLS, ids=str)
def test_linear_training_call_reads_nothing(kwargs, no_checks):
    """linear_focal_loss (chunked PyTorch path): forward and the three gradients."""

    def step():
        hidden = _meta(6, 8).requires_grad_()
        classifier = _meta(11, 8).requires_grad_()
        bias = _meta(11).requires_grad_()
        target = torch.empty(6, device="meta", dtype=torch.long)
        linear_focal_loss(hidden, classifier, target, bias, **kwargs).backward()
        return hidden.grad, classifier.grad, bias.grad

    step()  # a first call may build cached per-class vectors once
    with no_host_tensors(), Probe() as probe:
        grads = step()
    assert probe.bad == []
    assert [g.shape for g in grads] == [(6, 8), (11, 8), (11,)]


def test_the_probe_sees_a_synchronisation():
    """The probe can fail: an .item() and a host tensor copy are caught."""
    x = torch.ones(3)
    with Probe() as probe:
        x.sum().item()
        torch.tensor([1.0, 2.0]).to("meta")
    assert "aten._local_scalar_dense.default" in probe.bad
    assert any("from the host" in b for b in probe.bad)
    with no_host_tensors(), pytest.raises(AssertionError, match="device=meta"):
        torch.tensor([1.0], device="meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_graph_capture(backend):
    """Forward and backward of the loss captured in a CUDA graph and replayed."""
    if backend == "triton":
        pytest.importorskip("triton")
    previous = focalloss.set_value_checks(False)
    try:
        x = torch.randn(8, 19, 64, 64, device="cuda", requires_grad=True)
        t = torch.randint(0, 19, (8, 64, 64), device="cuda")
        t[:, :4] = 255
        kwargs = dict(gamma=2.0, ignore_index=255, alpha=[0.5] * 19, backend=backend)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the capture (allocations, caches)
                x.grad = None
                focal_loss(x, t, **kwargs).backward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        x.grad = None
        with torch.cuda.graph(graph):
            loss = focal_loss(x, t, **kwargs)
            loss.backward()
        x.data.normal_()
        graph.replay()
        torch.cuda.synchronize()
        leaf = x.detach().clone().requires_grad_()
        expected = focal_loss(leaf, t, **{**kwargs, "backend": "torch"})
        expected.backward()
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad, leaf.grad, rtol=1e-5, atol=1e-6)
    finally:
        focalloss.set_value_checks(previous)
