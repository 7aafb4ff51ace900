"""The CPU demo end to end: warm-up, verl's real GRPO trainer (CPU platform, HF rollout, visionr3_agent + crop tool,
rule reward), checkpoint, verl's model_merger, reload. Small: 2 GRPO steps of 2 prompts x 8 rollouts (16 trajectories per
step, so a few valid crops are all but certain), about 3-4 minutes on 2 cores with the warm-up cached; it runs next to
the recipes' CPU steps (tests/e2e/conftest.py)."""

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def demo(e2e_runs):
    """`visionr3 demo --steps 2 --n 8`, run by tests/e2e/conftest.py alongside the recipes' CPU steps."""
    run = e2e_runs["demo"]
    run.check()
    return run.directory, run.log.read_text(), json.loads((run.directory / "summary.json").read_text())


def test_trainer_steps_and_metrics(demo):
    out, stdout, summary = demo
    assert summary["steps"] == 2 and "demo done" in stdout
    rows = [json.loads(line)["data"] for line in Path(summary["metrics_file"]).read_text().splitlines()]
    train_rows = [row for row in rows if "actor/pg_loss" in row]
    assert len(train_rows) == 2
    for row in train_rows:  # loss, reward and our tool metrics were logged by verl's trainer
        for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "visionr3/tool_calls/mean",
                    "visionr3/reward/accuracy/mean", "training/num_turns/mean", "timing_s/step"):
            assert key in row, key
    assert all(len(summary[k]) == 2 for k in ("reward_mean", "tool_call_rate", "step_seconds"))


def test_tool_calls_and_their_images_reached_the_batch(demo):
    _, _, summary = demo
    assert max(summary["tool_call_rate"]) > 0, "the warmed-up policy must call the crop tool"
    # A valid call adds its crop to the trajectory's images, and verl's batch carries every image's pixels.
    assert max(summary["tool_images"]) > 0


def test_rollout_uses_the_trained_weights(demo):
    _, _, summary = demo
    # The rollout's log-probs (HF replica) match the actor's recomputation on every step, including step 2, which is
    # sampled after the first update was synced to the replica: a stale replica would diverge here.
    assert all(diff is not None and diff < 0.02 for diff in summary["rollout_probs_diff_mean"])


def test_parameters_changed_and_merged_model_reloads(demo):
    from transformers import AutoModelForImageTextToText

    _, _, summary = demo
    # The fp32 FSDP checkpoint against the warmed-up policy GRPO started from (bf16, as merged, would hide 1e-4 steps).
    shard = torch.load(Path(summary["checkpoint_dir"]) / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    trained = {name: tensor.to_local() if hasattr(tensor, "to_local") else tensor for name, tensor in shard.items()}
    before = AutoModelForImageTextToText.from_pretrained(summary["policy_dir"], dtype=torch.float32).state_dict()
    changed = [name for name, t in trained.items() if name in before and not torch.equal(t, before[name])]
    assert len(changed) > len(trained) // 2, f"GRPO must update the trained parameters ({len(changed)}/{len(trained)})"
    # The demo already compared every merged tensor with the checkpoint; the merged directory loads on its own.
    merged = AutoModelForImageTextToText.from_pretrained(summary["merged_model_dir"], dtype="auto").state_dict()
    assert merged.keys() == before.keys()
    assert all(merged[name].shape == before[name].shape for name in merged)
