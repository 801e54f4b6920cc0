"""The property-based tests of ``tests/properties.py`` on the Triton kernels.

On CUDA with the default profile; in Triton's interpreter (CPU) with fewer examples, since each
launch takes tens of milliseconds there.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import properties as P

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
settings.load_profile("focalloss" if DEVICE == "cuda" else "focalloss-interpreter")
BACKEND = "triton"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter


@given(P.softmax_cases())
def test_softmax_gamma0_equals_cross_entropy(case):
    P.softmax_gamma0_equals_cross_entropy(case.to(DEVICE), BACKEND)


@given(P.softmax_cases(), st.floats(-50, 50))
def test_softmax_finite_nonnegative_monotone_shift_invariant(case, shift):
    P.softmax_finite_nonnegative_monotone_shift_invariant(case.to(DEVICE), shift, BACKEND)


@given(P.softmax_cases(), st.integers(0, 2**16))
def test_softmax_ignored_positions_do_not_matter(case, seed):
    P.softmax_ignored_positions_do_not_matter(case.to(DEVICE), seed, BACKEND)


@given(P.softmax_cases(), st.floats(0.1, 10.0))
def test_softmax_weight_scaling(case, c):
    P.softmax_weight_scaling(case.to(DEVICE), c, BACKEND)


@given(P.softmax_cases())
def test_softmax_batch_split(case):
    P.softmax_batch_split(case.to(DEVICE), BACKEND)


@given(P.softmax_cases())
def test_softmax_permutations(case):
    P.softmax_permutations(case.to(DEVICE), BACKEND)


@given(st.integers(1, 4), st.integers(0, 2**16), st.sampled_from([0.0, 0.5, 2.0]), st.floats(0, 1))
def test_two_class_softmax_equals_sigmoid(n, seed, gamma, a):
    P.two_class_softmax_equals_sigmoid(n, seed, gamma, a, BACKEND, DEVICE)


@given(P.sigmoid_cases())
def test_sigmoid_gamma0_equals_bce(case):
    P.sigmoid_gamma0_equals_bce(case.to(DEVICE), BACKEND)


@given(P.sigmoid_cases())
def test_sigmoid_finite_nonnegative_monotone(case):
    P.sigmoid_finite_nonnegative_monotone(case.to(DEVICE), BACKEND)


@given(P.sigmoid_cases(index=True), st.integers(0, 2**16))
def test_sigmoid_ignored_positions_do_not_matter(case, seed):
    P.sigmoid_ignored_positions_do_not_matter(case.to(DEVICE), seed, BACKEND)


@given(P.sigmoid_cases(), st.floats(0.1, 10.0))
def test_sigmoid_weight_scaling(case, c):
    P.sigmoid_weight_scaling(case.to(DEVICE), c, BACKEND)


@given(P.sigmoid_cases())
def test_sigmoid_batch_split_and_permutations(case):
    P.sigmoid_batch_split_and_permutations(case.to(DEVICE), BACKEND)


@given(P.sigmoid_cases())
def test_sigmoid_symmetry(case):
    P.sigmoid_symmetry(case.to(DEVICE), BACKEND)
