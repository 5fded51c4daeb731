"""The ``atfnn-fast`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(device=args.device, hop=args.hop, repeats=args.repeats)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="atfnn-fast",
        description="ATFNN speech emotion recognition: fused front-end, ONNX export.",
    )
    parser.add_argument("--version", action="version", version=f"atfnn-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the default model on the bundled recording")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--hop", type=int, default=32, help="segment hop in frames (default 32)")
    demo.add_argument("--repeats", type=int, default=5, help="timed forward passes (default 5)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
