"""Command line: ``focalloss bench`` (``python -m focalloss bench``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    sub = parser.add_subparsers(dest="command", required=True)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
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
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
