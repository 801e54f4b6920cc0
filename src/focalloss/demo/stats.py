"""The statistics the demos report: per-loss summaries over seeds, paired differences with a
95% t-interval, and the calibration measures (ECE, NLL, temperature scaling).

Everything here is plain arithmetic on Python floats or float64 tensors, so that the tests can
check it against values computed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: How the demos' intervals are computed (also written to metrics.json).
INTERVAL_METHOD = (
    "95% paired t-interval over seeds: mean difference +- t(0.975, n - 1) * sd / sqrt(n), "
    "where the differences are taken seed by seed (same data, initial weights and batch order)"
)


def _t_density(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom (Simpson's rule on the
    density in ``atan(x)``; the quantiles below match t tables to about 1e-9).

    Example:
        >>> from focalloss.demo.stats import t_cdf
        >>> round(t_cdf(0.0, 4), 6), round(t_cdf(1.0, 1), 6)  # Cauchy: 1/2 + atan(1)/pi
        (0.5, 0.75)
    """
    if df < 1:
        raise ValueError(f"df: expected >= 1 degree of freedom, got {df}")
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    # Integrate in u = atan(x): dx = (1 + x^2) du keeps the integrand smooth on a finite range.
    upper = math.atan(x)
    steps = 400
    h = upper / steps
    total = 0.0
    for i in range(steps + 1):
        u = i * h
        t = math.tan(u)
        value = _t_density(t, df) * (1 + t * t)
        total += value * (1 if i in (0, steps) else 4 if i % 2 else 2)
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on
    :func:`t_cdf`).

    Example:
        >>> from focalloss.demo.stats import t_quantile
        >>> round(t_quantile(0.975, 4), 4)  # the t-table value
        2.7764
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: expected a probability in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(50):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1`` divisor; NaN for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("values: expected at least one value, got none")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass
class Spread:
    """A metric over seeds: mean, sample standard deviation, range and the values."""

    mean: float
    sd: float
    min: float
    max: float
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        mean, sd = mean_sd(values)
        return cls(mean=mean, sd=sd, min=min(values), max=max(values), values=list(values))


@dataclass
class PairedDifference:
    """``a - b`` seed by seed: the mean difference and its 95% t-interval."""

    mean: float
    sd: float
    low: float
    high: float
    n: int
    t: float

    @property
    def distinguishable(self) -> bool:
        """True when the interval excludes zero (NaN intervals, n < 2, never are)."""
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "distinguishable": self.distinguishable}


def paired_difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> PairedDifference:
    """Mean of ``a[i] - b[i]`` with the two-sided ``level`` t-interval over the ``n`` pairs:
    ``mean +- t((1 + level) / 2, n - 1) * sd / sqrt(n)``. With one pair the interval is NaN.

    Example:
        >>> from focalloss.demo.stats import paired_difference
        >>> d = paired_difference([3.0, 4.0, 5.0, 6.0, 7.0], [2.0, 2.0, 2.0, 2.0, 2.0])
        >>> round(d.mean, 4), round(d.low, 4), round(d.high, 4)
        (3.0, 1.0368, 4.9632)
    """
    if len(a) != len(b):
        raise ValueError(f"a and b: expected paired values of one length, got {len(a)}, {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    if n < 2:
        return PairedDifference(mean=mean, sd=sd, low=math.nan, high=math.nan, n=n, t=math.nan)
    t = t_quantile((1.0 + level) / 2.0, n - 1)
    half = t * sd / math.sqrt(n)
    return PairedDifference(mean=mean, sd=sd, low=mean - half, high=mean + half, n=n, t=t)


def verdict(
    loss: str,
    baseline: str,
    metric: str,
    diff: PairedDifference,
    higher_is_better: bool | None = True,
) -> str:
    """One sentence: the difference, its interval and whether it is distinguishable from 0
    (``higher_is_better=None`` for descriptive metrics: no "better"/"worse")."""
    head = (
        f"{loss} - {baseline}, {metric}: {diff.mean:+.4f} "
        f"(95% paired t-interval [{diff.low:+.4f}, {diff.high:+.4f}], {diff.n} seeds)"
    )
    if diff.n < 2:
        return head + ": one seed gives no interval; run --seeds 2 or more."
    if not diff.distinguishable:
        return head + ": not distinguishable from zero (no distinguishable difference)."
    direction = "higher" if diff.mean > 0 else "lower"
    judged = ""
    if higher_is_better is not None:
        judged = " (better)" if (diff.mean > 0) == higher_is_better else " (worse)"
    return head + f": distinguishable from zero; {loss} is {direction}{judged} than {baseline}."


# --- calibration -------------------------------------------------------------------------


def reliability_bins(
    probs: Tensor, labels: Tensor, bins: int = 15
) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width confidence bin ``((k - 1) / bins, k / bins]`` (the first also takes 0):
    the count, the mean confidence and the accuracy (0 for empty bins).

    ``probs``: ``(N, C)`` class probabilities; ``labels``: ``(N,)`` class indices.
    Confidence is the top probability, correctness whether its class is the label.
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"probs and labels: expected (N, C) and (N,), got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if bins < 1:
        raise ValueError(f"bins: expected >= 1, got {bins}")
    confidence, predicted = probs.double().max(1)
    correct = (predicted == labels).double()
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    safe = count.clamp(min=1)
    return count, conf_sum / safe, acc_sum / safe


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017; Mukhoti et al. 2020 use 15 bins):
    ``sum_k (n_k / N) |acc_k - conf_k|`` over equal-width confidence bins.

    Example:
        >>> import torch
        >>> from focalloss.demo.stats import expected_calibration_error
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
        >>> round(expected_calibration_error(probs, torch.tensor([0, 1])), 4)  # conf .9, acc .5
        0.4
    """
    count, conf, acc = reliability_bins(probs, labels, bins)
    return float((count / count.sum() * (acc - conf).abs()).sum())


def nll(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` (float64)."""
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(
    logits: Tensor, labels: Tensor, low: float = 0.05, high: float = 20.0, iterations: int = 60
) -> float:
    """The temperature ``T`` minimising ``nll(logits / T)`` on a held-out split (Guo et al.).

    The NLL is convex in ``1 / T``, so it is unimodal in ``log T`` and a golden-section search
    over ``[log low, log high]`` finds the minimum (to about ``1e-12`` in ``log T``).
    """
    if not 0 < low < high:
        raise ValueError(f"low and high: expected 0 < low < high, got {low}, {high}")
    logits = logits.double()
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return math.exp(0.5 * (a + b))
