"""The ``visionr3`` command line. Each subcommand is a thin front for a module that does the work.

    visionr3 demo          # the CPU demo (README quickstart)

Later subcommands (train, prepare, merge, submit, eval, view) arrive with their issues; see README.
"""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from visionr3.demo import run_demo

    return run_demo(output_dir=args.output_dir, arch=args.arch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionr3", description="RL for vision-language models that think with images.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the CPU demo on a tiny offline Qwen-VL model")
    demo.add_argument("--output-dir", default="outputs/cpu_demo", help="where the demo writes its files")
    demo.add_argument("--arch", choices=("qwen2_5_vl", "qwen3_vl"), default="qwen2_5_vl")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
