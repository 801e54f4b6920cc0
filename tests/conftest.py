"""Test collection: the Triton kernel tests run directly only where they can run."""

from __future__ import annotations

import os

import torch

# On CUDA machines, or with TRITON_INTERPRET=1 set for this process, tests/triton_interp runs
# directly; otherwise tests/test_triton_backend.py runs it in a child process under the
# interpreter (the variable must be set before triton is imported).
collect_ignore = []
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
    collect_ignore.append("triton_interp")
