"""Compose a visionr3 trainer config and run verl's own checks on it, as ``visionr3 train`` does before starting Ray
(tests of configs/ and recipes/; no GPU needed).

    config = validate(compose(config_path(), "cpu_demo", ["actor_rollout_ref.model.path=/tmp/m", ...]))
    config = validate(compose(recipe_dir("zoom"), "config", [..., RECIPE_SEARCHPATH]))
"""

from __future__ import annotations


from visionr3.config import compose  # noqa: F401  (re-exported for the tests)


def validate(config):
    """verl's ``validate_config`` (batch sizes against GPU counts, micro-batches, exclusive keys) and the rollout
    config's dataclass checks, on the resolved config; returns it."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    OmegaConf.resolve(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout)  # RolloutConfig's __post_init__ checks
    return config
