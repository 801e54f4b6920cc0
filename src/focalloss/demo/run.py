"""Train the same U-Net (same initial weights, same data order, same steps) with each loss and
report what changes: per-class IoU, recall and precision, and where the loss comes from.

Losses: ``ce`` (``torch.nn.CrossEntropyLoss``), ``focal`` (``focalloss.FocalLoss``, gamma 2,
optionally class-balanced alpha), ``seed`` (the seed module's training behaviour:
``FocalLoss(detach_modulator=True)``). Whatever the run gives is what is reported.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import FocalLoss
from ..weights import class_balanced_weights
from .data import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, SegmentationSet, make_dataset
from .unet import UNet

LOSSES = ("ce", "focal", "seed")


@dataclass
class DemoConfig:
    steps: int = 1000
    batch_size: int = 16
    image_size: int = 48
    train_images: int = 256
    val_images: int = 48
    gamma: float = 2.0
    alpha: str = "none"  # "none" or "balanced"
    losses: tuple[str, ...] = ("ce", "focal")
    lr: float = 3e-3
    seed: int = 0
    device: str = "cpu"
    out: str = "focalloss-demo"
    eval_every: int = 100
    threads: int | None = None

    @classmethod
    def quick(cls, **overrides: object) -> DemoConfig:
        """A smoke run of a few seconds (for tests)."""
        values: dict[str, object] = dict(
            steps=6, batch_size=4, image_size=32, train_images=16, val_images=4, eval_every=3
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class RunResult:
    loss: str
    curve_steps: list[int] = field(default_factory=list)
    curve_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_miou: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    miou: float = 0.0
    easy_loss_share: float = 0.0
    easy_pixel_share: float = 0.0
    seconds: float = 0.0
    images_per_second: float = 0.0


def _criterion(name: str, config: DemoConfig, train: SegmentationSet) -> nn.Module:
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


def _confusion(pred: Tensor, mask: Tensor) -> Tensor:
    keep = mask != IGNORE_INDEX
    index = mask[keep] * NUM_CLASSES + pred[keep]
    return torch.bincount(index, minlength=NUM_CLASSES**2).view(NUM_CLASSES, NUM_CLASSES)


def _scores(confusion: Tensor) -> tuple[list[float], list[float], list[float]]:
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
    """Predicted classes and logits of the validation set."""
    model.eval()
    logits = torch.cat([model(x.to(device)).cpu() for x in data.images.split(16)])
    model.train()
    return logits.argmax(1), logits


def _easy_share(logits: Tensor, masks: Tensor, criterion: nn.Module) -> tuple[float, float]:
    """Share of the total loss carried by easy pixels (p_t > 0.9), and their share of pixels."""
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
    easy = (p_t > 0.9) & keep
    total = per_pixel[keep].sum().clamp(min=1e-30)
    return float(per_pixel[easy].sum() / total), float(easy.sum() / keep.sum())


def _progress(
    total: int, description: str
) -> tuple[Callable[[dict[str, str]], None], Callable[[], None]]:
    """A tqdm bar when tqdm is installed, else a line every tenth of the run."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - the demo extra installs tqdm
        count = [0]

        def update(info: dict[str, str]) -> None:
            count[0] += 1
            if count[0] % max(1, total // 10) == 0 or count[0] == total:
                print(
                    f"{description}: step {count[0]}/{total} "
                    + " ".join(f"{k}={v}" for k, v in info.items())
                )

        return update, lambda: None
    bar = tqdm(total=total, desc=description, unit="step", leave=True, dynamic_ncols=True)

    def update(info: dict[str, str]) -> None:
        bar.set_postfix(info, refresh=False)
        bar.update(1)

    return update, bar.close


def train_one(
    name: str,
    config: DemoConfig,
    train: SegmentationSet,
    val: SegmentationSet,
    initial_state: dict[str, Tensor],
    device: torch.device,
) -> tuple[RunResult, Tensor]:
    model = UNet(in_channels=1, num_classes=NUM_CLASSES).to(device)
    model.load_state_dict(initial_state)
    criterion = _criterion(name, config, train).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(config.seed + 1)  # the same data order for every loss
    result = RunResult(loss=name)
    update, close = _progress(config.steps, f"{name:>5}")
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        index = torch.randint(0, len(train.images), (config.batch_size,), generator=order)
        x, y = train.images[index].to(device), train.masks[index].to(device)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.curve_steps.append(step)
        result.curve_loss.append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            pred, _ = evaluate(model, val, device)
            iou, _, _ = _scores(_confusion(pred, val.masks))
            result.eval_steps.append(step)
            result.eval_miou.append(sum(iou) / len(iou))
        elapsed = time.perf_counter() - start
        update(
            {
                "loss": f"{result.curve_loss[-1]:.4f}",
                "img/s": f"{step * config.batch_size / elapsed:.0f}",
            }
        )
    close()
    result.seconds = time.perf_counter() - start
    result.images_per_second = config.steps * config.batch_size / result.seconds
    pred, logits = evaluate(model, val, device)
    result.iou, result.recall, result.precision = _scores(_confusion(pred, val.masks))
    result.miou = sum(result.iou) / len(result.iou)
    result.easy_loss_share, result.easy_pixel_share = _easy_share(logits, val.masks, criterion)
    return result, pred


def format_table(results: list[RunResult]) -> str:
    lines = []
    header = (
        f"{'loss':<6} {'metric':<10}" + "".join(f"{n:>12}" for n in CLASS_NAMES) + f"{'mean':>9}"
    )
    lines += [header, "-" * len(header)]
    for r in results:
        for metric, values in (("IoU", r.iou), ("recall", r.recall), ("precision", r.precision)):
            mean = sum(values) / len(values)
            lines.append(
                f"{r.loss if metric == 'IoU' else '':<6} {metric:<10}"
                + "".join(f"{v:>12.3f}" for v in values)
                + f"{mean:>9.3f}"
            )
    lines.append("")
    lines.append(
        f"{'loss':<6} {'mIoU':>7} {'easy-pixel share of loss':>26} {'easy pixels':>12} {'img/s':>7}"
    )
    for r in results:
        lines.append(
            f"{r.loss:<6} {r.miou:>7.3f} {r.easy_loss_share:>26.1%} {r.easy_pixel_share:>12.1%} "
            f"{r.images_per_second:>7.0f}"
        )
    return "\n".join(lines)


def run_demo(config: DemoConfig, print_fn: Callable[[str], None] = print) -> dict[str, object]:
    """Run the demo; returns the metrics written to ``metrics.json``."""
    for name in config.losses:
        if name not in LOSSES:
            raise ValueError(f"losses: expected names from {LOSSES}, got {name!r}")
    if config.alpha not in ("none", "balanced"):
        raise ValueError(f"alpha: expected 'none' or 'balanced', got {config.alpha!r}")
    if config.steps < 1 or config.batch_size < 1:
        raise ValueError(
            f"steps and batch_size: expected >= 1, got {config.steps}, {config.batch_size}"
        )
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    train = make_dataset(config.train_images, config.image_size, seed=config.seed)
    val = make_dataset(config.val_images, config.image_size, seed=config.seed + 10_000)
    freqs = train.class_frequencies()
    print_fn(
        f"data: {config.train_images} train / {config.val_images} val images of "
        f"{config.image_size}x{config.image_size}; class frequencies "
        + ", ".join(f"{n} {f:.2%}" for n, f in zip(CLASS_NAMES, freqs, strict=True))
        + f"; ignored {train.ignored_fraction():.1%} of pixels"
    )
    torch.manual_seed(config.seed)
    initial_state = {k: v.clone() for k, v in UNet(1, NUM_CLASSES).state_dict().items()}

    results, predictions = [], {}
    for name in config.losses:
        result, pred = train_one(name, config, train, val, initial_state, device)
        results.append(result)
        predictions[name] = pred
    table = format_table(results)
    print_fn(table)

    metrics: dict[str, object] = {
        "config": {**asdict(config), "losses": list(config.losses)},
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "class_names": list(CLASS_NAMES),
        "class_frequencies": freqs,
        "ignored_fraction": train.ignored_fraction(),
        "runs": [asdict(r) for r in results],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "table.txt").write_text(table + "\n")
    figure = out / "demo.png"
    try:
        from .plots import demo_figure

        demo_figure(results, val, predictions, figure)
        metrics["figure"] = str(figure)
        print_fn(f"wrote {out / 'metrics.json'}, {out / 'table.txt'} and {figure}")
    except ImportError:
        print_fn(f"wrote {out / 'metrics.json'}; install matplotlib for {figure}")
    if not all(math.isfinite(r.miou) for r in results):  # pragma: no cover - a real failure
        raise RuntimeError("a run produced a non-finite metric")
    return metrics
