"""The reward formula's old names, accepted until the next release: the key ``visionr3.reward.recipe`` (now
``visionr3.reward.formula``) and the formula ``visionr3`` (now ``exact_match_plus_format``). Each warns once per
process (a ``DeprecationWarning`` and a log line); the old and new key set to different formulas is an error."""

import logging
import warnings

import pytest
from omegaconf import OmegaConf

from visionr3.config import RECIPE_SEARCHPATH, recipe_dir
from visionr3.reward import formulas
from visionr3.reward.score import compute_score, configured_formula, formula_name
from visionr3.testing.configs import compose, validate

KEY_WARNING = "visionr3.reward.recipe is deprecated, use visionr3.reward.formula"
DEEPEYES_ANSWER = "<think>look</think><answer>red</answer>"
API = ["visionr3.reward.judge.base_url=https://judge.example/v1", "visionr3.reward.judge.model=judge-model"]


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a fresh process would: nothing warned yet."""
    monkeypatch.setattr(formulas, "_warned", set())


def zoom(overrides: list[str]):
    data = ["actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct", "data.train_files=t.parquet",
            "data.val_files=v.parquet", "+cluster=a100_1x8", *API]
    return validate(compose(recipe_dir("zoom"), "config", [*data, *overrides, RECIPE_SEARCHPATH]))


async def test_old_key_on_the_command_line_reaches_compute_score(caplog):
    config = zoom(["visionr3.reward.recipe=deepeyes", "visionr3.reward.judge.use=never"])
    kwargs = OmegaConf.to_container(config.reward.custom_reward_function.reward_kwargs)
    assert kwargs["recipe"] == "deepeyes" and kwargs["formula"] == "deepeyes"
    from verl.trainer.ppo.reward import get_custom_reward_fn

    reward_fn = get_custom_reward_fn(config)  # verl's own loader: compute_score with reward_kwargs bound
    with pytest.warns(DeprecationWarning, match=KEY_WARNING), caplog.at_level(logging.WARNING):
        old = await reward_fn("src", DEEPEYES_ANSWER, "red", {"tool_images": 1})
    assert [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()] == [KEY_WARNING]
    new = await compute_score("src", DEEPEYES_ANSWER, "red", {"tool_images": 1}, formula="deepeyes")
    assert old == new and old["tool"] == 1.0  # scored as DeepEyes


def test_new_key_composes_without_the_old_one():
    kwargs = zoom([]).reward.custom_reward_function.reward_kwargs
    assert kwargs.formula == "deepeyes" and kwargs.recipe is None


async def test_old_key_in_a_python_call_warns_once_per_process(caplog):
    with pytest.warns(DeprecationWarning, match=KEY_WARNING), caplog.at_level(logging.WARNING):
        old = await compute_score("src", "<answer>red</answer>", "red", {}, recipe="vision_r1")
    assert old == await compute_score("src", "<answer>red</answer>", "red", {}, formula="vision_r1")
    caplog.clear()
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # a second warning would raise here
        await compute_score("src", "<answer>red</answer>", "red", {}, recipe="vision_r1")
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


@pytest.mark.parametrize("call", ["python", "hydra"])
async def test_old_and_new_key_disagreeing_is_an_error_naming_both(call):
    if call == "python":
        kwargs = {"formula": "vlm_r3", "recipe": "deepeyes"}
    else:  # the recipe sets formula: deepeyes; a user's old key names another
        config = zoom(["visionr3.reward.recipe=vlm_r3"])
        kwargs = OmegaConf.to_container(config.reward.custom_reward_function.reward_kwargs)
    with pytest.raises(ValueError, match=r"visionr3\.reward\.formula=.*visionr3\.reward\.recipe="):
        await compute_score("src", "<answer>red</answer>", "red", {}, **kwargs)


def test_formula_name():
    assert formula_name() == formulas.DEFAULT_FORMULA == "exact_match_plus_format"
    assert formula_name("vlm_r3") == "vlm_r3"
    with pytest.warns(DeprecationWarning, match=KEY_WARNING):
        assert formula_name("deepeyes", "deepeyes") == "deepeyes"  # the same value twice is no conflict
    # what `visionr3 train` (before Ray starts) and `visionr3 eval` read from a composed config
    assert configured_formula(zoom([])) == "deepeyes"
    assert configured_formula(OmegaConf.create({"visionr3": {"reward": {"recipe": "mini_o3"}}})) == "mini_o3"
    with pytest.raises(ValueError, match=r"visionr3\.reward\.formula=deepeyes .*visionr3\.reward\.recipe=vlm_r3"):
        configured_formula(zoom(["visionr3.reward.recipe=vlm_r3"]))


async def test_old_default_name_is_an_alias_that_warns(caplog):
    assert "visionr3" not in formulas.FORMULAS
    message = "visionr3.reward.formula=visionr3 is deprecated, use visionr3.reward.formula=exact_match_plus_format"
    with pytest.warns(DeprecationWarning, match=message), caplog.at_level(logging.WARNING):
        assert formulas.get_formula("visionr3") is formulas.get_formula("exact_match_plus_format")
    assert any(message in r.getMessage() for r in caplog.records)
    response = "<answer> Red </answer>"
    assert await compute_score("src", response, "red", {}, formula="visionr3") == await compute_score(
        "src", response, "red", {}
    )


def test_visionr3_train_rewrites_an_old_command_line_that_switches_a_recipes_formula():
    """README's old `visionr3 train --recipe visionthink visionr3.reward.recipe=visionthink_general`: the recipe sets
    ``formula``, so the old key would conflict; `visionr3 train` rewrites it to the new key, with the warning."""
    from visionr3.train.main import renamed_overrides

    argv = ["visionr3.reward.recipe=visionthink_general", "+visionr3.reward.recipe=x", "data.train_files=t.parquet"]
    with pytest.warns(DeprecationWarning, match=KEY_WARNING):
        assert renamed_overrides(argv) == [
            "visionr3.reward.formula=visionthink_general", "+visionr3.reward.formula=x", "data.train_files=t.parquet",
        ]
    data = ["actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct", "data.train_files=t.parquet",
            "data.val_files=v.parquet", "+cluster=a100_1x8", *API]
    config = validate(compose(recipe_dir("visionthink"), "config",
                              [*data, *renamed_overrides(["visionr3.reward.recipe=visionthink_general"]), RECIPE_SEARCHPATH]))
    assert configured_formula(config) == "visionthink_general"


def test_a_config_written_for_the_old_key_still_works_on_the_base():
    """The base leaves ``formula`` null (the default formula), so a user's config that sets only the old key scores
    with the formula it names."""
    from visionr3.config import config_path

    data = ["actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct", "data.train_files=t.parquet",
            "data.val_files=v.parquet"]
    default = compose(config_path(), "visionr3_trainer", data)
    assert default.visionr3.reward.formula is None and configured_formula(default) == "exact_match_plus_format"
    old = compose(config_path(), "visionr3_trainer", [*data, "visionr3.reward.recipe=deepeyes"])
    with pytest.warns(DeprecationWarning, match=KEY_WARNING):
        assert configured_formula(old) == "deepeyes"
