"""dtype x memory-layout matrix of the four entry points (PyTorch backend).

``focal_loss``, ``FocalLoss``, ``sigmoid_focal_loss`` and ``SigmoidFocalLoss`` run on float64,
float32, float16 and bfloat16 logits in every layout below, with targets, per-class vectors and
broadcast weights in non-contiguous layouts too. Each case checks:

* the documented dtypes: the loss is float64 for float64 logits and float32 otherwise ("half
  inputs are computed in float32: the loss is float32"), the gradient has the input's dtype;
* loss and input gradient against the float64 references of ``tests/refs.py`` (float64,
  float32), or against the same call on the upcast logits ``x.float()`` (float16, bfloat16),
  whose own result is checked against the reference;
* loss and gradient against the same call on contiguous copies of every tensor argument;
* the returned gradient is a dense tensor of its own (no stride 0, no gaps, no storage shared
  with the input), and no argument is written to: the whole storage behind the input, the
  target and the weights, the skipped elements of a strided slice included, is unchanged.

Skipped elements of strided slices hold NaN (floating tensors) or the out-of-range class 77
(targets), so reading through the wrong strides shows up as a NaN or an error.

The library documents nothing about the *layout* of the gradient it returns, so that is not
asserted beyond the above. (Observed on the CPU: for dense permuted inputs such as
channels_last, the softmax loss returns a row-major gradient, because the CPU ``log_softmax``
writes row-major; the sigmoid loss returns the input's layout when the target shares it.
autograd's AccumulateGrad copies a row-major gradient into the input's layout for ``.grad``.)

The modules forward to the functions; they run through the whole dtype x layout matrix with
a quarter of the option cases (MODULE_CASES).
"""

from __future__ import annotations

import copy
import zlib

import pytest
import torch
from torch import Tensor, nn

from focalloss import FocalLoss, SigmoidFocalLoss, focal_loss, sigmoid_focal_loss
from refs import one_hot_with_background, sigmoid_focal_ref, softmax_focal_ref

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
HALF = (torch.float16, torch.bfloat16)

# Tolerances (rtol, atol); atol is a fraction of the largest |expected| entry, so it only
# matters for entries far below the tensor's scale (cancellation, tiny probabilities).
#
# REF_TOL: float64 and float32 results against the float64 references of tests/refs.py.
REF_TOL = {
    torch.float64: {"loss": (1e-9, 1e-12), "grad": (1e-9, 1e-12)},
    torch.float32: {"loss": (1e-5, 1e-7), "grad": (1e-5, 1e-6)},
}
# HALF_TOL: float16/bfloat16 results against the same call on x.float(). The library computes
# half inputs in float32 (documented), so the float32 loss must agree to float32 accuracy: a
# computation carried out in the half dtype would be off by ~1e-3 (float16) or ~1e-2
# (bfloat16) and fail. The gradient is returned in the half dtype: rounded once, and for
# reduction="none" grad_output is rounded to it and multiplied in it as well, so it may be off
# by ~3 units of rounding, u = 2^-11 (float16) or 2^-8 (bfloat16): rtol 2e-3 and 1.6e-2, and
# float16's subnormals (below 6.1e-5, spacing 6e-8) need a small absolute floor.
HALF_TOL = {
    torch.float16: {"loss": (1e-5, 1e-7), "grad": (2e-3, 1e-5)},
    torch.bfloat16: {"loss": (1e-5, 1e-7), "grad": (1.6e-2, 1e-6)},
}
# float16 has subnormals below 6.1e-5 (spacing 2^-24 = 6e-8): there a gradient entry rounded to
# float16 (and, for reduction="none", multiplied by the rounded grad_output) is off by up to
# ~6e-8 in absolute terms, whatever its size; comparisons of float16 tensors allow that.
ABS_FLOOR = {torch.float16: 1e-7}
# LAYOUT_TOL: any layout against contiguous copies of the same tensors, same dtype. Only the
# order of floating-point sums may differ (e.g. log_softmax over a strided class dimension):
# a few units of the computation's rounding, and one unit of the half dtype's rounding of the
# gradient (a float32 value that moves across a rounding boundary).
LAYOUT_TOL = {
    torch.float64: {"loss": (1e-12, 1e-14), "grad": (1e-12, 1e-14)},
    torch.float32: {"loss": (2e-6, 1e-7), "grad": (2e-6, 1e-7)},
    torch.float16: {"loss": (2e-6, 1e-7), "grad": (1e-3, 1e-5)},
    torch.bfloat16: {"loss": (2e-6, 1e-7), "grad": (8e-3, 1e-6)},
}
# AUTOCAST_TOL: a bfloat16 Conv2d head under CPU autocast against the same head in float32.
# Features, conv weights and logits are rounded to bfloat16 (relative 2^-9 = 2e-3 each), so
# the loss may move by about one such unit; the conv weights' gradient sums products of
# bfloat16-rounded operands (its loss gradient rounded too), so ~4 units u = 2^-8 relative to
# its largest entry. (Observed: loss <= 1.5e-3, gradients <= 6e-3 of the largest entry.)
AUTOCAST_TOL = {"loss": (5e-3, 0.0), "grad": (1e-2, 1.5e-2)}


# ------------------------------------------------------------------------------------------
# Layouts. Each builds a tensor with the given values (stride-0 batch: batch 0's values) in
# the named layout; "x" for input-shaped tensors (logits, probabilities, float labels), "t"
# for index-shaped ones (class-index targets, shape (N, d1, ...)).
# ------------------------------------------------------------------------------------------


def _strided(t: Tensor, dim: int) -> Tensor:
    """``t`` as every other element (from offset 1) of a larger buffer along ``dim``; the
    skipped elements hold NaN, or the out-of-range class 77 for integer tensors."""
    shape = list(t.shape)
    shape[dim] = 2 * shape[dim] + 1
    fill = float("nan") if t.is_floating_point() else 77
    big = torch.full(shape, fill, dtype=t.dtype)
    index = [slice(None)] * t.dim()
    index[dim] = slice(1, None, 2)
    view = big[tuple(index)]
    view.copy_(t)
    return view


def _stored_as(t: Tensor, order: tuple[int, ...]) -> Tensor:
    """``t`` with its dimensions stored in ``order`` (outermost first): a permuted view of a
    contiguous tensor."""
    inverse = [order.index(d) for d in range(t.dim())]
    return t.permute(order).contiguous().permute(inverse)


def _reversed(t: Tensor) -> Tensor:
    return _stored_as(t, tuple(range(t.dim() - 1, -1, -1)))


def _batch_stride0(t: Tensor) -> Tensor:
    return t[:1].expand(t.shape)


SHAPE_4D, SHAPE_5D, SHAPE_2D = (2, 3, 5, 4), (2, 3, 3, 4, 5), (6, 5)

# name: (logits shape, layout of input-shaped tensors, layout of index-shaped targets)
LAYOUTS = {
    "contiguous": (SHAPE_4D, lambda x: x.contiguous(), lambda t: t.contiguous()),
    "strided-last-dim": (SHAPE_4D, lambda x: _strided(x, -1), lambda t: _strided(t, -1)),
    "strided-class-dim": (SHAPE_4D, lambda x: _strided(x, 1), lambda t: _strided(t, 0)),
    # an (N, W, H, C) tensor viewed as (N, C, H, W): H and W cannot share one stride
    "NWHC-permuted": (
        SHAPE_4D,
        lambda x: _stored_as(x, (0, 3, 2, 1)),
        lambda t: _stored_as(t, (0, 2, 1)),
    ),
    "channels_last": (
        SHAPE_4D,
        lambda x: x.contiguous(memory_format=torch.channels_last),
        _reversed,
    ),
    "batch-stride0": (SHAPE_4D, _batch_stride0, _batch_stride0),
    "channels_last_3d": (
        SHAPE_5D,
        lambda x: x.contiguous(memory_format=torch.channels_last_3d),
        _reversed,
    ),
    "reversed-5d": (SHAPE_5D, _reversed, lambda t: _strided(t, 1)),
    "strided-5d": (SHAPE_5D, lambda x: _strided(x, 3), lambda t: _strided(t, -1)),
    # (N, C) stored as (C, N): the classes of a row are N apart
    "transposed-2d": (SHAPE_2D, lambda x: _stored_as(x, (1, 0)), lambda t: _strided(t, 0)),
}


def _class_vector(values: list[float], spec: str):
    """A per-class vector in the layout ``spec`` (``stride0`` keeps only the first value)."""
    if spec == "list":
        return values
    if spec == "contig64":
        return torch.tensor(values, dtype=torch.float64)
    tensor = torch.tensor(values, dtype=torch.float32)
    if spec == "contig":
        return tensor
    if spec == "strided":
        return _strided(tensor, 0)
    if spec == "stride0":
        return tensor[:1].expand(len(values))
    raise AssertionError(spec)


def _linspace(lo: float, hi: float, n: int) -> list[float]:
    return torch.linspace(lo, hi, n, dtype=torch.float64).tolist()


# ------------------------------------------------------------------------------------------
# Cases: (target kind, gamma, reduction, options); the test id is built from them. Per-class
# vectors are named by layout: "contig" (float32), "contig64" (float64), "strided" (every other
# element of a NaN-filled buffer), "stride0" (one value expanded to (C,)), "list" (Python
# numbers). Index targets hold ~25% ignored positions (-100 unless ignore_index says otherwise;
# none for ignore_index=None).
# ------------------------------------------------------------------------------------------

SOFTMAX_CASES = [
    ("index", 2.0, "mean", dict(ignore_index=255)),
    ("index", 0.5, "sum", dict(weight="strided", alpha="stride0")),
    ("index", 2.0, "none", dict(ignore_index=255, label_smoothing=0.1, weight="stride0")),
    ("uint8", 1.0, "mean", dict(ignore_index=255, alpha="list", weight="strided")),
    ("index", 0.0, "mean", dict(ignore_index=None, weight="contig64")),
    ("prob", 1.0, "mean", dict(alpha="strided")),
    ("prob", 2.0, "none", dict(label_smoothing=0.2, weight="strided")),
    ("prob", 0.5, "sum", dict(weight="contig64", alpha="contig")),
]  # fmt: skip

# Sigmoid options: weight "expanded" ((1, C, 1, ...) expanded to the input's shape, stride 0),
# "perclass" / "perclass64" ((C, 1, ...): broadcast, float32 / float64), "strided" (the
# input's shape, a strided slice); pos_weight (the last dimension's size) "contig",
# "strided", "stride0"; alpha a number, None or "vector" (C values in [0, 1]). Index targets
# take values in [0, C], C being the background, and ~25% ignore_index when one is given.
SIGMOID_CASES = [
    ("binary", 2.0, "mean", dict(alpha=0.25)),
    ("soft", 0.5, "sum", dict(alpha=0.4, weight="expanded", pos_weight="strided")),
    ("binary", 1.0, "none", dict(alpha=None, weight="perclass")),
    ("soft", 2.0, "mean", dict(alpha="vector", weight="strided")),
    ("index", 2.0, "mean", dict(alpha=0.25, ignore_index=-1)),
    ("index", 2.0, "none", dict(ignore_index=255, alpha="vector", weight="expanded",
                                pos_weight="stride0")),
    ("index", 0.0, "sum", dict(alpha=0.25, weight="perclass")),
    ("uint8", 1.5, "mean", dict(alpha=0.25, ignore_index=255, pos_weight="contig",
                                normalizer=3.0)),
]  # fmt: skip

_SHORT = dict(ignore_index="ignore", label_smoothing="ls", pos_weight="posw", normalizer="norm")


def _case_id(case) -> str:
    kind, gamma, reduction, options = case
    parts = [kind, f"gamma{gamma:g}", reduction]
    parts += [f"{_SHORT.get(k, k)}={v}" for k, v in options.items()]
    return "-".join(parts)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: one intra-op thread. With several, every parallel kernel
    waits for all threads, which on a busy 2-core machine turns microseconds into milliseconds
    (and the ~860 cases here into minutes). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def _index_target(index_shape, num_classes, ignore_value, generator, dtype=torch.int64):
    """Classes in [0, num_classes) with ~25% of the positions at ``ignore_value`` (if any),
    the first position always valid."""
    t = torch.randint(0, num_classes, index_shape, generator=generator)
    if ignore_value is not None:
        ignored = torch.rand(index_shape, generator=generator) < 0.25
        ignored.view(-1)[0] = False
        t[ignored] = ignore_value
    return t.to(dtype)


def _softmax_case(case, shape, dtype, generator):
    """(target, keyword arguments) of a softmax case, before the layout is applied."""
    kind, gamma, reduction, options = case
    num_classes = shape[1]
    index_shape = shape[:1] + shape[2:]
    kw = dict(gamma=gamma, reduction=reduction)
    for key, value in options.items():
        if key == "weight":
            value = _class_vector(_linspace(0.5, 2.0, num_classes), value)
        elif key == "alpha":
            value = _class_vector(_linspace(0.9, 0.2, num_classes), value)
        kw[key] = value
    if kind == "prob":
        target = torch.softmax(2 * torch.randn(shape, generator=generator), dim=1).to(dtype)
    else:
        ignore = kw.get("ignore_index", -100)
        target_dtype = torch.uint8 if kind == "uint8" else torch.int64
        target = _index_target(index_shape, num_classes, ignore, generator, target_dtype)
    return target, kw


def _sigmoid_case(case, shape, dtype, generator):
    """(target, keyword arguments) of a sigmoid case, before the layout is applied."""
    kind, gamma, reduction, options = case
    num_classes, ndim = shape[1], len(shape)
    per_class = (num_classes,) + (1,) * (ndim - 2)
    kw = dict(gamma=gamma, reduction=reduction)
    for key, value in options.items():
        if key == "alpha" and value in ("vector", "vector64"):
            dtype_ = torch.float64 if value == "vector64" else torch.float32
            value = torch.tensor(_linspace(0.2, 0.8, num_classes), dtype=dtype_)
        elif key == "weight":
            values = torch.tensor(_linspace(0.5, 2.0, num_classes))
            if value == "expanded":
                value = values.view((1, *per_class)).expand(shape)
            elif value == "perclass":
                value = values.view(per_class)
            elif value == "perclass64":
                value = values.double().view(per_class)
            else:
                assert value == "strided"
                value = _strided(torch.rand(shape, generator=generator) + 0.5, -1)
        elif key == "pos_weight":
            values = _linspace(0.5, 3.0, shape[-1])
            value = _class_vector(values, value)
        kw[key] = value
    if kind == "binary":
        target = (torch.rand(shape, generator=generator) < 0.4).to(dtype)
    elif kind == "soft":
        target = torch.rand(shape, generator=generator).to(dtype)
    else:
        target_dtype = torch.uint8 if kind == "uint8" else torch.int64
        # num_classes + 1 values: the last one is the background (all outputs negative)
        target = _index_target(
            shape[:1] + shape[2:], num_classes + 1, kw.get("ignore_index"), generator, target_dtype
        )
    return target, kw


# ------------------------------------------------------------------------------------------
# References and helpers
# ------------------------------------------------------------------------------------------


def _sigmoid_expected(
    x,
    t,
    *,
    gamma,
    reduction,
    alpha,
    weight=None,
    pos_weight=None,
    ignore_index=None,
    normalizer=None,
):
    """The float64 reference of sigmoid_focal_loss, class-index targets included: the float
    one-hot version (class C = background) with ignored positions removed."""
    if t.is_floating_point():
        labels, keep = t, None
        count = float(x.numel())
    else:
        num_classes = x.shape[1]
        t = t.long()
        keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
        labels = one_hot_with_background(torch.where(keep, t, num_classes), num_classes)
        count = float(keep.sum()) * num_classes
    loss = sigmoid_focal_ref(
        x, labels, gamma=gamma, alpha=alpha, weight=weight, pos_weight=pos_weight
    )
    if keep is not None:
        loss = loss * keep.unsqueeze(1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (count if normalizer is None else max(float(normalizer), 1.0))


def _softmax_expected(x, t, **kw):
    return softmax_focal_ref(x, t, **kw)


def _module_call(module_type):
    def call(x, t, **kw):
        return module_type(**kw)(x, t)

    return call


# family: (case builder, float64 reference, entry points)
FAMILIES = {
    "softmax": (
        _softmax_case,
        _softmax_expected,
        {"focal_loss": focal_loss, "FocalLoss": _module_call(FocalLoss)},
    ),
    "sigmoid": (
        _sigmoid_case,
        _sigmoid_expected,
        {
            "sigmoid_focal_loss": sigmoid_focal_loss,
            "SigmoidFocalLoss": _module_call(SigmoidFocalLoss),
        },
    ),
}


def _loss_and_grad(fn, x: Tensor, t: Tensor, kw: dict, grad_output: Tensor | None):
    """The loss and the gradient the library returns for ``x`` (``torch.autograd.grad`` hands
    it back as computed, without AccumulateGrad's copy into the input's layout)."""
    x = x.detach().requires_grad_()
    loss = fn(x, t, **kw)
    go = None if grad_output is None else grad_output.to(loss.dtype)
    (grad,) = torch.autograd.grad(loss, x, go)
    return loss.detach(), grad


def _contiguous(kw: dict) -> dict:
    return {k: v.contiguous() if isinstance(v, Tensor) else v for k, v in kw.items()}


def _storage_bytes(t: Tensor) -> Tensor:
    """Every byte of the storage behind ``t`` (the skipped elements of a view included)."""
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).clone()


def _is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the strides are a permutation of a contiguous tensor's."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _assert_close(actual: Tensor, expected: Tensor, tol: tuple[float, float], what: str):
    rtol, atol = tol
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.to(expected.dtype),
        expected,
        rtol=rtol,
        atol=max(atol * scale, ABS_FLOOR.get(actual.dtype, 0.0)),
        equal_nan=False,
        msg=lambda m: f"{what}:\n{m}",
    )


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------------------------------
# The matrix
# ------------------------------------------------------------------------------------------

# The option cases the modules also run (they forward to the functions): index and
# probability targets, per-class vectors in strided and stride-0 layouts, "none" with a
# grad_output, class-index sigmoid targets with a normalizer.
MODULE_CASES = [SOFTMAX_CASES[1], SOFTMAX_CASES[6], SIGMOID_CASES[5], SIGMOID_CASES[7]]
MATRIX = [
    (family, entry, case)
    for family, (_, _, entries) in FAMILIES.items()
    for entry in entries
    for case in (SOFTMAX_CASES if family == "softmax" else SIGMOID_CASES)
    if entry in ("focal_loss", "sigmoid_focal_loss") or case in MODULE_CASES
]


@pytest.mark.parametrize(
    ("family", "entry", "case"), MATRIX, ids=[f"{e}-{_case_id(c)}" for _, e, c in MATRIX]
)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_dtype_layout_matrix(dtype, layout, family, entry, case):
    _check(dtype, layout, family, entry, case)


# Per-class and broadcast options given as float64 tensors (weights computed in float64 or
# loaded from NumPy, say) with float32 or half logits: the computation, and so the loss, stays
# in the logits' dtype (float32 for half logits, as documented), whatever the options' dtype.
FLOAT64_OPTION_CASES = [
    ("softmax", "index", 0.0, "mean", dict(ignore_index=255, weight="contig64", alpha="contig64")),
    ("softmax", "index", 2.0, "none", dict(label_smoothing=0.1, weight="contig64",
                                           alpha="contig64")),
    ("softmax", "prob", 2.0, "sum", dict(weight="contig64", alpha="contig64")),
    ("sigmoid", "soft", 0.0, "mean", dict(alpha="vector64", weight="perclass64",
                                          pos_weight="contig64")),
    ("sigmoid", "binary", 2.0, "none", dict(alpha=0.25, weight="perclass64",
                                            pos_weight="contig64")),
    ("sigmoid", "index", 2.0, "sum", dict(alpha=0.25, ignore_index=-1, weight="perclass64",
                                          pos_weight="contig64")),
    ("sigmoid", "index", 0.0, "sum", dict(alpha=None, weight="perclass64")),
    ("sigmoid", "index", 0.0, "sum", dict(alpha=0.25, weight="perclass64")),
    ("sigmoid", "index", 0.0, "mean", dict(alpha="vector64", ignore_index=-1, weight="perclass64")),
]  # fmt: skip
FLOAT64_OPTION_MATRIX = [
    (family, entry, tuple(case))
    for family, *case in FLOAT64_OPTION_CASES
    for entry in FAMILIES[family][2]
]


@pytest.mark.parametrize(
    ("family", "entry", "case"),
    FLOAT64_OPTION_MATRIX,
    ids=[f"{e}-{_case_id(c)}" for _, e, c in FLOAT64_OPTION_MATRIX],
)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=_dtype_id)
def test_float64_options_keep_the_computation_dtype(dtype, family, entry, case):
    _check(dtype, "contiguous", family, entry, case)


def _check(dtype, layout, family, entry, case):
    """Run one case of the matrix and check everything listed in the module docstring."""
    build_case, expected_fn, entries = FAMILIES[family]
    fn = entries[entry]
    shape, x_layout, t_layout = LAYOUTS[layout]
    g = torch.Generator().manual_seed(_seed(dtype, layout, family, _case_id(case)))
    values = (2 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    x = x_layout(values)
    target, kw = build_case(case, shape, dtype, g)
    t = x_layout(target) if target.shape == shape else t_layout(target)
    reduction = kw["reduction"]
    loss_shape = shape if family == "sigmoid" else shape[:1] + shape[2:]
    go = torch.randn(loss_shape, generator=g, dtype=torch.float64) if reduction == "none" else None

    arguments = [x, t, *(v for v in kw.values() if isinstance(v, Tensor))]
    before = [_storage_bytes(a) for a in arguments]
    loss, grad = _loss_and_grad(fn, x, t, kw, go)

    # Documented dtypes and shapes.
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype
    assert loss.shape == (loss_shape if reduction == "none" else ())
    assert grad.shape == x.shape
    assert bool(torch.isfinite(loss).all())
    assert bool(torch.isfinite(grad).all())
    # A gradient of its own, dense; the arguments untouched (skipped storage included).
    assert _is_dense(grad), grad.stride()
    assert grad.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    for i, (a, b) in enumerate(zip(arguments, before, strict=True)):
        assert torch.equal(_storage_bytes(a), b), f"argument {i} (0: input, 1: target) modified"

    # The same call on contiguous copies.
    loss_c, grad_c = _loss_and_grad(fn, x.contiguous(), t.contiguous(), _contiguous(kw), go)
    _assert_close(loss, loss_c, LAYOUT_TOL[dtype]["loss"], "loss vs contiguous copies")
    _assert_close(grad, grad_c, LAYOUT_TOL[dtype]["grad"], "grad vs contiguous copies")

    # The float64 reference; half dtypes through the upcast float32 call.
    xr = x.detach().double().requires_grad_()
    ref = expected_fn(xr, t, **kw)
    (ref_grad,) = torch.autograd.grad(ref, xr, go)
    if dtype in HALF:
        loss32, grad32 = _loss_and_grad(fn, x.float(), t, kw, go)
        _assert_close(loss, loss32, HALF_TOL[dtype]["loss"], "loss vs upcast float32")
        _assert_close(grad, grad32, HALF_TOL[dtype]["grad"], "grad vs upcast float32")
        loss, grad, dtype = loss32, grad32, torch.float32
    _assert_close(loss, ref.detach(), REF_TOL[dtype]["loss"], f"{dtype} loss vs reference")
    _assert_close(grad, ref_grad, REF_TOL[dtype]["grad"], f"{dtype} grad vs reference")


# ------------------------------------------------------------------------------------------
# Autocast on the CPU: a bfloat16 Conv2d head feeding the loss
# ------------------------------------------------------------------------------------------


def _focal_loss_smoothed(x, t):
    return focal_loss(x, t, label_smoothing=0.1)


# name: (criterion, target kind, ignored value)
AUTOCAST_CASES = {
    "focal_loss": (focal_loss, "index", -100),
    "FocalLoss": (FocalLoss(gamma=2.0, weight=[0.5, 1.0, 2.0], ignore_index=255), "index", 255),
    "focal_loss-prob-smoothing": (_focal_loss_smoothed, "prob", None),
    "sigmoid_focal_loss": (sigmoid_focal_loss, "binary", None),
    "SigmoidFocalLoss-index": (
        SigmoidFocalLoss(alpha=0.25, ignore_index=255),
        "sigmoid-index",
        255,
    ),
}


@pytest.mark.parametrize("name", list(AUTOCAST_CASES))
def test_autocast_bfloat16_conv_head(name):
    criterion, kind, ignore = AUTOCAST_CASES[name]
    g = torch.Generator().manual_seed(_seed("autocast", name))
    num_classes = 3
    head = nn.Conv2d(4, num_classes, kernel_size=3, padding=1)
    with torch.no_grad():
        head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=g))
        head.bias.copy_(torch.randn(num_classes, generator=g))
    head32 = copy.deepcopy(head)
    features = torch.randn(2, 4, 6, 5, generator=g)
    if kind == "index":
        target = _index_target((2, 6, 5), num_classes, ignore, g)
    elif kind == "sigmoid-index":
        target = _index_target((2, 6, 5), num_classes + 1, ignore, g)
    elif kind == "prob":
        target = torch.softmax(torch.randn(2, num_classes, 6, 5, generator=g), dim=1)
    else:
        target = (torch.rand(2, num_classes, 6, 5, generator=g) < 0.3).float()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(features)
        loss = criterion(logits, target)
    assert logits.dtype == torch.bfloat16  # the conv ran in bfloat16 ...
    assert loss.dtype == torch.float32  # ... and the loss of half logits is float32 (documented)
    assert torch.isfinite(loss)
    logits.retain_grad()
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16

    # Autocast changes nothing inside the loss: the same bfloat16 logits upcast to float32,
    # without autocast, give the same loss and (up to the bfloat16 rounding) logits gradient.
    plain, plain_grad = _loss_and_grad(criterion, logits.detach().float(), target, {}, None)
    _assert_close(loss.detach(), plain, HALF_TOL[torch.bfloat16]["loss"], "autocast vs plain")
    _assert_close(logits.grad, plain_grad, HALF_TOL[torch.bfloat16]["grad"], "autocast grad")

    loss32 = criterion(head32(features), target)
    loss32.backward()
    assert head.weight.grad.dtype == torch.float32
    _assert_close(loss.detach(), loss32.detach(), AUTOCAST_TOL["loss"], "autocast loss")
    for p, p32 in [(head.weight, head32.weight), (head.bias, head32.bias)]:
        assert bool(torch.isfinite(p.grad).all())
        _assert_close(p.grad, p32.grad, AUTOCAST_TOL["grad"], "autocast conv gradient")
