"""Qwen3-VL through verl's trainer: one CPU GRPO step of the tiny Qwen3-VL with the normalised-coordinate crop tool
(``crop_zoom_qwen3.yaml``). The model is untrained, so this checks the step itself — Qwen3-VL's processor, rotary
positions and vision tower through rollout, log-probs, update and weight sync — not what it writes."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def step(e2e_runs):
    run = e2e_runs["qwen3_vl"]
    run.check()
    lines = (run.directory / "metrics.jsonl").read_text().splitlines()
    (metrics,) = [row["data"] for row in map(json.loads, filter(str.strip, lines))]
    rows = [json.loads(line) for line in (run.directory / "rollouts" / "1.jsonl").read_text().splitlines()]
    return metrics, rows


def test_one_step_updates_the_policy_and_syncs_it(step):
    metrics, rows = step
    assert len(rows) == 4  # 2 prompts x n 2
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "visionr3/tool_call_rate"):
        assert key in metrics, key
    # tests/e2e/text_digest_reward.py gives different responses different rewards: nonzero advantages, a real gradient
    assert len({row["score"] for row in rows}) > 1, [row["score"] for row in rows]
    assert metrics["actor/grad_norm"] > 0
    assert metrics["visionr3/weight_sync/initial_match"] == 1.0 and metrics["visionr3/weight_sync/match"] == 1.0
    assert metrics["visionr3/weight_sync/initial_replica_digest"] != metrics["visionr3/weight_sync/replica_digest"]


def test_batch_holds_qwen3_vl_image_grids(step):
    """Every trajectory's prompt image reached the actor's batch in Qwen3-VL's patch grid (16-pixel patches, merged
    2 x 2: a 224-pixel view is a 14 x 14 grid)."""
    _, rows = step
    for row in rows:
        assert row["batch_images"], row
        assert row["batch_images"][0]["grid_thw"] == [1, 14, 14], row["batch_images"][0]
