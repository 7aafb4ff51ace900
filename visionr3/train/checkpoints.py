"""Checkpoint folders a kill cannot corrupt: which step a resume may trust, written so that no kill breaks it.

verl 0.9.1 saves step N into ``<default_local_dir>/global_step_N/`` (``actor/`` shards, ``data.pt``: the
dataloader's position) and only then writes ``latest_checkpointed_iteration.txt``, the pointer ``resume_mode=auto``
reads. Two windows remain in which a ``kill -9`` (a pre-empted node, an OOM kill, a user's Ctrl-\\) leaves a root that
does not resume:

- the pointer is rewritten in place (``open(..., "w")`` then ``write``): killed between the two, it is empty and
  verl's resume fails on ``int("")``;
- checkpoint rotation (``trainer.max_actor_ckpt_to_keep``) runs inside the actor's save, before the pointer moves:
  with ``max_actor_ckpt_to_keep=1`` the previous step's ``actor/`` is deleted as soon as the new shards are written,
  while the pointer still names it until ``data.pt`` is saved.

:class:`~visionr3.train.trainer.VisionR3SyncTrainer` therefore saves with verl's rotation off, then marks the folder
complete (:data:`COMPLETE`, written last, atomically), rewrites the pointer atomically, and only then prunes folders
beyond the limit (:func:`prunable`). On resume it checks the pointer first (:func:`resume_step`): a pointer that is
unreadable or names a folder without the mark falls back to the newest complete step, with a warning. Roots written
by plain verl (no mark anywhere) are trusted as verl trusts them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"
"""verl's pointer file (``verl.utils.checkpoint.checkpoint_manager.get_checkpoint_tracker_filename``)."""
COMPLETE = "visionr3_complete.json"
"""Written into ``global_step_N/`` after every file of the step's checkpoint: its step and the files with sizes."""
STEP_FOLDER = re.compile(r"^global_step_(\d+)$")


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a kill) sees the old content or the new one, never a mix:
    a temporary file in the same folder, fsynced, then ``os.replace``."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def step_folders(root: Path) -> dict[int, Path]:
    """``{step: folder}`` for every ``global_step_<N>`` folder under ``root``."""
    root = Path(root)
    if not root.is_dir():
        return {}
    found = {}
    for child in root.iterdir():
        match = STEP_FOLDER.match(child.name)
        if match and child.is_dir():
            found[int(match.group(1))] = child
    return found


def is_complete(folder: Path) -> bool:
    return (Path(folder) / COMPLETE).is_file()


def mark_complete(folder: Path, step: int) -> None:
    """Record that ``folder`` holds all of step ``step``'s checkpoint (call after every file is written)."""
    folder = Path(folder)
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != COMPLETE and not path.name.startswith(".")
    }
    atomic_write(folder / COMPLETE, json.dumps({"step": step, "files": files}, indent=1))


def read_tracker(root: Path) -> int | None:
    """The step verl's pointer names; None when there is no pointer or it cannot be read as a step."""
    try:
        return int((Path(root) / TRACKER).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def write_tracker(root: Path, step: int) -> None:
    atomic_write(Path(root) / TRACKER, str(step))


def resume_step(root: Path) -> tuple[int | None, str | None]:
    """``(step, warning)``: the step ``resume_mode=auto`` should continue from (None: train from scratch) and, when
    the pointer could not be trusted, why. Pure reading; :func:`repair` writes the answer back."""
    folders = step_folders(root)
    pointer = read_tracker(root)
    complete = sorted(step for step, folder in folders.items() if is_complete(folder))
    tracker_exists = (Path(root) / TRACKER).exists()
    if not complete:
        # nothing marked: plain verl's root (or none yet): verl's own rule, the pointer as it is
        return pointer, None
    if pointer is not None and pointer in folders and is_complete(folders[pointer]):
        return pointer, None
    newest = complete[-1]
    if not tracker_exists:
        why = f"{TRACKER} is missing"
    elif pointer is None:
        why = f"{TRACKER} is unreadable (a kill while it was written)"
    elif pointer not in folders:
        why = f"{TRACKER} names global_step_{pointer}, which does not exist"
    else:
        why = f"{TRACKER} names global_step_{pointer}, which was not completely saved"
    return newest, f"{why}; resuming from global_step_{newest}, the newest complete checkpoint under {root}"


def repair(root: Path) -> tuple[int | None, str | None]:
    """:func:`resume_step`, and the pointer rewritten to its answer when it was wrong."""
    step, warning = resume_step(root)
    if warning is not None and step is not None:
        write_tracker(root, step)
    return step, warning


def prunable(root: Path, keep: int | None, latest: int) -> list[Path]:
    """Folders to delete so that at most ``keep`` complete checkpoints remain, the newest ones; never ``latest`` (the
    step the pointer names) and never a folder newer than it. ``keep`` None or < 1: keep all, as verl does."""
    if not keep or keep < 1:
        return []
    folders = step_folders(root)
    kept = [step for step in sorted(folders, reverse=True) if step <= latest and is_complete(folders[step])][:keep]
    if latest not in kept:
        kept.append(latest)
    return [folders[step] for step in sorted(folders) if step < latest and step not in kept]
