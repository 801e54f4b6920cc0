"""Figures: the demo's results, and the paper's Figure 1 computed with this library."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..functional import focal_loss
from .data import CLASS_NAMES, IGNORE_INDEX, SegmentationSet

if TYPE_CHECKING:
    from .run import RunResult

GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _colour_mask(mask: torch.Tensor) -> torch.Tensor:
    palette = torch.tensor([[0.15, 0.15, 0.2], [0.95, 0.6, 0.1], [0.2, 0.8, 0.3], [0.3, 0.6, 1.0]])
    out = torch.ones(*mask.shape, 3)  # ignored pixels: white
    keep = mask != IGNORE_INDEX
    out[keep] = palette[mask[keep]]
    return out


def demo_figure(
    results: list[RunResult],
    val: SegmentationSet,
    predictions: dict[str, torch.Tensor],
    path: Path,
    examples: int = 3,
) -> None:
    """Training curves, per-class IoU bars and a few validation images with predictions."""
    plt = _pyplot()
    columns = 2 + len(results)
    fig = plt.figure(figsize=(3.2 * max(columns, 4), 3.0 * (1 + examples)))
    grid = fig.add_gridspec(1 + examples, max(columns, 4))
    ax = fig.add_subplot(grid[0, :2])
    for r in results:
        window = max(1, len(r.curve_loss) // 30)
        smooth = (
            torch.tensor(r.curve_loss).unfold(0, window, 1).mean(1)
            if len(r.curve_loss) >= window
            else torch.tensor(r.curve_loss)
        )
        ax.plot(r.curve_steps[window - 1 :], smooth.tolist(), label=f"{r.loss} (train loss)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training loss (each in its own units)")
    ax.legend(fontsize=8)
    ax2 = fig.add_subplot(grid[0, 2])
    for r in results:
        ax2.plot(r.eval_steps, r.eval_miou, marker="o", label=r.loss)
    ax2.set_xlabel("step")
    ax2.set_title("validation mIoU")
    ax2.legend(fontsize=8)
    ax3 = fig.add_subplot(grid[0, 3])
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        xs = [c + i * width for c in range(len(CLASS_NAMES))]
        ax3.bar(xs, r.iou, width=width, label=r.loss)
    ax3.set_xticks([c + 0.4 - width / 2 for c in range(len(CLASS_NAMES))])
    ax3.set_xticklabels(CLASS_NAMES, rotation=20, fontsize=8)
    ax3.set_ylim(0, 1)
    ax3.set_title("per-class IoU (validation)")
    ax3.legend(fontsize=8)
    for row in range(examples):
        i = row % len(val.images)
        panels = [("input", val.images[i, 0]), ("ground truth", _colour_mask(val.masks[i]))]
        void = val.masks[i] == IGNORE_INDEX  # not scored: shown white in the predictions too
        panels += [
            (name, _colour_mask(pred[i].masked_fill(void, IGNORE_INDEX)))
            for name, pred in predictions.items()
        ]
        for col, (title, image) in enumerate(panels):
            axis = fig.add_subplot(grid[1 + row, col])
            axis.imshow(image.numpy(), cmap="gray" if image.dim() == 2 else None)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    fig.suptitle("focalloss demo: cross-entropy vs focal loss on imbalanced segmentation")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def loss_curves(
    p_t: torch.Tensor, gammas: tuple[float, ...] = GAMMAS
) -> dict[float, tuple[list[float], list[float]]]:
    """Loss and |dloss/dz_t| against p_t, from ``focal_loss`` on two-class logits.

    Logits ``[log p_t, log(1 - p_t)]`` have softmax exactly ``(p_t, 1 - p_t)``; the gradient
    magnitude is that of the target logit.
    """
    out = {}
    for gamma in gammas:
        logits = torch.stack([p_t.log(), torch.log1p(-p_t)], dim=1).requires_grad_()
        target = torch.zeros(len(p_t), dtype=torch.long)
        loss = focal_loss(logits, target, gamma=gamma, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        out[gamma] = (loss.detach().tolist(), grad[:, 0].abs().tolist())
    return out


def paper_figures(out: Path) -> list[Path]:
    """Figure 1 of Lin et al. (loss vs p_t for several gamma) and the gradient magnitudes."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    p_t = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    curves = loss_curves(p_t)
    paths = []
    for index, (name, title, ylabel) in enumerate(
        [
            ("focal_loss_vs_pt.png", "Focal loss vs probability of the ground-truth class", "loss"),
            ("focal_grad_vs_pt.png", "Gradient magnitude |dL/dz_t| vs p_t", "|dL/dz_t|"),
        ]
    ):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for gamma, values in curves.items():
            ax.plot(p_t.tolist(), values[index], label=f"gamma = {gamma:g}")
        ax.axvspan(0.6, 1.0, color="0.9", zorder=0)
        ax.set_ylim(0, 5 if index == 0 else None)
        ax.text(0.8, 0.8 * ax.get_ylim()[1], "well-classified\nexamples", ha="center")
        ax.set_xlabel("probability of ground truth class (p_t)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    assert all(math.isfinite(v) for vals in curves.values() for v in vals[0])
    return paths
