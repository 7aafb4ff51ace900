"""The kill-and-resume drill: verl's trainer killed with SIGKILL twice, then resumed, as a pre-empted job would be.

    python -m visionr3.testing.resume_drill --out DIR --policy <checkpoint>   # ~10 minutes on 2 cores

Three ``visionr3 train --config-name cpu_demo`` runs on one checkpoint root (4 steps of 2 prompts, ``save_freq`` 2,
``max_actor_ckpt_to_keep`` 1, a shuffled dataloader with a seed, the rollout dump and the file logger on):

A. killed (``kill -9`` of the driver, the ``visionr3 train`` process) during step 3, once step 2's checkpoint is on
   disk;
B. the same command again (``trainer.resume_mode=auto``, verl's default): it resumes, and the moment step 4's
   checkpoint folder appears, i.e. while it is being saved, the driver and every process of its Ray session (raylet,
   GCS, the trainer's actor, the workers) are SIGKILLed at once, as a pre-empted machine loses them. Killing the
   driver alone is not enough here: Ray needs seconds to tear the session down, and in that time the trainer's actor
   finished the save (CI, 2026-12-07);
C. the same command once more: it resumes from what the pointer names after that kill and finishes.

After each kill the drill waits for every process of that run's Ray session to exit (Ray ties its local cluster to the
driver) and records any that did not as orphans. ``DIR/drill.json`` records, per run, its exit, the step it was killed
in, the pointer at the kill and once its processes were gone, its metrics and dump folders; tests/e2e/test_resume.py reads it and checks what resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STEPS = 4
SAVE_FREQ = 2
ROWS = 8  # one epoch of 4 steps x 2 prompts: a resumed dataloader that restarted would repeat rows
VISIONR3 = str(Path(sys.executable).with_name("visionr3"))


def train_command(out: Path, policy: Path, rows: Path) -> list[str]:
    return [
        VISIONR3, "train", "--config-name", "cpu_demo",
        f"actor_rollout_ref.model.path={policy}",
        f"data.train_files={rows}", f"data.val_files={rows}",
        "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "data.shuffle=true", "++data.seed=7",
        "data.max_response_length=256",
        "actor_rollout_ref.rollout.n=2",
        f"trainer.total_training_steps={STEPS}", f"trainer.save_freq={SAVE_FREQ}",
        "trainer.max_actor_ckpt_to_keep=1",
        "trainer.resume_mode=auto",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        "trainer.logger=[console,file]",
    ]


def logged_steps(metrics: Path) -> list[int]:
    if not metrics.exists():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]


def session_processes(temp_dir: Path) -> list[int]:
    """PIDs of the live processes of this run's Ray session: the driver and all it started (raylet, GCS, agents,
    workers), found by the environment marker the driver was started with (:func:`visionr3.cluster.local.
    marked_processes`: Ray renames its workers, so their command lines do not name the session)."""
    from visionr3.cluster.local import marked_processes

    return marked_processes(str(temp_dir))


def wait_orphans(temp_dir: Path, seconds: float = 90) -> list[int]:
    """Wait up to ``seconds`` for the run's Ray processes to exit; kill and return the ones still there."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = session_processes(temp_dir)
        if not left:
            return []
        time.sleep(1)
    left = session_processes(temp_dir)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


RAY_START_FAILED = "The current node timed out during startup"
"""Ray's error when a raylet it started exits during start-up: on a loaded 2-core machine its dashboard agent can
miss a fixed 15 s deadline to report its ports (visionr3.cluster.local). Environmental, before any training: the
drill starts such a run again (three tries)."""


def run(name: str, out: Path, command: list[str], kill_when, timeout: float = 1200, tries: int = 3,
        whole_session: bool = False) -> dict:
    """One run of ``command`` (started again when Ray itself failed to start: :data:`RAY_START_FAILED`)."""
    for attempt in range(1, tries + 1):
        record = run_once(name, out, command, kill_when, timeout, whole_session)
        if record["returncode"] == 0 or record.get("killed") or RAY_START_FAILED not in Path(record["log"]).read_text(
                errors="replace"):
            break
    record["attempts"] = attempt
    return record


def run_once(name: str, out: Path, command: list[str], kill_when, timeout: float, whole_session: bool = False) -> dict:
    """One run of ``command``; ``kill_when(root, metrics)`` is polled every 50 ms and SIGKILLs the driver when true,
    with ``whole_session`` every process of its Ray session too (their PIDs are listed every 2 s beforehand, so the
    kill is one burst of signals)."""
    from visionr3.train import checkpoints

    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(f"/tmp/vr3-{os.getpid()}-{name}")  # short: Ray's socket paths must stay under 107 bytes
    metrics = directory / "metrics.jsonl"
    command = [*command, f"trainer.rollout_data_dir={directory / 'rollouts'}",
               f"+ray_kwargs.ray_init._temp_dir={temp_dir}"]
    from visionr3.cluster.local import MARKER

    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics), MARKER: str(temp_dir),
           # the raylet waits 15 s (Ray's default) for its dashboard agent's ports, which a loaded 2-core machine
           # missed ("Timed out waiting for file .../metrics_agent_port_...", the raylet exits)
           "RAY_agent_register_timeout_ms": "600000"}
    log = directory / "run.log"
    record: dict = {"name": name, "log": str(log), "metrics": str(metrics), "rollouts": str(directory / "rollouts")}
    started = time.monotonic()
    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=directory, env=env)
    root = out / "checkpoints"
    session, listed = [], 0.0
    while process.poll() is None and time.monotonic() - started < timeout:
        if whole_session and time.monotonic() - listed > 2:
            session, listed = session_processes(temp_dir), time.monotonic()
        if kill_when is not None and kill_when(root, metrics):
            process.send_signal(signal.SIGKILL)
            for pid in session:  # the driver is one of them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            record["tracker_at_kill"] = checkpoints.read_tracker(root)
            record["folders_at_kill"] = sorted(checkpoints.step_folders(root))
            record["killed"] = True
            record["session_killed"] = len(session)
            break
        time.sleep(0.05)
    else:
        if process.poll() is None:
            process.kill()
            record["timeout"] = True
    record["returncode"] = process.wait()
    record["seconds"] = round(time.monotonic() - started, 1)
    record["steps"] = logged_steps(metrics)
    record["orphans"] = wait_orphans(temp_dir)
    record["tracker_after"] = checkpoints.read_tracker(root)
    return record


def in_step_3(root: Path, metrics: Path) -> bool:
    """Step 2 is logged (its checkpoint saved and the pointer moved) and step 3 has been running for a few seconds."""
    from visionr3.train import checkpoints

    if 2 not in logged_steps(metrics) or checkpoints.read_tracker(root) != 2:
        return False
    in_step_3.since = getattr(in_step_3, "since", None) or time.monotonic()
    return time.monotonic() - in_step_3.since > 5


def saving_step_4(root: Path, metrics: Path) -> bool:
    return (root / "global_step_4").exists()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--policy", type=Path, required=True)
    args = parser.parse_args(argv)
    from visionr3.demo.synthetic import write_parquet

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = write_parquet(out / "rows.parquet", ROWS, seed=11)
    command = train_command(out, args.policy, rows)
    runs = [run("A", out, command, in_step_3)]
    if runs[-1].get("killed"):
        runs.append(run("B", out, command, saving_step_4, whole_session=True))
    if runs[-1].get("killed"):
        runs.append(run("C", out, command, None))
    (out / "drill.json").write_text(json.dumps({"command": command, "rows": str(rows), "runs": runs}, indent=1))
    print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
