"""visionr3.train.checkpoints: which step a resume trusts after a kill, and what rotation may delete.

The kills themselves, through verl's trainer, are tests/e2e/test_resume.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionr3.train import checkpoints


def make_root(root: Path, complete: list[int], partial: list[int] = (), tracker: str | None = None) -> Path:
    """A checkpoint root: complete step folders (with shards and the mark), partial ones (shards only), a pointer."""
    for step in [*complete, *partial]:
        actor = root / f"global_step_{step}" / "actor"
        actor.mkdir(parents=True)
        (actor / "model_world_size_1_rank_0.pt").write_bytes(b"x" * step)
    for step in complete:
        (root / f"global_step_{step}" / "data.pt").write_bytes(b"d")
        checkpoints.mark_complete(root / f"global_step_{step}", step)
    if tracker is not None:
        (root / checkpoints.TRACKER).write_text(tracker)
    return root


@pytest.mark.parametrize(
    ("complete", "partial", "tracker", "step", "warned"),
    [
        ([], [], None, None, False),  # a new run: from scratch
        ([2], [], "2", 2, False),
        ([2, 4], [], "4", 4, False),
        ([2], [4], "2", 2, False),  # killed while saving step 4: the pointer had not moved
        ([2], [], "", 2, True),  # killed between verl's open(..., "w") and write
        ([2], [4], "4", 2, True),  # a pointer naming a half-written folder
        ([2], [], "6", 2, True),  # a pointer naming a folder that is gone
        ([2, 4], [], None, 4, True),  # pointer deleted
    ],
)
def test_resume_step(tmp_path, complete, partial, tracker, step, warned):
    root = make_root(tmp_path, complete, partial, tracker)
    got, warning = checkpoints.resume_step(root)
    assert got == step
    assert (warning is not None) == warned
    if warned:
        assert f"global_step_{step}" in warning and checkpoints.TRACKER in warning


def test_plain_verl_root_is_trusted_as_verl_trusts_it(tmp_path):
    """No folder carries the mark (a run saved by verl without the plug-in): the pointer is taken as it is."""
    (tmp_path / "global_step_3" / "actor").mkdir(parents=True)
    (tmp_path / checkpoints.TRACKER).write_text("3\n")
    assert checkpoints.resume_step(tmp_path) == (3, None)


def test_repair_rewrites_a_broken_pointer(tmp_path):
    root = make_root(tmp_path, [2], [4], "4")
    assert checkpoints.repair(root)[0] == 2
    assert checkpoints.read_tracker(root) == 2
    assert checkpoints.resume_step(root) == (2, None)


def test_mark_lists_every_file_with_its_size(tmp_path):
    import json

    root = make_root(tmp_path, [5])
    mark = json.loads((root / "global_step_5" / checkpoints.COMPLETE).read_text())
    assert mark == {"step": 5, "files": {"actor/model_world_size_1_rank_0.pt": 5, "data.pt": 1}}


@pytest.mark.parametrize(
    ("complete", "partial", "keep", "latest", "pruned"),
    [
        ([2, 4, 6], [], None, 6, []),  # verl's default: keep all
        ([2, 4, 6], [], 1, 6, [2, 4]),
        ([2, 4, 6], [], 2, 6, [2]),
        ([2, 4], [6], 1, 4, [2]),  # a partial newer folder is not touched (the next save overwrites it)
        ([4], [2], 1, 4, [2]),  # an older half-written folder goes
        ([2, 4], [], 5, 4, []),
    ],
)
def test_prunable(tmp_path, complete, partial, keep, latest, pruned):
    root = make_root(tmp_path, complete, partial)
    assert checkpoints.prunable(root, keep, latest) == [root / f"global_step_{step}" for step in pruned]


def test_atomic_write_leaves_no_temporary(tmp_path):
    checkpoints.write_tracker(tmp_path, 7)
    checkpoints.write_tracker(tmp_path, 8)
    assert checkpoints.read_tracker(tmp_path) == 8
    assert [path.name for path in tmp_path.iterdir()] == [checkpoints.TRACKER]
