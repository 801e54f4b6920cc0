"""Figures: the demo's results, and the paper's Figure 1 computed with this library."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..functional import focal_loss
from .data import CLASS_NAMES, IGNORE_INDEX, SegmentationSet

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


def _layout(fig, bottom: float = 0.05, top: float = 0.9) -> None:
    """Fixed margins (``tight_layout`` costs seconds on a figure of twenty panels)."""
    fig.subplots_adjust(left=0.09, right=0.98, bottom=bottom, top=top, wspace=0.55, hspace=0.4)


def paired_seeds(ax, metrics: dict, key: str, title: str) -> None:
    """One line per seed across the losses (the comparison is paired by seed)."""
    losses = metrics["losses"]
    per_seed = metrics["per_seed"]
    for index in range(len(metrics["seeds"])):
        ys = [per_seed[name][index][key] for name in losses]
        ax.plot(range(len(losses)), ys, marker="o", color="0.6", lw=0.8, ms=3)
        if index == 0:
            ax.plot([], [], color="0.6", marker="o", lw=0.8, ms=3, label="one seed")
    means = [metrics["summary"][name][key]["mean"] for name in losses]
    ax.plot(range(len(losses)), means, marker="s", color="k", lw=2, label="mean")
    ax.set_xticks(range(len(losses)))
    ax.set_xticklabels(losses, rotation=20, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def forest(
    ax, metrics: dict, keys: list[tuple[str, str]], title: str, labels_right: bool = False
) -> None:
    """Paired differences to the baseline with their 95% t-intervals, one row per
    (loss, metric); the dashed line is no difference."""
    rows = []
    for loss, entry in metrics["differences"].items():
        for key, label in keys:
            if key in entry:
                rows.append((f"{loss}: {label}", entry[key]))
    for y, (_, diff) in enumerate(rows):
        low, high = diff["low"], diff["high"]
        colour = "tab:blue" if diff["distinguishable"] else "0.5"
        if math.isfinite(low) and math.isfinite(high):
            ax.plot([low, high], [y, y], color=colour, lw=2)
        ax.plot([diff["mean"]], [y], marker="o", color=colour)
    ax.axvline(0.0, color="k", ls="--", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([name for name, _ in rows], fontsize=7)
    if labels_right:
        ax.yaxis.tick_right()
    ax.invert_yaxis()
    ax.set_title(f"{title} to {metrics['baseline']}\n(mean, 95% paired t-interval)", fontsize=10)


def segmentation_figure(
    metrics: dict, val: SegmentationSet, predictions: dict[str, torch.Tensor], path: Path
) -> None:
    """Per-seed mIoU, per-class IoU over seeds, the differences with intervals, the training
    curves of the first seed and a few validation images of the first seed."""
    plt = _pyplot()
    examples = metrics["config"]["examples"]
    losses = metrics["losses"]
    columns = max(4, 2 + len(losses))
    fig = plt.figure(figsize=(3.4 * columns, 3.1 * (1 + examples)))
    grid = fig.add_gridspec(1 + examples, columns)
    paired_seeds(fig.add_subplot(grid[0, 0]), metrics, "miou", "validation mIoU per seed")
    ax = fig.add_subplot(grid[0, 1])
    width = 0.8 / len(losses)
    for i, name in enumerate(losses):
        stats = [metrics["summary"][name][f"iou_{c}"] for c in CLASS_NAMES]
        xs = [c + i * width for c in range(len(CLASS_NAMES))]
        sds = [s["sd"] if math.isfinite(s["sd"]) else 0.0 for s in stats]
        ax.bar(xs, [s["mean"] for s in stats], width=width, yerr=sds, capsize=2, label=name)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(CLASS_NAMES))])
    ax.set_xticklabels(CLASS_NAMES, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("per-class IoU, mean +- sd over seeds", fontsize=10)
    ax.legend(fontsize=7)
    keys = [("miou", "mIoU")] + [(f"iou_{c}", f"IoU {c}") for c in CLASS_NAMES[1:]]
    forest(fig.add_subplot(grid[0, 2]), metrics, keys, "difference")
    ax = fig.add_subplot(grid[0, 3])
    for name in losses:
        curve = metrics["curves"][name][0]["train_loss"]
        window = max(1, len(curve) // 30)
        smooth = torch.tensor(curve).unfold(0, window, 1).mean(1)
        ax.plot(range(window, len(curve) + 1), smooth.tolist(), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"training loss, seed {metrics['seeds'][0]} (own units)", fontsize=10)
    ax.legend(fontsize=7)
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
    fig.suptitle(
        f"focalloss demo segmentation: {len(metrics['seeds'])} seeds "
        f"(examples: seed {metrics['seeds'][0]})"
    )
    _layout(fig)
    fig.savefig(path, dpi=80)
    plt.close(fig)


BOX_COLOURS = ("tab:orange", "tab:cyan", "tab:pink")


def detection_figure(
    metrics: dict,
    val,
    predictions: dict[str, tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]],
    path: Path,
    min_score: float = 0.3,
    max_boxes: int = 5,
) -> None:
    """Per-seed AP and AP50, the differences with intervals, the easy-negative loss share,
    and validation images of the first seed with ground truth (white, dashed) and predicted
    boxes (the 5 best-scored with score >= 0.3, one colour per class)."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    examples = metrics["config"]["examples"]
    losses = metrics["losses"]
    columns = max(4, 1 + len(losses))
    fig = plt.figure(figsize=(3.3 * columns, 3.3 * (1 + examples)))
    grid = fig.add_gridspec(1 + examples, columns)
    paired_seeds(fig.add_subplot(grid[0, 0]), metrics, "ap", "COCO AP per seed")
    paired_seeds(fig.add_subplot(grid[0, 1]), metrics, "ap50", "AP50 per seed")
    forest(fig.add_subplot(grid[0, 2]), metrics, [("ap", "AP"), ("ap50", "AP50")], "difference")
    ax = fig.add_subplot(grid[0, 3])
    stats = [metrics["summary"][name]["easy_negative_loss_share"] for name in losses]
    sds = [s["sd"] if math.isfinite(s["sd"]) else 0.0 for s in stats]
    ax.bar(range(len(losses)), [s["mean"] for s in stats], yerr=sds, capsize=3, color="0.5")
    ax.set_xticks(range(len(losses)))
    ax.set_xticklabels(losses, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("loss share of easy negatives\n(validation, mean +- sd)", fontsize=10)
    class_names = metrics["class_names"]
    for row in range(examples):
        i = row % len(val.images)
        for col, name in enumerate(["ground truth", *losses]):
            axis = fig.add_subplot(grid[1 + row, col])
            axis.imshow(val.images[i, 0].numpy(), cmap="gray")
            for box, label in zip(val.boxes[i].tolist(), val.labels[i].tolist(), strict=True):
                x0, y0, x1, y1 = box
                axis.add_patch(
                    Rectangle(
                        (x0 - 0.5, y0 - 0.5),
                        x1 - x0,
                        y1 - y0,
                        fill=False,
                        ec="white",
                        ls="--",
                        lw=1,
                    )
                )
                if col == 0:
                    axis.text(x0, y0 - 1, class_names[label], color="white", fontsize=7)
            if col > 0:
                boxes, scores, labels = (t[i][:max_boxes] for t in predictions[name])
                for box, score, label in zip(
                    boxes.tolist(), scores.tolist(), labels.tolist(), strict=True
                ):
                    if score < min_score:
                        continue
                    x0, y0, x1, y1 = box
                    colour = BOX_COLOURS[label % len(BOX_COLOURS)]
                    axis.add_patch(
                        Rectangle(
                            (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.2
                        )
                    )
                    axis.text(
                        x0, y1 + 3, f"{class_names[label]} {score:.2f}", color=colour, fontsize=6
                    )
            axis.set_title(name, fontsize=9)
            axis.axis("off")
    fig.suptitle(
        f"focalloss demo detection: {len(metrics['seeds'])} seeds (examples: seed "
        f"{metrics['seeds'][0]}; up to {max_boxes} boxes with score >= {min_score})"
    )
    _layout(fig)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def calibration_figure(metrics: dict, path: Path) -> None:
    """Reliability diagrams pooled over seeds (before and after temperature scaling) for each
    loss, and the ECE / NLL differences with their intervals."""
    plt = _pyplot()
    losses = metrics["losses"]
    columns = len(losses) + 1
    fig, axes = plt.subplots(
        2,
        columns,
        figsize=(3.0 * columns + 2.0, 6.2),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.0] * len(losses) + [1.5]},
    )
    bins = metrics["ece_bins"]
    edges = [k / bins for k in range(bins + 1)]
    for col, name in enumerate(losses):
        for row, key in enumerate(("probs", "probs_ts")):
            ax = axes[row][col]
            rel = metrics["reliability_pooled"][name][key]
            filled = [c > 0 for c in rel["count"]]
            lefts = [edges[k] for k in range(bins) if filled[k]]
            accs = [rel["accuracy"][k] for k in range(bins) if filled[k]]
            confs = [rel["confidence"][k] for k in range(bins) if filled[k]]
            ax.bar(
                lefts,
                accs,
                width=1 / bins,
                align="edge",
                color="tab:blue",
                ec="k",
                lw=0.4,
                label="accuracy",
            )
            ax.bar(
                lefts,
                [c - a for c, a in zip(confs, accs, strict=True)],
                bottom=accs,
                width=1 / bins,
                align="edge",
                color="tab:red",
                alpha=0.3,
                label="gap",
            )
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.text(0.04, 0.9, f"ECE {rel['pooled_ece']:.3f}", fontsize=8)
            ax.set_title(f"{name}{' after TS' if row else ''}", fontsize=9)
            if row == 1:
                ax.set_xlabel("confidence", fontsize=8)
            if col == 0:
                ax.set_ylabel("accuracy", fontsize=8)
                ax.legend(fontsize=7, loc="lower right")
    forest(axes[0][-1], metrics, [("ece", "ECE"), ("ece_ts", "ECE after TS")], "difference", True)
    forest(axes[1][-1], metrics, [("nll", "NLL"), ("nll_ts", "NLL after TS")], "difference", True)
    fig.suptitle(
        f"focalloss demo calibration: reliability on the test splits of "
        f"{len(metrics['seeds'])} seeds pooled ({bins} bins); right: paired differences"
    )
    _layout(fig, bottom=0.1, top=0.85)
    fig.subplots_adjust(wspace=0.3, right=0.88)
    fig.savefig(path, dpi=80)
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
