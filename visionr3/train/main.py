"""``visionr3 train``: verl's PPO/GRPO trainer with visionr3's configs — a Hydra entry, not a copy of the trainer.

    visionr3 train                                   # configs/visionr3_trainer.yaml + Hydra overrides
    visionr3 train --config-name cpu_demo            # the CPU demo's config
    visionr3 train --config-name visionr3_trainer actor_rollout_ref.model.path=... data.train_files=...
    visionr3 train --recipe visionthink data.train_files=... +cluster=a100_4x8 +judge=api   # a paper recipe
    visionr3 train --recipe zoom --config-name cpu                                          # its CPU-scale variant

Equivalent to ``python -m verl.trainer.main_ppo --config-path <visionr3 configs> --config-name <name>``: the same
three steps verl's ``main`` runs (``auto_set_device``, ``validate_config``, ``run_ppo`` with verl's ``TaskRunnerV1``).
Ray is started by verl (``ray_kwargs.ray_init``) or joined when this process is already connected to a cluster
(``ray.init(address=...)`` before, or inside a Ray job). visionr3's plug-in (:mod:`visionr3.plugin`) is loaded in
every process through verl's ``verl.plugins`` entry point.
"""

from __future__ import annotations


def run(config) -> None:
    """Run verl's trainer on a composed config (what ``verl.trainer.main_ppo.main`` does with its config)."""
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from visionr3.config import VisionR3Settings

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    # the visionr3 block: an unknown key, or the deprecated visionr3.reward.recipe conflicting with the formula, fails
    # (and a deprecation warns) in the user's terminal now, not at the first scored trajectory inside a reward worker
    VisionR3Settings.from_config(config)
    check_judge_pool(config)
    run_ppo(config, task_runner_class=TaskRunnerV1)


def check_judge_pool(config) -> None:
    """A reward model on its own pool must not free its cache: verl 0.9.1's ``RewardModelManager`` sleeps every replica
    at start when ``free_cache_engine`` is set, and only the colocated path (``compute_rm_score``) ever wakes it. On
    its own pool the judge is reached while rollouts stream, so a slept vLLM engine accepts each request and never
    schedules it: every judge call would time out, step after step, with no error."""
    reward_model = config.reward.reward_model
    if reward_model.enable and reward_model.enable_resource_pool and reward_model.rollout.get("free_cache_engine", True):
        raise ValueError(
            "reward.reward_model.enable_resource_pool=True needs reward.reward_model.rollout.free_cache_engine=False: "
            "verl sleeps a judge on its own pool at start and never wakes it, so every judge request would hang"
        )


def recipe_arguments(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--recipe NAME`` (or ``--recipe=NAME``) out of a Hydra command line: (NAME or None, the rest)."""
    rest: list[str] = []
    recipe = None
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--recipe":
            if index + 1 >= len(argv):
                raise SystemExit("visionr3 train: --recipe needs a name")
            recipe = argv[index + 1]
            index += 2
            continue
        if arg.startswith("--recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        index += 1
    return recipe, rest


def with_override(argv: list[str], override: str) -> list[str]:
    """Add ``override`` to the run of overrides in a Hydra command line (Hydra's parser takes a single run, so
    ``a=1 --cfg job`` + ``b=2`` must become ``a=1 b=2 --cfg job``); at the end when there are none."""
    positions = [i for i, arg in enumerate(argv) if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]
    at = positions[-1] + 1 if positions else len(argv)
    return [*argv[:at], override, *argv[at:]]


DEPRECATED_KEYS = {"visionr3.reward.recipe": "visionr3.reward.formula"}
"""Old override keys ``visionr3 train`` still accepts for a release, rewritten to their successors (with a warning)."""


def renamed_overrides(argv: list[str]) -> list[str]:
    """``argv`` with each deprecated key's override (``key=v``, ``+key=v``, ``++key=v``) rewritten to the new key.

    A recipe sets ``visionr3.reward.formula``, so an old command line that switches the formula with the old key would
    otherwise conflict with it; rewritten, it overrides the formula as it used to."""
    from visionr3.reward.formulas import warn_deprecated

    out = []
    for arg in argv:
        prefix = arg[: len(arg) - len(arg.lstrip("+"))]
        key, sep, value = arg[len(prefix):].partition("=")
        if sep and key in DEPRECATED_KEYS:
            warn_deprecated(f"{key} is deprecated, use {DEPRECATED_KEYS[key]}")
            arg = f"{prefix}{DEPRECATED_KEYS[key]}={value}"
        out.append(arg)
    return out


def main(argv: list[str]) -> int:
    """Hand ``argv`` (Hydra's command line: overrides, ``--config-name``, ``--cfg job``, ...) to Hydra.

    ``--recipe NAME`` makes ``recipes/NAME/`` the primary config directory and ``config`` its default config, so
    ``--config-name cpu`` then picks the recipe's CPU variant; Hydra's own ``--config-path`` still wins if given.
    """
    import visionr3.plugin  # noqa: F401  (resolvers and registrations in this process too)
    from visionr3.config import config_path, run_hydra

    recipe, argv = recipe_arguments(argv)
    argv = renamed_overrides(argv)
    directory, default_name = config_path(), "visionr3_trainer"
    if recipe is not None:
        from visionr3.config import RECIPE_SEARCHPATH, recipe_dir

        try:
            directory, default_name = recipe_dir(recipe), "config"
        except ValueError as exc:
            raise SystemExit(f"visionr3 train: {exc}") from None
        argv = with_override(argv, RECIPE_SEARCHPATH)

    run_hydra("visionr3 train", directory, default_name, argv, run)
    return 0
