"""Every paper recipe composes with every cluster preset (and the separate judge pool) and passes verl's own config
validation: batch sizes divisible by the GPU count, micro-batches, mutually exclusive keys. No GPU is needed to
compose. The CPU variants are composed here too; tests/e2e/test_recipes_cpu.py runs each one for a step."""

import pytest
from omegaconf import OmegaConf

from visionr3.config import config_path
from visionr3.config import RECIPE_SEARCHPATH, RECIPES, recipe_dir
from visionr3.testing.configs import compose as compose_config
from visionr3.testing.configs import validate

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"  # only composed, never loaded
CLUSTERS = {"a100_1x8": 8, "a100_2x8": 16, "a100_4x8": 32}
JUDGED = {"visionthink", "vlm_r3", "zoom"}  # recipes whose default judge is the API preset
DATA = [f"actor_rollout_ref.model.path={MODEL}", "data.train_files=train.parquet", "data.val_files=val.parquet"]
API = ["visionr3.reward.judge.base_url=https://judge.example/v1", "visionr3.reward.judge.model=judge-model"]


def compose(recipe: str, overrides: list[str], name: str = "config"):
    return compose_config(recipe_dir(recipe), name, [*overrides, RECIPE_SEARCHPATH])


def test_every_recipe_has_its_files():
    for name in RECIPES:
        folder = recipe_dir(name)
        for file in ("README.md", "config.yaml", "cpu.yaml", "run.sh"):
            assert (folder / file).is_file(), f"recipes/{name}/{file}"
        # every YAML opens with the command that runs it
        for file in ("config.yaml", "cpu.yaml"):
            assert f"visionr3 train --recipe {name}" in (folder / file).read_text(), f"recipes/{name}/{file}"


@pytest.mark.parametrize("cluster", sorted(CLUSTERS))
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_x_cluster_composes_and_validates(recipe, cluster):
    config = validate(compose(recipe, [*DATA, *(API if recipe in JUDGED else []), f"+cluster={cluster}"]))
    assert config.trainer.n_gpus_per_node * config.trainer.nnodes == CLUSTERS[cluster]
    # the preset sets resources only: the recipe's algorithm survives it
    recipe_only = compose(recipe, [*DATA, *(API if recipe in JUDGED else [])])
    for key in ("data.train_batch_size", "actor_rollout_ref.rollout.n", "actor_rollout_ref.actor.optim.lr",
                "actor_rollout_ref.actor.ppo_mini_batch_size", "visionr3.reward.formula", "data.max_response_length"):
        assert OmegaConf.select(config, key) == OmegaConf.select(recipe_only, key), key


@pytest.mark.parametrize("cluster", sorted(CLUSTERS))
def test_local_judge_on_its_own_pool(cluster):
    config = validate(compose("visionthink", [*DATA, "judge=local_qwen3", "reward.reward_model.model_path=Qwen/Qwen3-1.7B",
                                              f"+cluster={cluster}", "+judge_pool=a100_1x8"]))
    reward_model = config.reward.reward_model
    assert reward_model.enable and reward_model.enable_resource_pool
    assert (reward_model.nnodes, reward_model.n_gpus_per_node) == (1, 8)
    assert config.visionr3.reward.judge.backend == "local" and config.visionr3.reward.judge.prompt == "qwen3"
    assert config.trainer.n_gpus_per_node * config.trainer.nnodes == CLUSTERS[cluster]  # the policy keeps its GPUs


@pytest.mark.parametrize("recipe", RECIPES)
def test_cpu_variant_composes_and_validates(recipe):
    overrides = ["actor_rollout_ref.model.path=/tmp/tiny", "data.train_files=t.parquet", "data.val_files=v.parquet"]
    if recipe in JUDGED:
        overrides.append("visionr3.reward.judge.base_url=http://127.0.0.1:1/v1")
    config = validate(compose(recipe, overrides, name="cpu"))
    assert config.actor_rollout_ref.rollout.name == "hf" and config.trainer.device == "cpu"
    assert config.trainer.total_training_steps == 1
    # the CPU variant is the recipe, scaled down: same reward, agent loop and tools
    full = compose(recipe, [*DATA, *(API if recipe in JUDGED else [])])
    for key in ("visionr3.reward.formula", "visionr3.reward.judge.use", "visionr3.reward.judge.prompt",
                "visionr3.shaping", "visionr3.advantage", "actor_rollout_ref.rollout.agent.default_agent_loop",
                "actor_rollout_ref.rollout.multi_turn.tool_config_path"):
        assert OmegaConf.select(config, key) == OmegaConf.select(full, key), key


EXPECTED = {  # the recipe's defining settings (papers.md), so an edit that loses one is caught
    "visionthink": {"actor_rollout_ref.rollout.agent.default_agent_loop": "visionr3_visionthink",
                    "actor_rollout_ref.rollout.n": 16, "visionr3.shaping.apply_ratio.enable": True,
                    "visionr3.reward.judge.use": "always", "actor_rollout_ref.rollout.multi_turn.max_assistant_turns": 2},
    "vlm_r3": {"actor_rollout_ref.rollout.agent.default_agent_loop": "visionr3_vlm_r3", "actor_rollout_ref.rollout.n": 5,
               "actor_rollout_ref.actor.use_kl_loss": False, "visionr3.reward.judge.prompt": "vlm_r3"},
    "vision_sr1": {"actor_rollout_ref.rollout.agent.default_agent_loop": "visionr3_vision_sr1",
                   "actor_rollout_ref.rollout.n": 8, "visionr3.reward.formula": "vision_sr1",
                   "visionr3.reward.judge.use": "never"},
    "zoom": {"actor_rollout_ref.rollout.agent.default_agent_loop": "visionr3_agent", "visionr3.reward.formula": "deepeyes",
             "actor_rollout_ref.rollout.multi_turn.max_assistant_turns": 5, "actor_rollout_ref.actor.use_kl_loss": False},
}


TOOLS = {"visionthink": "resize.yaml", "vlm_r3": "crop_zoom.yaml", "vision_sr1": None, "zoom": "crop_zoom.yaml"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_defining_settings(recipe):
    config = compose(recipe, [*DATA, *(API if recipe in JUDGED else [])])
    for key, value in EXPECTED[recipe].items():
        assert OmegaConf.select(config, key) == value, key
    tools = OmegaConf.select(config, "actor_rollout_ref.rollout.multi_turn.tool_config_path")
    assert tools == (TOOLS[recipe] and str(config_path("tools", TOOLS[recipe])))  # Vision-SR1 offers no tool


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown recipe 'deepeye'.*visionthink"):
        recipe_dir("deepeye")


@pytest.mark.parametrize(
    "argv,expected",
    [
        ([], ["S"]),
        (["--cfg", "job"], ["--cfg", "job", "S"]),
        (["a=1", "--cfg", "job"], ["a=1", "S", "--cfg", "job"]),
        (["--config-name", "cpu", "a=1", "~b", "--cfg", "job"], ["--config-name", "cpu", "a=1", "~b", "S", "--cfg", "job"]),
    ],
)
def test_recipe_searchpath_joins_the_run_of_overrides(argv, expected):
    from visionr3.train.main import with_override

    assert with_override(argv, "S") == expected


def test_train_help_names_the_recipes(capsys):
    """``visionr3 train --help`` is argparse's (everything else after ``train`` is Hydra's): it must say that
    ``--recipe`` exists, which recipes there are, and what ``--config-name`` and ``--cfg job`` do."""
    from visionr3.cli import main
    from visionr3.config import RECIPES

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--recipe" in text and all(name in text for name in RECIPES)
    assert "--config-name cpu: its CPU variant" in text and "--cfg job prints the composed config" in text

def test_train_recipe_composes_through_the_cli():
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [str(Path(sys.executable).with_name("visionr3")), "train", "--recipe", "vlm_r3", "--config-name", "cpu",
         "actor_rollout_ref.model.path=/tmp/tiny", "--cfg", "job"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    composed = OmegaConf.create(result.stdout)
    assert composed.actor_rollout_ref.rollout.agent.default_agent_loop == "visionr3_vlm_r3"
    assert composed.actor_rollout_ref.rollout.name == "hf" and composed.actor_rollout_ref.model.path == "/tmp/tiny"
