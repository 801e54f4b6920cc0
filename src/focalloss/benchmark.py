"""``focalloss bench``: time and memory of the losses against their baselines, in one process.

Each case runs every implementation on the same inputs. Timing is interleaved (each round runs
every implementation once, so drift of the machine hits all of them alike) and reported as the
median over the rounds after warm-up; ratios are to the baseline (``F.cross_entropy``) measured
in the same run. Peak memory is the largest amount allocated above what existed before the
step (inputs excluded), from the CUDA allocator's statistics or, on the CPU, from the
profiler's allocation events.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ._baselines import (
    one_hot_background,
    seed_style_focal_loss,
    torchvision_style_sigmoid_focal_loss,
)
from .functional import focal_loss, sigmoid_focal_loss

DEFAULT_SOFTMAX_SHAPES = [(8, 19, 256, 256), (64, 1000), (2, 5, 64, 64, 64)]
DEFAULT_SIGMOID_SHAPES = [(2, 80, 100, 100), (200000, 80)]


@dataclass
class Result:
    case: str
    impl: str
    fwd_bwd_ms: float
    fwd_ms: float
    peak_mb: float
    ratio_fwd_bwd: float = math.nan
    ratio_fwd: float = math.nan
    ratio_peak: float = math.nan
    gbps: float = math.nan


@dataclass
class Case:
    name: str
    inputs: Callable[[], tuple[Tensor, Tensor]]
    impls: dict[str, Callable[[Tensor, Tensor], Tensor]]
    baseline: str
    fused_bytes: int
    results: list[Result] = field(default_factory=list)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Largest allocation above the starting level while ``fn`` runs, in MB."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 1e6
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return peak / 1e6


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines (written straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _steps(
    loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor
) -> tuple[Callable[[], object], Callable[[], object]]:
    def fwd_bwd() -> None:
        leaf = x.detach().requires_grad_()
        loss_fn(leaf, t).backward()
        del leaf

    def fwd() -> None:
        with torch.no_grad():
            loss_fn(x, t)

    return fwd_bwd, fwd


def run_case(case: Case, device: torch.device, rounds: int, warmup: int) -> list[Result]:
    # Each case compiles afresh: the cases share code objects, and a cache carried over would
    # hit dynamo's recompile limit or switch to dynamic-shape kernels.
    torch._dynamo.reset()
    x, t = case.inputs()
    timings: dict[str, dict[str, list[float]]] = {
        name: {"fwd_bwd": [], "fwd": []} for name in case.impls
    }
    steps = {name: _steps(fn, x, t) for name, fn in case.impls.items()}
    for fwd_bwd, fwd in steps.values():
        for _ in range(warmup):  # also triggers torch.compile
            fwd_bwd()
            fwd()
    for _ in range(rounds):
        for name, (fwd_bwd, fwd) in steps.items():
            timings[name]["fwd_bwd"].append(_time_once(fwd_bwd, device))
            timings[name]["fwd"].append(_time_once(fwd, device))
    results = []
    for name, (fwd_bwd, _) in steps.items():
        fb = statistics.median(timings[name]["fwd_bwd"])
        results.append(
            Result(
                case=case.name,
                impl=name,
                fwd_bwd_ms=fb,
                fwd_ms=statistics.median(timings[name]["fwd"]),
                peak_mb=peak_mb(fwd_bwd, device),
                gbps=case.fused_bytes / (fb * 1e-3) / 1e9,
            )
        )
    base = next(r for r in results if r.impl == case.baseline)
    for r in results:
        r.ratio_fwd_bwd = r.fwd_bwd_ms / base.fwd_bwd_ms
        r.ratio_fwd = r.fwd_ms / base.fwd_ms
        r.ratio_peak = r.peak_mb / base.peak_mb if base.peak_mb > 0 else math.nan
    case.results = results
    return results


def _third_party_softmax() -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """kornia's and MONAI's softmax focal losses, when installed (5% ignored pixels, gamma 2)."""
    impls: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
    with contextlib.suppress(ImportError):
        import kornia.losses

        impls["kornia"] = lambda x, t: kornia.losses.focal_loss(
            x, t, alpha=None, gamma=2.0, reduction="mean", ignore_index=255
        )
    with contextlib.suppress(ImportError):
        from monai.losses import FocalLoss as MonaiFocalLoss

        monai_loss = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, ignore_index=255)
        impls["monai"] = lambda x, t: monai_loss(x, t.unsqueeze(1))
    return impls


def _third_party_sigmoid(
    labels: dict[str, Tensor],
) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """kornia's and MONAI's sigmoid focal losses on the float labels, when installed."""
    impls: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
    with contextlib.suppress(ImportError):
        import kornia.losses

        impls["kornia"] = lambda x, t: kornia.losses.binary_focal_loss_with_logits(
            x, labels["float"], alpha=0.25, gamma=2.0, reduction="mean"
        )
    with contextlib.suppress(ImportError):
        from monai.losses import FocalLoss as MonaiFocalLoss

        monai_loss = MonaiFocalLoss(alpha=0.25, gamma=2.0)
        impls["monai"] = lambda x, t: monai_loss(x, labels["float"])
    return impls


def _triton_runs(device: torch.device) -> bool:
    from . import _triton

    return device.type == "cuda" and _triton.triton_error() is None


def softmax_cases(
    shapes: list[tuple[int, ...]],
    device: torch.device,
    dtype: torch.dtype,
    compile: bool,
    seed: int = 0,
) -> list[Case]:
    cases = []
    for shape in shapes:
        num_classes = shape[1]
        index_shape = shape[:1] + shape[2:]

        def make_index(shape=shape, index_shape=index_shape, num_classes=num_classes):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(shape, generator=g).to(device, dtype)
            t = torch.randint(0, num_classes, index_shape, generator=g)
            t[torch.rand(index_shape, generator=g) < 0.05] = 255  # 5% ignored
            return x, t.to(device)

        def make_prob(shape=shape):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(shape, generator=g).to(device, dtype)
            return x, torch.softmax(torch.randn(shape, generator=g), 1).to(device, dtype)

        elem = torch.finfo(dtype).bits // 8
        logits = math.prod(shape)
        positions = logits // num_classes
        index_bytes = 2 * logits * elem + positions * 8  # read logits, write grad, read target
        prob_bytes = 3 * logits * elem
        label = "x".join(map(str, shape))
        variants = [
            ("index", make_index, dict(ignore_index=255), index_bytes),
            ("index+ls0.1", make_index, dict(ignore_index=255, label_smoothing=0.1), index_bytes),
            ("prob", make_prob, {}, prob_bytes),
        ]
        for variant, make, kw, nbytes in variants:
            impls: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
                "F.cross_entropy": lambda x, t, kw=kw: F.cross_entropy(x, t, **kw),
                "focal_loss": lambda x, t, kw=kw: focal_loss(
                    x, t, gamma=2.0, backend="torch", **kw
                ),
            }
            if _triton_runs(device) and variant != "prob":
                impls["focal_loss triton"] = lambda x, t, kw=kw: focal_loss(
                    x, t, gamma=2.0, backend="triton", **kw
                )
            if variant == "index":
                impls["seed-style"] = lambda x, t: seed_style_focal_loss(
                    x, t, gamma=2.0, ignore_index=255
                )
                impls.update(_third_party_softmax())
            if compile:
                impls["focal_loss compiled"] = torch.compile(
                    lambda x, t, kw=kw: focal_loss(x, t, gamma=2.0, **kw), fullgraph=True
                )
            cases.append(Case(f"softmax {label} {variant}", make, impls, "F.cross_entropy", nbytes))
    return cases


def sigmoid_cases(
    shapes: list[tuple[int, ...]],
    device: torch.device,
    dtype: torch.dtype,
    compile: bool,
    seed: int = 0,
    positive_fraction: float = 0.01,
) -> list[Case]:
    """Detector-like targets: 1% of positions carry one object class, the rest background."""
    cases = []
    for shape in shapes:
        num_classes = shape[1]
        index_shape = shape[:1] + shape[2:]
        labels: dict[str, Tensor] = {}

        def make(
            kind, shape=shape, index_shape=index_shape, num_classes=num_classes, labels=labels
        ):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(shape, generator=g).to(device, dtype)
            index = torch.randint(0, num_classes, index_shape, generator=g)
            index[torch.rand(index_shape, generator=g) >= positive_fraction] = num_classes
            labels["float"] = one_hot_background(index, num_classes, dtype).to(device)
            return x, (labels["float"] if kind == "float" else index.to(device))

        elem = torch.finfo(dtype).bits // 8
        logits = math.prod(shape)
        label = "x".join(map(str, shape))
        for kind in ("float", "index"):
            # The baselines always get the float labels, built outside the timed step.
            impls: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
                "F.bce_with_logits": lambda x, t, labels=labels: F.binary_cross_entropy_with_logits(
                    x, labels["float"]
                ),
                "sigmoid_focal_loss": lambda x, t: sigmoid_focal_loss(x, t, backend="torch"),
                "torchvision-style": lambda x, t, labels=labels: (
                    torchvision_style_sigmoid_focal_loss(x, labels["float"])
                ),
            }
            impls.update(_third_party_sigmoid(labels))
            if _triton_runs(device):
                impls["sigmoid_focal_loss triton"] = lambda x, t: sigmoid_focal_loss(
                    x, t, backend="triton"
                )
            if compile:
                impls["sigmoid_focal_loss compiled"] = torch.compile(
                    lambda x, t: sigmoid_focal_loss(x, t), fullgraph=True
                )
            nbytes = (3 if kind == "float" else 2) * logits * elem
            if kind == "index":
                nbytes += logits // num_classes * 8
            cases.append(
                Case(
                    f"sigmoid {label} {kind}",
                    lambda kind=kind, make=make: make(kind),
                    impls,
                    "F.bce_with_logits",
                    nbytes,
                )
            )
    return cases


def machine_description(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
            info["logical_cpus"] = len(names)
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


_IMPORT_PROBE = (
    "import time, torch; start = time.perf_counter(); import focalloss; "
    "print(time.perf_counter() - start)"
)


def import_cost(rounds: int = 5) -> tuple[float, float]:
    """Seconds that ``import focalloss`` adds after ``import torch`` and, for scale, the
    seconds of ``import torch`` itself: medians over fresh interpreter processes."""
    added, base = [], []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True
        )
        added.append(float(out.stdout.strip().splitlines()[-1]))
        probe = "import time; s = time.perf_counter(); import torch; print(time.perf_counter() - s)"
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        base.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(added), statistics.median(base)


def format_table(results: list[Result]) -> str:
    header = (
        f"{'case':<34} {'implementation':<28} {'fwd+bwd ms':>10} {'ratio':>6} "
        f"{'fwd ms':>8} {'ratio':>6} {'peak MB':>8} {'ratio':>6} {'GB/s':>6}"
    )
    lines = [header, "-" * len(header)]
    previous = None
    for r in results:
        case = r.case if r.case != previous else ""
        previous = r.case
        lines.append(
            f"{case:<34} {r.impl:<28} {r.fwd_bwd_ms:>10.2f} {r.ratio_fwd_bwd:>5.2f}x "
            f"{r.fwd_ms:>8.2f} {r.ratio_fwd:>5.2f}x {r.peak_mb:>8.1f} {r.ratio_peak:>5.2f}x "
            f"{r.gbps:>6.1f}"
        )
    return "\n".join(lines)


def run(
    *,
    device: str = "cpu",
    dtype: str = "float32",
    shapes: list[tuple[int, ...]] | None = None,
    sigmoid_shapes: list[tuple[int, ...]] | None = None,
    losses: str = "all",
    rounds: int = 9,
    warmup: int = 2,
    threads: int | None = 2,
    compile: bool = True,
    json_path: str | None = None,
    print_fn: Callable[[str], None] = print,
    import_time: bool = False,
) -> list[Result]:
    """Run the benchmark (``losses``: "softmax", "sigmoid" or "all"), print its table."""
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"dtype: expected float32, float16, bfloat16 or float64, got {dtype!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    machine = machine_description(dev)
    print_fn(
        f"focalloss bench on {machine.get('gpu', machine.get('cpu', machine['processor']))}, "
        f"torch {machine['torch']}, {machine['threads']} threads, {dtype}; "
        f"median of {rounds} interleaved rounds"
    )
    if losses not in ("softmax", "sigmoid", "all"):
        raise ValueError(f"losses: expected 'softmax', 'sigmoid' or 'all', got {losses!r}")
    cases: list[Case] = []
    if losses in ("softmax", "all"):
        cases += softmax_cases(shapes or DEFAULT_SOFTMAX_SHAPES, dev, torch_dtype, compile)
    if losses in ("sigmoid", "all"):
        cases += sigmoid_cases(
            sigmoid_shapes or shapes or DEFAULT_SIGMOID_SHAPES, dev, torch_dtype, compile
        )
    results: list[Result] = []
    for case in cases:
        results += run_case(case, dev, rounds, warmup)
    print_fn(format_table(results))
    imports = None
    if import_time:
        added, base = import_cost()
        imports = {"import_focalloss_s": added, "import_torch_s": base}
        print_fn(
            f"import focalloss adds {added:.3f} s to import torch ({base:.2f} s); "
            f"medians of 5 fresh processes"
        )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "dtype": dtype,
                    "rounds": rounds,
                    "results": [asdict(r) for r in results],
                    "imports": imports,
                },
                f,
                indent=2,
            )
        print_fn(f"wrote {json_path}")
    return results
