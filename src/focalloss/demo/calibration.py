"""``focalloss demo calibration``: does focal loss give better-calibrated probabilities?

Mukhoti et al. (2020) report that focal loss (gamma 3, and the sample-dependent FLSD-53)
trains classifiers whose confidence matches their accuracy better than cross-entropy does,
before and after temperature scaling. This demo checks that claim at a small scale, over seeds:

* Data: scikit-learn's handwritten digits (8x8 images, 10 classes, shipped with the package,
  nothing downloaded). Per seed: a balanced test split (60 per class), a balanced held-out
  split for temperature scaling (20 per class), and a long-tailed training set from the rest
  (class sizes ``90 * 10**(-r / 9)`` for the classes in a seed-drawn order r = 0..9: 90 to 9
  images, imbalance ratio 10).
* Model: an MLP (64 -> 128 -> 128 -> 10, ReLU), Adam, trained long enough to fit the
  training set (where cross-entropy becomes over-confident).
* Losses: a table of named configurations (``LOSS_TABLE``), all run by default: CE (the
  baseline), CE with label smoothing 0.05, ``focal_loss`` gamma 3, FLSD-53
  (``GammaSchedule.flsd53()`` as gamma) and Poly-1 CE (``poly1_epsilon=1``).
* Metrics on the test split: accuracy, ECE (15 equal-width bins) and NLL, before and after
  temperature scaling (``T`` fitted by NLL on the held-out split).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import focalloss

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
from .stats import (
    INTERVAL_METHOD,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
)

NUM_CLASSES = 10
ECE_BINS = 15
TEST_PER_CLASS, VAL_PER_CLASS = 60, 20
HEAD_SIZE, IMBALANCE = 90, 10.0


@dataclass(frozen=True)
class CalibrationLoss:
    """A named training-loss configuration: ``fn(logits, labels) -> loss``."""

    name: str
    description: str
    fn: Callable[[Tensor, Tensor], Tensor]


def _flsd53(logits: Tensor, labels: Tensor) -> Tensor:
    return focalloss.focal_loss(logits, labels, gamma=focalloss.GammaSchedule.flsd53())


def _poly1(logits: Tensor, labels: Tensor) -> Tensor:
    return focalloss.focal_loss(logits, labels, gamma=0.0, poly1_epsilon=1.0)


#: Every configuration the demo knows (all run by default); the first is the baseline.
LOSS_TABLE: tuple[CalibrationLoss, ...] = (
    CalibrationLoss("ce", "cross-entropy (F.cross_entropy)", lambda x, y: F.cross_entropy(x, y)),
    CalibrationLoss(
        "ce_ls",
        "cross-entropy with label smoothing 0.05 (F.cross_entropy)",
        lambda x, y: F.cross_entropy(x, y, label_smoothing=0.05),
    ),
    CalibrationLoss(
        "focal3", "focal_loss gamma 3", lambda x, y: focalloss.focal_loss(x, y, gamma=3.0)
    ),
    CalibrationLoss(
        "flsd53",
        "focal_loss with gamma=GammaSchedule.flsd53() (5 for p_t < 0.2, else 3)",
        _flsd53,
    ),
    CalibrationLoss(
        "poly1",
        "Poly-1 cross-entropy: focal_loss gamma 0, poly1_epsilon 1",
        _poly1,
    ),
)
LOSSES = tuple(entry.name for entry in LOSS_TABLE)


def loss_entry(name: str) -> CalibrationLoss:
    for entry in LOSS_TABLE:
        if entry.name == name:
            return entry
    raise ValueError(f"losses: expected names from {LOSSES}, got {name!r}")


@dataclass
class CalibrationConfig:
    """The calibration demo's settings."""

    seeds: int = 10
    seed: int = 0
    steps: int = 1500
    batch_size: int = 64
    hidden: int = 128
    lr: float = 1e-3
    losses: tuple[str, ...] = LOSSES
    device: str = "cpu"
    out: str = "focalloss-demo/calibration"
    threads: int | None = 1  # torch threads per process; see the module docstring of .common
    jobs: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))  # processes

    @classmethod
    def quick(cls, **overrides: object) -> CalibrationConfig:
        values: dict[str, object] = dict(jobs=1, seeds=2, steps=30, hidden=32)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class Splits:
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_order: list[int]  # head to tail
    train_counts: list[int]  # per class index


@functools.lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as ``(1797, 64)`` float32 in [0, 1] and ``(1797,)`` labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        from ..cli import MissingExtraError

        raise MissingExtraError(
            "focalloss demo calibration needs scikit-learn, which the demo extra installs: "
            'pip install "focalloss[demo]" (from a checkout: pip install -e ".[demo]")',
            name="sklearn",
        ) from error
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(digits.target, dtype=torch.long)


def tail_sizes(
    classes: int = NUM_CLASSES, head: int = HEAD_SIZE, ratio: float = IMBALANCE
) -> list[int]:
    """Exponential profile: rank r keeps ``round(head * ratio**(-r / (classes - 1)))``."""
    return [round(head * ratio ** (-r / (classes - 1))) for r in range(classes)]


def make_splits(x: Tensor, y: Tensor, seed: int) -> Splits:
    """Balanced test and held-out splits, and a long-tailed training set, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(NUM_CLASSES, generator=g).tolist()
    sizes = tail_sizes()
    parts: dict[str, list[Tensor]] = {"train": [], "val": [], "test": []}
    counts = [0] * NUM_CLASSES
    for rank, cls in enumerate(order):
        index = (y == cls).nonzero().squeeze(1)
        index = index[torch.randperm(len(index), generator=g)]
        parts["test"].append(index[:TEST_PER_CLASS])
        parts["val"].append(index[TEST_PER_CLASS : TEST_PER_CLASS + VAL_PER_CLASS])
        pool = index[TEST_PER_CLASS + VAL_PER_CLASS :]
        keep = pool[: sizes[rank]]
        parts["train"].append(keep)
        counts[cls] = len(keep)
    train, val, test = (torch.cat(parts[k]) for k in ("train", "val", "test"))
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], order, counts)


class MLP(nn.Sequential):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        )


def evaluate(
    logits_val: Tensor, logits_test: Tensor, splits: Splits
) -> tuple[dict[str, float], float]:
    """Accuracy, ECE and NLL on the test split before and after temperature scaling."""
    temperature = fit_temperature(logits_val, splits.val_y)
    y = splits.test_y
    probs = torch.softmax(logits_test.double(), 1)
    probs_ts = torch.softmax(logits_test.double() / temperature, 1)
    tail = splits.class_order[NUM_CLASSES // 2 :]
    in_tail = torch.isin(y, torch.tensor(tail))
    correct = probs.argmax(1) == y
    values = {
        "accuracy": float(correct.double().mean()),
        "accuracy_tail": float(correct[in_tail].double().mean()),
        "ece": expected_calibration_error(probs, y, ECE_BINS),
        "nll": nll(logits_test, y),
        "accuracy_ts": float((probs_ts.argmax(1) == y).double().mean()),
        "ece_ts": expected_calibration_error(probs_ts, y, ECE_BINS),
        "nll_ts": nll(logits_test, y, temperature),
        "temperature": temperature,
        "confidence": float(probs.max(1).values.mean()),
    }
    return values, temperature


def train_one(
    entry: CalibrationLoss,
    config: CalibrationConfig,
    seed: int,
    splits: Splits,
    initial_state: dict[str, Tensor],
    device: torch.device,
) -> tuple[dict[str, float], list[float], Tensor, float]:
    model = MLP(config.hidden).to(device)
    model.load_state_dict(initial_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(seed + 1)
    x, y = splits.train_x.to(device), splits.train_y.to(device)
    curve: list[float] = []
    bar = Progress(config.steps, f"seed {seed} {entry.name}", position=worker_position())
    clock = Clock()
    for _ in range(config.steps):
        index = torch.randint(0, len(x), (config.batch_size,), generator=order).to(device)
        loss = entry.fn(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
        bar.update({"loss": f"{curve[-1]:.4f}"})
    bar.close()
    seconds = clock()
    model.eval()
    with torch.no_grad():
        logits_val = model(splits.val_x.to(device)).cpu()
        logits_test = model(splits.test_x.to(device)).cpu()
    values, temperature = evaluate(logits_val, logits_test, splits)
    values["seconds"] = seconds
    return values, curve, logits_test, temperature


def run_one(config: CalibrationConfig, seed: int, name: str) -> dict[str, object]:
    """One loss on one seed: the splits, initial weights and batch order come from ``seed``;
    runs in the main process or a worker."""
    device = torch.device(config.device)
    x, y = load_digits_tensors()
    splits = make_splits(x, y, seed)
    torch.manual_seed(seed)
    initial = MLP(config.hidden).state_dict()
    values, curve, logits, _ = train_one(loss_entry(name), config, seed, splits, initial, device)
    return {
        "values": values,
        "curve": curve,
        "logits": logits,
        "labels": splits.test_y,
        "data": {
            "class_order_head_to_tail": splits.class_order,
            "train_counts": splits.train_counts,
        },
    }


def metric_list() -> list[Metric]:
    return [
        Metric("accuracy", "accuracy", headline=True),
        Metric("accuracy_tail", "accuracy, 5 rarest classes"),
        Metric("ece", "ECE", higher_is_better=False, headline=True),
        Metric("nll", "NLL", higher_is_better=False, headline=True),
        Metric("ece_ts", "ECE after TS", higher_is_better=False, headline=True),
        Metric("nll_ts", "NLL after TS", higher_is_better=False, headline=True),
        Metric("accuracy_ts", "accuracy after TS"),
        Metric("temperature", "temperature", higher_is_better=None),
        Metric("confidence", "mean confidence", higher_is_better=None),
    ]


def check_config(config: CalibrationConfig) -> None:
    check_common(
        "calibration", config.seeds, config.seed, config.losses, LOSSES, config.jobs, config.device
    )
    for name in config.losses:
        loss_entry(name)
    for key in ("steps", "batch_size", "hidden"):
        if getattr(config, key) < 1:
            raise ValueError(f"{key}: expected >= 1, got {getattr(config, key)}")


@keeps_thread_count
def run_calibration(
    config: CalibrationConfig,
    print_fn: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, object]:
    """Run every loss on every seed; print and write the summary; return the metrics."""
    check_config(config)
    load_digits_tensors()  # a clear error before any work when scikit-learn is missing
    device = resolve_device(config.device, config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    machine = machine_info(device)
    seeds = seed_list(config.seed, config.seeds)
    entries = [loss_entry(name) for name in config.losses]
    items = [(seed, e.name) for seed in seeds for e in entries]
    results = run_grid(
        functools.partial(run_one, config),
        items,
        config.jobs,
        config.threads,
        "calibration runs",
        lambda item, r: {
            "seed": str(item[0]),
            "loss": str(item[1]),
            "ECE": f"{r['values']['ece']:.3f}",  # type: ignore[index]
        },
    )
    per_seed: dict[str, list[dict[str, float]]] = {e.name: [] for e in entries}
    curves: dict[str, list[dict[str, object]]] = {e.name: [] for e in entries}
    pooled: dict[str, dict[str, list[Tensor]]] = {
        e.name: {"probs": [], "probs_ts": [], "labels": []} for e in entries
    }
    data_stats = []
    for (seed, name), result in zip(items, results, strict=True):
        values = result["values"]
        per_seed[name].append({"seed": seed, **values})  # type: ignore[dict-item]
        curve = result["curve"]
        curves[name].append({"seed": seed, "train_loss": curve[:: max(1, len(curve) // 300)]})  # type: ignore[index,arg-type]
        logits = result["logits"]
        temperature = values["temperature"]  # type: ignore[index]
        pooled[name]["probs"].append(torch.softmax(logits.double(), 1))  # type: ignore[union-attr]
        pooled[name]["probs_ts"].append(torch.softmax(logits.double() / temperature, 1))  # type: ignore[union-attr]
        pooled[name]["labels"].append(result["labels"])  # type: ignore[arg-type]
        if name == entries[0].name:
            data_stats.append({"seed": seed, **result["data"]})  # type: ignore[dict-item]

    reliability: dict[str, object] = {}
    for name, parts in pooled.items():
        labels = torch.cat(parts["labels"])
        reliability[name] = {}
        for key in ("probs", "probs_ts"):
            probs = torch.cat(parts[key])
            count, conf, acc = reliability_bins(probs, labels, ECE_BINS)
            reliability[name][key] = {  # type: ignore[index]
                "count": count.tolist(),
                "confidence": conf.tolist(),
                "accuracy": acc.tolist(),
                "pooled_ece": expected_calibration_error(probs, labels, ECE_BINS),
            }

    spec = metric_list()
    baseline = entries[0].name
    summary, differences, sentences = summarise(per_seed, baseline, spec)
    header = "\n".join(
        [
            f"calibration: digits, long-tailed training set ({sum(data_stats[0]['train_counts'])} "
            f"images, {HEAD_SIZE} to {tail_sizes()[-1]} per class), {VAL_PER_CLASS * NUM_CLASSES} "
            f"held-out (temperature), {TEST_PER_CLASS * NUM_CLASSES} test images per seed; MLP, "
            f"{config.steps} steps of batch {config.batch_size}; ECE with {ECE_BINS} bins; "
            "TS = temperature scaling",
            *(f"  {e.name}: {e.description}" for e in entries),
        ]
    )
    table = "\n".join(
        [header, format_summary(summary, differences, baseline, spec, len(seeds)), "", *sentences]
    )
    print_fn(table)
    wall = clock()
    metrics: dict[str, object] = {
        "demo": "calibration",
        "command": command,
        "config": {**asdict(config), "losses": list(config.losses)},
        "loss_table": {e.name: {"description": e.description} for e in LOSS_TABLE},
        "machine": machine,
        "wall_seconds": wall,
        "seeds": seeds,
        "losses": [e.name for e in entries],
        "baseline": baseline,
        "interval_method": INTERVAL_METHOD,
        "ece_bins": ECE_BINS,
        "data": data_stats,
        "per_seed": per_seed,
        "summary": summary,
        "differences": differences,
        "sentences": sentences,
        "reliability_pooled": reliability,
        "curves": curves,
    }
    figure = out / "calibration.png"

    def draw() -> None:
        from .plots import calibration_figure

        calibration_figure(metrics, figure)

    if try_figure(draw, figure, print_fn):
        metrics["figure"] = str(figure)
    write_outputs(out, metrics, table)
    print_fn(f"wrote {out / 'metrics.json'}, {out / 'table.txt'}, {figure} in {wall:.0f} s")
    if not all(math.isfinite(r["nll"]) for rs in per_seed.values() for r in rs):
        raise RuntimeError("a run produced a non-finite NLL")  # pragma: no cover
    return metrics
