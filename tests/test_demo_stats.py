"""The demos' statistics against values computed by hand: the t quantiles and the paired
t-interval, the verdict sentences, ECE and its bins, and temperature scaling."""

from __future__ import annotations

import math

import pytest
import torch

from focalloss.demo.common import Metric, summarise
from focalloss.demo.stats import (
    expected_calibration_error,
    fit_temperature,
    mean_sd,
    nll,
    paired_difference,
    reliability_bins,
    t_cdf,
    t_quantile,
    verdict,
)

# Two-sided 95% critical values t(0.975, df) from a printed t table.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 29: 2.045}


@pytest.mark.parametrize(("df", "value"), sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=6e-4)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=6e-4)


@pytest.mark.parametrize("x", [-7.0, -1.0, 0.3, 2.0, 30.0])
def test_t_cdf_closed_forms(x):
    # df = 1 is the Cauchy distribution; df = 2 has F(x) = 1/2 + x / (2 sqrt(2 + x^2)).
    assert t_cdf(x, 1) == pytest.approx(0.5 + math.atan(x) / math.pi, abs=1e-10)
    assert t_cdf(x, 2) == pytest.approx(0.5 + x / (2 * math.sqrt(2 + x * x)), abs=1e-10)


def test_t_quantile_bad_arguments():
    with pytest.raises(ValueError, match=r"p: expected a probability in \(0, 1\), got 1.0"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df: expected >= 1 degree of freedom, got 0"):
        t_cdf(1.0, 0)


def test_paired_difference_by_hand():
    a = [0.70, 0.72, 0.69, 0.75]
    b = [0.68, 0.70, 0.70, 0.71]
    # differences 0.02, 0.02, -0.01, 0.04: mean 0.0175, deviations .0025 .0025 -.0275 .0225,
    # squares sum 1.275e-3, sd sqrt(1.275e-3 / 3) = 0.0206155, se 0.0103078,
    # t(0.975, 3) = 3.182446, half-width 0.0328040.
    d = paired_difference(a, b)
    assert d.n == 4
    assert d.mean == pytest.approx(0.0175)
    assert d.sd == pytest.approx(0.0206155, abs=1e-7)
    assert d.t == pytest.approx(3.182446, abs=1e-6)
    assert d.low == pytest.approx(0.0175 - 0.0328040, abs=1e-6)
    assert d.high == pytest.approx(0.0175 + 0.0328040, abs=1e-6)
    assert not d.distinguishable
    sentence = verdict("focal", "ce", "mIoU", d)
    assert "+0.0175" in sentence and "[-0.0153, +0.0503]" in sentence
    assert "not distinguishable from zero" in sentence


def test_distinguishable_differences_and_their_sentences():
    # differences 1..5 + 2: mean 5, sd sqrt(2.5), half-width 2.776445 * 1.581139 / sqrt(5).
    d = paired_difference([3.0, 4.0, 5.0, 6.0, 7.0], [0.0, 0.0, 0.0, 0.0, 0.0])
    assert d.mean == 5.0
    assert d.low == pytest.approx(5.0 - 1.963243, abs=1e-5)
    assert d.distinguishable
    assert "distinguishable from zero; a is higher (better) than b" in verdict("a", "b", "m", d)
    assert "a is higher (worse) than b" in verdict("a", "b", "ECE", d, higher_is_better=False)
    assert "a is higher than b." in verdict("a", "b", "share", d, higher_is_better=None)
    lower = paired_difference([0.0, 0.0, 0.0], [1.0, 1.1, 0.9])
    assert lower.high < 0
    assert "a is lower (better) than b" in verdict("a", "b", "ECE", lower, False)


def test_one_seed_has_no_interval():
    d = paired_difference([0.5], [0.4])
    assert d.mean == pytest.approx(0.1) and math.isnan(d.low) and math.isnan(d.high)
    assert not d.distinguishable
    assert "one seed gives no interval" in verdict("a", "b", "m", d)
    assert math.isnan(mean_sd([1.0])[1])
    with pytest.raises(ValueError, match="expected paired values of one length, got 2, 1"):
        paired_difference([1.0, 2.0], [1.0])


def test_summarise_pairs_by_seed():
    per_seed = {
        "ce": [{"seed": 0, "m": 0.5}, {"seed": 1, "m": 0.7}, {"seed": 2, "m": 0.6}],
        "focal": [{"seed": 0, "m": 0.6}, {"seed": 1, "m": 0.8}, {"seed": 2, "m": 0.7}],
    }
    summary, differences, sentences = summarise(per_seed, "ce", [Metric("m", "m", headline=True)])
    assert summary["ce"]["m"]["mean"] == pytest.approx(0.6)
    assert summary["ce"]["m"]["sd"] == pytest.approx(0.1)
    assert summary["focal"]["m"]["values"] == [0.6, 0.8, 0.7]
    # Unpaired, the spreads overlap; paired, every seed gains exactly 0.1 (sd 0).
    diff = differences["focal"]["m"]
    assert diff["mean"] == pytest.approx(0.1) and diff["sd"] == pytest.approx(0.0, abs=1e-12)
    assert diff["distinguishable"]
    assert len(sentences) == 1 and sentences[0].startswith("focal - ce, m: +0.1000")


def test_ece_by_hand():
    # Confidences 0.95, 0.95 (bin (14/15, 1], accuracy 1/2), 0.62 and 0.65 (bin (9/15, 10/15],
    # both correct), 0.55 (bin (8/15, 9/15], wrong):
    # ECE = 2/5 |0.5 - 0.95| + 2/5 |1 - 0.635| + 1/5 |0 - 0.55| = 0.18 + 0.146 + 0.11 = 0.436.
    conf = torch.tensor([0.95, 0.95, 0.62, 0.65, 0.55], dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], 1)
    labels = torch.tensor([0, 1, 0, 0, 1])
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(0.436)
    count, mean_conf, acc = reliability_bins(probs, labels, bins=15)
    assert count.tolist() == [0] * 8 + [1, 2] + [0] * 4 + [2]
    assert mean_conf[9].item() == pytest.approx(0.635) and acc[14].item() == 0.5
    # One bin: ECE = |accuracy - mean confidence|.
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(
        abs(3 / 5 - conf.mean().item())
    )


def test_ece_bin_edges_and_a_calibrated_case():
    # A confidence of exactly k / 15 belongs to bin k (upper edge included), 1.0 to the last.
    conf = torch.tensor([2 / 3, 1.0], dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], 1)
    count, _, _ = reliability_bins(probs, torch.tensor([0, 0]), bins=15)
    assert count[9].item() == 1 and count[14].item() == 1
    # 0.8 confident and right 4 times out of 5: calibrated.
    probs = torch.tensor([[0.8, 0.2]] * 5, dtype=torch.float64)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 0, 1])) == pytest.approx(0)
    with pytest.raises(ValueError, match=r"expected \(N, C\) and \(N,\)"):
        reliability_bins(probs, torch.tensor([0]))


def _overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that put margin 8 on a class that is right 70% of the time: over-confident
    (softmax confidence ~0.997 for 70% accuracy)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=g)
    predicted = torch.where(
        torch.rand(n, generator=g) < 0.7, labels, torch.randint(0, 5, (n,), generator=g)
    )
    logits = torch.randn(n, 5, generator=g, dtype=torch.float64) * 0.3
    logits[torch.arange(n), predicted] += 8.0
    return logits, labels


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    logits, labels = _overconfident(1000, seed=0)
    temperature = fit_temperature(logits, labels)
    assert temperature > 2.0  # softens the over-confident logits
    # The minimum against an independent brute-force grid over T in [1, 15].
    grid = torch.linspace(1.0, 15.0, 701, dtype=torch.float64)
    scaled = logits[None] / grid[:, None, None]  # (T, N, C)
    nlls = (scaled.logsumexp(-1) - scaled[:, torch.arange(len(labels)), labels]).mean(1)
    best = grid[nlls.argmin()].item()
    assert temperature == pytest.approx(best, abs=0.021)
    # On fresh data from the same model, NLL and ECE go down.
    test_logits, test_labels = _overconfident(2000, seed=1)
    assert nll(test_logits, test_labels, temperature) < 0.5 * nll(test_logits, test_labels)
    before = expected_calibration_error(torch.softmax(test_logits, 1), test_labels)
    after = expected_calibration_error(torch.softmax(test_logits / temperature, 1), test_labels)
    assert after < 0.5 * before


def test_temperature_of_a_calibrated_model_is_one():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(20000, 4, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="low and high: expected 0 < low < high"):
        fit_temperature(logits, labels, low=2.0, high=1.0)
