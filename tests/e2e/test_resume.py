"""Kill -9 and resume through verl's real trainer (the resume drill, :mod:`visionr3.testing.resume_drill`).

Run A is killed during step 3, B resumes and is killed while step 4's checkpoint is being saved, C resumes from what
the pointer names after that and finishes. What each test relies on is in its docstring; how the checkpoints are
kept safe is :mod:`visionr3.train.checkpoints`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionr3.train import checkpoints


@pytest.fixture(scope="module")
def drill(e2e_runs) -> dict:
    run = e2e_runs["resume"]
    run.check()
    record = json.loads((run.directory / "drill.json").read_text())
    record["root"] = run.directory / "checkpoints"
    record["by_name"] = {entry["name"]: entry for entry in record["runs"]}
    return record


def dumped_rows(run: dict) -> dict[int, set[int]]:
    """``{step: row indices}`` of the dataset rows the run's steps trained on (verl's rollout dump, ``<step>.jsonl``)."""
    directory = Path(run["rollouts"])
    return {
        int(path.stem): {json.loads(line)["row_index"] for line in path.read_text().splitlines() if line.strip()}
        for path in (directory.glob("*.jsonl") if directory.exists() else ())
    }


def metrics(run: dict) -> dict[int, dict]:
    path = Path(run["metrics"])
    return {entry["step"]: entry["data"] for entry in map(json.loads, path.read_text().splitlines()) if entry}


def test_killed_run_leaves_step_2_and_no_orphans(drill):
    """A: SIGKILL of the driver during step 3: steps 1 and 2 were logged, the pointer names step 2, its folder is
    complete, and every process of the run's Ray session exited with the driver."""
    first = drill["by_name"]["A"]
    assert first.get("killed") and first["returncode"] == -9, first
    assert first["steps"] == [1, 2]
    assert first["tracker_at_kill"] == 2
    assert first["orphans"] == [], f"Ray processes outlived the killed driver: {first['orphans']}"


def test_resume_continues_step_counter_data_and_weights(drill):
    """B resumes at step 3 (not 1); the rows of its step 3 are ones A's steps 1-2 had not seen (the dataloader's
    position was restored, not restarted: one epoch is exactly 4 steps of 2 rows); and the rollout engine starts
    from step 2's trained weights — its digest after the first sync equals the one A's engine held after step 2."""
    first, second = drill["by_name"]["A"], drill["by_name"]["B"]
    assert second["steps"] and second["steps"][0] == 3, second
    seen = set().union(*dumped_rows(first).values())
    assert len(seen) == 4
    step3 = dumped_rows(second)[3]
    assert len(step3) == 2 and not step3 & seen, (step3, seen)
    a, b = metrics(first), metrics(second)
    assert b[3]["visionr3/weight_sync/initial_match"] == 1.0
    assert b[3]["visionr3/weight_sync/initial_replica_digest"] == a[2]["visionr3/weight_sync/replica_digest"]
    assert b[3]["visionr3/weight_sync/initial_replica_digest"] != a[1]["visionr3/weight_sync/initial_replica_digest"]


def test_kill_while_saving_leaves_a_complete_checkpoint(drill):
    """B's whole Ray session was killed the moment step 4's folder appeared. Nothing wrote the pointer afterwards;
    whatever it named is a complete checkpoint (normally step 2: the save had not finished), and C resumed from it
    without a repair: steps 3 and 4 after step 2, none after step 4."""
    second = drill["by_name"]["B"]
    assert second.get("killed") and second["returncode"] == -9 and second["session_killed"] > 0
    assert 4 in second["folders_at_kill"]
    pointer = second["tracker_at_kill"]
    assert pointer in (2, 4)
    assert second["tracker_after"] == pointer
    third = drill["by_name"]["C"]
    assert third["steps"] == ([3, 4] if pointer == 2 else [])
    assert "the newest complete checkpoint" not in Path(third["log"]).read_text(errors="replace")  # no repair
    assert second["orphans"] == []


def test_final_resume_finishes_with_restored_optimizer_and_rotation(drill):
    """C finishes (exit 0); its step 3 trained on the same rows as B's step 3 (the restored dataloader is
    deterministic), the four steps' rows cover the epoch once; the optimizer state saved at step 4 has taken 4
    steps (restored from step 2, then 2 more, not restarted); and rotation (``max_actor_ckpt_to_keep=1``) left only
    the newest complete checkpoint, removed after the pointer had moved."""
    import torch

    first, second, third = (drill["by_name"][name] for name in "ABC")
    assert third["returncode"] == 0, Path(third["log"]).read_text()[-4000:]
    if second["tracker_at_kill"] == 2:
        assert third["steps"] == [3, 4]
        rows_c, rows_b = dumped_rows(third), dumped_rows(second)
        assert rows_c[3] == rows_b[3]
        seen = set().union(*dumped_rows(first).values())
        assert seen | rows_c[3] | rows_c[4] == set(range(8))
    root = drill["root"]
    assert checkpoints.read_tracker(root) == 4
    assert sorted(checkpoints.step_folders(root)) == [4]
    assert checkpoints.is_complete(root / "global_step_4")
    optimizer = torch.load(root / "global_step_4" / "actor" / "optim_world_size_1_rank_0.pt", weights_only=False)
    steps = {float(state["step"]) for state in optimizer["state"].values()}
    assert steps == {4.0}, steps
