"""focalloss demo / plot end to end, the U-Net's shapes and the generated data."""

from __future__ import annotations

import json

import pytest
import torch

from focalloss.cli import main
from focalloss.demo.data import IGNORE_INDEX, NUM_CLASSES, make_dataset
from focalloss.demo.unet import UNet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_SIGNATURE and len(data) > 1000


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--losses", "ce,focal,seed", "--out", str(out)]) == 0
    assert _is_png(out / "demo.png")
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["class_frequencies"]) == pytest.approx(1.0)
    assert len(metrics["class_frequencies"]) == NUM_CLASSES
    assert [run["loss"] for run in metrics["runs"]] == ["ce", "focal", "seed"]
    for run in metrics["runs"]:
        for key in ("iou", "recall", "precision"):
            assert len(run[key]) == NUM_CLASSES
            assert all(0.0 <= v <= 1.0 for v in run[key])
        assert 0.0 <= run["miou"] <= 1.0
        assert 0.0 <= run["easy_loss_share"] <= 1.0
        assert len(run["curve_loss"]) == metrics["config"]["steps"]
        assert all(v == v and v >= 0 for v in run["curve_loss"])  # finite, non-negative
    assert (out / "table.txt").read_text().startswith("loss")


def test_demo_balanced_alpha_and_bad_arguments(tmp_path):
    assert main(["demo", "--quick", "--alpha", "balanced", "--out", str(tmp_path / "b")]) == 0
    with pytest.raises(ValueError, match="losses: expected names from"):
        main(["demo", "--quick", "--losses", "ce,dice", "--out", str(tmp_path / "c")])


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
