"""Benchmark: ``linear_focal_loss`` (fused projection + focal loss) against the unfused
``focal_loss(F.linear(hidden, W), target)``, forward + backward.

Both run in one process, in interleaved rounds (the order alternates every round); the table
reports medians and the ratios fused / unfused. Memory is the peak of the step above what was
allocated before it, minus the parameter gradient ``W.grad`` (which both keep); it includes the
input gradient. On the CPU it is read from the profiler's allocation events (their running
sum); on CUDA from ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_linear.py                      # CPU, float32, the issue's two rows
    python benchmarks/bench_linear.py --device cuda        # bfloat16, N=8192 D=4096 V=128000,
                                                           # and Liger's fused linear CE if
                                                           # liger_kernel imports
    python benchmarks/bench_linear.py --schedule flsd53 --shape 1024,256,32000
                                                           # FLSD-53 in both, and the fused
                                                           # step with the number --gamma
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from focalloss import GammaSchedule, focal_loss, linear_focal_loss
from focalloss.benchmark import peak_mb

CPU_CASES = [(4096, 1024, 32000), (1024, 1024, 128000)]
CUDA_CASES = [(8192, 4096, 128000)]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}",
        f"{torch.get_num_threads()} threads",
    ]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    return "; ".join(parts)


def make_case(n: int, d: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(n, d, generator=g) * 1.0).to(device=device, dtype=dtype)
    weight = (torch.randn(v, d, generator=g) / d**0.5).to(device=device, dtype=dtype)
    target = torch.randint(0, v, (n,), generator=g).to(device)
    return hidden.requires_grad_(), weight.requires_grad_(), target


SCHEDULES = {"flsd53": GammaSchedule.flsd53()}


def methods(
    gamma: float, schedule: GammaSchedule | None = None, label_smoothing: float = 0.0
) -> dict[str, Callable]:
    """The steps to compare; with a schedule, ``unfused`` and ``fused`` use it and
    ``fused_number`` is the fused step with the number ``gamma`` (the schedule's cost)."""
    g = gamma if schedule is None else schedule
    eps = label_smoothing
    found: dict[str, Callable] = {
        "unfused": lambda x, w, t: focal_loss(F.linear(x, w), t, gamma=g, label_smoothing=eps),
        "fused": lambda x, w, t: linear_focal_loss(x, w, t, gamma=g, label_smoothing=eps),
    }
    if schedule is not None:
        found["fused_number"] = lambda x, w, t: linear_focal_loss(
            x, w, t, gamma=gamma, label_smoothing=eps
        )
    try:  # Liger's fused linear cross-entropy (gamma = 0 only: it has no focal term)
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        found["liger_ce"] = lambda x, w, t: liger(w, x, t)
        found["fused_ce"] = lambda x, w, t: linear_focal_loss(x, w, t, gamma=0.0)
    except Exception:  # not installed, or no GPU
        pass
    return found


def step(fn: Callable, x, w, t) -> None:
    x.grad = None
    w.grad = None
    fn(x, w, t).backward()


def run_case(
    n, d, v, dtype, device, rounds, gamma, include_liger, schedule=None, label_smoothing=0.0
):
    x, w, t = make_case(n, d, v, dtype, device)
    table = methods(gamma, schedule, label_smoothing)
    if not include_liger:
        table = {k: f for k, f in table.items() if k in ("unfused", "fused", "fused_number")}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    grad_bytes = w.numel() * w.element_size()

    # Memory, one measured step each (after a warm-up step).
    peaks = {}
    for name, fn in table.items():
        step(fn, x, w, t)
        sync()
        x.grad = None
        w.grad = None
        if device == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(x, w, t).backward()
            sync()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = int(peak_mb(lambda fn=fn: fn(x, w, t).backward(), torch.device("cpu")) * 1e6)
        peaks[name] = peak - grad_bytes
    x.grad = None
    w.grad = None

    # Time, interleaved rounds: wall clock, and the process's CPU time (all threads), which
    # other processes on a shared machine disturb less.
    times: dict[str, list[float]] = {k: [] for k in table}
    cpu_times: dict[str, list[float]] = {k: [] for k in table}
    names = list(table)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            step(table[name], x, w, t)
            sync()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    return {
        "shape": (n, d, v),
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "min_s": {k: min(v) for k, v in times.items()},
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu_times.items()},
        "rounds_s": times,
        "peak_extra_bytes": peaks,
    }


def report(result: dict) -> str:
    n, d, v = result["shape"]
    med, peaks = result["median_s"], result["peak_extra_bytes"]
    low, cpu = result["min_s"], result["median_cpu_s"]
    lines = [f"N={n} D={d} V={v}"]
    for name in med:
        lines.append(
            f"  {name:12s} median {med[name] * 1e3:9.1f} ms ({med[name] / med['unfused']:.2f}x)  "
            f"min {low[name] * 1e3:9.1f} ms ({low[name] / low['unfused']:.2f}x)  "
            f"CPU time {cpu[name]:7.1f} s ({cpu[name] / cpu['unfused']:.2f}x)  "
            f"peak above inputs and W.grad {peaks[name] / 2**20:8.1f} MiB "
            f"({peaks[name] / peaks['unfused']:.3f}x)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per method")
    parser.add_argument("--gamma", type=float, default=2.0)
    parser.add_argument("--shape", default=None, help="N,D,V (default: the issue's rows)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument(
        "--schedule", default=None, choices=sorted(SCHEDULES), help="gamma schedule (CPU rows)"
    )
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="(CPU rows)")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        run_cuda(args)
        return
    cases = [tuple(int(s) for s in args.shape.split(","))] if args.shape else CPU_CASES
    rounds = args.rounds or 5
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.1f}")
    schedule = SCHEDULES[args.schedule] if args.schedule else None
    gamma_text = f"schedule={schedule}, number gamma={args.gamma}" if schedule else args.gamma
    print(
        f"float32, fwd+bwd, gamma={gamma_text}, label_smoothing={args.label_smoothing}, "
        f"{rounds} interleaved rounds"
    )
    results = []
    for n, d, v in cases:
        result = run_case(
            n, d, v, torch.float32, "cpu", rounds, args.gamma, False, schedule,
            args.label_smoothing,
        )  # fmt: skip
        print(report(result), flush=True)
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": results}, f, indent=1)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def run_cuda(args: argparse.Namespace) -> None:
    """The GPU rows: bfloat16, N=8192, D=4096, V=128000 (targets: time <= 1.2x unfused, memory
    <= 1/5), and Liger's fused linear cross-entropy (against ours with gamma = 0) when
    ``liger_kernel`` imports."""
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    cases = [tuple(int(s) for s in args.shape.split(","))] if args.shape else CUDA_CASES
    rounds = args.rounds or 10
    print(f"machine: {machine()}")
    print(f"bfloat16, fwd+bwd, gamma={args.gamma}, {rounds} interleaved rounds")
    results = []
    for n, d, v in cases:
        result = run_case(n, d, v, torch.bfloat16, "cuda", rounds, args.gamma, True)
        print(report(result), flush=True)
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
