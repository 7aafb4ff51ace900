"""Every recipe's CPU variant, one step of verl's real trainer on a tiny Qwen2.5-VL (`visionr3 train --recipe <name>
--config-name cpu`): the recipe's own agent loop, tool, reward formula, judge settings, shaping and advantages, with
the CPU preset (HF rollout, fp32 FSDP2, one logical GPU) on top.

The judged recipes talk to a loopback OpenAI-compatible server (the stand-in for a remote judge API). The zoom run
starts from the demo's warmed-up policy (cached; built by tests/e2e/test_cpu_demo.py or here), which calls the crop
tool and answers, so its judge really is asked; the others start from the random tiny model, whose responses all run
to the length limit (equal lengths: the case visionr3.verl_fixes repairs in verl's update_actor).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from visionr3.data.synthetic import write_parquet
from visionr3.recipes import RECIPES
from visionr3.testing.openai_server import OpenAIStubServer
from visionr3.testing.tiny_model import tiny_model_dir

RESPONSE_LENGTH = {"zoom": 384, "visionthink": 128, "vlm_r3": 128, "vision_sr1": 128}
TASK = {"zoom": "zoom", "visionthink": "zoom", "vlm_r3": "zoom", "vision_sr1": "sr1"}
# reward components each recipe's formula reports (visionr3/reward/formulas.py), logged per step by visionr3_sync
COMPONENTS = {
    "zoom": ("accuracy", "format", "tool"),
    "visionthink": ("accuracy", "format"),
    "vlm_r3": ("accuracy", "format", "region", "length"),
    "vision_sr1": ("accuracy", "format", "visual"),
}


@pytest.fixture(scope="module")
def judge():
    with OpenAIStubServer() as server:
        yield server


def rows_for(recipe: str, directory: Path) -> Path:
    """Synthetic rows without an `agent_name` column, so the recipe's default agent loop decides."""
    path = write_parquet(directory / "rows.parquet", 2, seed=0, task=TASK[recipe])
    frame = pd.read_parquet(path).drop(columns=["agent_name"])
    frame.to_parquet(path)
    return path


def policy_for(recipe: str) -> Path:
    base = tiny_model_dir("qwen2_5_vl")
    if recipe != "zoom":
        return base
    from visionr3.demo import warmup_checkpoint

    return warmup_checkpoint(base, 100)[0]


@pytest.mark.parametrize("recipe", RECIPES)
def test_cpu_variant_runs_one_step(recipe, tmp_path, judge):
    rows = rows_for(recipe, tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    requests_before = judge.requests
    command = [
        str(Path(sys.executable).with_name("visionr3")), "train", "--recipe", recipe, "--config-name", "cpu",
        f"actor_rollout_ref.model.path={policy_for(recipe)}",
        f"data.train_files={rows}", f"data.val_files={rows}",
        f"data.max_response_length={RESPONSE_LENGTH[recipe]}",
        "actor_rollout_ref.rollout.n=2",
        f"trainer.default_local_dir={tmp_path / 'checkpoints'}",
        "trainer.logger=[console,file]",
    ]
    if recipe != "vision_sr1":
        command.append(f"visionr3.reward.judge.base_url={judge.base_url}")
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        try:
            returncode = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=900, cwd=tmp_path,
                env={**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics)},
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = "timeout"
    assert returncode == 0, f"{returncode}; {log}:\n" + log.read_text(errors="replace")[-6000:]
    steps = [json.loads(line)["data"] for line in metrics.read_text().splitlines() if line.strip()]
    (step,) = [row for row in steps if "actor/pg_loss" in row]
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "training/num_turns/mean",
                *(f"visionr3/reward/{name}/mean" for name in COMPONENTS[recipe])):
        assert key in step, key
    if recipe == "vision_sr1":  # the second pass ran or was refused for every trajectory, then decoupled advantages
        rates = [step[f"visionr3/self_reward/{s}_rate"] for s in
                 ("answered", "no_description", "empty_description", "leaky_description", "failed")]
        assert abs(sum(rates) - 1.0) < 1e-6
    if recipe == "zoom":  # the warmed-up policy zooms and answers; every answer goes to the judge (use: always)
        assert step["visionr3/tool_call_rate"] > 0
        assert judge.requests > requests_before
