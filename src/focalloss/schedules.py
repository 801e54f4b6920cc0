"""Sample-dependent focusing parameters: :class:`GammaSchedule`.

A schedule is configuration, like a number ``gamma``: a frozen object of two tuples of Python
floats. The losses copy them into their spec as plain fields, so ``torch.compile`` sees
constants (nothing is recompiled from one call to the next with the same schedule) and the
kernels receive them through their parameter tensor.

Why :meth:`GammaSchedule.pieces` rebuilds the floats from text: ``torch.compile`` with
``dynamic=True`` turns a float read from an object's attribute into a symbolic float (a graph
input), which is neither a constant nor usable twice inside the engine's autograd Function
(dynamo cannot lift it into the second one). Floats parsed from strings are constants, and the
strings are guarded by value: the same schedule never recompiles, another one does.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from numbers import Real

__all__ = ["GammaSchedule"]


def _floats(name: str, value: object) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a sequence of numbers, got {type(value).__name__}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{name}: expected a sequence of numbers, got {value!r}")
    return tuple(float(v) for v in value)


@dataclasses.dataclass(frozen=True)
class GammaSchedule:
    r"""A focusing parameter that depends on each sample's (detached) ``p_t``.

    Piecewise constant: with thresholds ``b_1 < ... < b_K`` and values ``g_0, ..., g_K``,

    .. math::

        \gamma(p_t) = g_k \quad \text{for } b_k \le p_t < b_{k+1}
        \qquad (b_0 = -\infty,\ b_{K+1} = +\infty),

    i.e. ``values[k]`` where ``k`` is the number of thresholds ``<= p_t``: a ``p_t`` exactly at
    a threshold takes the value of the interval above it. ``p_t`` is the probability the model
    gives to the target (see :func:`focalloss.focal_loss` and
    :func:`focalloss.sigmoid_focal_loss` for its definition with label smoothing, probability
    and soft targets), computed in the loss's compute dtype (float32 for half inputs; a
    threshold is compared after rounding to that dtype). ``p_t`` is detached: ``gamma`` is a
    constant of each sample, so within a piece the gradient is the constant-``gamma`` one; at
    a threshold the loss jumps and the gradient is that of the piece ``p_t`` falls in.

    Pass it as ``gamma`` of :func:`focalloss.focal_loss`, :func:`focalloss.sigmoid_focal_loss`
    and their modules, on either backend. A one-value schedule (no thresholds) is the
    constant ``gamma`` and computes bit-for-bit the same loss as that number.

    Args:
        thresholds: ``K >= 0`` numbers in ``(0, 1)``, strictly increasing.
        values: ``K + 1`` finite numbers ``>= 0``: ``values[0]`` below the first threshold,
            ``values[K]`` from the last one up.

    Example:
        >>> import torch
        >>> from focalloss import GammaSchedule, focal_loss
        >>> schedule = GammaSchedule.flsd53()  # gamma 5 for p_t < 0.2, else 3
        >>> schedule
        GammaSchedule(thresholds=(0.2,), values=(5.0, 3.0))
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.5, 2.5]])
        >>> target = torch.tensor([0, 0])  # p_t = 0.84 (gamma 3) and 0.07 (gamma 5)
        >>> loss = focal_loss(logits, target, gamma=schedule, reduction="none")
        >>> p_t = torch.softmax(logits, 1)[:, 0]
        >>> torch.allclose(loss, -(1 - p_t) ** torch.tensor([3.0, 5.0]) * p_t.log())
        True
    """

    thresholds: tuple[float, ...]
    values: tuple[float, ...]

    def __init__(self, thresholds: Sequence[float], values: Sequence[float]) -> None:
        bounds = _floats("thresholds", thresholds)
        gammas = _floats("values", values)
        # Comparisons rather than math.isfinite: NaN fails every one of them.
        outside = [b for b in bounds if not (0.0 < b < 1.0)]
        if outside:
            raise ValueError(
                f"thresholds: expected numbers in the open interval (0, 1) (probabilities "
                f"p_t), got {outside[0]}"
            )
        for low, high in itertools.pairwise(bounds):
            if not low < high:
                raise ValueError(
                    f"thresholds: expected strictly increasing numbers, got {low} before {high} "
                    f"in {bounds}"
                )
        if len(gammas) != len(bounds) + 1:
            raise ValueError(
                f"values: expected len(thresholds) + 1 = {len(bounds) + 1} numbers (one per "
                f"interval), got {len(gammas)}"
            )
        bad = [g for g in gammas if not (g >= 0.0 and g < math.inf)]
        if bad:
            raise ValueError(f"values: expected finite numbers >= 0, got {bad[0]}")
        object.__setattr__(self, "thresholds", bounds)
        object.__setattr__(self, "values", gammas)
        # repr(float) round-trips exactly: float(repr(x)) == x.
        text = (tuple(repr(b) for b in bounds), tuple(repr(g) for g in gammas))
        object.__setattr__(self, "_text", text)

    def pieces(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(thresholds, values)`` as constants for ``torch.compile`` (see the module note);
        equal to the attributes."""
        bounds, gammas = self._text
        return tuple(float(b) for b in bounds), tuple(float(g) for g in gammas)

    @classmethod
    def flsd53(cls) -> GammaSchedule:
        """FLSD-53 of Mukhoti et al. (2020), *Calibrating Deep Neural Networks using Focal
        Loss*: ``gamma = 5`` for ``p_t < 0.2``, ``gamma = 3`` for ``p_t >= 0.2``."""
        return cls((0.2,), (5.0, 3.0))

    @classmethod
    def constant(cls, gamma: float) -> GammaSchedule:
        """The one-value schedule: the same loss as ``gamma=gamma``."""
        return cls((), (gamma,))

    @property
    def is_constant(self) -> bool:
        """True for a one-value schedule (no thresholds)."""
        return len(self.thresholds) == 0
