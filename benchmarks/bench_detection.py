"""The issue-12 benchmark: varifocal, quality focal and distribution focal loss.

* VFL and QFL on ``(200000, 80)`` logits (200k anchors, 80 classes; 1% of the anchors carry an
  object class with an IoU score in (0, 1], the rest background), dense float scores and
  class indices + score: forward+backward time against ``sigmoid_focal_loss`` on the same
  shape and target form, peak memory against a plain-PyTorch re-statement of mmdet's formula
  (autograd keeps its temporaries).
* DFL on ``(400000, 17)`` logits (100k boxes x 4 sides, 16 intervals): against one
  ``F.cross_entropy`` over the same logits, and against the re-statement of mmdet's formula
  (two cross-entropies).

Every case runs its implementations on the same inputs, in interleaved rounds (each round runs
every implementation once); the median of the rounds after warm-up is reported, with ratios to
the case's baseline measured in the same process. Peak memory is the largest amount allocated
above the inputs while forward+backward runs (the CPU profiler's allocation events, or the CUDA
allocator's statistics). The machine is printed first. On a CPU shared with other work, the
times move from run to run; compare the ratios of one run.

usage: python benchmarks/bench_detection.py [--rounds 7] [--threads 2] [--device cpu] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from focalloss import benchmark as focalloss_benchmark
from focalloss import (
    distribution_focal_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)
from focalloss.benchmark import Case, machine_description

# --------------------------------------------------------------------------------------------
# Plain-PyTorch re-statements of mmdet's formulas (autograd differentiates them)
# --------------------------------------------------------------------------------------------


def mmdet_style_vfl(x: Tensor, q: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """VFL as mmdet writes it: a focal weight tensor times the elementwise BCE, mean."""
    p = x.sigmoid()
    positive = (q > 0.0).to(x.dtype)
    weight = q * positive + alpha * (p - q).abs().pow(gamma) * (1.0 - positive)
    return (F.binary_cross_entropy_with_logits(x, q, reduction="none") * weight).mean()


def mmdet_style_qfl(x: Tensor, label: Tensor, score: Tensor, beta: float = 2.0) -> Tensor:
    """QFL as mmdet writes it: every output as a negative, then the labelled outputs replaced
    by their BCE against the score; sum over classes, mean over anchors."""
    p = x.sigmoid()
    loss = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    loss = loss * p.pow(beta)
    pos = ((label >= 0) & (label < x.shape[1])).nonzero().squeeze(1)
    cls = label[pos]
    factor = score[pos] - p[pos, cls]
    loss[pos, cls] = F.binary_cross_entropy_with_logits(
        x[pos, cls], score[pos], reduction="none"
    ) * factor.abs().pow(beta)
    return loss.sum(1).mean()


def mmdet_style_dfl(x: Tensor, y: Tensor) -> Tensor:
    """DFL as mmdet writes it: two cross-entropies weighted by the distances to the bins."""
    left = y.long()
    right = left + 1
    w_left = right.to(y.dtype) - y
    w_right = y - left.to(y.dtype)
    return (
        F.cross_entropy(x, left, reduction="none") * w_left
        + F.cross_entropy(x, right, reduction="none") * w_right
    ).mean()


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def _anchors(shape, device, dtype, positive_fraction, seed):
    """Logits, class indices (C = background), IoU scores, and the dense score tensor."""
    g = torch.Generator().manual_seed(seed)
    n, c = shape
    x = torch.randn(shape, generator=g).to(device, dtype)
    label = torch.randint(0, c, (n,), generator=g)
    label[torch.rand(n, generator=g) >= positive_fraction] = c
    score = torch.rand(n, generator=g).clamp_(min=1e-3)
    dense = torch.zeros(n, c + 1)
    dense[torch.arange(n), label] = score
    return x, label.to(device), score.to(device), dense[:, :c].contiguous().to(device, dtype)


def score_cases(shape, device, dtype, positive_fraction=0.01, seed=0) -> list[Case]:
    """VFL and QFL, dense scores and class indices + score; the baseline is
    sigmoid_focal_loss with the same target form (the dense scores as soft labels, or the
    class indices)."""
    data: dict[str, Tensor] = {}

    def make(kind: str) -> tuple[Tensor, Tensor]:
        x, label, score, dense = _anchors(shape, device, dtype, positive_fraction, seed)
        data.update(label=label, score=score, dense=dense)
        return x, (dense if kind == "dense" else label)

    def scored(fn, backend):
        """The loss on the case's target: dense scores, or class indices + the scores."""

        def call(x: Tensor, t: Tensor) -> Tensor:
            extra = () if t.is_floating_point() else (data["score"],)
            return fn(x, t, *extra, backend=backend)

        return call

    elem = torch.finfo(dtype).bits // 8
    logits = math.prod(shape)
    label_txt = "x".join(map(str, shape))
    cases = []
    for kind in ("dense", "index"):
        nbytes = 3 * logits * elem if kind == "dense" else 2 * logits * elem + shape[0] * 12
        for name, fn, restated in [
            ("VFL", varifocal_loss, lambda x, t: mmdet_style_vfl(x, data["dense"])),
            ("QFL", quality_focal_loss,
             lambda x, t: mmdet_style_qfl(x, data["label"], data["score"])),
        ]:  # fmt: skip
            impls = {
                "sigmoid_focal_loss": lambda x, t: sigmoid_focal_loss(x, t, backend="torch"),
                fn.__name__: scored(fn, "torch"),
                f"mmdet-style {name}": restated,
            }
            if device.type == "cuda":
                impls[f"{fn.__name__} triton"] = scored(fn, "triton")
            cases.append(
                Case(
                    f"{name} {label_txt} {kind}",
                    lambda kind=kind: make(kind),
                    impls,
                    "sigmoid_focal_loss",
                    nbytes,
                )
            )
    return cases


def dfl_cases(shape, device, dtype, seed=0) -> list[Case]:
    def make():
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g).to(device, dtype)
        y = torch.rand(shape[0], generator=g) * (shape[1] - 1) * 0.999  # [0, n): mmdet's range
        return x, y.to(device)

    impls = {
        "F.cross_entropy": lambda x, y: F.cross_entropy(x, y.long()),
        "distribution_focal_loss": lambda x, y: distribution_focal_loss(x, y, backend="torch"),
        "mmdet-style DFL": mmdet_style_dfl,
    }
    if device.type == "cuda":
        impls["distribution_focal_loss triton"] = lambda x, y: distribution_focal_loss(
            x, y, backend="triton"
        )
    elem = torch.finfo(dtype).bits // 8
    nbytes = 2 * math.prod(shape) * elem + shape[0] * 4
    label = "x".join(map(str, shape))
    return [Case(f"DFL {label}", make, impls, "F.cross_entropy", nbytes)]


def run(case: Case, device: torch.device, rounds: int, warmup: int) -> list[dict]:
    """Interleaved rounds of forward+backward: wall time and the process's CPU time (less
    sensitive to other work on a shared machine), medians; peak memory once."""
    x, t = case.inputs()
    steps = {}
    for name, fn in case.impls.items():

        def step(fn=fn) -> None:
            leaf = x.detach().requires_grad_()
            fn(leaf, t).backward()

        steps[name] = step
    for step in steps.values():
        for _ in range(warmup):
            step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall[name].append((time.perf_counter() - w0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    rows = []
    for name, step in steps.items():
        rows.append(
            dict(
                case=case.name,
                impl=name,
                wall_ms=statistics.median(wall[name]),
                cpu_ms=statistics.median(cpu[name]),
                peak_mb=focalloss_benchmark.peak_mb(step, device),
                wall_rounds_ms=wall[name],
                cpu_rounds_ms=cpu[name],
            )
        )
    base = next(r for r in rows if r["impl"] == case.baseline)
    restated = next((r for r in rows if r["impl"].startswith("mmdet-style")), None)
    for r in rows:
        r["wall_ratio"] = r["wall_ms"] / base["wall_ms"]
        r["cpu_ratio"] = r["cpu_ms"] / base["cpu_ms"]
        # The same round's times are the closest in machine state: the median of the
        # per-round ratios moves less than the ratio of the medians on a busy machine.
        r["round_ratio"] = statistics.median(
            a / b for a, b in zip(wall[r["impl"]], wall[case.baseline], strict=True)
        )
        r["peak_vs_mmdet"] = r["peak_mb"] / restated["peak_mb"] if restated else math.nan
    return rows


def format_rows(rows: list[dict], baseline: str) -> str:
    lines = [
        f"{rows[0]['case']}  (ratios to {baseline}; peak memory to the mmdet-style re-statement)",
        f"  {'implementation':<30} {'wall ms':>9} {'ratio':>6} {'per-round':>9} {'cpu ms':>9} "
        f"{'ratio':>6} {'peak MB':>8} {'vs mmdet':>8}",
    ]
    for r in rows:
        lines.append(
            f"  {r['impl']:<30} {r['wall_ms']:>9.1f} {r['wall_ratio']:>5.2f}x "
            f"{r['round_ratio']:>8.2f}x {r['cpu_ms']:>9.1f} {r['cpu_ratio']:>5.2f}x "
            f"{r['peak_mb']:>8.1f} {r['peak_vs_mmdet']:>7.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--anchors", type=int, default=200000)
    parser.add_argument("--boxes", type=int, default=100000)
    parser.add_argument("--only", choices=["VFL", "QFL", "DFL"], default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    machine = machine_description(device)
    machine["load_average"] = os.getloadavg()  # other work on the machine
    print("machine:", json.dumps(machine))
    print(
        f"forward+backward, median of {args.rounds} interleaved rounds after {args.warmup} "
        f"warm-up: wall time, its ratio to the case's baseline, the median of the per-round "
        f"ratios, and the process's CPU time; all in this process (on a CPU shared with other "
        f"work the times move from run to run)"
    )
    cases = score_cases((args.anchors, 80), device, torch.float32)
    cases += dfl_cases((4 * args.boxes, 17), device, torch.float32)
    if args.only:
        cases = [c for c in cases if c.name.startswith(args.only)]
    results = []
    for case in cases:
        rows = run(case, device, args.rounds, args.warmup)
        results += rows
        print(format_rows(rows, case.baseline), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
