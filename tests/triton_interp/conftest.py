"""The Triton kernel tests run on CUDA, or on the CPU in Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported, so outside CUDA machines these
tests run in their own process (``tests/test_triton_backend.py`` starts it); collected in a
process without either, they are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_collection_modifyitems(config, items):
    reason = None
    if not HAS_TRITON:
        reason = "Triton is not installed"
    elif DEVICE == "cpu" and not INTERPRETING:
        reason = "no CUDA device; run with TRITON_INTERPRET=1 (tests/test_triton_backend.py does)"
    if reason is None:
        return
    for item in items:
        if "triton_interp" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def device() -> str:
    return DEVICE
