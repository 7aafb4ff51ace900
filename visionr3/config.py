"""Where visionr3's YAML lives and how it is composed: ``configs/`` (Hydra configs, tool and agent-loop YAMLs, chat
templates) and ``recipes/`` (one folder per paper).

Both folders stay at the top of the repository, where users read and edit them, and ship inside the wheel as the
data-only packages ``visionr3.configs`` and ``visionr3.recipes`` (pyproject.toml), so ``pkg://visionr3.configs``,
:func:`config_path` and :func:`recipe_dir` work from any install: a Ray job's working directory, the docker image, a
cluster node. The code that reads them lives here, inside the package; the folders hold YAML only.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any


def config_path(*parts: str) -> Path:
    """Absolute path of a file under configs/, e.g. ``config_path("chat_templates", "qwen2_5_vl_tool.jinja")``."""
    path = Path(str(files("visionr3.configs").joinpath(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"visionr3 config file not found: {path}")
    return path


def plain(value):
    """An OmegaConf container as plain, resolved dicts/lists; anything else unchanged.

    Config blocks reach our code as ``DictConfig`` (Hydra, ``hydra.utils.instantiate``, verl's ``reward_kwargs``) or as
    plain dicts (tests, direct calls). Never imports omegaconf: a value can only be a container if it is loaded.
    """
    import sys

    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is not None and omegaconf.OmegaConf.is_config(value):
        return omegaconf.OmegaConf.to_container(value, resolve=True)
    return value


def register_resolvers() -> None:
    """OmegaConf resolvers for our YAMLs (idempotent); :mod:`visionr3.plugin` calls it in every verl process.

    - ``${visionr3.config:tools/crop_zoom.yaml}`` -> the absolute path of that file under configs/. verl resolves tool
      and agent-loop paths against the working directory, so configs that name our files must not depend on where a
      job is started (a Ray worker, a cluster node, an installed wheel).
    - ``${visionr3.template:qwen2_5_vl_tool.jinja}`` -> the text of a chat template under configs/chat_templates/, for
      ``actor_rollout_ref.model.custom_chat_template`` (which takes the template itself, not a path).
    """
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("visionr3.config"):
        OmegaConf.register_new_resolver("visionr3.config", lambda relative: str(config_path(*str(relative).split("/"))))
    if not OmegaConf.has_resolver("visionr3.template"):
        OmegaConf.register_new_resolver(
            "visionr3.template", lambda name: config_path("chat_templates", str(name)).read_text(encoding="utf-8")
        )


OPEN_PARAMS = "visionr3_open_params"
"""The name of the config node (Hydra's ConfigStore) that leaves ``visionr3.reward.params`` open to new keys;
configs/visionr3_base.yaml lists it first in its defaults."""


def register_config_nodes() -> None:
    """Register :data:`OPEN_PARAMS` with Hydra's ConfigStore (idempotent): ``visionr3.reward.params`` with struct mode
    off, so that ``visionr3.reward.params='{format_weight: 0.5}'`` (and ``visionr3.reward.params.format_weight=0.5``)
    merges into whatever the config or recipe already sets, as documented.

    Hydra puts the whole composed config in struct mode before applying overrides, so a dict override into a dict
    node is refused for every key the YAML does not already have (``Key 'format_weight' is not in struct``), and YAML
    cannot turn the flag off for one node. A node's own flag wins over its parent's and survives the merge, so this
    node, composed before the YAML, opens ``params`` only; the rest of the config stays closed. A key no formula
    takes is still refused, naming the key, by :meth:`VisionR3Settings.from_config` (before Ray starts) and by the
    formula itself (``visionr3/reward/formulas.py``). :mod:`visionr3.plugin` registers it when hydra is imported;
    :func:`compose` and :func:`run_hydra` do too.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    params = OmegaConf.create({})
    OmegaConf.set_struct(params, False)
    ConfigStore.instance().store(name=OPEN_PARAMS, node={"visionr3": {"reward": {"params": params}}})


def compose(config_dir, name: str, overrides=()):
    """Hydra's compose of ``<config_dir>/<name>.yaml`` with ``overrides``, leaving no global Hydra state behind
    (``visionr3 eval`` composes a recipe this way; so do the config tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    register_config_nodes()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides))


def run_hydra(prog: str, config_dir, config_name: str, argv: list[str], task) -> None:
    """Run ``task(config)`` under ``@hydra.main`` with ``argv`` as Hydra's command line (overrides, ``--cfg job``, ...).

    ``visionr3 train`` and ``visionr3 sft`` are Hydra apps behind our own CLI: Hydra reads ``sys.argv``, so it is
    swapped for the duration of the call and restored after, whatever happens.
    """
    import sys

    import hydra

    register_resolvers()
    register_config_nodes()

    @hydra.main(config_path=str(config_dir), config_name=config_name, version_base=None)
    def _entry(config) -> None:
        task(config)

    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        _entry()
    finally:
        sys.argv = saved


RECIPE_SEARCHPATH = "hydra.searchpath=[pkg://verl.trainer.config,pkg://visionr3.configs]"
"""Where a recipe's defaults (verl's ``ppo_trainer``, our ``visionr3_base``, ``cluster/``, ``judge/``) are found.

A recipe's ``cpu.yaml`` composes its ``config.yaml``, and Hydra only reads ``hydra.searchpath`` from the primary
config, so the recipes do not set it: ``visionr3 train --recipe`` passes this override, and so must anyone running a
recipe through verl's own entry point (``python -m verl.trainer.main_ppo --config-path recipes/zoom --config-name
config '<this>'``)."""

RECIPES = ("visionthink", "vlm_r3", "vision_sr1", "zoom")
"""The recipes, by folder name (``visionr3 train --recipe <name>``)."""


def recipe_dir(name: str) -> Path:
    """The folder of recipe ``name``; a clear error lists the recipes when it does not exist."""
    path = Path(str(files("visionr3.recipes").joinpath(name)))
    if name not in RECIPES or not (path / "config.yaml").exists():
        raise ValueError(f"unknown recipe {name!r}: expected one of {', '.join(RECIPES)}")
    return path


@functools.cache
def block_keys() -> dict[str, frozenset[str]]:
    """The keys of the ``visionr3:`` block by sub-block (``""``: its top level), read from where they are declared,
    with their meaning: configs/visionr3_base.yaml. The judge's own keys are checked against the judge's settings."""
    import yaml

    block = yaml.safe_load(config_path("visionr3_base.yaml").read_text(encoding="utf-8"))["visionr3"]
    return {"": frozenset(block), **{sub: frozenset(block[sub]) for sub in ("reward", "shaping", "advantage")}}


@dataclass(frozen=True)
class VisionR3Settings:
    """The ``visionr3:`` block of a composed config, parsed once: typed values for the code that reads it, and an
    error that names any key the block does not have.

    Hydra's struct mode refuses an unknown key only when it is given without ``+``; a ``+visionr3.shaping.apply_raito``
    typo would otherwise be carried along and do nothing. The reward sub-block reaches verl's reward function through
    ``reward_kwargs`` (:mod:`visionr3.reward.score` parses it there); its keys are checked here too, so a typo fails
    before Ray starts (``visionr3 train``) instead of inside a reward worker."""

    chat_template: str | None
    prompt_style: str | None
    formula: str  # resolved: the default when the block leaves it null, the deprecated key with its warning
    params: Mapping[str, Any]
    judge: Mapping[str, Any]
    shaping: Mapping[str, Any]
    decouple: Mapping[str, float] | None
    verify_weight_sync: bool | None = None

    @property
    def apply_ratio(self) -> bool:
        """VisionThink's apply-ratio penalty is on."""
        return bool((self.shaping.get("apply_ratio") or {}).get("enable", False))

    @property
    def may_exclude(self) -> bool:
        """A judge is asked and a failed judgement excludes the sample from its group."""
        return self.judge.get("use", "never") != "never" and self.judge.get("on_failure") == "exclude"

    @classmethod
    def from_config(cls, config: Any) -> "VisionR3Settings":
        """Parse ``config.visionr3`` (a composed config; a missing block is the defaults). Raises ``ValueError`` naming
        an unknown key and the known ones."""
        from dataclasses import fields

        from omegaconf import OmegaConf

        from visionr3.reward.formulas import get_formula
        from visionr3.reward.judge.config import JudgeConfig
        from visionr3.reward.score import JudgeSettings, formula_name
        from visionr3.reward.shaping import ApplyRatioConfig

        block = OmegaConf.select(config, "visionr3") if OmegaConf.is_config(config) else (config or {}).get("visionr3")
        block = plain(block) or {}
        for sub, known in block_keys().items():
            values = block if not sub else (block.get(sub) or {})
            unknown = sorted(set(values) - known)
            if unknown:
                where = "visionr3" + (f".{sub}" if sub else "")
                raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        reward, shaping = block.get("reward") or {}, block.get("shaping") or {}
        judge = reward.get("judge") or {}
        client = JudgeSettings.from_dict(judge).client  # checks use, backend and on_failure; the rest is the client's
        known_judge = {f.name for f in fields(JudgeConfig)} | {"use", "backend", "on_failure"}
        unknown = sorted(set(client) - known_judge)
        if unknown:
            raise ValueError(f"visionr3.reward.judge: unknown key(s) {unknown}; known: {sorted(known_judge)}")
        ApplyRatioConfig.from_dict(shaping.get("apply_ratio"))  # its own keys and values
        formula = formula_name(reward.get("formula"), reward.get("recipe"))
        params = dict(reward.get("params") or {})
        try:  # an unknown formula, or a key it does not take (a recipe's own, after the formula is switched)
            get_formula(formula).params(params)
        except KeyError as error:
            raise ValueError(error.args[0]) from None
        return cls(
            chat_template=block.get("chat_template"),
            prompt_style=block.get("prompt_style"),
            formula=formula,
            params=params,
            judge=dict(judge),
            shaping=dict(shaping),
            decouple=(block.get("advantage") or {}).get("decouple") or None,
            verify_weight_sync=block.get("verify_weight_sync"),
        )
