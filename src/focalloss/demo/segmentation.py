"""``focalloss demo segmentation``: the same small U-Net trained with each loss, over seeds.

For every seed the data (training and validation sets), the initial weights and the batch order
are drawn from that seed and shared by all losses, so each loss is compared with the baseline
(the first loss, ``ce`` by default) seed by seed: the paired difference and its 95% t-interval.

Losses: ``ce`` (``torch.nn.CrossEntropyLoss``), ``focal`` (``focalloss.FocalLoss``, gamma 2,
optionally class-balanced alpha), ``seed`` (the seed module's training behaviour:
``FocalLoss(detach_modulator=True)``). Whatever the runs give is what is reported.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import FocalLoss
from ..weights import class_balanced_weights
from .common import (
    Clock,
    Metric,
    Progress,
    check_common,
    format_summary,
    keeps_thread_count,
    machine_info,
    resolve_device,
    run_grid,
    seed_list,
    summarise,
    try_figure,
    worker_position,
    write_outputs,
)
from .data import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, SegmentationSet, make_dataset
from .stats import INTERVAL_METHOD
from .unet import UNet

LOSSES = ("ce", "focal", "seed")
EASY_P_T = 0.9  # "easy" pixels: p_t above this


@dataclass
class SegmentationConfig:
    """The segmentation demo's settings (defaults: ``focalloss demo``, under 3 minutes on a
    2-core CPU)."""

    seeds: int = 3
    seed: int = 0  # the first seed; seeds run seed, seed + 1, ...
    steps: int = 400  # 3 seeds x 2 losses in 2 processes: about 2 min on a 2-core CPU
    batch_size: int = 16
    image_size: int = 40
    width: int = 8  # U-Net channels at full resolution
    train_images: int = 256
    val_images: int = 64
    gamma: float = 2.0
    alpha: Literal["none", "balanced"] = "none"
    losses: tuple[str, ...] = ("ce", "focal")
    lr: float = 3e-3
    device: str = "cpu"
    out: str = "focalloss-demo/segmentation"
    eval_every: int = 50
    threads: int | None = 1  # torch threads per process; see the module docstring of .common
    jobs: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))  # processes
    examples: int = 3  # validation images in the figure

    @classmethod
    def quick(cls, **overrides: object) -> SegmentationConfig:
        """A smoke run of a few seconds (for tests and ``--quick``)."""
        values: dict[str, object] = dict(
            jobs=1,
            examples=1,
            seeds=2,
            steps=6,
            batch_size=4,
            image_size=32,
            width=4,
            train_images=16,
            val_images=4,
            eval_every=3,
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def metric_list() -> list[Metric]:
    """What is summarised over seeds; the rarest class (scratches) is a headline."""
    metrics = [Metric("miou", "mIoU", headline=True)]
    for kind in ("iou", "recall", "precision"):
        for index, name in enumerate(CLASS_NAMES):
            metrics.append(
                Metric(
                    f"{kind}_{name}",
                    f"{'IoU' if kind == 'iou' else kind} {name}",
                    headline=kind == "iou" and index == 3,
                )
            )
    metrics.append(Metric("easy_loss_share", "easy-pixel loss share", higher_is_better=None))
    metrics.append(Metric("easy_pixel_share", "easy-pixel share", higher_is_better=None))
    return metrics


#: The metrics printed with their differences (table.txt has all of them).
BRIEF_KEYS = (
    "miou",
    *(f"iou_{name}" for name in CLASS_NAMES[1:]),
    f"recall_{CLASS_NAMES[3]}",
    "easy_loss_share",
)


def class_table(summary: dict[str, object], seeds: int) -> str:
    """Per loss, per-class IoU / recall / precision as mean +- sd over the seeds."""
    header = f"{'loss':<8}{'metric':<11}" + "".join(f"{n:>16}" for n in CLASS_NAMES)
    lines = [f"per class, mean +- sd over {seeds} seed{'s' if seeds != 1 else ''}", header]
    lines.append("-" * len(header))
    for loss, stats in summary.items():
        for kind in ("iou", "recall", "precision"):
            cells = []
            for name in CLASS_NAMES:
                entry = stats[f"{kind}_{name}"]  # type: ignore[index]
                sd = "n/a" if math.isnan(entry["sd"]) else f"{entry['sd']:.3f}"
                cells.append(f"{entry['mean']:.3f} +- {sd}")
            label = loss if kind == "iou" else ""
            lines.append(f"{label:<8}{kind:<11}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def _criterion(name: str, config: SegmentationConfig, train: SegmentationSet) -> nn.Module:
    alpha = None
    if config.alpha == "balanced":
        alpha = class_balanced_weights(train.pixel_counts(), beta=0.9999)
    if name == "ce":
        return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    if name == "focal":
        return FocalLoss(gamma=config.gamma, alpha=alpha, ignore_index=IGNORE_INDEX)
    if name == "seed":
        return FocalLoss(
            gamma=config.gamma, alpha=alpha, ignore_index=IGNORE_INDEX, detach_modulator=True
        )
    raise ValueError(f"losses: expected names from {LOSSES}, got {name!r}")


def confusion_matrix(pred: Tensor, mask: Tensor) -> Tensor:
    """(true, predicted) pixel counts over the labelled pixels."""
    keep = mask != IGNORE_INDEX
    index = mask[keep] * NUM_CLASSES + pred[keep]
    return torch.bincount(index, minlength=NUM_CLASSES**2).view(NUM_CLASSES, NUM_CLASSES)


def class_scores(confusion: Tensor) -> tuple[list[float], list[float], list[float]]:
    """Per-class IoU, recall, precision from a (true, predicted) confusion matrix."""
    c = confusion.double()
    tp = c.diag()
    iou = tp / (c.sum(0) + c.sum(1) - tp).clamp(min=1)
    recall = tp / c.sum(1).clamp(min=1)
    precision = tp / c.sum(0).clamp(min=1)
    return iou.tolist(), recall.tolist(), precision.tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module, data: SegmentationSet, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Predicted classes and logits of a set."""
    model.eval()
    logits = torch.cat([model(x.to(device)).cpu() for x in data.images.split(16)])
    model.train()
    return logits.argmax(1), logits


def easy_share(logits: Tensor, masks: Tensor, criterion: nn.Module) -> tuple[float, float]:
    """Share of the total loss carried by easy pixels (``p_t > 0.9``), and their share of the
    labelled pixels, each loss measured in its own units."""
    keep = masks != IGNORE_INDEX
    safe = masks.masked_fill(~keep, 0)
    p_t = torch.softmax(logits, 1).gather(1, safe.unsqueeze(1)).squeeze(1)
    if isinstance(criterion, FocalLoss):
        per_pixel = FocalLoss(
            gamma=criterion.gamma,
            alpha=criterion.alpha,
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )(logits, masks)
    else:
        per_pixel = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="none")
    easy = (p_t > EASY_P_T) & keep
    total = per_pixel[keep].sum().clamp(min=1e-30)
    return float(per_pixel[easy].sum() / total), float(easy.sum() / keep.sum().clamp(min=1))


def train_one(
    name: str,
    config: SegmentationConfig,
    seed: int,
    train: SegmentationSet,
    val: SegmentationSet,
    initial_state: dict[str, Tensor],
    device: torch.device,
) -> tuple[dict[str, float], dict[str, list[float]], Tensor]:
    """One training run; returns the per-seed metrics, the curves and the predictions."""
    model = UNet(in_channels=1, num_classes=NUM_CLASSES, width=config.width).to(device)
    model.load_state_dict(initial_state)
    criterion = _criterion(name, config, train).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(seed + 1)  # the same batch order for every loss
    curve: dict[str, list[float]] = {"train_loss": [], "eval_steps": [], "eval_miou": []}
    bar = Progress(config.steps, f"seed {seed} {name}", position=worker_position())
    clock = Clock()
    for step in range(1, config.steps + 1):
        index = torch.randint(0, len(train.images), (config.batch_size,), generator=order)
        x, y = train.images[index].to(device), train.masks[index].to(device)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve["train_loss"].append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            pred, _ = evaluate(model, val, device)
            iou, _, _ = class_scores(confusion_matrix(pred, val.masks))
            curve["eval_steps"].append(step)
            curve["eval_miou"].append(sum(iou) / len(iou))
        bar.update({"loss": f"{curve['train_loss'][-1]:.4f}"})
    bar.close()
    seconds = clock()
    pred, logits = evaluate(model, val, device)
    iou, recall, precision = class_scores(confusion_matrix(pred, val.masks))
    values: dict[str, float] = {"miou": sum(iou) / len(iou)}
    for kind, scores in (("iou", iou), ("recall", recall), ("precision", precision)):
        for cls, score in zip(CLASS_NAMES, scores, strict=True):
            values[f"{kind}_{cls}"] = score
    values["easy_loss_share"], values["easy_pixel_share"] = easy_share(logits, val.masks, criterion)
    values["seconds"] = seconds
    values["images_per_second"] = config.steps * config.batch_size / seconds
    return values, curve, pred


@functools.lru_cache(maxsize=2)
def _data(
    train_images: int, val_images: int, size: int, seed: int
) -> tuple[SegmentationSet, SegmentationSet]:
    train = make_dataset(train_images, size, seed=seed)
    return train, make_dataset(val_images, size, seed=seed + 10_000)


def run_one(config: SegmentationConfig, seed: int, name: str) -> dict[str, object]:
    """One loss on one seed: the data, initial weights and batch order all come from ``seed``
    (the same for every loss); runs in the main process or in a worker."""
    device = torch.device(config.device)
    train, val = _data(config.train_images, config.val_images, config.image_size, seed)
    torch.manual_seed(seed)
    initial = UNet(1, NUM_CLASSES, width=config.width).state_dict()
    values, curve, pred = train_one(name, config, seed, train, val, initial, device)
    return {
        "values": values,
        "curve": curve,
        "pred": pred if seed == config.seed else None,
        "data": {
            "class_frequencies": train.class_frequencies(),
            "ignored_fraction": train.ignored_fraction(),
        },
    }


def check_config(config: SegmentationConfig) -> None:
    check_common(
        "segmentation",
        config.seeds,
        config.seed,
        config.losses,
        LOSSES,
        config.jobs,
        config.device,
    )
    if config.alpha not in ("none", "balanced"):
        raise ValueError(f"alpha: expected 'none' or 'balanced', got {config.alpha!r}")
    for key in ("steps", "batch_size", "train_images", "val_images", "width", "eval_every"):
        if getattr(config, key) < 1:
            raise ValueError(f"{key}: expected >= 1, got {getattr(config, key)}")
    if not (math.isfinite(config.gamma) and config.gamma >= 0):
        raise ValueError(f"gamma: expected a finite number >= 0, got {config.gamma}")


@keeps_thread_count
def run_segmentation(
    config: SegmentationConfig,
    print_fn: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, object]:
    """Run every loss on every seed; print and write the summary; return the metrics."""
    check_config(config)
    device = resolve_device(config.device, config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    machine = machine_info(device)
    seeds = seed_list(config.seed, config.seeds)
    losses = list(config.losses)
    items = [(seed, name) for seed in seeds for name in losses]
    results = run_grid(
        functools.partial(run_one, config),
        items,
        config.jobs,
        config.threads,
        "segmentation runs",
        lambda item, r: {
            "seed": str(item[0]),
            "loss": str(item[1]),
            "mIoU": f"{r['values']['miou']:.3f}",
        },  # type: ignore[index]
    )
    per_seed: dict[str, list[dict[str, float]]] = {name: [] for name in losses}
    curves: dict[str, list[dict[str, object]]] = {name: [] for name in losses}
    data_stats: list[dict[str, object]] = []
    predictions = {}
    for (seed, name), result in zip(items, results, strict=True):
        per_seed[name].append({"seed": seed, **result["values"]})  # type: ignore[dict-item]
        curves[name].append({"seed": seed, **result["curve"]})  # type: ignore[dict-item]
        if name == losses[0]:
            data_stats.append({"seed": seed, **result["data"]})  # type: ignore[dict-item]
        if seed == seeds[0]:
            predictions[name] = result["pred"]
    first = {
        "val": make_dataset(config.val_images, config.image_size, seed=seeds[0] + 10_000),
        "predictions": predictions,
    }

    metrics_spec = metric_list()
    baseline = losses[0]
    summary, differences, sentences = summarise(per_seed, baseline, metrics_spec)
    freqs = [
        sum(d["class_frequencies"][c] for d in data_stats) / len(data_stats)  # type: ignore[index]
        for c in range(NUM_CLASSES)
    ]
    header = (
        f"segmentation: {config.train_images} train / {config.val_images} val images of "
        f"{config.image_size}x{config.image_size} per seed, {config.steps} steps of batch "
        f"{config.batch_size} per loss; mean class frequencies "
        + ", ".join(f"{n} {f:.2%}" for n, f in zip(CLASS_NAMES, freqs, strict=True))
    )
    brief = [m for m in metrics_spec if m.key in BRIEF_KEYS]
    parts = [header, class_table(summary, len(seeds)), ""]
    printed = "\n".join(
        [*parts, format_summary(summary, differences, baseline, brief, len(seeds)), "", *sentences]
    )
    table = "\n".join(
        [
            *parts,
            format_summary(summary, differences, baseline, metrics_spec, len(seeds)),
            "",
            *sentences,
        ]
    )
    print_fn(printed)
    print_fn("(every metric with its interval: table.txt)")
    wall = clock()
    metrics: dict[str, object] = {
        "demo": "segmentation",
        "command": command,
        "config": {**asdict(config), "losses": losses},
        "machine": machine,
        "wall_seconds": wall,
        "seeds": seeds,
        "losses": losses,
        "baseline": baseline,
        "interval_method": INTERVAL_METHOD,
        "class_names": list(CLASS_NAMES),
        "data": data_stats,
        "per_seed": per_seed,
        "summary": summary,
        "differences": differences,
        "sentences": sentences,
        "curves": curves,
    }
    figure = out / "demo.png"

    def draw() -> None:
        from .plots import segmentation_figure

        segmentation_figure(metrics, first["val"], first["predictions"], figure)  # type: ignore[arg-type]

    if try_figure(draw, figure, print_fn):
        metrics["figure"] = str(figure)
    write_outputs(out, metrics, table)
    print_fn(f"wrote {out / 'metrics.json'}, {out / 'table.txt'}, {figure} in {wall:.0f} s")
    if not all(math.isfinite(r["miou"]) for runs_ in per_seed.values() for r in runs_):
        raise RuntimeError("a run produced a non-finite metric")  # pragma: no cover
    return metrics
