"""focalloss demo calibration: the long-tailed splits of scikit-learn's digits, the loss table
(entries that join when FLSD-53 / Poly-1 are in focalloss), the --quick path end to end, and
determinism of one seed for the three demos."""

from __future__ import annotations

import json
import math

import pytest
import torch

from focalloss.cli import main

pytest.importorskip("sklearn")

from focalloss.demo import calibration as cal


def test_long_tailed_splits():
    x, y = cal.load_digits_tensors()
    assert x.shape == (1797, 64) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    a, b = cal.make_splits(x, y, seed=4), cal.make_splits(x, y, seed=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert cal.tail_sizes() == [90, 70, 54, 42, 32, 25, 19, 15, 12, 9]
    assert sorted(a.class_order) == list(range(10))
    # The training set follows the profile in the seed's class order; test and held-out
    # splits are balanced.
    assert [a.train_counts[c] for c in a.class_order] == cal.tail_sizes()
    assert torch.bincount(a.train_y, minlength=10).tolist() == a.train_counts
    assert torch.bincount(a.test_y, minlength=10).tolist() == [60] * 10
    assert torch.bincount(a.val_y, minlength=10).tolist() == [20] * 10
    # The three splits share no image (rows of the digits set are distinct here).
    rows = {tuple(r) for r in torch.cat([a.train_x, a.val_x, a.test_x]).tolist()}
    assert len(rows) == len(a.train_x) + len(a.val_x) + len(a.test_x)
    assert cal.make_splits(x, y, seed=5).class_order != a.class_order


def test_every_issue_loss_runs_by_default():
    """Issue 15's calibration losses, all in the default list, CE first (the baseline)."""
    expected = ("ce", "ce_ls", "focal3", "flsd53", "poly1")
    assert expected == cal.LOSSES
    assert cal.CalibrationConfig().losses == expected
    assert cal.CalibrationConfig.quick().losses == expected
    with pytest.raises(ValueError, match="losses: expected names from"):
        cal.loss_entry("mse")


def test_table_losses_against_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (30,), generator=g)
    logp = torch.log_softmax(logits, 1)
    p_t = logp.exp()[torch.arange(30), labels]
    ce = -logp[torch.arange(30), labels]
    smooth = 0.95 * ce - 0.05 * logp.mean(1)  # label smoothing 0.05 over 10 classes
    refs = {
        "ce": ce.mean(),
        "ce_ls": smooth.mean(),
        "focal3": ((1 - p_t) ** 3 * ce).mean(),
        "flsd53": (torch.where(p_t < 0.2, (1 - p_t) ** 5, (1 - p_t) ** 3) * ce).mean(),
        "poly1": (ce + (1 - p_t)).mean(),
    }
    assert set(refs) == set(cal.LOSSES)
    for entry in cal.LOSS_TABLE:
        torch.testing.assert_close(entry.fn(logits, labels), refs[entry.name])


def test_calibration_quick_end_to_end(tmp_path):
    out = tmp_path / "cal"
    assert main(["demo", "calibration", "--quick", "--out", str(out)]) == 0
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["demo"] == "calibration" and metrics["baseline"] == "ce"
    assert metrics["losses"] == ["ce", "ce_ls", "focal3", "flsd53", "poly1"]
    assert metrics["ece_bins"] == 15
    for key in ("config", "machine", "data", "summary", "differences", "reliability_pooled"):
        assert key in metrics
    for loss in metrics["losses"]:
        runs = metrics["per_seed"][loss]
        assert [r["seed"] for r in runs] == metrics["seeds"] == [0, 1]
        for run in runs:
            for key in ("accuracy", "ece", "ece_ts", "accuracy_tail"):
                assert 0.0 <= run[key] <= 1.0
            assert run["nll"] > 0 and run["nll_ts"] > 0 and run["temperature"] > 0
            assert run["accuracy_ts"] == run["accuracy"]  # T > 0 keeps the argmax
        pooled = metrics["reliability_pooled"][loss]["probs"]
        assert sum(pooled["count"]) == 2 * 600
    for loss in metrics["losses"][1:]:
        assert {"ece", "nll", "ece_ts", "nll_ts"} <= set(metrics["differences"][loss])
    assert any("ECE after TS" in s for s in metrics["sentences"])


@pytest.mark.parametrize("task", ["segmentation", "detection", "calibration"])
def test_one_seed_is_deterministic(task, tmp_path):
    """One seed run twice on one machine gives the same metrics."""
    _check_repeatable(task, tmp_path, jobs=(1, 1))


@pytest.mark.slow
def test_worker_processes_give_the_same_results(tmp_path):
    """Runs in two spawned worker processes equal the runs in the main process."""
    _check_repeatable("calibration", tmp_path, jobs=(1, 2))


def _check_repeatable(task: str, tmp_path, jobs: tuple[int, int]) -> None:
    from focalloss.demo import run_task

    def once(i: int) -> dict:
        metrics = run_task(
            task,
            quick=True,
            seeds=1,
            seed=3,
            jobs=jobs[i],
            out=str(tmp_path / str(i)),
            print_fn=lambda _: None,
        )
        runs = metrics["per_seed"]
        return {
            loss: {k: v for k, v in r[0].items() if k not in ("seconds", "images_per_second")}
            for loss, r in runs.items()
        }

    first, second = once(0), once(1)
    assert first == second
    assert all(math.isfinite(v) for r in first.values() for v in r.values())
