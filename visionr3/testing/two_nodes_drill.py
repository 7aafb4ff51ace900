"""Two Ray nodes on one machine, verl's trainer across them, its two-shard checkpoint merged, a worker node killed.

    python -m visionr3.testing.two_nodes_drill --out DIR --policy <checkpoint>     # ~12 minutes on 2 cores

1. :class:`~visionr3.cluster.local.LocalCluster` starts a head and a worker node (separate ``ray start`` processes
   on 127.0.0.1, token auth, one logical GPU each).
2. ``visionr3 submit --config-name cpu_demo -- cluster=cpu_2nodes ...`` to the head's job API, followed with
   ``visionr3 job logs --follow``: 2 GRPO steps, FSDP2 over two ranks (one per node), the reference model on (KL
   loss), the HF rollout replicas where verl places them, step 2 saved; the job SUCCEEDED.
3. Where Ray ran each trainer worker and rollout server (Ray's state API: node ids), and how many parameters each
   rank's checkpoint shard holds.
4. ``visionr3 merge`` of the two-shard checkpoint (its own tensor check), and of a copy missing rank 1's shard.
5. A run (``trainer.total_training_steps=4``) resumes from step 2 across the nodes, and the worker node's
   raylet is killed (SIGKILL) during its step 3. The driver must exit rather than hang (a kill in rollout is caught by
   :mod:`visionr3.cluster.liveness`, one in a worker call by Ray, one in a collective by gloo).
6. The cluster is restarted, as a scheduler would restart the lost machine, and the same run is submitted as a job:
   it resumes from step 2 again, logs step 3, and is then stopped with ``visionr3 job stop`` in its step 4: the job
   is STOPPED and no Ray actor outlives it. (One trainer start-up for both checks: each costs ~2 minutes of CI.)
7. The cluster is stopped; any process of it still alive is recorded as an orphan.

Throughout, a fake ``OPENAI_API_KEY`` is exported before the nodes start (where docs/cluster.md puts keys), every
job requires it with ``--require-env`` (which prints its fingerprint from the job's node), and every run's reward asks a
loopback judge (:class:`OpenAIStubServer`, in this process) about each answer, with the key it reads from the
environment. The report says which key the judge last received, and where else the key appears: in any job record
Ray keeps (entrypoint, metadata, runtime env: the job API's and the state API's), in any file the runs wrote or the
cluster's folder holds (Ray's session logs, the jobs' driver logs); never the key itself.

``DIR/drill.json`` holds what tests/e2e/test_two_nodes.py checks.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

VISIONR3 = str(Path(sys.executable).with_name("visionr3"))

PLACEMENT = """
import json, ray
from ray.util.state import list_actors, list_nodes
ray.init(logging_level="ERROR", log_to_driver=False)
nodes = [n.node_id for n in list_nodes(limit=100) if n.state == "ALIVE"]
actors = [{"class": a.class_name, "name": a.name, "node": a.node_id, "state": a.state}
          for a in list_actors(limit=1000, detail=True)]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""

SHARDS = """
import json, sys, torch
out = {}
for path in sys.argv[1:]:
    state = torch.load(path, weights_only=False, map_location="cpu")
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t
    out[path.rsplit("/", 1)[-1]] = {"numel": sum(local(t).numel() for t in state.values()),
                                     "full": sum(t.numel() for t in state.values())}
print(json.dumps(out))
"""


KEY_NAME = "OPENAI_API_KEY"

JOB_RECORDS = """
import json, os, ray, sys
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_jobs
key = os.environ[sys.argv[2]]
plain = lambda job: job if isinstance(job, dict) else job.model_dump()
listed = [plain(job) for job in JobSubmissionClient(sys.argv[1]).list_jobs()]  # submitted jobs and drivers
submitted = [job for job in listed if str(getattr(job.get("type"), "value", job.get("type"))) == "SUBMISSION"]
ray.init(logging_level="ERROR", log_to_driver=False)
records = [json.dumps(r, default=str) for r in listed + [plain(job) for job in list_jobs(detail=True, limit=1000)]]
print(json.dumps({"submitted": len(submitted), "records": len(records),
                  "with_key": [r[:200].replace(key, "***") for r in records if key in r]}))
"""
"""The job records Ray keeps (the job API's and the state API's, drivers included), and which of them hold the key."""


def files_holding(value: str, *roots: Path) -> dict:
    """How many files under ``roots`` were read, and the paths of those whose bytes contain ``value``."""
    needle, count, found = value.encode(), 0, []
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            count += 1
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:  # a socket or a file that went away
                continue
    return {"files": count, "found": found}


def train_command(out: Path, policy: Path, rows: Path, steps: int, name: str, judge_url: str) -> list[str]:
    return [VISIONR3, "train", "--config-name", "cpu_demo", *train_overrides(out, policy, rows, steps, name, judge_url)]


def train_overrides(out: Path, policy: Path, rows: Path, steps: int, name: str, judge_url: str) -> list[str]:
    return [
        "cluster=cpu_2nodes",
        f"actor_rollout_ref.model.path={policy}",
        f"data.train_files={rows}", f"data.val_files={rows}",
        "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "data.max_response_length=256", "actor_rollout_ref.rollout.n=2",
        f"trainer.total_training_steps={steps}", "trainer.save_freq=2",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        "trainer.logger=[console,file]",
        f"trainer.rollout_data_dir={out / name / 'rollouts'}",
        # the trainer runs in a Ray actor on a cluster that was started without this process's environment: the
        # file logger's path travels in the job's runtime env, as any variable a job needs on a real cluster
        f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={out / name / 'metrics.jsonl'}",
        # every answer to the loopback judge, with the key from the nodes' environment (its name only, here)
        "visionr3.reward.judge.use=always", f"visionr3.reward.judge.base_url={judge_url}",
        "visionr3.reward.judge.model=stub-judge", f"visionr3.reward.judge.api_key_env={KEY_NAME}",
    ]


def python(code: str, *args: str, env: dict | None = None, timeout: float = 300) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if done.returncode != 0:
        return {"error": done.stderr[-3000:]}
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def metrics(path: Path) -> dict[int, dict]:
    if not path.exists():
        return {}
    return {entry["step"]: entry["data"] for entry in map(json.loads, path.read_text().splitlines()) if entry}


def train(cluster, out: Path, command: list[str], name: str, kill_when=None, timeout: float = 1500) -> dict:
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "metrics.jsonl"
    env = cluster.client_env()
    log = directory / "run.log"
    started = time.monotonic()
    record: dict = {"log": str(log)}
    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=directory, env=env)
    while process.poll() is None and time.monotonic() - started < timeout:
        if kill_when is not None and "killed_at" not in record and kill_when(log):
            record["killed_at"] = round(time.monotonic() - started, 1)
            raylet = cluster.raylet_pid(1)
            record["raylet"] = raylet
            if raylet:
                os.kill(raylet, signal.SIGKILL)
            record["killed_steps"] = sorted(metrics(path))
        time.sleep(0.2)
    if process.poll() is None:  # the driver outlived the limit: a hang
        record["hung"] = True
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    record["returncode"] = process.wait()
    record["seconds"] = round(time.monotonic() - started, 1)
    record["metrics"] = metrics(path)
    if "killed_at" in record:
        record["exit_after_kill_s"] = round(record["seconds"] - record["killed_at"], 1)
        record.update(python(TRAINER_NODE, env=env))  # the latest TaskRunner's node: ALIVE (head) or DEAD (killed)
        text = log.read_text(errors="replace")
        record["node_lost_error"] = "Ray lost a node that held this run's workers" in text  # in rollout
        record["actor_died_error"] = "ActorDiedError" in text or "ActorUnavailableError" in text  # in a worker call
        # in a collective: the surviving rank's gloo peer (the killed node's rank) is gone
        record["collective_error"] = "gloo" in text and "by peer" in text
    return record


TRAINER_NODE = """
import json, ray
from ray.util.state import list_actors, list_nodes
ray.init(logging_level="ERROR", log_to_driver=False)
states = {n.node_id: n.state for n in list_nodes(limit=100)}
runners = sorted((a.job_id, a.node_id) for a in list_actors(filters=[("class_name", "=", "TaskRunnerV1")], limit=100))
print(json.dumps({"trainer_node_state": states.get(runners[-1][1]) if runners else None}))  # the latest job's
"""
"""Whether the trainer's own actor (verl's TaskRunner, placed by Ray on either node) was on the node the drill
killed: then the driver loses it at once; otherwise the trainer itself must notice the lost node."""

ALIVE_ACTORS = """
import json, ray
from ray.util.state import list_actors
ray.init(logging_level="ERROR", log_to_driver=False)
alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
print(json.dumps({"alive": [{"class": a.class_name, "job": a.job_id} for a in alive]}))
"""


def job(cluster, out: Path, overrides: list[str], name: str, stop_when=None, timeout: float = 1500) -> dict:
    """``visionr3 submit`` of ``visionr3 train --config-name cpu_demo <overrides>`` to the cluster's job API, its
    logs followed with ``visionr3 job logs --follow`` (what the test reads: the steps as the console logger printed
    them), stopped with ``visionr3 job stop`` when ``stop_when(log)`` is true; then its status, and the Ray actors
    still alive afterwards (a stopped job must leave none)."""
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    env, address = cluster.client_env(), ["--address", cluster.dashboard_url]
    job_id = f"vr3-{name}-{os.getpid()}"
    record: dict = {"job_id": job_id, "log": str(directory / "job.log")}
    started = time.monotonic()
    submitted = subprocess.run([VISIONR3, "submit", *address, "--no-wait", "--no-working-dir", "--job-id", job_id,
                                "--require-env", KEY_NAME, "--config-name", "cpu_demo", "--", *overrides],
                               env=env, capture_output=True, text=True, timeout=300)
    record["submit"] = {"returncode": submitted.returncode, "output": (submitted.stdout + submitted.stderr)[-3000:]}
    if submitted.returncode != 0:
        return record
    log = directory / "job.log"
    with open(log, "w") as stream:
        follow = subprocess.Popen([VISIONR3, "job", "logs", "--follow", job_id, *address], env=env, stdout=stream,
                                  stderr=subprocess.STDOUT)
    while follow.poll() is None and time.monotonic() - started < timeout:
        if stop_when is not None and "stop" not in record and stop_when(log):
            stopped = subprocess.run([VISIONR3, "job", "stop", job_id, *address], env=env, capture_output=True,
                                     text=True, timeout=300)
            record["stop"] = {"returncode": stopped.returncode, "output": (stopped.stdout + stopped.stderr)[-2000:],
                              "at_s": round(time.monotonic() - started, 1)}
        time.sleep(0.5)
    if follow.poll() is None:
        record["follow_hung"] = True
        follow.kill()
    record["follow_returncode"] = follow.wait()
    record["seconds"] = round(time.monotonic() - started, 1)
    status = subprocess.run([VISIONR3, "job", "status", job_id, *address], env=env, capture_output=True, text=True,
                            timeout=120)
    record["status"] = (status.stdout + status.stderr).strip()[-500:]
    for _ in range(60):  # the job's actors go once Ray has torn the job down
        found = python(ALIVE_ACTORS, env=env)
        record["alive_actors"] = found.get("alive", found)  # {"error": ...} when the query failed
        if not record["alive_actors"]:
            break
        time.sleep(2)
    record["metrics"] = metrics(directory / "metrics.jsonl")
    return record


class AfterStep:
    """True once the followed log shows verl's console line for ``step`` (``step:<n> - ...``)."""

    def __init__(self, step: int):
        self.needle = f"step:{step} - "

    def __call__(self, log: Path) -> bool:
        return self.needle in log.read_text(errors="replace")


class InRollout:
    """True ``seconds`` after the driver's log shows an agent-loop worker at work once verl's training loop started
    (its tqdm bar): the resumed run is then generating step 3's trajectories, the phase in which verl 0.9.1 would wait
    for a lost node for ever (:mod:`visionr3.cluster.liveness`). A kill a few seconds earlier, while the trainer hands
    out the prompts, ends the run through Ray's own error instead."""

    def __init__(self, seconds: float):
        self.seconds, self.since = seconds, None

    def __call__(self, log: Path) -> bool:
        if self.since is None:
            text = log.read_text(errors="replace")
            start = text.find("Training Progress")
            if start >= 0 and "(AgentLoopWorkerTQ" in text[start:]:
                self.since = time.monotonic()
            return False
        return time.monotonic() - self.since > self.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--no-kill", action="store_true", help="skip step 5 (the raylet kill and resume)")
    args = parser.parse_args(argv)
    from visionr3.cluster.jobs import fingerprint
    from visionr3.cluster.local import LocalCluster
    from visionr3.demo.synthetic import write_parquet
    from visionr3.testing.openai_server import OpenAIStubServer

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = write_parquet(out / "rows.parquet", 8, seed=5)
    key = os.environ[KEY_NAME] = f"sk-visionr3-drill-{secrets.token_hex(16)}"  # the nodes and clients inherit it
    judge = OpenAIStubServer().start()
    cluster = LocalCluster(Path(f"/tmp/vr3-2n-{os.getpid()}"), nodes=2, gpus_per_node=1)
    report: dict = {}
    try:
        cluster.start()
        report["nodes_up"] = cluster.alive_nodes()
        # 2 steps as a Ray job (visionr3 submit, its logs followed), step 2 saved
        overrides = train_overrides(out, args.policy, rows, 2, "train", judge.base_url)
        report["train"] = job(cluster, out, overrides, "train")
        report["placement"] = python(PLACEMENT, env=cluster.client_env())
        report["job_records"] = [python(JOB_RECORDS, cluster.dashboard_url, KEY_NAME, env=cluster.client_env())]
        actor_dir = out / "checkpoints" / "global_step_2" / "actor"
        report["shards"] = python(SHARDS, *map(str, sorted(actor_dir.glob("model_world_size_*_rank_*.pt"))))
        merged = subprocess.run([VISIONR3, "merge", str(out / "checkpoints"), str(out / "merged")],
                                capture_output=True, text=True)
        report["merge"] = {"returncode": merged.returncode, "output": (merged.stdout + merged.stderr)[-3000:]}
        broken = out / "broken" / "actor"
        shutil.copytree(actor_dir, broken)
        (broken / "model_world_size_2_rank_1.pt").unlink()
        refused = subprocess.run([VISIONR3, "merge", str(broken), str(out / "merged_broken")],
                                 capture_output=True, text=True)
        report["merge_missing_shard"] = {"returncode": refused.returncode, "stderr": refused.stderr[-2000:]}
        if not args.no_kill:
            command = train_command(out, args.policy, rows, 4, "killed", judge.base_url)
            # 300 s: Ray declares the node dead within ~15 s; the trainer then fails its rollout wait
            # (visionr3.cluster.liveness), its next call to the lost rank raises, or a collective loses its peer
            report["killed"] = train(cluster, out, command, "killed", kill_when=InRollout(3), timeout=300)
            report["alive_after_kill"] = cluster.alive_nodes()
            cluster.stop()  # a fresh cluster, as a scheduler would restart the lost node's machine
            cluster = LocalCluster(cluster.directory, nodes=2, gpus_per_node=1)
            cluster.start()
            # the same run as a job: it resumes from step 2, and once step 3 is logged `visionr3 job stop` ends it
            overrides = train_overrides(out, args.policy, rows, 4, "resumed", judge.base_url)
            report["resumed"] = job(cluster, out, overrides, "resumed", stop_when=AfterStep(3))
            records = python(JOB_RECORDS, cluster.dashboard_url, KEY_NAME, env=cluster.client_env())
            report["job_records"].append(records)
    finally:
        cluster.stop()
        time.sleep(2)
        report["orphans"] = cluster.processes()
        judge.stop()
        received = {None: None, f"Bearer {key}": "the key"}.get(judge.last_authorization, "other")
        report["judge"] = {"requests": judge.requests, "replies": judge.replies, "authorization": received}
        report["key_fingerprint"] = fingerprint(key)  # what `--require-env` prints on the job's node
        report["key_in_files"] = files_holding(key, out, cluster.directory)
        shutil.rmtree(cluster.directory, ignore_errors=True)
    (out / "drill.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({key: value for key, value in report.items() if key != "placement"}, indent=1)[-6000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
