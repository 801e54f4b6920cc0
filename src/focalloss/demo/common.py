"""What the three demos share: the seeds, progress bars, the machine description, the summary
over seeds (mean, spread, paired differences with intervals) and the output files.

Threads: the demos run with one torch thread unless ``--threads`` says otherwise. Their models
are small, so a second OpenMP thread gains little on an idle machine, and on a busy one (a
shared CPU, other jobs) OpenMP threads that wait for each other made the same training steps
many times slower: on the 2-core machine of the results, under load from other processes, a
small MLP step took 1.1 ms with one thread and 207 ms with two, a U-Net step 240 ms and
1635 ms. One thread keeps the run time predictable.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from .stats import INTERVAL_METHOD, Spread, paired_difference, verdict


@dataclass(frozen=True)
class Metric:
    """A scalar the demo reports per seed and summarises over seeds."""

    key: str
    label: str
    higher_is_better: bool | None = True  # None: descriptive, no better/worse
    headline: bool = False  # printed with a sentence on the difference to the baseline


class Progress:
    """A tqdm bar (the ``demo`` extra installs tqdm), else a line every tenth of the run."""

    def __init__(
        self, total: int, description: str, leave: bool = False, position: int = 0
    ) -> None:
        self.total, self.description, self.count = total, description, 0
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - the demo extra installs tqdm
            self.bar = None
        else:
            self.bar = tqdm(
                total=total, desc=description, leave=leave, position=position, dynamic_ncols=True
            )

    def update(self, info: dict[str, str] | None = None) -> None:
        self.count += 1
        if self.bar is not None:
            if info:
                self.bar.set_postfix(info, refresh=False)
            self.bar.update(1)
        elif self.count % max(1, self.total // 10) == 0 or self.count == self.total:
            extra = " ".join(f"{k}={v}" for k, v in (info or {}).items())
            print(f"{self.description}: {self.count}/{self.total} {extra}".rstrip(), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def worker_position() -> int:
    """The progress-bar line of this process: 1 in the main process, 1 + the worker's number
    in a worker (the runs' outer bar is line 0)."""
    identity = multiprocessing.current_process()._identity
    return 1 + (identity[0] if identity else 0)


def _init_worker(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def run_grid(
    fn: Callable[..., dict[str, object]],
    items: Sequence[tuple[object, ...]],
    jobs: int,
    threads: int | None,
    description: str,
    postfix: Callable[[tuple[object, ...], dict[str, object]], dict[str, str]],
) -> list[dict[str, object]]:
    """``[fn(*item) for item in items]``, in ``jobs`` worker processes when ``jobs > 1``.

    Each run seeds everything it draws from its own arguments, so the results do not depend
    on ``jobs`` or on the order in which runs finish. Workers are started with ``spawn`` and
    run ``threads`` torch threads each.
    """
    outer = Progress(len(items), description, leave=True, position=0)
    results: list[dict[str, object] | None] = [None] * len(items)
    if jobs <= 1:
        for index, item in enumerate(items):
            results[index] = fn(*item)
            outer.update(postfix(item, results[index]))  # type: ignore[arg-type]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(fn, *item): index for index, item in enumerate(items)}
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                outer.update(postfix(items[index], results[index]))  # type: ignore[arg-type]
    outer.close()
    return results  # type: ignore[return-value]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, object]:
    """What metrics.json records about where the numbers came from."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def check_common(
    task: str,
    seeds: int,
    first_seed: int,
    losses: Sequence[str],
    known: Sequence[str],
    jobs: int = 1,
    device: str = "cpu",
) -> None:
    if jobs < 1:
        raise ValueError(f"jobs: expected at least 1 process, got {jobs}")
    if jobs > 1 and device != "cpu":
        raise ValueError(
            f"jobs: worker processes are for device='cpu', got jobs={jobs} with device={device!r}"
        )
    if seeds < 1:
        raise ValueError(f"seeds: expected at least 1 seed, got {seeds}")
    if first_seed < 0:
        raise ValueError(f"seed: expected a non-negative first seed, got {first_seed}")
    if len(losses) == 0:
        raise ValueError(f"losses: expected at least one name from {tuple(known)}, got none")
    for name in losses:
        if name not in known:
            raise ValueError(f"losses: expected names from {tuple(known)} for {task}, got {name!r}")
    if len(set(losses)) != len(losses):
        raise ValueError(f"losses: expected each name once, got {list(losses)}")


def keeps_thread_count(run: Callable[..., dict[str, object]]) -> Callable[..., dict[str, object]]:
    """Restore torch's thread count after ``run`` (the demos set ``--threads`` for
    themselves, not for the caller's process)."""

    @functools.wraps(run)
    def wrapper(*args: object, **kwargs: object) -> dict[str, object]:
        before = torch.get_num_threads()
        try:
            return run(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def resolve_device(name: str, threads: int | None) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        torch.set_num_threads(threads)
    return device


def summarise(
    per_seed: dict[str, list[dict[str, float]]], baseline: str, metrics: Sequence[Metric]
) -> tuple[dict[str, object], dict[str, object], list[str]]:
    """Per loss and metric the spread over seeds; per non-baseline loss the paired difference
    to ``baseline`` with its interval and sentence; the headline sentences."""
    summary: dict[str, object] = {}
    differences: dict[str, object] = {}
    sentences: list[str] = []
    for loss, runs in per_seed.items():
        summary[loss] = {
            m.key: vars(Spread.of([run[m.key] for run in runs]))
            for m in metrics
            if all(m.key in run for run in runs)
        }
    base_runs = per_seed.get(baseline)
    if base_runs is None:
        return summary, differences, sentences
    for loss, runs in per_seed.items():
        if loss == baseline:
            continue
        entry: dict[str, object] = {}
        for m in metrics:
            if not all(m.key in run for run in runs + base_runs):
                continue
            diff = paired_difference([r[m.key] for r in runs], [r[m.key] for r in base_runs])
            sentence = verdict(loss, baseline, m.label, diff, m.higher_is_better)
            entry[m.key] = {**diff.to_dict(), "sentence": sentence}
            if m.headline:
                sentences.append(sentence)
        differences[loss] = entry
    return summary, differences, sentences


def _fmt(value: float, signed: bool = False) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def format_summary(
    summary: dict[str, object],
    differences: dict[str, object],
    baseline: str,
    metrics: Sequence[Metric],
    seeds: int,
) -> str:
    """One block per metric: each loss's mean, sd, min and max over seeds and, for the losses
    other than the baseline, the paired difference with its 95% t-interval."""
    width = max(len(m.label) for m in metrics) + 2
    names = list(summary)
    lw = max(8, *(len(n) + 2 for n in names))
    header = (
        f"{'metric':<{width}}{'loss':<{lw}}{'mean':>8}{'sd':>8}{'min':>8}{'max':>8}"
        f"{'diff vs ' + baseline:>{max(14, len(baseline) + 10)}}   95% interval         verdict"
    )
    lines = [f"over {seeds} seed{'s' if seeds != 1 else ''}; {INTERVAL_METHOD}", header]
    lines.append("-" * len(header))
    for m in metrics:
        first = True
        for loss in names:
            stats = summary[loss].get(m.key)  # type: ignore[union-attr]
            if stats is None:
                continue
            row = (
                f"{m.label if first else '':<{width}}{loss:<{lw}}{_fmt(stats['mean']):>8}"
                f"{_fmt(stats['sd']):>8}{_fmt(stats['min']):>8}{_fmt(stats['max']):>8}"
            )
            diff = differences.get(loss, {}).get(m.key)  # type: ignore[union-attr]
            if diff is not None:
                if diff["n"] < 2:
                    tag = "one seed"
                elif diff["distinguishable"]:
                    tag = "higher" if diff["mean"] > 0 else "lower"
                    if m.higher_is_better is not None:
                        tag = "better" if (diff["mean"] > 0) == m.higher_is_better else "worse"
                else:
                    tag = "no diff."
                row += (
                    f"{_fmt(diff['mean'], True):>{max(14, len(baseline) + 10)}}   "
                    f"[{_fmt(diff['low'], True)}, {_fmt(diff['high'], True)}]  {tag}"
                )
            lines.append(row)
            first = False
    return "\n".join(lines)


def write_outputs(out: Path, metrics: dict[str, object], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    (out / "table.txt").write_text(table + "\n")


def try_figure(draw: Callable[[], None], path: Path, print_fn: Callable[[str], None]) -> bool:
    """Draw a figure if matplotlib is installed; say so otherwise."""
    try:
        draw()
    except ImportError as error:  # pragma: no cover - the demo extra installs matplotlib
        print_fn(f"no figure ({error}); install the demo extra for {path}")
        return False
    return True


class Clock:
    """Wall time since construction, in seconds."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def seed_list(first_seed: int, seeds: int) -> list[int]:
    return list(range(first_seed, first_seed + seeds))
