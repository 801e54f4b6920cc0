"""Benchmark of issue 13's classification losses against their baselines, forward + backward.

Rows (float32, PyTorch backend):

* ``asymmetric_loss`` at (200000, 80) and (256, 20000) with multi-hot float targets (4% of the
  labels positive), against ``sigmoid_focal_loss`` on the same inputs (time) and against a
  plain-PyTorch re-statement of timm's ``AsymmetricLossMultiLabel`` formula, differentiated by
  autograd (memory); ``sigmoid_focal_loss_star`` on the same inputs, for reference;
* ``focal_tversky_loss`` at (8, 19, 256, 256) with class indices, 5% of the pixels at
  ``ignore_index=255``, against ``F.cross_entropy`` on the same inputs (time and memory), and
  a plain-PyTorch autograd re-statement of the focal Tversky loss (memory).

Every implementation runs in the same process on the same inputs, in interleaved rounds (the
order alternates between rounds, so drift of the machine hits all alike); the table reports
median and best times, the median over rounds of each round's time ratio to the row's
baseline, and the ratio of the best rounds. Peak memory is the largest amount allocated above
what existed before the step (inputs excluded, the input gradient included), from the
profiler's allocation events on the CPU and from the CUDA allocator on a GPU.

    python benchmarks/bench_classification.py                # CPU, 2 threads, 11 rounds
    python benchmarks/bench_classification.py --rounds 3 --json out.json
    python benchmarks/bench_classification.py --device cuda  # adds the Triton kernels
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from focalloss import (
    asymmetric_loss,
    focal_tversky_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)
from focalloss.benchmark import machine_description, peak_mb, sync

Loss = Callable[[Tensor, Tensor], Tensor]


def timm_style_asl(x: Tensor, y: Tensor, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
    """The formula of timm's AsymmetricLossMultiLabel, re-stated in plain PyTorch."""
    p = torch.sigmoid(x)
    p_neg = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p
    loss = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(p_neg.clamp(min=eps))
    pt = p * y + p_neg * (1 - y)
    loss = loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -loss.sum()


def autograd_focal_tversky(x: Tensor, t: Tensor, ignore_index=255, a=0.7, b=0.3, gamma=0.75):
    """The focal Tversky loss in plain PyTorch (one-hot targets, autograd)."""
    valid = (t != ignore_index).unsqueeze(1)
    g = F.one_hot(torch.where(valid.squeeze(1), t, 0), x.shape[1]).movedim(-1, 1).to(x.dtype)
    p = torch.softmax(x, 1) * valid
    g = g * valid
    dims = (0, *range(2, x.dim()))
    tp, fn, fp = (p * g).sum(dims), ((1 - p) * g).sum(dims), (p * (1 - g)).sum(dims)
    ti = (tp + 1) / (tp + a * fn + b * fp + 1)
    return ((1 - ti) ** gamma).mean()


def fwd_bwd(fn: Loss, x: Tensor, t: Tensor) -> Callable[[], None]:
    def step() -> None:
        leaf = x.detach().requires_grad_()
        fn(leaf, t).backward()

    return step


def run_row(
    name: str,
    x: Tensor,
    t: Tensor,
    impls: dict[str, Loss],
    time_base: str,
    memory_base: str,
    rounds: int,
    warmup: int,
) -> list[dict]:
    device = x.device
    steps = {k: fwd_bwd(fn, x, t) for k, fn in impls.items()}
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            sync(device)
            start = time.perf_counter()
            steps[k]()
            sync(device)
            times[k].append((time.perf_counter() - start) * 1e3)
    peaks = {k: peak_mb(step, device) for k, step in steps.items()}
    medians = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k in steps:
        # The ratio is the median over rounds of the ratio within each round (the two ran
        # back to back), which a machine shared with other jobs disturbs less than a ratio of
        # medians; the ratio of the best rounds is reported too.
        per_round = [a / b for a, b in zip(times[k], times[time_base], strict=True)]
        rows.append(
            dict(
                case=name,
                impl=k,
                ms=medians[k],
                best_ms=min(times[k]),
                time_ratio=statistics.median(per_round),
                best_ratio=min(times[k]) / min(times[time_base]),
                time_base=time_base,
                peak_mb=peaks[k],
                memory_ratio=peaks[k] / peaks[memory_base] if peaks[memory_base] else math.nan,
                memory_base=memory_base,
                rounds=times[k],
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", choices=["asl", "tversky"], default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = machine_description(device)
    print(
        f"bench_classification on {machine.get('gpu', machine.get('cpu', machine['processor']))}"
        f" ({machine.get('logical_cpus', '?')} logical CPUs), torch {machine['torch']}, "
        f"{machine['threads']} threads, float32; median of {args.rounds} interleaved rounds"
    )
    g = torch.Generator().manual_seed(0)
    triton = device.type == "cuda"
    results: list[dict] = []
    if args.only in (None, "asl"):
        for shape in [(200000, 80), (256, 20000)]:
            x = torch.randn(shape, generator=g).to(device)
            y = (torch.rand(shape, generator=g) < 0.04).float().to(device)
            impls: dict[str, Loss] = {
                "asymmetric_loss": lambda x, t: asymmetric_loss(x, t, backend="torch"),
                "sigmoid_focal_loss": lambda x, t: sigmoid_focal_loss(x, t, backend="torch"),
                "sigmoid_focal_loss_star": lambda x, t: sigmoid_focal_loss_star(
                    x, t, backend="torch"
                ),
                "timm-style (autograd)": timm_style_asl,
            }
            if triton:
                impls["asymmetric_loss triton"] = lambda x, t: asymmetric_loss(
                    x, t, backend="triton"
                )
                impls["sigmoid_focal_loss triton"] = lambda x, t: sigmoid_focal_loss(
                    x, t, backend="triton"
                )
            label = "x".join(map(str, shape))
            results += run_row(
                f"ASL {label} float",
                x,
                y,
                impls,
                "sigmoid_focal_loss",
                "timm-style (autograd)",
                args.rounds,
                args.warmup,
            )
            del x, y
    if args.only in (None, "tversky"):
        shape = (8, 19, 256, 256)
        x = torch.randn(shape, generator=g).to(device)
        t = torch.randint(0, 19, (8, 256, 256), generator=g)
        t[torch.rand(8, 256, 256, generator=g) < 0.05] = 255
        t = t.to(device)
        impls = {
            "focal_tversky_loss": lambda x, t: focal_tversky_loss(x, t, ignore_index=255),
            "focal_tversky per_image": lambda x, t: focal_tversky_loss(
                x, t, ignore_index=255, per_image=True
            ),
            "F.cross_entropy": lambda x, t: F.cross_entropy(x, t, ignore_index=255),
            "plain autograd Tversky": autograd_focal_tversky,
        }
        results += run_row(
            "focal Tversky 8x19x256x256 index",
            x,
            t,
            impls,
            "F.cross_entropy",
            "F.cross_entropy",
            args.rounds,
            args.warmup,
        )
    header = (
        f"{'case':<32} {'implementation':<26} {'median ms':>9} {'best ms':>8} {'ratio':>6} "
        f"{'best':>6} {'to':<19} {'peak MB':>8} {'ratio':>6} {'to':<21}"
    )
    print(header)
    print("-" * len(header))
    previous = None
    for r in results:
        case = r["case"] if r["case"] != previous else ""
        previous = r["case"]
        print(
            f"{case:<32} {r['impl']:<26} {r['ms']:>9.1f} {r['best_ms']:>8.1f} "
            f"{r['time_ratio']:>5.2f}x {r['best_ratio']:>5.2f}x {r['time_base']:<19} "
            f"{r['peak_mb']:>8.1f} {r['memory_ratio']:>5.2f}x {r['memory_base']:<21}"
        )
    print(
        "ratio: median over rounds of the time divided by the baseline's in the same round; "
        "best: best round over best round"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rounds": args.rounds, "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
