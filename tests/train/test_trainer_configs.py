"""Our trainer configs compose on verl's and pass verl's own validation — including the GPU (vLLM) variant."""

import subprocess
import sys

import pytest

from visionr3.config import config_path
from visionr3.testing.configs import compose as compose_config
from visionr3.testing.configs import validate

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"  # only composed, never loaded


def compose(name, overrides):
    return compose_config(config_path(), name, overrides)


@pytest.mark.parametrize(
    "name,overrides",
    [
        # The GPU path: the same configs with vLLM on an 8-GPU node.
        ("visionr3_trainer", [f"actor_rollout_ref.model.path={MODEL}", "data.train_files=t.parquet", "data.val_files=v.parquet",
                              "actor_rollout_ref.rollout.name=vllm", "data.train_batch_size=64",
                              "actor_rollout_ref.actor.ppo_mini_batch_size=16",
                              "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                              "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
                              "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2"]),
        ("cpu_demo", ["actor_rollout_ref.model.path=/tmp/m", "data.train_files=t.parquet", "data.val_files=v.parquet",
                      "actor_rollout_ref.rollout.name=vllm"]),
        ("cpu_demo", ["actor_rollout_ref.model.path=/tmp/m", "data.train_files=t.parquet", "data.val_files=v.parquet"]),
    ],
)
def test_configs_compose_and_validate(name, overrides):
    config = validate(compose(name, overrides))
    rollout = config.actor_rollout_ref.rollout
    assert rollout.multi_turn.tool_config_path == str(config_path("tools", "crop_zoom.yaml"))
    assert rollout.agent.agent_loop_config_path == str(config_path("agent_loop.yaml"))
    assert rollout.agent.default_agent_loop == "visionr3_agent"
    assert config.data.custom_cls.name == "VisionRLDataset"
    assert config.reward.custom_reward_function.path == "pkg://visionr3.reward.score"
    assert config.trainer.v1.trainer_mode == "visionr3_sync"
    # the GPU config sets our tool-capable template; the CPU preset sets none (the tiny checkpoints ship it)
    template = config.actor_rollout_ref.model.custom_chat_template
    assert (template is not None and "<tool_call>" in template) == (name == "visionr3_trainer"), template


def test_verl_main_ppo_accepts_our_config():
    """`python -m verl.trainer.main_ppo --config-path <ours> --config-name visionr3_trainer` composes (verl's entry),
    with a ``visionr3.reward.params`` dict override: the plug-in verl imports registers the node that opens it."""
    result = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(config_path()), "--config-name",
         "visionr3_trainer", "--cfg", "job", "--resolve", f"actor_rollout_ref.model.path={MODEL}",
         "data.train_files=t.parquet", "data.val_files=v.parquet", "actor_rollout_ref.rollout.name=vllm",
         "visionr3.reward.params={format_weight: 0.5}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainer_mode: visionr3_sync" in result.stdout and "crop_zoom.yaml" in result.stdout
    assert "format_weight: 0.5" in result.stdout
