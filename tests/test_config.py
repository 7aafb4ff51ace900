"""visionr3.config.VisionR3Settings: the ``visionr3:`` block of every recipe parsed into typed values, and a typo
anywhere in it named as an error — by the parser and, before Ray starts, by `visionr3 train`."""

import subprocess
import sys
from pathlib import Path

import pytest

from visionr3.config import RECIPE_SEARCHPATH, RECIPES, VisionR3Settings, config_path, recipe_dir
from visionr3.testing.configs import compose

DATA = ["actor_rollout_ref.model.path=/tmp/tiny", "data.train_files=t.parquet", "data.val_files=v.parquet"]


def recipe(name: str, *overrides: str):
    return compose(recipe_dir(name), "config", [*DATA, RECIPE_SEARCHPATH, *overrides])


def test_each_recipe_block_parses_to_what_the_recipe_says():
    parsed = {name: VisionR3Settings.from_config(recipe(name)) for name in RECIPES}
    assert {name: s.formula for name, s in parsed.items()} == {
        "visionthink": "visionthink", "vlm_r3": "vlm_r3", "vision_sr1": "vision_sr1", "zoom": "deepeyes"}
    assert {name: s.prompt_style for name, s in parsed.items()} == {name: name for name in RECIPES}
    assert parsed["visionthink"].apply_ratio and not parsed["zoom"].apply_ratio
    assert parsed["vision_sr1"].decouple == {"visual": 1.0} and parsed["zoom"].decouple is None
    assert parsed["zoom"].judge["use"] == "always" and parsed["zoom"].params == {"variant": "code"}


def test_the_default_config_leaves_the_formula_to_its_default():
    settings = VisionR3Settings.from_config(compose(config_path(), "visionr3_trainer", DATA))
    assert settings.formula == "exact_match_plus_format" and not settings.may_exclude and settings.prompt_style is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("+visionr3.shaping.apply_raito.enable=true", r"visionr3\.shaping: unknown key\(s\) \['apply_raito'\]"),
        ("+visionr3.rewards.formula=x", r"visionr3: unknown key\(s\) \['rewards'\]"),
        ("+visionr3.reward.judge.timout=5", r"visionr3\.reward\.judge: unknown key\(s\) \['timout'\]"),
        ("+visionr3.advantage.decoupled={visual: 1.0}", r"visionr3\.advantage: unknown key\(s\) \['decoupled'\]"),
        ("+visionr3.shaping.apply_ratio.thetta=0.3", r"visionr3\.shaping\.apply_ratio: unknown keys \['thetta'\]"),
    ],
)
def test_an_unknown_key_is_named_with_the_known_ones(override, message):
    with pytest.raises(ValueError, match=message):
        VisionR3Settings.from_config(recipe("visionthink", override))


def test_visionr3_train_names_a_typo_before_ray_starts(tmp_path):
    """The same check runs in `visionr3 train` before verl starts Ray: the run fails at once with the key's name."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("visionr3")), "train", "--recipe", "zoom", "--config-name", "cpu", *DATA,
         "+visionr3.shaping.apply_raito.enable=true"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "visionr3.shaping: unknown key(s) ['apply_raito']" in result.stdout + result.stderr
    assert "Started a local Ray instance" not in result.stdout + result.stderr


JUDGE = ["judge=local_qwen3", "reward.reward_model.model_path=/tmp/qwen3"]


@pytest.mark.parametrize(
    "overrides, refused",
    [
        ([], False),                                                           # colocated: verl wakes it per batch
        (["reward.reward_model.enable_resource_pool=true"], True),             # own pool, slept at start, never woken
        (["+judge_pool=a100_1x8"], False),                                     # the GPU preset keeps it awake
        (["judge=local_qwen3_cpu"], False),                                    # the CPU preset too
    ],
)
def test_a_judge_on_its_own_pool_must_stay_awake(overrides, refused):
    """verl sleeps a reward model with ``free_cache_engine`` at start and wakes it only on the colocated path: on its
    own pool every judge request would hang. ``visionr3 train`` refuses that config before Ray starts."""
    from visionr3.train.main import check_judge_pool

    config = recipe("visionthink", *JUDGE, *overrides)
    if refused:
        with pytest.raises(ValueError, match="free_cache_engine=False"):
            check_judge_pool(config)
    else:
        check_judge_pool(config)


def test_params_the_formula_does_not_take_are_named_before_ray_starts():
    """The zoom recipe's ``params: {variant: code}`` is DeepEyes' formula's; switched to VLM-R3's formula, the key is
    refused here, not at the first scored trajectory inside an agent-loop worker (where it failed every sample)."""
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['variant'\] for formula 'vlm_r3'"):
        VisionR3Settings.from_config(recipe("zoom", "visionr3.reward.formula=vlm_r3"))
    assert VisionR3Settings.from_config(recipe("zoom", "visionr3.reward.formula=vlm_r3", "~visionr3.reward.params.variant"))
    with pytest.raises(ValueError, match="unknown reward formula 'vlm_r4'"):
        VisionR3Settings.from_config(recipe("zoom", "visionr3.reward.formula=vlm_r4"))


@pytest.mark.parametrize(
    "name, override, params",
    [
        (None, "visionr3.reward.params={format_weight: 0.5}", {"format_weight": 0.5}),
        ("zoom", "visionr3.reward.params={format_weight: 0.5}", {"variant": "code", "format_weight": 0.5}),
        ("zoom", "visionr3.reward.params.format_weight=0.5", {"variant": "code", "format_weight": 0.5}),
        ("zoom", "visionr3.reward.params={variant: paper}", {"variant": "paper"}),
        ("visionthink", "visionr3.reward.params={tool_call_penalty: 0}", {"tool_call_penalty": 0}),
    ],
)
def test_a_params_override_merges_into_what_the_config_sets(name, override, params):
    """README's ``visionr3.reward.params='{format_weight: 0.5}'``, written without ``+``: Hydra closes every dict
    before it applies overrides, so this failed (``Key 'format_weight' is not in struct``) for any key the YAML did
    not already have. It now merges, through to the reward function's kwargs."""
    config = recipe(name, override) if name else compose(config_path(), "visionr3_trainer", [*DATA, override])
    assert dict(config.visionr3.reward.params) == params
    assert dict(config.reward.custom_reward_function.reward_kwargs.params) == params
    assert VisionR3Settings.from_config(config).params == params


def test_only_params_is_open_and_the_formula_still_names_a_key_it_does_not_take():
    default = ["visionr3.reward.params={tool_call_penalty: 0}"]  # VisionThink's key; the default formula has none
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tool_call_penalty'\] for formula 'exact_match_plus_format'"):
        VisionR3Settings.from_config(compose(config_path(), "visionr3_trainer", [*DATA, *default]))
    from hydra.errors import ConfigCompositionException

    for closed in ("visionr3.reward.paramz={a: 1}", "visionr3.reward.judge={timout: 5}", "visionr3.shaping.x=1"):
        with pytest.raises(ConfigCompositionException):
            recipe("zoom", closed)

