"""Compose a visionr3 trainer config and run verl's own checks on it, as ``visionr3 train`` does before starting Ray
(tests of configs/ and recipes/; no GPU needed).

    config = validate(compose(config_path(), "cpu_demo", ["actor_rollout_ref.model.path=/tmp/m", ...]))
    config = validate(compose(recipe_dir("zoom"), "config", [..., RECIPE_SEARCHPATH]))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def compose(config_dir: str | Path, name: str, overrides: Sequence[str] = ()):
    """Hydra's compose of ``<config_dir>/<name>.yaml`` with ``overrides``, leaving no global Hydra state behind."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from visionr3.configs import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides))


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
