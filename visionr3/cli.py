"""The ``visionr3`` command line. Each subcommand is a thin front for a module that does the work.

    visionr3 demo          # the CPU demo (README quickstart)
    visionr3 train ...     # verl's trainer on configs/visionr3_trainer.yaml (Hydra overrides)

Later subcommands (train, prepare, merge, submit, eval, view) arrive with their issues; see README.
"""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from visionr3.demo import run_demo

    return run_demo(output_dir=args.output_dir, warmup_steps=args.warmup_steps, steps=args.steps, n=args.n, recipe=args.recipe)


def _train(args: argparse.Namespace) -> int:
    from visionr3.train import main

    return main(args.hydra_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionr3", description="RL for vision-language models that think with images.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the CPU demo on a tiny offline Qwen-VL model")
    demo.add_argument("--output-dir", default="outputs/cpu_demo", help="where the demo writes its files")
    demo.add_argument("--warmup-steps", type=int, default=100, help="supervised warm-up steps before RL")
    demo.add_argument("--steps", type=int, default=3, help="GRPO steps")
    demo.add_argument("--n", type=int, default=4, help="rollouts per prompt")
    demo.add_argument(
        "--recipe", default="visionr3", choices=["visionr3", "vision_sr1"],
        help="visionr3: zoom tool + rule reward; vision_sr1: Vision-SR1 self-reward (text-only second pass)",
    )
    demo.set_defaults(func=_demo)
    train = sub.add_parser(
        "train",
        help="run verl's trainer on a visionr3 config (Hydra overrides follow)",
        description="Hydra command line: visionr3 train [--config-name NAME] [key=value ...]. "
        "Default config: configs/visionr3_trainer.yaml.",
    )
    train.add_argument("hydra_args", nargs=argparse.REMAINDER, help="Hydra overrides and flags")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"] and not {"-h", "--help"} & set(argv[1:2]):
        # Hydra owns the rest of the command line (--config-name, overrides, --cfg job, ...).
        from visionr3.train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
