"""focalloss demo (segmentation) / plot end to end, the U-Net's shapes and the generated data.

The detection and calibration demos and the statistics: tests/test_demo_*.py."""

from __future__ import annotations

import json

import pytest
import torch

from focalloss.cli import main
from focalloss.demo.data import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, make_dataset
from focalloss.demo.unet import UNet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_SIGNATURE and len(data) > 1000


def test_demo_quick_end_to_end(tmp_path):
    """`focalloss demo --quick` (segmentation, the default task): files, metrics keys, every
    per-seed value, the summary and the paired differences."""
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--losses", "ce,focal,seed", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # --threads (1) only for the run
    assert _is_png(out / "demo.png")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["demo"] == "segmentation"
    assert metrics["command"].startswith("focalloss demo --quick")
    for key in ("config", "machine", "seeds", "per_seed", "summary", "differences", "sentences"):
        assert key in metrics
    assert metrics["machine"]["torch"] == torch.__version__
    assert metrics["machine"]["torch_threads"] == 1
    seeds = metrics["seeds"]
    assert seeds == [0, 1] and metrics["config"]["seeds"] == 2
    assert metrics["losses"] == ["ce", "focal", "seed"] and metrics["baseline"] == "ce"
    for loss in metrics["losses"]:
        runs = metrics["per_seed"][loss]
        assert [run["seed"] for run in runs] == seeds
        for run in runs:
            assert 0.0 <= run["miou"] <= 1.0
            for kind in ("iou", "recall", "precision"):
                for name in CLASS_NAMES:
                    assert 0.0 <= run[f"{kind}_{name}"] <= 1.0
            assert run["miou"] == pytest.approx(
                sum(run[f"iou_{name}"] for name in CLASS_NAMES) / NUM_CLASSES
            )
            assert 0.0 <= run["easy_loss_share"] <= 1.0
        curves = metrics["curves"][loss]
        assert all(len(c["train_loss"]) == metrics["config"]["steps"] for c in curves)
        assert all(v == v and v >= 0 for c in curves for v in c["train_loss"])
        summary = metrics["summary"][loss]["miou"]
        assert summary["values"] == [run["miou"] for run in runs]
    for loss in ("focal", "seed"):
        diff = metrics["differences"][loss]["miou"]
        paired = [
            a["miou"] - b["miou"]
            for a, b in zip(metrics["per_seed"][loss], metrics["per_seed"]["ce"], strict=True)
        ]
        assert diff["mean"] == pytest.approx(sum(paired) / len(paired))
        assert diff["n"] == 2 and diff["low"] <= diff["mean"] <= diff["high"]
        assert "95% paired t-interval" in diff["sentence"]
    assert len(metrics["sentences"]) == 4  # mIoU and rarest-class IoU for two losses
    table = (out / "table.txt").read_text()
    assert table.startswith("segmentation:") and "precision scratches" in table


def test_demo_balanced_alpha_and_bad_arguments(tmp_path):
    out = tmp_path / "b"
    assert main(["demo", "--quick", "--alpha", "balanced", "--seeds", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["alpha"] == "balanced"
    assert "one seed gives no interval" in metrics["sentences"][0]
    with pytest.raises(ValueError, match="losses: expected names from"):
        main(["demo", "--quick", "--losses", "ce,dice", "--out", str(tmp_path / "c")])
    with pytest.raises(ValueError, match="seeds: expected at least 1 seed, got 0"):
        main(["demo", "--quick", "--seeds", "0", "--out", str(tmp_path / "d")])
    with pytest.raises(ValueError, match="--image-size: not an option of focalloss demo calib"):
        main(["demo", "calibration", "--quick", "--image-size", "32", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--gamma: not an option of focalloss demo detection"):
        main(["demo", "detection", "--quick", "--gamma", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["demo", "classification"])


@pytest.mark.parametrize("size", [(16, 16), (32, 48), (17, 23), (5, 9), (64, 1)])
def test_unet_output_matches_input_size(size):
    model = UNet(in_channels=1, num_classes=4, width=4)
    out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 4, *size)


def test_unet_rejects_bad_input():
    with pytest.raises(ValueError, match=r"x: expected \(N, C, H, W\) images"):
        UNet()(torch.randn(1, 16, 16))


def test_dataset_is_deterministic_and_imbalanced():
    a, b = make_dataset(32, 48, seed=3), make_dataset(32, 48, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    freqs = a.class_frequencies()
    assert freqs[0] > 0.9  # background
    assert min(freqs[1:]) < 0.02  # a rare class
    assert 0 < a.ignored_fraction() < 0.5
    assert bool(((a.masks >= 0) & (a.masks < NUM_CLASSES) | (a.masks == IGNORE_INDEX)).all())
    with pytest.raises(ValueError, match="size: expected at least 16"):
        make_dataset(2, 8, seed=0)


def test_plot_writes_pngs(tmp_path):
    assert main(["plot", "--out", str(tmp_path)]) == 0
    for name in ("focal_loss_vs_pt.png", "focal_grad_vs_pt.png"):
        assert _is_png(tmp_path / name)


def test_paper_curves_from_the_library():
    from focalloss.demo.plots import loss_curves

    p_t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    curves = loss_curves(p_t, gammas=(0.0, 2.0))
    ce = [-torch.log(p).item() for p in p_t]
    assert curves[0.0][0] == pytest.approx(ce)
    assert curves[2.0][0] == pytest.approx(
        [(1 - p.item()) ** 2 * c for p, c in zip(p_t, ce, strict=True)]
    )
    # CE's gradient magnitude on the target logit is 1 - p_t.
    assert curves[0.0][1] == pytest.approx([1 - p.item() for p in p_t])


def test_demo_help_names_every_loss(capsys):
    """`focalloss demo --help` lists every loss of every task (and so the default lists)."""
    from focalloss.demo import calibration, detection, segmentation

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for losses in (segmentation.LOSSES, detection.LOSSES, calibration.LOSSES):
        assert ",".join(losses) in text
