"""Backend selection, and the Triton kernel tests run in Triton's interpreter on the CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focalloss import FocalLoss, focal_loss, sigmoid_focal_loss

HERE = Path(__file__).resolve().parent
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the kernel tests run directly")
def test_kernels_in_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "FOCALLOSS_BACKEND": "auto"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(HERE / "triton_interp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary and "skipped" not in summary, summary


def test_backend_validation_and_messages(monkeypatch):
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    with pytest.raises(
        ValueError, match=r"backend: expected one of \('auto', 'torch', 'triton'\), got 'cuda'"
    ):
        focal_loss(x, t, backend="cuda")
    with pytest.raises(ValueError, match="backend: expected one of"):
        FocalLoss(backend="fast")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        message = (
            "needs CUDA tensors, got input on cpu" if HAS_TRITON else "Triton is not installed"
        )
        with pytest.raises(RuntimeError, match=message):
            focal_loss(x, t, backend="triton")
        with pytest.raises(RuntimeError, match=message):
            sigmoid_focal_loss(x, t, backend="triton")
    # "auto" on the CPU quietly uses PyTorch.
    torch.testing.assert_close(focal_loss(x, t), focal_loss(x, t, backend="torch"))
    monkeypatch.setenv("FOCALLOSS_BACKEND", "torch")
    torch.testing.assert_close(focal_loss(x, t), focal_loss(x, t, backend="torch"))
    monkeypatch.setenv("FOCALLOSS_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"FOCALLOSS_BACKEND: expected one of .* got 'gpu'"):
        focal_loss(x, t)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_probability_targets_are_not_for_the_kernel(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # only to pass the device check here
    x = torch.randn(4, 3)
    p = torch.softmax(torch.randn(4, 3), 1)
    with pytest.raises(ValueError, match="backend='triton' does not support probability targets"):
        focal_loss(x, p, backend="triton")
