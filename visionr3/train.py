"""``visionr3 train``: verl's PPO/GRPO trainer with visionr3's configs — a Hydra entry, not a copy of the trainer.

    visionr3 train                                   # configs/visionr3_trainer.yaml + Hydra overrides
    visionr3 train --config-name cpu_demo            # the CPU demo's config
    visionr3 train --config-name visionr3_trainer actor_rollout_ref.model.path=... data.train_files=...

Equivalent to ``python -m verl.trainer.main_ppo --config-path <visionr3 configs> --config-name <name>``: the same
three steps verl's ``main`` runs (``auto_set_device``, ``validate_config``, ``run_ppo`` with verl's ``TaskRunnerV1``).
Ray is started by verl (``ray_kwargs.ray_init``) or joined when this process is already connected to a cluster
(``ray.init(address=...)`` before, or inside a Ray job). visionr3's plug-in (:mod:`visionr3.plugin`) is loaded in
every process through verl's ``verl.plugins`` entry point.
"""

from __future__ import annotations

import sys


def run(config) -> None:
    """Run verl's trainer on a composed config (what ``verl.trainer.main_ppo.main`` does with its config)."""
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=TaskRunnerV1)


def main(argv: list[str]) -> int:
    """Hand ``argv`` (Hydra's command line: overrides, ``--config-name``, ``--cfg job``, ...) to Hydra."""
    import hydra

    import visionr3.plugin  # noqa: F401  (resolvers and registrations in this process too)
    from visionr3.configs import config_path

    @hydra.main(config_path=str(config_path()), config_name="visionr3_trainer", version_base=None)
    def _entry(config) -> None:
        run(config)

    saved = sys.argv
    sys.argv = ["visionr3 train", *argv]
    try:
        _entry()
    finally:
        sys.argv = saved
    return 0
