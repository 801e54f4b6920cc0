"""The two ways a compiled softmax focal loss can run, against eager code and cross-entropy.

* ``compiled``: what ``torch.compile(focal_loss)`` runs (the closed form inside one opaque
  custom operator, then the gradient scaled by ``grad_output``);
* ``compiled composite``: inductor compiling and differentiating the differentiable composite
  (what ``torch.compile`` ran before the engine).

Forward + backward at (8, 19, 256, 256) float32, class indices with 13 of 256 rows at
``ignore_index=255``; interleaved rounds, the ratio is the median over rounds of each round's
time over cross-entropy's in the same round.

    python benchmarks/bench_compiled_forms.py --threads 1 --rounds 9
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from focalloss import _torch, focal_loss
from focalloss._spec import softmax as softmax_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(8, 19, 256, 256, requires_grad=True)
    target = torch.randint(0, 19, (8, 256, 256))
    target[:, :13] = 255
    options = dict(
        gamma=2.0,
        alpha=None,
        weight=None,
        ignore_index=255,
        reduction="mean",
        label_smoothing=0.0,
        detach_modulator=False,
        backend="torch",
        sync_normalizer=False,
    )

    def composite(a, b):
        return _torch.composite(softmax_spec.prepare(a, b, **options), a)

    cases = {
        "F.cross_entropy": lambda a, b: F.cross_entropy(a, b, ignore_index=255),
        "focal_loss eager": lambda a, b: focal_loss(a, b, ignore_index=255),
        "focal_loss compiled": torch.compile(
            lambda a, b: focal_loss(a, b, ignore_index=255), fullgraph=True
        ),
        "compiled composite": torch.compile(composite, fullgraph=True),
    }

    def step(fn) -> float:
        x.grad = None
        start = time.perf_counter()
        fn(x, target).backward()
        return time.perf_counter() - start

    for fn in cases.values():  # compile and warm up
        for _ in range(3):
            step(fn)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(step(fn))
    base = times["F.cross_entropy"]
    print(
        f"bench_compiled_forms on {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {args.threads} threads, median of {args.rounds} interleaved rounds"
    )
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(f"{name:22s} {statistics.median(values) * 1e3:8.1f} ms  {ratio:5.2f}x CE")


if __name__ == "__main__":
    main()
