"""``visionr3 submit`` and ``visionr3 job``: run a recipe, or any command, on a Ray cluster as a Ray job, and follow it.

    visionr3 submit --recipe zoom -- +cluster=a100_4x8 data.train_files=/shared/zoom/train.parquet ...
    visionr3 submit --recipe zoom --config-name cpu --no-wait -- actor_rollout_ref.model.path=...   # prints the job id
    visionr3 submit --address http://head:8265 --require-env OPENAI_API_KEY --recipe vision_sr1 -- +judge=api ...
    visionr3 submit --no-wait -- python3 my_script.py --flag      # no --recipe/--config-name: any command
    visionr3 job logs --follow ID | status ID | stop ID | list

**What is submitted.** With ``--recipe NAME`` and/or ``--config-name NAME`` the job runs
``python3 -m visionr3.cli train --recipe NAME [--config-name NAME] <what follows -->``: Hydra's overrides and flags
(``--cfg job`` prints the composed config). Without either, what follows ``--`` is the command itself, as with
``ray job submit``. ``python3 -m`` rather than the ``visionr3`` script, because the module is importable wherever the
package is, including from the shipped working directory. It uses Ray's own client (``JobSubmissionClient``), so the
job is an ordinary Ray job: ``ray job logs|status|stop`` and the dashboard see it too.

**Runtime env.** ``configs/runtime_env.yaml`` (or ``--runtime-env FILE``): ``excludes`` for the working directory and a
few non-secret ``env_vars``; ``--env NAME=VALUE`` adds more. The working directory is the current one unless
``--working-dir DIR`` or ``--no-working-dir`` says otherwise; it becomes the job's current directory and comes first on
its ``PYTHONPATH``. verl keeps it for the job's workers (``verl.trainer.constants_ppo.get_ppo_ray_runtime_env`` reads
the job's config), and verl's own worker env vars are added by verl.

**Where API keys go (a judge's OPENAI_API_KEY, WANDB_API_KEY, HF_TOKEN).** Into the environment of every Ray node,
never into the job. Ray stores a job's entrypoint, metadata and runtime_env with the job: the dashboard, ``ray job
list``, the GCS and the first line of the job's logs (``Running entrypoint for job ...: <entrypoint>``) all show them,
and Ray has no secret store. Processes of a job inherit the environment of the raylet that starts them, so a key
exported where each node's ``ray start`` runs reaches every worker, including the reward workers where the judge runs:

- a machine you start yourself: ``export OPENAI_API_KEY=...`` in the shell, then ``ray start --head`` (and the same
  before ``ray start --address=...`` on each worker node);
- KubeRay: ``env: [{name: OPENAI_API_KEY, valueFrom: {secretKeyRef: {name: judge-api, key: key}}}]`` in the head and
  worker group pod templates; Slurm: export it in the batch script before its ``ray start`` lines.

The judge reads the variable that ``visionr3.reward.judge.api_key_env`` names, so only that *name* is ever in a config
or an override. ``--require-env NAME`` makes the job check first that the variable is set on the node that runs the
entrypoint, and print its length and a sha256 prefix (a fingerprint, never the value) so you can tell which key the
job got; a missing one fails the job at once with the fix. ``visionr3 submit`` refuses what would leak a key: an
``--env`` or runtime-env variable whose name looks secret (a ``_``-separated part ending in KEY, TOKEN, SECRET,
PASSWORD, PASSWD or CREDENTIAL(S), e.g. OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY; TOKENIZERS_PARALLELISM is
not one), and any entrypoint, override, runtime env, metadata or job id that contains the value of such a variable
from your own environment. Errors name the variable, never the value. The working directory ships files as they are:
``.env`` files are excluded, but keep keys out of files in it.

**Token auth.** A Ray 2.60 head started with ``ray start --head`` has token auth on once a token exists (``~/.ray/
auth_token``, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``), and Ray's own client then fails unless
``RAY_AUTH_MODE=token`` is set. These commands send the token Ray finds in those places, as ``ray start`` itself
decides, unless ``RAY_AUTH_MODE=disabled``. The address is ``--address``, else ``RAY_API_SERVER_ADDRESS`` or
``RAY_ADDRESS``, else http://127.0.0.1:8265.

**Exit codes.** ``submit`` (waiting) and ``job logs --follow`` return 0 when the job SUCCEEDED and 1 when it FAILED or
was STOPPED; ``submit --no-wait`` returns 0 once the job is accepted and prints its id on stdout. Bad input (an unknown
recipe, a secret in the wrong place, an unreachable cluster, an unknown job) returns 2 with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
"""Where ``ray start --head`` serves the job API by default (the dashboard port)."""

SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
"""A variable name looks secret when one of its ``_``-separated parts ends in one of these (or its plural)."""

REFERENCE_SUFFIXES = ("PATH", "FILE", "DIR", "ENV", "NAME")
"""...unless its last part says it names where a secret is, not the secret (RAY_AUTH_TOKEN_PATH, HF_TOKEN_FILE)."""

MIN_SECRET_LENGTH = 8
"""Values shorter than this are not searched for: a ``1`` or ``true`` would match everywhere and protects nothing."""

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobsError(ValueError):
    """Bad input or an unusable cluster: the message says what and how to fix it, and never contains a secret."""


# --------------------------------------------------------------------------------------------------------------------
# Secrets (pure)


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says its value is a credential (OPENAI_API_KEY yes, TOKENIZERS_* no)."""
    parts = [part for part in re.split(r"[^A-Z0-9]+", name.upper()) if part]
    if not parts or parts[-1] in REFERENCE_SUFFIXES:
        return False
    return any(part.endswith(word) or part.endswith(word + "S") for part in parts for word in SECRET_WORDS)


def secret_values(environ: Mapping[str, str]) -> dict[str, str]:
    """``{name: value}`` of the variables in ``environ`` that look secret and are long enough to search for."""
    return {
        name: value for name, value in environ.items() if looks_secret(name) and len(value) >= MIN_SECRET_LENGTH
    }


def _strings(value: Any):
    """Every key and scalar of a nested dict/list, as text."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


def secret_problems(
    entrypoint: str,
    runtime_env: Mapping[str, Any],
    metadata: Mapping[str, str],
    submission_id: str | None,
    environ: Mapping[str, str],
) -> list[str]:
    """Every way this submission would put a key where Ray shows it; each problem names a variable, never a value."""
    problems = []
    for name in (runtime_env.get("env_vars") or {}):
        if looks_secret(name):
            problems.append(
                f"runtime_env env_vars: {name} looks like a secret; Ray stores a job's env_vars with the job and shows "
                f"them on the dashboard and in `ray job list`. Export {name} on every Ray node before `ray start` "
                f"(or from your cluster's secret store): the job's processes inherit it"
            )
    places = {  # searched as plain strings: JSON or shell quoting could hide a value with quotes in it
        "the entrypoint (Ray shows it on the dashboard and at the top of the job's logs)": entrypoint,
        "the runtime env": "\n".join(_strings(runtime_env)),
        "the job metadata": "\n".join(_strings(metadata)),
        "the job id": submission_id or "",
    }
    for name, value in sorted(secret_values(environ).items()):
        for place, text in places.items():
            if value in text:
                problems.append(
                    f"{place} contains the value of your environment variable {name}. Pass the variable's name "
                    f"instead (e.g. visionr3.reward.judge.api_key_env={name}) and export it on the Ray nodes"
                )
    return problems


def fingerprint(value: str) -> str:
    """``51 characters, sha256 1a2b3c4d``: enough to tell two keys apart, nothing to recover one from."""
    import hashlib

    return f"{len(value)} characters, sha256 {hashlib.sha256(value.encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------------------------------------------------
# What to submit (pure, apart from reading the runtime-env YAML and checking paths)


@dataclass(frozen=True)
class Submission:
    """Everything sent to Ray's job API. Nothing in it may hold a secret (:func:`secret_problems` checks)."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    submission_id: str | None = None


def require_env_prefix(names: Sequence[str]) -> str:
    """The entrypoint prefix that fails a job at once when a variable it needs is missing on its node."""
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise JobsError(f"--require-env {name!r}: not an environment variable name")
    return f"python3 -m visionr3.cluster.jobs require-env {shlex.join(names)} && " if names else ""


def train_entrypoint(recipe: str | None, config_name: str | None, overrides: Sequence[str]) -> str:
    """``python3 -m visionr3.cli train [--recipe R] [--config-name C] <overrides>``, quoted for the job's shell."""
    command = ["python3", "-m", "visionr3.cli", "train"]
    if recipe:
        command += ["--recipe", recipe]
    if config_name:
        command += ["--config-name", config_name]
    return shlex.join([*command, *overrides])


def parse_env_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}``; a malformed one is named in the error."""
    env = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise JobsError(f"--env {item.split('=', 1)[0]!r}: expected NAME=VALUE with NAME a variable name")
        env[name] = value
    return env


def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """A runtime-env YAML (Ray's keys) as a dict; a clear error for a missing file or a malformed ``env_vars``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise JobsError(f"--runtime-env {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise JobsError(f"--runtime-env {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise JobsError(f"--runtime-env {path}: expected a mapping of Ray runtime_env keys, got {type(data).__name__}")
    env_vars = data.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise JobsError(f"--runtime-env {path}: env_vars must be a mapping of NAME: \"value\"")
    for name, value in env_vars.items():
        if not isinstance(value, str):
            raise JobsError(f"--runtime-env {path}: env_vars.{name} must be a string (quote it: {name}: \"{value}\")")
    data["env_vars"] = dict(env_vars)
    return data


def resolve_working_dir(value: str | None, cwd: Path) -> str | None:
    """A local directory as an absolute path (checked), a remote package URI (s3://, gs://, https://) as it is."""
    if value is None or "://" in value:
        return value
    path = (cwd / value).resolve()
    if not path.is_dir():
        raise JobsError(f"working_dir {value}: no such directory (from {cwd})")
    return str(path)


def check_recipe(recipe: str, config_name: str | None) -> None:
    """Fail before submitting when the recipe (or its variant) does not exist here, rather than minutes into a job."""
    from visionr3.config import recipe_dir

    try:
        directory = recipe_dir(recipe)
    except ValueError as exc:
        raise JobsError(f"--recipe: {exc}") from None
    name = config_name or "config"
    if not (directory / f"{name}.yaml").exists():
        variants = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
        raise JobsError(f"--config-name {name}: recipe {recipe!r} has no {name}.yaml (it has: {variants})")


def check_config(config_name: str) -> None:
    """Fail before submitting when ``--config-name`` (without ``--recipe``) is not one of visionr3's configs."""
    from visionr3.config import config_path

    try:
        config_path(f"{config_name}.yaml")
    except FileNotFoundError:
        raise JobsError(
            f"--config-name {config_name}: no configs/{config_name}.yaml (a recipe's variant needs --recipe too)"
        ) from None


def plan_submission(args: argparse.Namespace, environ: Mapping[str, str], cwd: Path) -> Submission:
    """Turn ``visionr3 submit``'s arguments into a :class:`Submission`, refusing anything that would leak a key."""
    command = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.recipe or args.config_name:
        if args.recipe:
            check_recipe(args.recipe, args.config_name)
        else:
            check_config(args.config_name)
        body = train_entrypoint(args.recipe, args.config_name, command)
    elif command:
        body = shlex.join(command)
    else:
        raise JobsError("nothing to run: give --recipe NAME (and Hydra overrides after --), or a command after --")
    entrypoint = require_env_prefix(args.require_env or []) + body

    from visionr3.config import config_path

    runtime_env = load_runtime_env(args.runtime_env or config_path("runtime_env.yaml"))
    if args.no_working_dir:
        runtime_env.pop("working_dir", None)
    else:
        chosen = args.working_dir or runtime_env.get("working_dir") or "."
        runtime_env["working_dir"] = resolve_working_dir(str(chosen), cwd)
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **parse_env_assignments(args.env or [])}
    if not runtime_env["env_vars"]:
        runtime_env.pop("env_vars")

    from visionr3 import __version__

    metadata = {"visionr3_version": __version__}
    if args.recipe:
        metadata["visionr3_recipe"] = args.recipe
    if args.config_name:
        metadata["visionr3_config"] = args.config_name
    # the arguments too, as typed: shlex quoting changes a value that contains quotes
    problems = secret_problems("\n".join([entrypoint, *command]), runtime_env, metadata, args.job_id, environ)
    if problems:
        raise JobsError("refusing to submit, a key would be stored with the job:\n  - " + "\n  - ".join(problems))
    return Submission(entrypoint, runtime_env, metadata, args.job_id)


def exit_code(status: str) -> int:
    """0 for a job that SUCCEEDED, 1 for one that FAILED or was STOPPED (what ``submit`` and ``logs -f`` return)."""
    return 0 if str(status) == "SUCCEEDED" else 1


# --------------------------------------------------------------------------------------------------------------------
# Talking to the cluster (Ray's JobSubmissionClient)


def _address(explicit: str | None) -> str:
    return (
        explicit
        or os.environ.get("RAY_API_SERVER_ADDRESS")
        or os.environ.get("RAY_ADDRESS")
        or DEFAULT_ADDRESS
    )


def auth_headers() -> dict[str, str]:
    """The ``authorization`` header for a token-auth cluster, found where Ray looks; none with RAY_AUTH_MODE=disabled.

    Ray's client sends a token only when ``RAY_AUTH_MODE=token``, yet ``ray start --head`` turns auth on whenever a
    token exists, so a plain ``ray job submit`` gets 401. We follow ``ray start``'s rule instead: a token Ray can find
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) is sent.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # a Ray without token auth: nothing to send
        return {}
    try:
        return dict(AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True))
    except Exception as exc:  # ray.exceptions.AuthenticationError: e.g. RAY_AUTH_TOKEN_PATH names a missing file
        raise JobsError(f"Ray auth token: {exc}") from None


def _token_source() -> str:
    """Where the token :func:`auth_headers` sent came from, in Ray's order of lookup (never the token itself)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return "~/.ray/auth_token"


def connect(address: str | None):
    """Ray's ``JobSubmissionClient`` for ``address`` (see :func:`_address`), with the auth token; clear errors."""
    from ray.job_submission import JobSubmissionClient

    url = _address(address)
    headers = auth_headers()
    # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override an explicit address; an explicit --address wins here.
    overriding = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if address else ()
    saved = {key: os.environ.pop(key) for key in overriding if key in os.environ}
    try:
        return JobSubmissionClient(url, headers=headers or None)
    except Exception as exc:  # ConnectionError, RuntimeError (HTTP 401/403/404), ValueError (a bad address)
        hint, text = "", str(exc)
        refused = any(mark in text for mark in ("401", "403", "Unauthorized", "Forbidden")) or "authentication" in text.lower()
        if refused and headers:
            hint = (
                f" The cluster refused the token from {_token_source()}: it is not this cluster's token (`ray "
                "get-auth-token` on the head prints the right one)."
            )
        elif refused:
            hint = (
                " The cluster wants a token: put the head's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
                "RAY_AUTH_TOKEN (`ray get-auth-token` prints it on the head)."
            )
        raise JobsError(f"cannot use the Ray job API at {url}: {str(exc).strip()}{hint}") from None
    finally:
        os.environ.update(saved)


def _call(what: str, job_id: str, function, *call_args):
    """A client call whose RuntimeError (404: no such job) becomes a JobsError naming the job."""
    try:
        return function(*call_args)
    except RuntimeError as exc:
        raise JobsError(f"{what} {job_id}: {str(exc).strip()}") from None


def follow(client, job_id: str, out=None) -> str:
    """Copy the job's logs to ``out`` as they come, until it ends; return its final status."""
    import asyncio

    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as exc:  # the websocket dropped (head restarted, network): the job may live on
        raise JobsError(
            f"lost the log stream of job {job_id} ({str(exc).strip()}); it may still be running: "
            f"`visionr3 job status {job_id}`, `visionr3 job logs --follow {job_id}`"
        ) from None
    return str(_call("status of", job_id, client.get_job_status, job_id))


def _summary(message: str) -> None:
    print(f"visionr3 {message}", file=sys.stderr, flush=True)


def _describe(info) -> str:
    status = str(info.status)
    parts = [status]
    if info.start_time and info.end_time:
        parts.append(f"after {(info.end_time - info.start_time) / 1000:.0f} s")
    if info.driver_exit_code is not None and status != "SUCCEEDED":
        parts.append(f"exit code {info.driver_exit_code}")
    if info.message and status != "SUCCEEDED":  # its first line: a failed job's message goes on with its last logs
        parts.append(info.message.strip().splitlines()[0].split(", last available logs")[0])
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# visionr3 submit


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=None,
        help=f"the Ray job API (dashboard) URL; default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, else {DEFAULT_ADDRESS}",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """``visionr3 submit``'s arguments."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "API keys: export them on every Ray node before `ray start` (KubeRay: a secretKeyRef env); jobs inherit them.\n"
        "Never pass them with --env or in overrides: submit refuses that. See `python -m pydoc visionr3.cluster.jobs`."
    )
    _add_address(parser)
    parser.add_argument("--recipe", help="a recipe under recipes/ (visionthink, vlm_r3, vision_sr1, zoom)")
    parser.add_argument("--config-name", help="the recipe's variant (e.g. cpu), or a config under configs/")
    parser.add_argument("--runtime-env", help="a Ray runtime_env YAML instead of configs/runtime_env.yaml")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--working-dir", help="the directory shipped with the job (default: the current one)")
    where.add_argument(
        "--no-working-dir", action="store_true", help="ship nothing: the job runs the code installed on the cluster"
    )
    parser.add_argument(
        "--env", action="append", metavar="NAME=VALUE", help="an extra env var for the job (not a secret; repeatable)"
    )
    parser.add_argument(
        "--require-env", action="append", metavar="NAME",
        help="fail the job at once unless NAME is set on its node (e.g. OPENAI_API_KEY; repeatable)",
    )
    parser.add_argument("--job-id", help="the submission id (default: Ray picks one)")
    parser.add_argument(
        "--no-wait", action="store_true", help="print the job id and return instead of tailing the logs"
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- ARGS",
        help="Hydra overrides and flags with --recipe/--config-name (e.g. -- +cluster=a100_4x8 --cfg job), "
        "else the command to run (e.g. -- python3 my_script.py)",
    )


NO_AGENT_YET = "No available agent to submit job"
"""Ray's job API answers HTTP 500 with this (and "please try again later") while no node's job agent has registered:
for some seconds after ``ray start --head``, or after an agent restarts. The head is up and the submission is fine."""


def submit_when_an_agent_is_up(client: Any, submission: Submission, address: str, wait_s: float = 120.0) -> str:
    """``client.submit_job`` for ``submission``, retried (1, 2, 4, ... 8 s apart, for up to ``wait_s``) while Ray says
    no job agent is available yet; any other error, or the same one after ``wait_s``, is a :class:`JobsError`."""
    deadline, pause, told = time.monotonic() + wait_s, 1.0, False
    while True:
        try:
            return client.submit_job(
                entrypoint=submission.entrypoint,
                runtime_env=submission.runtime_env,
                metadata=submission.metadata,
                submission_id=submission.submission_id,
            )
        except Exception as exc:  # RuntimeError (id taken, bad runtime env), ValueError (working dir too large)
            if NO_AGENT_YET in str(exc) and time.monotonic() + pause < deadline:
                if not told:
                    print(f"visionr3 submit: {address} has no job agent yet (a node still starting); retrying for up "
                          f"to {wait_s:.0f} s", file=sys.stderr, flush=True)
                    told = True
                time.sleep(pause)
                pause = min(pause * 2, 8.0)
                continue
            raise JobsError(f"submitting to {address} failed: {str(exc).strip()}") from None


def run(args: argparse.Namespace) -> int:
    """Submit; then either print the id (``--no-wait``) or tail the logs and return the job's outcome."""
    try:
        submission = plan_submission(args, os.environ, Path.cwd())
        client = connect(args.address)
        started = time.monotonic()
        job_id = submit_when_an_agent_is_up(client, submission, _address(args.address))
        what = f"recipe {args.recipe}" if args.recipe else submission.entrypoint
        if args.no_wait:
            print(job_id, flush=True)
            _summary(
                f"submit: job {job_id} ({what}) submitted to {_address(args.address)}; "
                f"follow it with `visionr3 job logs --follow {job_id}`"
            )
            return 0
        _summary(f"submit: job {job_id} ({what}) submitted; tailing its logs (Ctrl-C stops following, not the job)")
        try:
            status = follow(client, job_id)
        except KeyboardInterrupt:
            _summary(f"submit: stopped following; job {job_id} keeps running (`visionr3 job stop {job_id}` ends it)")
            return 130
        info = _call("status of", job_id, client.get_job_info, job_id)
        _summary(f"submit: job {job_id} {_describe(info)} ({time.monotonic() - started:.0f} s since submission)")
        return exit_code(status)
    except JobsError as exc:
        print(f"visionr3 submit: error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------------------------------
# visionr3 job status|logs|stop|list


def configure_job(parser: argparse.ArgumentParser) -> None:
    """``visionr3 job``'s actions, each with ``--address``."""
    actions = parser.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="a job's status and message")
    logs = actions.add_parser("logs", help="a job's logs so far (--follow: until it ends)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    stop = actions.add_parser("stop", help="stop a job and wait until it has stopped")
    listing = actions.add_parser("list", help="the cluster's jobs, oldest first")
    for sub in (status, logs, stop):
        sub.add_argument("job_id", metavar="ID", help="the submission id (`visionr3 job list` shows them)")
    for sub in (status, logs, stop, listing):
        _add_address(sub)


def _list(client) -> int:
    jobs = sorted(client.list_jobs(), key=lambda job: job.start_time or 0)
    for job in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        what = (job.metadata or {}).get("visionr3_recipe") or job.entrypoint or ""
        what = what if len(what) <= 70 else what[:67] + "..."
        print(f"{job.submission_id or job.job_id}\t{job.status}\t{when}\t{what}")
    _summary(f"job list: {len(jobs)} jobs")
    return 0


def _stop(client, job_id: str, poll_s: float = 0.5, patience_s: float = 60.0) -> int:
    requested = _call("stop", job_id, client.stop_job, job_id)
    deadline = time.monotonic() + patience_s  # Ray sends SIGTERM, then SIGKILL after a few seconds
    while (status := str(_call("status of", job_id, client.get_job_status, job_id))) not in TERMINAL:
        if time.monotonic() > deadline:
            _summary(f"job stop: {job_id} was asked to stop but is still {status}")
            return 1
        time.sleep(poll_s)
    _summary(f"job stop: {job_id} {status}" + ("" if requested else " (it had already ended)"))
    return 0


def run_job(args: argparse.Namespace) -> int:
    """One ``visionr3 job`` action against the cluster."""
    try:
        client = connect(args.address)
        if args.action == "list":
            return _list(client)
        job_id = args.job_id
        if args.action == "status":
            info = _call("status of", job_id, client.get_job_info, job_id)
            print(f"{job_id}\t{info.status}", flush=True)
            _summary(f"job status: {job_id} {_describe(info)}")
            return 0
        if args.action == "logs":
            if not args.follow:
                sys.stdout.write(_call("logs of", job_id, client.get_job_logs, job_id))
                sys.stdout.flush()
                _summary(f"job logs: {job_id} is {_call('status of', job_id, client.get_job_status, job_id)}")
                return 0
            _call("status of", job_id, client.get_job_status, job_id)  # an unknown id: a clear error, not a hang
            try:
                status = follow(client, job_id)
            except KeyboardInterrupt:
                return 130
            _summary(f"job logs: {job_id} {_describe(_call('status of', job_id, client.get_job_info, job_id))}")
            return exit_code(status)
        return _stop(client, job_id)
    except JobsError as exc:
        print(f"visionr3 job {args.action}: error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------------------------------
# Inside the job: python3 -m visionr3.cluster.jobs require-env NAME ...


def require_env(names: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Print a fingerprint of each variable (never its value); 2 with the fix when one is missing or empty."""
    environ = os.environ if environ is None else environ
    missing = [name for name in names if not environ.get(name)]
    for name in names:
        if name not in missing:
            print(f"visionr3 require-env: {name} is set on this node ({fingerprint(environ[name])})", flush=True)
    if missing:
        print(
            f"visionr3 require-env: {', '.join(missing)} not set on this node. Export it on every Ray node before "
            "`ray start` (KubeRay: an env entry with valueFrom.secretKeyRef), then restart the nodes and resubmit.",
            file=sys.stderr, flush=True,
        )
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["require-env"] or len(argv) < 2:
        print("usage: python3 -m visionr3.cluster.jobs require-env NAME [NAME ...]", file=sys.stderr)
        return 2
    return require_env(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
