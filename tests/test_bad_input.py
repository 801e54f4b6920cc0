"""Bad input through every public entry point, and the documented handling of NaN/inf logits.

The per-argument tables of ``test_validation.py`` (softmax) and ``test_sigmoid_validation.py``
(sigmoid) are run here through the modules too, next to the cases they do not cover: tensors
that require grad where only the logits are differentiated, sparse tensors, probabilities out
of range, arguments on another device. Every error names the argument, the expectation and the
value; the module raises the same error, at construction or at the call.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import focalloss
from focalloss import FocalLoss, SigmoidFocalLoss, focal_loss, sigmoid_focal_loss
from test_sigmoid_validation import CASES as SIGMOID_TABLE
from test_validation import CASES as SOFTMAX_TABLE

X = torch.randn(4, 3, 5)
T = torch.randint(0, 3, (4, 5))
P = torch.softmax(torch.randn(4, 3, 5), 1)
L = torch.rand(4, 3, 5)  # sigmoid float labels
I = torch.randint(0, 4, (4, 5))  # noqa: E741  sigmoid class indices (3 = background)
GRAD = torch.ones(3, requires_grad=True)
META = "meta"

# (id, loss, input, target, kwargs, exception, message regex, also through the module)
# The requires-grad cases are function-only: a module copies its configuration into buffers.
CASES = [
    (
        "softmax prob target requires grad",
        "softmax",
        X,
        P.clone().requires_grad_(),
        {},
        ValueError,
        r"target: expected a tensor that does not require grad .* pass target.detach\(\)",
        True,
    ),
    (
        "softmax weight requires grad",
        "softmax",
        X,
        T,
        dict(weight=GRAD),
        ValueError,
        r"weight: expected a tensor that does not require grad",
        False,
    ),
    (
        "softmax alpha requires grad",
        "softmax",
        X,
        T,
        dict(alpha=GRAD),
        ValueError,
        r"alpha: expected a tensor that does not require grad",
        False,
    ),
    (
        "softmax sparse input",
        "softmax",
        X.to_sparse(),
        T,
        {},
        TypeError,
        r"input: expected a dense \(strided\) tensor, got layout torch.sparse_coo",
        True,
    ),
    (
        "softmax sparse target",
        "softmax",
        X,
        T.to_sparse(),
        {},
        TypeError,
        r"target: expected a dense \(strided\) tensor, got layout torch.sparse_coo",
        True,
    ),
    (
        "softmax probabilities negative",
        "softmax",
        X,
        P - 0.5,
        {},
        ValueError,
        r"target: class probabilities must lie in \[0, 1\], got -0\.",
        True,
    ),
    (
        "softmax probabilities above 1",
        "softmax",
        X,
        P + 1.0,
        {},
        ValueError,
        r"target: class probabilities must lie in \[0, 1\], got 1\.",
        True,
    ),
    (
        "softmax probabilities nan",
        "softmax",
        X,
        P * math.nan,
        {},
        ValueError,
        r"target: class probabilities must lie in \[0, 1\], got nan",
        True,
    ),
    (
        "softmax alpha device",
        "softmax",
        X,
        T,
        dict(alpha=torch.ones(3, device=META)),
        ValueError,
        r"alpha: expected a tensor on the input's device cpu, got one on meta",
        True,
    ),
    (
        "softmax input on other device",
        "softmax",
        X.to(META),
        T,
        {},
        ValueError,
        r"target: expected a tensor on the input's device meta, got one on cpu",
        True,
    ),
    (
        "softmax complex input",
        "softmax",
        X.to(torch.complex64),
        T,
        {},
        TypeError,
        r"input: expected floating-point logits, got dtype torch.complex64",
        True,
    ),
    (
        "softmax bool input",
        "softmax",
        X > 0,
        T,
        {},
        TypeError,
        r"input: expected floating-point logits, got dtype torch.bool",
        True,
    ),
    (
        "softmax input not a tensor",
        "softmax",
        X.tolist(),
        T,
        {},
        TypeError,
        r"input: expected a torch.Tensor, got list",
        True,
    ),
    (
        "softmax target not a tensor",
        "softmax",
        X,
        T.tolist(),
        {},
        TypeError,
        r"target: expected a torch.Tensor, got list",
        True,
    ),
    (
        "softmax weight inf",
        "softmax",
        X,
        T,
        dict(weight=torch.tensor([1.0, math.inf, 1.0])),
        ValueError,
        r"weight: expected finite values >= 0, got inf",
        True,
    ),
    (
        "softmax alpha nan",
        "softmax",
        X,
        T,
        dict(alpha=[0.2, math.nan, 0.3]),
        ValueError,
        r"alpha: expected finite values >= 0, got nan",
        True,
    ),
    (
        "softmax gamma tensor",
        "softmax",
        X,
        T,
        dict(gamma=torch.tensor(2.0)),
        TypeError,
        r"gamma: expected a real number >= 0, got Tensor",
        True,
    ),
    (
        "softmax smoothing nan",
        "softmax",
        X,
        T,
        dict(label_smoothing=math.nan),
        ValueError,
        r"label_smoothing: expected a number in \[0, 1\], got nan",
        True,
    ),
    (
        "softmax backend",
        "softmax",
        X,
        T,
        dict(backend=None),
        ValueError,
        r"backend: expected one of \('auto', 'torch', 'triton'\), got None",
        True,
    ),
    (
        "softmax sync with sum",
        "softmax",
        X,
        T,
        dict(sync_normalizer=True, reduction="sum"),
        ValueError,
        r"sync_normalizer: .* cannot be used with reduction='sum'",
        True,
    ),
    (
        "sigmoid target requires grad",
        "sigmoid",
        X,
        L.clone().requires_grad_(),
        {},
        ValueError,
        r"target: expected a tensor that does not require grad",
        True,
    ),
    (
        "sigmoid weight requires grad",
        "sigmoid",
        X,
        L,
        dict(weight=torch.ones(5, requires_grad=True)),
        ValueError,
        r"weight: expected a tensor that does not require grad",
        False,
    ),
    (
        "sigmoid pos_weight requires grad",
        "sigmoid",
        X,
        L,
        dict(pos_weight=torch.ones(5, requires_grad=True)),
        ValueError,
        r"pos_weight: expected a tensor that does not require grad",
        False,
    ),
    (
        "sigmoid alpha requires grad",
        "sigmoid",
        X,
        L,
        dict(alpha=torch.full((3,), 0.5, requires_grad=True)),
        ValueError,
        r"alpha: expected a tensor that does not require grad",
        False,
    ),
    (
        "sigmoid normalizer requires grad",
        "sigmoid",
        X,
        L,
        dict(normalizer=torch.tensor(2.0, requires_grad=True)),
        ValueError,
        r"normalizer: expected a tensor that does not require grad",
        True,
    ),
    (
        "sigmoid sparse input",
        "sigmoid",
        X.to_sparse(),
        L,
        {},
        TypeError,
        r"input: expected a dense \(strided\) tensor",
        True,
    ),
    (
        "sigmoid alpha device",
        "sigmoid",
        X,
        L,
        dict(alpha=torch.full((3,), 0.5, device=META)),
        ValueError,
        r"alpha: expected a tensor on the input's device cpu, got one on meta",
        True,
    ),
    (
        "sigmoid normalizer device",
        "sigmoid",
        X,
        L,
        dict(normalizer=torch.tensor(2.0, device=META)),
        ValueError,
        r"normalizer: expected a tensor on the input's device cpu, got one on meta",
        True,
    ),
    (
        "sigmoid complex input",
        "sigmoid",
        X.to(torch.complex64),
        L,
        {},
        TypeError,
        r"input: expected floating-point logits, got dtype torch.complex64",
        True,
    ),
    (
        "sigmoid pos_weight negative",
        "sigmoid",
        X,
        L,
        dict(pos_weight=-torch.ones(5)),
        ValueError,
        r"pos_weight: expected finite values >= 0, got -1.0",
        True,
    ),
    (
        "sigmoid pos_weight nan",
        "sigmoid",
        X,
        L,
        dict(pos_weight=torch.full((5,), math.nan)),
        ValueError,
        r"pos_weight: expected finite values >= 0, got nan",
        True,
    ),
    (
        "sigmoid weight inf",
        "sigmoid",
        X,
        L,
        dict(weight=torch.full((5,), math.inf)),
        ValueError,
        r"weight: expected finite values >= 0, got inf",
        True,
    ),
    (
        "sigmoid alpha per-class negative",
        "sigmoid",
        X,
        I,
        dict(alpha=[0.5, -0.1, 0.2]),
        ValueError,
        r"alpha: expected finite values >= 0, got -0.1",
        True,
    ),
    (
        "sigmoid index target too large",
        "sigmoid",
        X,
        I + 1,
        {},
        ValueError,
        r"target: class indices must lie in \[0, 3\] for C=3 classes, got 4",
        True,
    ),
    (
        "sigmoid bool target",
        "sigmoid",
        X,
        L > 0.5,
        {},
        TypeError,
        r"target: labels of the input's shape \(4, 3, 5\) must be floating point",
        True,
    ),
    (
        "softmax sparse weight",
        "softmax",
        X,
        T,
        dict(weight=torch.ones(3).to_sparse()),
        TypeError,
        r"weight: expected a dense \(strided\) tensor, got layout torch.sparse_coo",
        True,
    ),
    (
        "sigmoid sparse pos_weight",
        "sigmoid",
        X,
        L,
        dict(pos_weight=torch.ones(5).to_sparse()),
        TypeError,
        r"pos_weight: expected a dense \(strided\) tensor",
        True,
    ),
    (
        "sigmoid sparse normalizer",
        "sigmoid",
        X,
        L,
        dict(normalizer=torch.tensor(2.0).to_sparse()),
        TypeError,
        r"normalizer: expected a dense \(strided\) tensor",
        True,
    ),
    (
        "sigmoid detach type",
        "sigmoid",
        X,
        L,
        dict(detach_modulator="yes"),
        TypeError,
        r"detach_modulator: expected a bool, got 'yes'",
        True,
    ),
]

ENTRY = {"softmax": (focal_loss, FocalLoss), "sigmoid": (sigmoid_focal_loss, SigmoidFocalLoss)}


def _through_module(module_class, input, target, kwargs):
    module = module_class(**kwargs)  # may raise here (configuration) ...
    return module(input, target)  # ... or here (the call), with the same message


@pytest.mark.parametrize(
    ("loss", "input", "target", "kwargs", "exc", "match", "module"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_every_entry_point_rejects(loss, input, target, kwargs, exc, match, module):
    function, module_class = ENTRY[loss]
    with pytest.raises(exc, match=match):
        function(input, target, **kwargs)
    if module:
        with pytest.raises(exc, match=match):
            _through_module(module_class, input, target, kwargs)


# The function-level tables, replayed through the modules. A module rejects a configuration
# error when it is built where it can (gamma, reduction, ...), else at the call.
MODULE_TABLE = [("softmax", *c) for c in SOFTMAX_TABLE] + [("sigmoid", *c) for c in SIGMOID_TABLE]


@pytest.mark.parametrize(
    ("loss", "input", "target", "kwargs", "exc", "match"),
    [(c[0], *c[2:]) for c in MODULE_TABLE],
    ids=[f"{c[0]}: {c[1]}" for c in MODULE_TABLE],
)
def test_modules_reject_what_the_functions_reject(loss, input, target, kwargs, exc, match):
    _, module_class = ENTRY[loss]
    with pytest.raises(exc, match=match):
        _through_module(module_class, input, target, kwargs)


def test_grad_requiring_arguments_are_fine_without_grad_mode():
    # The check guards against a silently missing gradient; under no_grad there is none.
    with torch.no_grad():
        loss = focal_loss(X, P.clone().requires_grad_())
        ref = focal_loss(X, P)
    assert torch.equal(loss, ref)


def test_module_construction_checks_values_once():
    with pytest.raises(ValueError, match=r"alpha: expected finite values >= 0, got -1.0"):
        FocalLoss(alpha=[0.2, -1.0])
    with pytest.raises(ValueError, match=r"weight: expected finite values >= 0, got nan"):
        FocalLoss(weight=torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match=r"alpha: per-class factors must lie in \[0, 1\], got 2.0"):
        SigmoidFocalLoss(alpha=[0.5, 2.0])
    with pytest.raises(ValueError, match=r"pos_weight: expected finite values >= 0, got -2.0"):
        SigmoidFocalLoss(pos_weight=torch.tensor([1.0, -2.0]))
    with pytest.raises(TypeError, match=r"weight: expected a floating-point tensor"):
        SigmoidFocalLoss(weight=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"normalizer: expected a finite number >= 0, got -1.0"):
        SigmoidFocalLoss(normalizer=-1)


def test_meta_tensors_give_shapes_without_reading_values():
    # Shape inference on the meta device: the value checks are skipped there (nothing to read).
    x = torch.empty(2, 3, 4, 4, device="meta")
    t = torch.empty(2, 4, 4, dtype=torch.long, device="meta")
    assert focal_loss(x, t, reduction="none").shape == (2, 4, 4)
    assert focal_loss(x, t, weight=torch.ones(3, device="meta")).shape == ()
    labels = torch.empty(2, 3, 4, 4, device="meta")
    out = sigmoid_focal_loss(x, labels, reduction="none")
    assert out.shape == x.shape and out.device.type == "meta"


# --------------------------------------------------------------------------------------------
# Non-finite logits: NaN in, NaN out for that position (loss and gradient); nothing else moves
# --------------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf


def _loss_and_grad(fn, x, t, **kwargs):
    leaf = x.clone().requires_grad_()
    loss = fn(leaf, t, reduction="none", **kwargs)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), leaf.grad


SOFTMAX_OPTIONS = [
    dict(gamma=2.0),
    dict(gamma=0.5, weight=torch.tensor([1.0, 2.0, 0.5]), alpha=[0.3, 0.3, 0.4]),
    dict(gamma=0.0, label_smoothing=0.1),
    dict(gamma=1.0, detach_modulator=True),
]


@pytest.mark.parametrize(
    "options", SOFTMAX_OPTIONS, ids=["default", "weighted", "smoothed", "detached"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_nonfinite_logits(options, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g, dtype=dtype)
    t = torch.tensor([0, 1, 2, 1, 0, 255])
    x[1, 0] = NAN  # NaN anywhere in a position: NaN loss and gradient for that position
    x[2, 2] = INF  # +inf: log-softmax is inf - inf = NaN, as in F.cross_entropy
    x[3, 0] = -INF  # -inf on another class: a masked class, finite (as F.cross_entropy)
    x[5] = torch.tensor([NAN, INF, -INF])  # ignored: no effect at all
    loss, grad = _loss_and_grad(focal_loss, x, t, ignore_index=255, **options)
    clean = x.clone()
    clean[1:3] = 0.0
    clean[5] = 0.0
    clean_loss, clean_grad = _loss_and_grad(focal_loss, clean, t, ignore_index=255, **options)
    for row in (1, 2):
        assert bool(loss[row].isnan()), "NaN in must give NaN out (never a silent 0)"
        assert bool(grad[row].isnan().all())
    smoothed = options.get("label_smoothing", 0.0) > 0
    for row in (0, 4):
        torch.testing.assert_close(loss[row], clean_loss[row])
        torch.testing.assert_close(grad[row], clean_grad[row])
    assert loss[5] == 0 and bool((grad[5] == 0).all())
    # -inf on a non-target class: that class has probability 0. Without smoothing the loss is
    # that of the two remaining classes; smoothing puts target mass on it: +inf, as in CE.
    if smoothed:
        assert loss[3] == INF
    else:
        rest = x[3:4, 1:]
        kw = {k: v for k, v in options.items() if k not in ("weight", "alpha")}
        if "weight" in options:
            kw["weight"] = options["weight"][1:]
        if "alpha" in options:
            kw["alpha"] = options["alpha"][1:]
        expected, expected_grad = _loss_and_grad(focal_loss, rest, torch.tensor([0]), **kw)
        torch.testing.assert_close(loss[3:4], expected)
        torch.testing.assert_close(grad[3, 1:], expected_grad[0])
    assert bool(torch.isfinite(grad[3]).all())
    if not smoothed:
        assert grad[3, 0] == 0
    # Reduced: a NaN position makes "sum" and "mean" NaN (never dropped).
    for reduction in ("sum", "mean"):
        assert bool(focal_loss(x, t, ignore_index=255, reduction=reduction, **options).isnan())


def test_softmax_nonfinite_logits_match_cross_entropy_at_gamma0():
    x = torch.tensor([[NAN, 0.0, 1.0], [INF, 0.0, 0.0], [-INF, 0.0, 1.0], [0.0, -INF, 2.0]])
    t = torch.tensor([1, 1, 2, 1])
    probabilities = torch.tensor([[0.0, 0.5, 0.5]] * 4)
    for target in (t, probabilities):
        ours, ours_grad = _loss_and_grad(focal_loss, x, target, gamma=0.0)
        ref, ref_grad = _loss_and_grad(F.cross_entropy, x, target)
        torch.testing.assert_close(ours, ref, equal_nan=True)
        torch.testing.assert_close(ours_grad, ref_grad, equal_nan=True)


@pytest.mark.parametrize("kind", ["float", "index"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_nonfinite_logits(kind, gamma):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, generator=g)
    x[1, 2] = NAN
    x[3, 0] = INF
    x[3, 1] = -INF
    if kind == "float":
        t = torch.rand(5, 4, generator=g)
        kwargs = {}
    else:
        t = torch.tensor([0, 2, 4, 1, -1])
        x[4] = torch.tensor([NAN, INF, -INF, NAN])  # ignored position
        kwargs = dict(ignore_index=-1)
    loss, grad = _loss_and_grad(sigmoid_focal_loss, x, t, gamma=gamma, **kwargs)
    clean = x.clone()
    clean[1, 2] = clean[3, 0] = clean[3, 1] = 0.0
    if kind == "index":
        clean[4] = 0.0
    clean_loss, clean_grad = _loss_and_grad(sigmoid_focal_loss, clean, t, gamma=gamma, **kwargs)
    assert bool(loss[1, 2].isnan()) and bool(grad[1, 2].isnan())  # NaN in, NaN out
    # Infinite logits are outside the domain (as in BCE-with-logits, which gives NaN for
    # x = +inf, t = 1): the loss there is inf or NaN, never a finite number.
    assert not bool(torch.isfinite(loss[3, :2]).any())
    finite = torch.ones_like(x, dtype=torch.bool)
    finite[1, 2] = finite[3, 0] = finite[3, 1] = False
    if kind == "index":
        finite[4] = False
        assert bool((loss[4] == 0).all()) and bool((grad[4] == 0).all())
    torch.testing.assert_close(loss[finite], clean_loss[finite])
    torch.testing.assert_close(grad[finite], clean_grad[finite])


def test_helpers_reject_bad_values():
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        focalloss.set_value_checks(1)
    with pytest.raises(ValueError, match=r"prior: expected a number in \(0, 1\), got nan"):
        focalloss.prior_bias(math.nan)
    with pytest.raises(TypeError, match="bias: expected a tensor"):
        focalloss.init_prior_bias_(None)
