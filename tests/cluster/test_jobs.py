"""``visionr3 submit`` / ``visionr3 job`` against a real ``ray start --head`` on 127.0.0.1, with token auth on.

The head gets its own ports, ``--temp-dir`` and auth token (nothing under ~/.ray), and a random OPENAI_API_KEY in its
environment, as a cluster's nodes would. The CLI runs as a subprocess, as a user runs it, with the token where Ray
looks for it but without RAY_AUTH_MODE (the 401 that trips up ``ray job submit``). The tests check that the job saw
the key (its fingerprint), and that the key is in none of what Ray keeps or shows: job info, job list, logs, the
head's files. Teardown stops the head through its ``ray start --block`` process, then kills any process that still
carries this head's marker in its environment; never ``ray stop``, which would take down every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from visionr3.cluster import jobs
from visionr3.cluster.local import MARKER, marked_processes
from visionr3.cli import main as cli_main
from visionr3.platform import free_port

REPO = Path(__file__).resolve().parents[2]
FORGET = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class RayHead:
    """A running loopback head: its job API URL, auth token, the key its nodes hold, and the env a user's CLI has."""

    def __init__(self, url: str, token: str, secret: str, temp_dir: Path, client_env: dict[str, str]):
        self.url, self.token, self.secret, self.temp_dir, self.client_env = url, token, secret, temp_dir, client_env

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``visionr3 <args>`` in a fresh process, from the repository root (the default working dir)."""
        return subprocess.run(
            [sys.executable, "-m", "visionr3.cli", *args], cwd=REPO, env=env or self.client_env,
            capture_output=True, text=True, timeout=300,
        )

    def client(self):
        """Ray's own client, to inspect what Ray stored (explicit token header: independent of this process's Ray)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.url, headers={"Authorization": f"Bearer {self.token}"})


@pytest.fixture(scope="module")
def ray_head():
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        pytest.skip(f"no `ray` executable next to {sys.executable}")
    temp_dir = Path(tempfile.mkdtemp(prefix="vr3job", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    token, secret = secrets.token_hex(32), "sk-vr3test-" + secrets.token_urlsafe(24)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    base = {key: value for key, value in os.environ.items() if key not in FORGET and key != "OPENAI_API_KEY"}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the job's python3 is this venv's
    head_env = {
        **base, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
        "OPENAI_API_KEY": secret, MARKER: str(temp_dir), "RAY_USAGE_STATS_ENABLED": "0",
        # The raylet exits (and takes the head with it) when a node agent has not registered in time; on a loaded
        # 2-core machine (the e2e trainers start beside this module) the job agent can take longer than Ray's default.
        "RAY_agent_register_timeout_ms": "600000",
    }
    def start() -> tuple[subprocess.Popen, str, Path]:
        """`ray start --head` on fresh free ports; its job API URL and log."""
        dashboard = free_port()
        ports = {
            "--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
            "--node-manager-port": free_port(), "--object-manager-port": free_port(),
        }
        command = [
            str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}",
            "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items()),
        ]
        log_path = temp_dir / "ray_start.log"
        with open(log_path, "a") as log:
            process = subprocess.Popen(command, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return process, f"http://127.0.0.1:{dashboard}", log_path

    # A head that exits while starting is started again on new ports (three tries): another Ray on the machine (the
    # e2e trainers run beside this module) can take a port between free_port() and Ray's bind.
    head, url, log_path = start()
    attempts = 1
    try:
        deadline = time.monotonic() + 180  # a liveness bound for a loaded 2-core machine, not a timing assertion
        while True:
            if head.poll() is not None:
                if attempts < 3:
                    head, url, log_path = start()
                    attempts += 1
                    deadline = time.monotonic() + 180
                    continue
                pytest.skip(f"`ray start --head` could not start here ({attempts} tries, exit {head.returncode}): "
                            f"{log_path.read_text()[-1500:]}")
            try:  # the job API itself (a separate dashboard module), with the token
                request = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head's job API at {url} never answered: {log_path.read_text()[-1500:]}")
            time.sleep(0.5)
        client_env = {**base, "PATH": path, "RAY_AUTH_TOKEN_PATH": str(token_path), "OPENAI_API_KEY": secret}
        yield RayHead(url, token, secret, temp_dir, client_env)
    finally:
        head.terminate()  # `ray start --block` stops the node's processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        for pid in marked_processes(str(temp_dir)):  # workers and job processes live in their own process groups
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def cli_parser(name: str):
    from visionr3.cli import build_parser

    return build_parser(only=name)


def _job_id(stem: str) -> str:
    return f"vr3-{stem}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------------------------------
# Against the loopback head


def test_job_sees_the_nodes_key_and_ray_stores_it_nowhere(ray_head):
    job = _job_id("hello")
    submitted = ray_head.cli(
        "submit", "--address", ray_head.url, "--no-wait", "--job-id", job, "--require-env", "OPENAI_API_KEY",
        "--", "python3", "-c", "print('hello from the job')",
    )
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == job  # --no-wait prints the id, for JOB=$(visionr3 submit --no-wait ...)

    followed = ray_head.cli("job", "logs", "--follow", job, "--address", ray_head.url)
    assert followed.returncode == 0, followed.stderr  # 0: the job SUCCEEDED
    assert "hello from the job" in followed.stdout
    assert f"OPENAI_API_KEY is set on this node ({jobs.fingerprint(ray_head.secret)})" in followed.stdout

    status = ray_head.cli("job", "status", job, "--address", ray_head.url)
    assert status.returncode == 0 and status.stdout.split() == [job, "SUCCEEDED"]
    listed = ray_head.cli("job", "list", "--address", ray_head.url)
    assert f"{job}\tSUCCEEDED" in listed.stdout
    logs = ray_head.cli("job", "logs", job, "--address", ray_head.url)
    assert "hello from the job" in logs.stdout

    client = ray_head.client()
    info = client.get_job_info(job)
    assert info.runtime_env["working_dir"].startswith("gcs://")  # the checkout was shipped
    assert "OPENAI_API_KEY" not in info.runtime_env.get("env_vars", {})
    assert info.metadata["visionr3_version"]
    stored = [
        info.model_dump_json(), *(job.model_dump_json() for job in client.list_jobs()), client.get_job_logs(job),
        *(run.stdout + run.stderr for run in (submitted, followed, status, listed, logs)),
    ]
    assert all(ray_head.secret not in text for text in stored)
    for path in ray_head.temp_dir.rglob("*"):  # Ray's own logs and session files on the head
        if path.is_file() and not path.is_symlink():
            assert ray_head.secret.encode() not in path.read_bytes(), path


def test_submit_waits_for_a_recipe_job_and_returns_its_outcome(ray_head):
    job = _job_id("recipe")
    done = ray_head.cli(
        "submit", "--address", ray_head.url, "--job-id", job, "--recipe", "zoom", "--config-name", "cpu",
        "--require-env", "OPENAI_API_KEY", "--", "--cfg", "job",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # composed inside the job (Hydra's --cfg job prints it): the recipe and its CPU variant
    assert "formula: deepeyes" in done.stdout and "model: stub-judge" in done.stdout
    assert f"job {job} SUCCEEDED" in done.stderr
    assert ray_head.client().get_job_info(job).metadata["visionr3_recipe"] == "zoom"

    failing = _job_id("fails")
    failed = ray_head.cli(
        "submit", "--address", ray_head.url, "--job-id", failing, "--",
        "python3", "-c", "import sys; print('giving up'); sys.exit(3)",
    )
    assert failed.returncode == 1
    assert "giving up" in failed.stdout
    assert f"job {failing} FAILED" in failed.stderr and "exit code 3" in failed.stderr


def test_stop_ends_a_running_job(ray_head):
    job = _job_id("sleepy")
    submitted = ray_head.cli(
        "submit", "--address", ray_head.url, "--no-wait", "--job-id", job, "--no-working-dir",
        "--", "python3", "-c", "import time; time.sleep(600)",
    )
    assert submitted.returncode == 0, submitted.stderr
    stopped = ray_head.cli("job", "stop", job, "--address", ray_head.url)
    assert stopped.returncode == 0, stopped.stderr
    assert f"{job} STOPPED" in stopped.stderr
    assert str(ray_head.client().get_job_status(job)) == "STOPPED"


def test_clear_errors_for_missing_or_wrong_auth_and_unknown_jobs(ray_head):
    no_token = {**ray_head.client_env, "RAY_AUTH_MODE": "disabled"}
    refused = ray_head.cli("job", "list", "--address", ray_head.url, env=no_token)
    assert refused.returncode == 2
    assert "wants a token" in refused.stderr and ray_head.token not in refused.stderr

    wrong_path = ray_head.temp_dir / "wrong_token"
    wrong_path.write_text("0" * 64)
    wrong = ray_head.cli("job", "list", "--address", ray_head.url,
                         env={**ray_head.client_env, "RAY_AUTH_TOKEN_PATH": str(wrong_path)})
    assert wrong.returncode == 2, wrong.stderr
    assert "refused the token from RAY_AUTH_TOKEN_PATH" in wrong.stderr and str(wrong_path) in wrong.stderr
    assert "0" * 64 not in wrong.stderr + wrong.stdout and ray_head.token not in wrong.stderr + wrong.stdout

    unknown = ray_head.cli("job", "status", "no-such-job", "--address", ray_head.url)
    assert unknown.returncode == 2 and "no-such-job" in unknown.stderr and "does not exist" in unknown.stderr


# --------------------------------------------------------------------------------------------------------------------
# Refusals and plans: no cluster needed (each fails before any connection)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("OPENAI_API_KEY", True), ("WANDB_API_KEY", True), ("HF_TOKEN", True), ("HUGGING_FACE_HUB_TOKEN", True),
        ("AWS_SECRET_ACCESS_KEY", True), ("DB_PASSWORD", True), ("RAY_AUTH_TOKEN", True), ("MY_APIKEY", True),
        ("GITHUB_TOKENS", True), ("azure_openai_api_key", True), ("CLIENT_CREDENTIALS", True),
        ("TOKENIZERS_PARALLELISM", False), ("NCCL_DEBUG", False), ("KEYBOARD_LAYOUT", False),
        ("RAY_AUTH_TOKEN_PATH", False), ("HF_TOKEN_FILE", False), ("JUDGE_API_KEY_ENV", False), ("PATH", False),
    ],
)
def test_looks_secret(name, secret):
    assert jobs.looks_secret(name) is secret


def test_secret_problems_name_the_variable_never_the_value():
    environ = {"OPENAI_API_KEY": "sk-abcdefgh12345", "HF_TOKEN": "short", "HOME": "/root"}
    entry = "python3 -m visionr3.cli train visionr3.reward.judge.api_key=sk-abcdefgh12345"
    problems = jobs.secret_problems(entry, {"env_vars": {"WANDB_API_KEY": "x"}}, {}, None, environ)
    assert len(problems) == 2
    assert "WANDB_API_KEY" in problems[0] and "entrypoint" in problems[1] and "OPENAI_API_KEY" in problems[1]
    assert not any("sk-abcdefgh12345" in problem for problem in problems)
    # a short value is not searched for (it would match anywhere), and a clean submission has no problems
    assert jobs.secret_problems("echo short", {"env_vars": {"A": "1"}}, {"m": "v"}, "id", environ) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "OPENAI_API_KEY=sk-zzzzzzzz99", "--", "echo", "hi"], "env_vars: OPENAI_API_KEY looks like a secret"),
        (["--recipe", "zoom", "--", "visionr3.reward.judge.api_key=sk-local-secret-1"], "value of your environment"),
        (["--job-id", "sk-local-secret-1", "--", "echo"], "the job id contains the value"),
        (["--env", "JUDGE=sk-local-secret-1", "--", "echo"], "the runtime env contains the value"),
        (["--", "echo", "it's sk-local-secret-1"], "the entrypoint (Ray shows it"),
        (["--recipe", "zom"], "unknown recipe 'zom'"),
        (["--recipe", "zoom", "--config-name", "gpu"], "recipe 'zoom' has no gpu.yaml"),
        (["--config-name", "nope"], "no configs/nope.yaml"),
        ([], "nothing to run"),
        (["--env", "1A=b", "--", "echo"], "--env '1A'"),
        (["--working-dir", "no/such/dir", "--", "echo"], "working_dir no/such/dir: no such directory"),
        (["--require-env", "A-B", "--", "echo"], "--require-env 'A-B'"),
    ],
)
def test_submit_refuses_with_a_clear_error(argv, message, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-secret-1")
    assert cli_main(["submit", "--address", "http://127.0.0.1:9", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "sk-local-secret-1" not in err and "sk-zzzzzzzz99" not in err


def test_runtime_env_files_are_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    secret_env = tmp_path / "secret.yaml"
    secret_env.write_text("env_vars:\n  HF_TOKEN: hf_abcdefghijkl\n")
    assert cli_main(["submit", "--runtime-env", str(secret_env), "--", "echo"]) == 2
    err = capsys.readouterr().err
    assert "HF_TOKEN looks like a secret" in err and "hf_abcdefghijkl" not in err
    unquoted = tmp_path / "unquoted.yaml"
    unquoted.write_text("env_vars:\n  OMP_NUM_THREADS: 4\n")
    assert cli_main(["submit", "--runtime-env", str(unquoted), "--", "echo"]) == 2
    assert 'env_vars.OMP_NUM_THREADS must be a string (quote it: OMP_NUM_THREADS: "4")' in capsys.readouterr().err


def test_plan_of_a_recipe_submission(tmp_path):
    parser = cli_parser("submit")
    args = parser.parse_args([
        "submit", "--recipe", "zoom", "--config-name", "cpu", "--env", "OMP_NUM_THREADS=4", "--require-env",
        "OPENAI_API_KEY", "--working-dir", str(tmp_path), "--", "+cluster=a100_4x8", "data.train_files=/s/a b.parquet",
    ])
    plan = jobs.plan_submission(args, {"OPENAI_API_KEY": "sk-not-in-the-plan"}, REPO)
    assert plan.entrypoint == (
        "python3 -m visionr3.cluster.jobs require-env OPENAI_API_KEY && python3 -m visionr3.cli train --recipe zoom "
        "--config-name cpu +cluster=a100_4x8 'data.train_files=/s/a b.parquet'"
    )
    assert plan.runtime_env["working_dir"] == str(tmp_path)
    assert plan.runtime_env["env_vars"] == {
        "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
        "OMP_NUM_THREADS": "4",
    }
    assert "/.git/" in plan.runtime_env["excludes"] and ".env" in plan.runtime_env["excludes"]
    assert plan.metadata == {"visionr3_version": plan.metadata["visionr3_version"], "visionr3_recipe": "zoom",
                             "visionr3_config": "cpu"}

    raw = jobs.plan_submission(parser.parse_args(["submit", "--no-working-dir", "--", "bash", "-c", "echo $HOME"]),
                               {}, REPO)
    assert raw.entrypoint == "bash -c 'echo $HOME'" and "working_dir" not in raw.runtime_env


def test_require_env_prints_a_fingerprint_or_the_fix(capsys):
    assert jobs.require_env(["OPENAI_API_KEY"], {"OPENAI_API_KEY": "sk-1234567890"}) == 0
    out = capsys.readouterr().out
    fingerprint = jobs.fingerprint("sk-1234567890")
    assert out.strip() == f"visionr3 require-env: OPENAI_API_KEY is set on this node ({fingerprint})"
    assert "sk-1234567890" not in out
    assert jobs.require_env(["OPENAI_API_KEY", "HF_TOKEN"], {"OPENAI_API_KEY": "x"}) == 2
    assert "HF_TOKEN not set on this node. Export it on every Ray node before `ray start`" in capsys.readouterr().err
    assert [jobs.exit_code(status) for status in ("SUCCEEDED", "FAILED", "STOPPED")] == [0, 1, 1]


def test_unreachable_cluster_is_a_clear_error(capsys):
    port = free_port()
    assert cli_main(["job", "list", "--address", f"http://127.0.0.1:{port}"]) == 2
    assert f"cannot use the Ray job API at http://127.0.0.1:{port}" in capsys.readouterr().err


class _RayJobAPI:
    """Stands in for Ray's JobSubmissionClient (a remote service): answers as Ray's job API does while no job agent has
    registered yet, ``busy`` times, then accepts."""

    MESSAGE = ("Request failed with status code 500: No available agent to submit job, please try again later..")

    def __init__(self, busy: int, other: Exception | None = None):
        self.busy, self.other, self.calls = busy, other, 0

    def submit_job(self, **kwargs):
        self.calls += 1
        if self.other is not None:
            raise self.other
        if self.calls <= self.busy:
            raise RuntimeError(self.MESSAGE)
        return "raysubmit_123"


def test_submit_waits_for_a_job_agent_and_fails_plainly_otherwise(monkeypatch, capsys):
    """Right after `ray start --head` Ray's job API refuses submissions until a node's job agent registers ("please
    try again later"): submit retries that, and only that, for a bounded time."""
    clock, slept = [0.0], []

    def sleep(seconds):  # a clock that moves only when submit waits: no real waiting, the real deadline logic
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(jobs.time, "sleep", sleep)
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock[0])
    plan = jobs.Submission(entrypoint="python3 -c 0", runtime_env={}, metadata={}, submission_id=None)
    api = _RayJobAPI(busy=3)
    assert jobs.submit_when_an_agent_is_up(api, plan, "http://head:8265") == "raysubmit_123"
    assert api.calls == 4 and slept == [1.0, 2.0, 4.0]
    assert "has no job agent yet" in capsys.readouterr().err
    with pytest.raises(jobs.JobsError, match="failed: submission id taken"):
        jobs.submit_when_an_agent_is_up(_RayJobAPI(0, RuntimeError("submission id taken")), plan, "http://head:8265")
    slept.clear()
    with pytest.raises(jobs.JobsError, match="No available agent"):  # still none after wait_s: the error, not a hang
        jobs.submit_when_an_agent_is_up(_RayJobAPI(busy=100), plan, "http://head:8265", wait_s=20.0)
    assert slept == [1.0, 2.0, 4.0, 8.0] and clock[0] <= 20.0 + 15.0
