"""What Poly-1 (``poly1_epsilon != 0``) and a ``GammaSchedule`` add to the eager time of the loss
they extend, forward + backward, at (8, 19, 256, 256) float32 with class-index targets (5% of
the positions at ``ignore_index=255`` for the softmax loss; for the sigmoid loss, index 19 is
background).

Rows, each against its baseline in the same process on the same inputs:

* ``focal_loss``: ``gamma=2`` (baseline) vs ``gamma=2, poly1_epsilon=1``; ``gamma=3``
  (baseline: FLSD-53's value for p_t >= 0.2) vs ``GammaSchedule.flsd53()``; and the same with
  ``label_smoothing=0.1`` (the dense path);
* ``sigmoid_focal_loss``: the same pairs.

Interleaved rounds (the order alternates between rounds, so drift of a shared machine hits all
alike); the ratio is the median over rounds of each round's ratio to the baseline that ran next
to it, with the ratio of the best rounds beside it, for wall time and for the process's CPU time
(all threads; less disturbed by other jobs than wall time, on the CPU only). The CPU of the
machine this was written on is shared with other jobs: read the ratios, not the absolute times,
and rerun on a quiet machine for numbers to quote.

    python benchmarks/bench_poly_schedule.py               # CPU, 2 threads, 11 rounds
    python benchmarks/bench_poly_schedule.py --rounds 5 --json out.json
    python benchmarks/bench_poly_schedule.py --device cuda  # the Triton kernels
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from focalloss import GammaSchedule, focal_loss, sigmoid_focal_loss
from focalloss.benchmark import machine_description, sync

SHAPE = (8, 19, 256, 256)


def step_of(fn: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], None]:
    def step() -> None:
        leaf = x.detach().requires_grad_()
        fn(leaf).backward()

    return step


def compare(
    name: str, x: Tensor, impls: dict[str, Callable[[Tensor], Tensor]], rounds: int
) -> list[dict]:
    """Interleaved rounds of every implementation; ratios against the first."""
    steps = {k: step_of(fn, x) for k, fn in impls.items()}
    for step in steps.values():  # warm-up (allocator, caches, kernel compilation)
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            sync(x.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[k]()
            sync(x.device)
            times[k].append((time.perf_counter() - start) * 1e3)
            cpu[k].append((time.process_time() - start_cpu) * 1e3)
    base = order[0]
    rows = []
    for k in order:
        per_round = [a / b for a, b in zip(times[k], times[base], strict=True)]
        per_round_cpu = [a / b for a, b in zip(cpu[k], cpu[base], strict=True)]
        rows.append(
            dict(
                case=name,
                impl=k,
                baseline=base,
                ms=statistics.median(times[k]),
                best_ms=min(times[k]),
                ratio=statistics.median(per_round),
                best_ratio=min(times[k]) / min(times[base]),
                cpu_ms=statistics.median(cpu[k]),
                cpu_ratio=statistics.median(per_round_cpu),
                rounds=times[k],
                cpu_rounds=cpu[k],
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = machine_description(device)
    print(
        f"bench_poly_schedule on {machine.get('gpu', machine.get('cpu', machine['processor']))}"
        f" ({machine.get('logical_cpus', '?')} logical CPUs, shared with other jobs), torch "
        f"{machine['torch']}, {machine['threads']} threads, float32 {SHAPE}, median of "
        f"{args.rounds} interleaved rounds"
    )
    backend = "triton" if device.type == "cuda" else "torch"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g).to(device)
    index_shape = SHAPE[:1] + SHAPE[2:]
    t = torch.randint(0, SHAPE[1], index_shape, generator=g)
    t[torch.rand(index_shape, generator=g) < 0.05] = 255
    t = t.to(device)
    ts = torch.randint(0, SHAPE[1] + 1, index_shape, generator=g).to(device)  # 19: background
    flsd = GammaSchedule.flsd53()

    def softmax(**kw):
        return lambda z: focal_loss(z, t, ignore_index=255, backend=backend, **kw)

    def sigmoid(**kw):
        return lambda z: sigmoid_focal_loss(z, ts, backend=backend, **kw)

    cases: list[tuple[str, dict[str, Callable[[Tensor], Tensor]]]] = []
    for label, smoothing in (("", 0.0), (", label_smoothing=0.1", 0.1)):
        kw = dict(label_smoothing=smoothing) if smoothing else {}
        cases.append(
            (
                f"focal_loss{label}: Poly-1",
                {"gamma=2": softmax(gamma=2.0, **kw), "+ poly1": softmax(poly1_epsilon=1.0, **kw)},
            )
        )
        cases.append(
            (
                f"focal_loss{label}: FLSD-53",
                {"gamma=3": softmax(gamma=3.0, **kw), "flsd53": softmax(gamma=flsd, **kw)},
            )
        )
    cases.append(
        (
            "sigmoid_focal_loss: Poly-1",
            {"gamma=2": sigmoid(gamma=2.0), "+ poly1": sigmoid(poly1_epsilon=1.0)},
        )
    )
    cases.append(
        (
            "sigmoid_focal_loss: FLSD-53",
            {"gamma=3": sigmoid(gamma=3.0), "flsd53": sigmoid(gamma=flsd)},
        )
    )
    results = []
    print(
        f"{'case':42} {'impl':>8} {'median ms':>10} {'best ms':>8} {'ratio':>6} {'best':>6} "
        f"{'cpu ms':>8} {'cpu ratio':>9}"
    )
    for name, impls in cases:
        for row in compare(name, x, impls, args.rounds):
            results.append(row)
            print(
                f"{row['case']:42} {row['impl']:>8} {row['ms']:10.1f} {row['best_ms']:8.1f} "
                f"{row['ratio']:6.3f} {row['best_ratio']:6.3f} {row['cpu_ms']:8.1f} "
                f"{row['cpu_ratio']:9.3f}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(machine=machine, rounds=args.rounds, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
