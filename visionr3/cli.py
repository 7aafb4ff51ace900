"""The ``visionr3`` command line. Each subcommand is a thin front for a module that does the work.

    visionr3 demo          # the CPU demo (README quickstart)
    visionr3 train ...     # verl's trainer on configs/visionr3_trainer.yaml or a recipe (Hydra overrides)
    visionr3 prepare ...   # public dataset formats -> verl parquet rows our agent loops read
    visionr3 sft ...       # cold-start SFT through verl's SFT trainer
    visionr3 merge ...     # FSDP checkpoint -> Hugging Face directory, verified
    visionr3 submit ...    # a recipe as a Ray job; `visionr3 job logs|status|stop|list` follow it
    visionr3 eval ...      # a checkpoint on benchmark files with a recipe's agent loop, tools and reward
    visionr3 view ...      # eval results / training rollout dumps -> one HTML report

Each front below lives in its own module, imported only when its subcommand is built, with two functions:
``configure(parser)`` adds the arguments and ``run(args) -> int`` does the work.
"""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from visionr3.demo.run import run_demo

    return run_demo(
        output_dir=args.output_dir, warmup_steps=args.warmup_steps, steps=args.steps, n=args.n, recipe=args.recipe,
        rollout=args.rollout,
    )


def _train(args: argparse.Namespace) -> int:
    from visionr3.train.main import main

    return main([*(["--recipe", args.recipe] if args.recipe else []), *args.hydra_args])


# subcommand -> (module, one-line help). The module's configure(parser)/run(args) do the rest.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("visionr3.data.prepare", "convert a public dataset format into verl parquet rows"),
    "sft": ("visionr3.train.sft", "cold-start SFT on interleaved image-reasoning data (verl's SFT trainer)"),
    "merge": ("visionr3.cluster.merge", "merge an FSDP checkpoint into a Hugging Face directory and verify it"),
    "submit": ("visionr3.cluster.jobs", "submit a recipe to a Ray cluster as a Ray job"),
    "job": ("visionr3.cluster.jobs", "follow a submitted Ray job: logs, status, stop, list"),
    "eval": ("visionr3.eval.cli", "evaluate a checkpoint with a recipe's agent loop and tools on benchmark files"),
    "view": ("visionr3.eval.view", "render eval results or training rollout dumps as one self-contained HTML report"),
}


def _add_module_command(sub: argparse._SubParsersAction, name: str) -> None:
    import importlib

    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    configure = getattr(module, f"configure_{name}", None) or module.configure
    run = getattr(module, f"run_{name}", None) or module.run
    parser = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).split("\n\n")[0])
    configure(parser)
    parser.set_defaults(func=run)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, the other module-backed subcommands are listed but not imported."""
    parser = argparse.ArgumentParser(prog="visionr3", description="RL for vision-language models that think with images.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the CPU demo on a tiny offline Qwen-VL model")
    demo.add_argument("--output-dir", default="outputs/cpu_demo", help="where the demo writes its files")
    demo.add_argument("--warmup-steps", type=int, default=None, help="supervised warm-up steps before RL (default: the rollout's, visionr3.demo.run.DEMO_ROLLOUTS)")
    demo.add_argument("--steps", type=int, default=3, help="GRPO steps")
    demo.add_argument("--n", type=int, default=4, help="rollouts per prompt")
    demo.add_argument(
        "--recipe", default="visionr3", choices=["visionr3", "vision_sr1"],
        help="visionr3: zoom tool + rule reward; vision_sr1: Vision-SR1 self-reward (text-only second pass)",
    )
    demo.add_argument(
        "--rollout", default="hf", choices=["hf", "vllm"],
        help="hf: our HF-transformers replica (default); vllm: verl's vLLM rollout on vLLM's CPU build (slower start)",
    )
    demo.set_defaults(func=_demo)
    from visionr3.config import RECIPES

    train = sub.add_parser(
        "train",
        help="run verl's trainer on a visionr3 config or a paper's recipe (Hydra overrides follow)",
        description="Hydra command line: visionr3 train [--recipe NAME] [--config-name NAME] [key=value ...] "
        "[--cfg job]. Without --recipe the config is configs/visionr3_trainer.yaml (--config-name picks another "
        "under configs/, e.g. cpu_demo); with it, recipes/NAME/config.yaml (--config-name cpu: its CPU variant). "
        "--cfg job prints the composed config and trains nothing. Resuming after a kill: rerun the same command; "
        "trainer.resume_mode=auto (verl's default) continues from the newest complete checkpoint under "
        "trainer.default_local_dir (global step, dataloader position, optimizer state, the rollout engine's weights); "
        "trainer.resume_mode=resume_path trainer.resume_from_path=<dir>/global_step_N picks one; "
        "trainer.resume_mode=disable starts over.",
    )
    train.add_argument("--recipe", choices=RECIPES, help="a paper's recipe folder under recipes/")
    train.add_argument("hydra_args", nargs=argparse.REMAINDER,
                       help="Hydra's own flags (--config-name, --cfg job, ...) and key=value overrides")
    train.set_defaults(func=_train)
    for name in SUBCOMMANDS:
        if only is None or only == name:
            _add_module_command(sub, name)
        else:
            sub.add_parser(name, help=SUBCOMMANDS[name][1])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"] and not {"-h", "--help"} & set(argv[1:2]):
        # Hydra owns the rest of the command line (--config-name, overrides, --cfg job, ...).
        from visionr3.train.main import main as train_main

        return train_main(argv[1:])
    args = build_parser(only=argv[0] if argv[:1] and argv[0] in SUBCOMMANDS else None).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
