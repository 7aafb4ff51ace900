"""visionr3's paper recipes: one folder per paper with a README, ``config.yaml`` (the GPU recipe, deltas on
``visionr3_base``), ``cpu.yaml`` (the same recipe at CPU scale on the tiny model) and ``run.sh``.

The folder lives at the top of the repository, where users read and edit it, and ships inside the wheel as
``visionr3.recipes`` (pyproject.toml), so ``visionr3 train --recipe NAME`` finds it on any install, including a Ray
job's working directory and the docker image.
"""

from importlib.resources import files
from pathlib import Path

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
    path = Path(str(files(__name__).joinpath(name)))
    if name not in RECIPES or not (path / "config.yaml").exists():
        raise ValueError(f"unknown recipe {name!r}: expected one of {', '.join(RECIPES)}")
    return path
