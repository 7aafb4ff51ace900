"""The CPU demo end to end: warm-up, verl's real GRPO trainer (CPU platform, HF rollout, visionr3_agent + crop tool,
rule reward), checkpoint, verl's model_merger, reload. Small: 2 GRPO steps of 2 prompts x 8 rollouts (16 trajectories per
step), about 3-4 minutes on 2 cores with the warm-up cached; it runs next to the recipes' CPU steps
(tests/e2e/conftest.py).

Each check reads what the trainer itself held, not the agent loop's own counters: verl's rollout dump with the batch's
image digests (``visionr3 demo`` writes it to ``<output-dir>/rollouts``), the weight-sync check the trainer logs after
every sync, the FSDP checkpoint, and the merged model.
"""

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


@pytest.fixture(scope="module")
def step_rows(demo):
    _, _, summary = demo
    rows = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines() if line.strip()]
    return [row["data"] for row in rows if "actor/pg_loss" in row["data"]]


@pytest.fixture(scope="module")
def shard(demo):
    """The last FSDP checkpoint (fp32), as plain tensors."""
    _, _, summary = demo
    state = torch.load(Path(summary["checkpoint_dir"]) / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    return {name: tensor.to_local() if hasattr(tensor, "to_local") else tensor for name, tensor in state.items()}


def test_trainer_steps_and_metrics(demo, step_rows):
    _, stdout, summary = demo
    assert summary["steps"] == 2 and "demo done" in stdout
    assert len(step_rows) == 2
    for row in step_rows:  # loss, reward and our tool metrics were logged by verl's trainer
        for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "visionr3/tool_calls/mean",
                    "visionr3/reward/accuracy/mean", "training/num_turns/mean", "timing_s/step",
                    "visionr3/weight_sync/match"):
            assert key in row, key
    assert all(len(summary[k]) == 2 for k in ("reward_mean", "tool_call_rate", "step_seconds"))


def test_the_curve_and_the_first_and_last_window(demo, step_rows):
    """``curve.png`` is a real PNG next to summary.json, and the console's first-vs-last line and the summary's windows
    are the logged accuracies of the first and the last step (a 2-step run has windows of one step)."""
    directory, stdout, summary = demo
    assert (directory / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accuracy = [row["visionr3/reward/accuracy/mean"] for row in step_rows]
    assert summary["accuracy"] == accuracy
    assert (summary["accuracy_first_window"], summary["accuracy_last_window"]) == (accuracy[0], accuracy[-1])
    assert f"first 1 step(s) {accuracy[0]:.2f} -> last 1 step(s) {accuracy[-1]:.2f}" in stdout


def test_tool_calls_and_their_crops_reached_the_trainers_batch(demo, rollout_dump, batch_image_oracle):
    """Every dumped trajectory's images in verl's batch (``multi_modal_inputs``: grid and pixel digest per image) are
    exactly its prompt image and the crops of its valid calls, re-made here from the dataset row's source image.

    Relies on the warmed-up policy making at least one valid crop in 2 steps x 16 rollouts (it calls the quarter the
    question names, visionr3.demo.warmup.quadrant_box; 32% and 50% of its sampled calls were valid in one run)."""
    _, _, summary = demo
    rows = rollout_dump(Path(summary["rollout_dir"]))
    assert len(rows) == 2 * 16
    assert max(summary["tool_call_rate"]) > 0, "the warmed-up policy did not call the crop tool"
    cropped = [row for row in rows if row["valid_tool_calls"] > 0]
    assert cropped, "the warmed-up policy made no valid crop in 2 steps x 16 rollouts"
    for row in rows:
        assert len(row["batch_images"]) == row["num_images"] == 1 + row["valid_tool_calls"]
        batch_image_oracle.check(row, Path(summary["train_files"]), "crop_zoom.yaml")


def test_rollout_uses_the_trained_weights(demo, step_rows, shard):
    """After every weight sync the replica holds exactly the actor's weights (digests the trainer compares), the
    update reached it on every step, and the actor digest it was compared with is the saved checkpoint's."""
    from visionr3.rollout.hf.digests import combined_digest, named_tensor_digests
    from visionr3.train.trainer import digest_number

    first, second = step_rows
    assert first["visionr3/weight_sync/initial_match"] == 1.0  # the sync before step 1: the warmed-up policy
    assert all(row["visionr3/weight_sync/match"] == 1.0 and row["visionr3/weight_sync/mismatched"] == 0 for row in step_rows)
    replicas = [first["visionr3/weight_sync/initial_replica_digest"], first["visionr3/weight_sync/replica_digest"],
                second["visionr3/weight_sync/replica_digest"]]
    assert len(set(replicas)) == 3, f"a weight sync did not change the replica's weights: {replicas}"
    assert digest_number(combined_digest(named_tensor_digests(shard.items(), "float32"))) == second["visionr3/weight_sync/actor_digest"]
    # and the rollout's log-probs (HF replica) match the actor's recomputation on both steps
    assert all(row["training/rollout_probs_diff_mean"] < 0.02 for row in step_rows)


def test_parameters_changed_and_the_merged_model_holds_the_checkpoint(demo, shard):
    from transformers import AutoModelForImageTextToText

    _, _, summary = demo
    # The fp32 FSDP checkpoint against the warmed-up policy GRPO started from (bf16, as merged, would hide 1e-4 steps).
    before = AutoModelForImageTextToText.from_pretrained(summary["policy_dir"], dtype=torch.float32).state_dict()
    changed = [name for name, t in shard.items() if name in before and not torch.equal(t, before[name])]
    assert len(changed) > len(shard) // 2, f"GRPO must update the trained parameters ({len(changed)}/{len(shard)})"
    # verl's model_merger writes bf16: every merged tensor is the checkpoint's, rounded to bf16.
    merged = AutoModelForImageTextToText.from_pretrained(summary["merged_model_dir"], dtype="auto").state_dict()
    assert merged.keys() == before.keys() and set(shard) <= set(merged)
    differ = [name for name, tensor in shard.items() if not torch.equal(merged[name], tensor.to(merged[name].dtype))]
    assert not differ and all(t.dtype == torch.bfloat16 for t in merged.values()), differ
