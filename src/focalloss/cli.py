"""Command line: ``focalloss demo``, ``focalloss plot``, ``focalloss bench``,
``focalloss --version`` (also ``python -m focalloss ...``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

#: The modules each command needs beyond torch; the ``demo`` extra installs all of them.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "demo": ("matplotlib", "tqdm", "pycocotools", "sklearn"),
    "plot": ("matplotlib",),
}


class MissingExtraError(ImportError):
    """A command's optional dependencies (the ``demo`` extra) are not installed."""


def require_extra(command: str) -> None:
    """Import the optional modules ``command`` needs (see ``EXTRA_MODULES``).

    Raises:
        MissingExtraError: naming the missing modules and the install command of the extra.
    """
    missing = []
    for module in EXTRA_MODULES.get(command, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"focalloss {command} needs {', '.join(missing)}, which the demo extra installs: "
            f'pip install "focalloss[demo]" (from a checkout: pip install -e ".[demo]")',
            name=missing[0],
        )


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a shape like 8,19,256,256, got {text!r}"
        ) from None
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"expected (N, C, ...) with positive sizes, got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focalloss", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train with each loss over seeds and compare, with 95%% intervals: "
        "segmentation (default), detection, calibration",
    )
    demo.add_argument(
        "task",
        nargs="?",
        default="segmentation",
        choices=["segmentation", "detection", "calibration"],
        help="segmentation: U-Net, CE vs focal; detection: one-stage detector, BCE vs focal "
        "(with/without prior init), varifocal, quality focal, COCO AP; calibration: "
        "long-tailed digits, CE vs label smoothing, focal gamma 3, FLSD-53, Poly-1, ECE/NLL",
    )
    demo.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per loss (default: 3 segmentation/detection, 10 calibration)",
    )
    demo.add_argument("--seed", type=int, default=None, help="first seed (default 0)")
    demo.add_argument(
        "--losses",
        default=None,
        help="comma list, the first is the baseline; segmentation: ce,focal,seed (default "
        "ce,focal); detection: bce,focal,focal_no_prior,vfl,qfl (default all); calibration: "
        "ce,ce_ls,focal3,flsd53,poly1 (default all)",
    )
    demo.add_argument("--steps", type=int, default=None, help="training steps per run")
    demo.add_argument("--batch-size", type=int, default=None)
    demo.add_argument(
        "--image-size", type=int, default=None, help="segmentation and detection only"
    )
    demo.add_argument("--gamma", type=float, default=None, help="segmentation: focal gamma (2)")
    demo.add_argument(
        "--alpha",
        default=None,
        choices=["none", "balanced"],
        help="segmentation: focal alpha: none, or class-balanced weights from the training set",
    )
    demo.add_argument("--device", default=None, choices=["cpu", "cuda"])
    demo.add_argument("--out", default=None, help="output directory (default focalloss-demo/TASK)")
    demo.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (default 1)"
    )
    demo.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes running the (seed, loss) runs (default: 2, or 1 on one core)",
    )
    demo.add_argument("--quick", action="store_true", help="a few-second smoke run")
    plot = sub.add_parser("plot", help="the paper's Figure 1 and gradient magnitudes, as PNG")
    plot.add_argument("--out", default="focalloss-plots", help="output directory")
    bench = sub.add_parser("bench", help="time and memory against F.cross_entropy and others")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"]
    )
    bench.add_argument(
        "--shape", type=_shape, action="append", help="logits shape N,C[,d1,...]; repeatable"
    )
    bench.add_argument(
        "--loss", default="all", choices=["softmax", "sigmoid", "all"], help="which losses"
    )
    bench.add_argument("--rounds", type=int, default=9, help="timed rounds (median reported)")
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    bench.add_argument("--json", metavar="PATH", help="write raw results and the machine here")
    bench.add_argument(
        "--import-time",
        action="store_true",
        help="also measure what `import focalloss` adds to `import torch` (fresh processes)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in EXTRA_MODULES:
        try:
            require_extra(args.command)
        except MissingExtraError as error:
            print(f"focalloss: error: {error}", file=sys.stderr)
            return 1
    if args.command == "demo":
        from .demo import run_task

        options = {k: v for k, v in vars(args).items() if k not in ("command", "task", "quick")}
        command = "focalloss " + " ".join(sys.argv[1:] if argv is None else argv)
        try:
            run_task(args.task, quick=args.quick, command=command, **options)
        except MissingExtraError as error:  # the detection and calibration modules
            print(f"focalloss: error: {error}", file=sys.stderr)
            return 1
    elif args.command == "plot":
        from .demo.plots import paper_figures

        for path in paper_figures(Path(args.out)):
            print(f"wrote {path}")
    elif args.command == "bench":
        from .benchmark import run

        run(
            device=args.device,
            dtype=args.dtype,
            shapes=args.shape,
            losses=args.loss,
            rounds=args.rounds,
            warmup=args.warmup,
            threads=args.threads,
            compile=not args.no_compile,
            json_path=args.json,
            import_time=args.import_time,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
