"""``algorithm.filter_groups.max_num_gen_batches`` bounds DAPO's refills in verl's real trainer (the
``filter_groups_bound`` run of tests/e2e/conftest.py; the bound is ``VisionR3SyncTrainer._visionr3_bound_refills``).

verl 0.9.1's v1 replay buffer ignores the setting: with every group scoring alike it refills for ever. Here every
response scores 0.5 (tests/e2e/constant_reward.py), so DAPO drops every group, and the run must stop with an error
naming the setting after its second generation batch, without a training step."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bounded(e2e_runs):
    run = e2e_runs["filter_groups_bound"]
    return run, run.log.read_text(errors="replace")


def test_all_alike_groups_stop_the_step_at_the_limit(bounded):
    run, log = bounded
    assert run.returncode not in (0, "timeout"), log[-4000:]
    expected = ("algorithm.filter_groups.max_num_gen_batches=2: step 1 generated 4 prompts (2 batches of 2) and "
                "fewer than 2 of their groups had a 'reward' that differs between samples")
    assert expected in log, log[-4000:]
    metrics = run.directory / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
    assert steps == []


def test_verls_ignored_setting_warning_is_gone(bounded):
    """verl warns that it ignores the setting; the plug-in honours it, so the warning would mislead."""
    _, log = bounded
    assert "is ignored by the built-in V1 ReplayBuffer" not in log
