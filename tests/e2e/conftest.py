"""The end-to-end runs, two at a time, in the background: the CPU demo and every recipe's CPU variant.

Each run is a `visionr3 ...` subprocess with its own Ray instance, and mostly start-up and waiting (Ray, workers,
model loads), so two of them take little more wall time than one on 2 cores. Two at a time, not more: each needs
about 5 GB, and four at once ran out of 24 GB.

The pool starts as soon as collection has picked the e2e tests (after `-m`/`-k` deselection), in a background
thread, and the e2e tests are moved to the end of the session: the rest of the suite runs while the trainers start
up, and each e2e test then waits only for its own run. (Started from the first e2e test instead, the session sat idle
for the pool's ~5 minutes.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from visionr3.data.synthetic import write_parquet
from visionr3.recipes import RECIPES
from visionr3.testing.openai_server import OpenAIStubServer
from visionr3.testing.tiny_model import tiny_model_dir

PARALLEL = 2
VISIONR3 = str(Path(sys.executable).with_name("visionr3"))
RESPONSE_LENGTH = {"zoom": 384, "visionthink": 128, "vlm_r3": 128, "vision_sr1": 128}
TASK = {"zoom": "zoom", "visionthink": "zoom", "vlm_r3": "zoom", "vision_sr1": "sr1"}


@dataclass
class Run:
    """One finished e2e subprocess: its exit code (or "timeout"), its log and its output directory."""

    returncode: int | str
    log: Path
    directory: Path

    def check(self) -> None:
        assert self.returncode == 0, f"{self.returncode}; {self.log}:\n" + self.log.read_text(errors="replace")[-6000:]


def rows_for(recipe: str, directory: Path) -> Path:
    """Synthetic rows without an `agent_name` column, so the recipe's default agent loop decides."""
    path = write_parquet(directory / "rows.parquet", 2, seed=0, task=TASK[recipe])
    frame = pd.read_parquet(path).drop(columns=["agent_name"])
    frame.to_parquet(path)
    return path


def policy_for(recipe: str) -> Path:
    """The demo's cached warm-up for `zoom` (it zooms and answers, so its judge is asked), the random tiny model for
    the others (every response runs to the length limit: the equal-length case visionr3.verl_fixes repairs)."""
    base = tiny_model_dir("qwen2_5_vl")
    if recipe != "zoom":
        return base
    from visionr3.demo import warmup_checkpoint

    return warmup_checkpoint(base, 100, log_every=0)[0]  # the pool's thread: no prints into a test's captured stdout


def recipe_command(recipe: str, directory: Path, judge_url: str) -> list[str]:
    rows = rows_for(recipe, directory)
    command = [
        VISIONR3, "train", "--recipe", recipe, "--config-name", "cpu",
        f"actor_rollout_ref.model.path={policy_for(recipe)}",
        f"data.train_files={rows}", f"data.val_files={rows}",
        f"data.max_response_length={RESPONSE_LENGTH[recipe]}",
        "actor_rollout_ref.rollout.n=2",
        f"trainer.default_local_dir={directory / 'checkpoints'}",
        "trainer.logger=[console,file]",
    ]
    if recipe != "vision_sr1":
        command.append(f"visionr3.reward.judge.base_url={judge_url}")
    if recipe == "zoom":  # verl's rollout dump with visionr3's columns, which `visionr3 view` reads
        command.append(f"trainer.rollout_data_dir={directory / 'rollouts'}")
    return command


class Pool:
    """The e2e subprocesses, scheduled PARALLEL at a time by a daemon thread; :meth:`result` waits for one run."""

    def __init__(self, root: Path):
        self.root = root
        self.judge = OpenAIStubServer()
        self.results: dict[str, Run] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.stopping = False
        self.running: dict[str, subprocess.Popen] = {}
        self.thread = threading.Thread(target=self._run_all, name="e2e-pool", daemon=True)

    def start(self) -> "Pool":
        self.judge.__enter__()
        self.thread.start()
        return self

    def _jobs(self) -> dict[str, tuple[list[str], Path]]:
        root = self.root
        jobs: dict[str, tuple[list[str], Path]] = {
            "demo": ([VISIONR3, "demo", "--output-dir", str(root / "demo"), "--steps", "2", "--n", "8"], root / "demo"),
        }
        for recipe in RECIPES:
            directory = root / recipe
            directory.mkdir(parents=True, exist_ok=True)
            jobs[f"recipe:{recipe}"] = (recipe_command(recipe, directory, self.judge.base_url), directory)
        return jobs

    def _run_all(self) -> None:
        try:
            policy_for("zoom")  # build (or find) the cached warm-up once, before the runs compete for the cores
            jobs = self._jobs()
            waiting, running = list(jobs), {}
            deadline = time.monotonic() + 2400
            while (waiting or running) and not self.stopping:
                while waiting and len(running) < PARALLEL:
                    name = waiting.pop(0)
                    command, directory = jobs[name]
                    directory.mkdir(parents=True, exist_ok=True)
                    log = directory / "run.log"
                    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(directory / "metrics.jsonl")}
                    if name == "demo":
                        env.pop("VERL_FILE_LOGGER_PATH")  # the demo names its own metrics file
                    with open(log, "w") as out:
                        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=directory, env=env)
                    running[name] = (process, log, directory)
                    self.running[name] = process
                for name, (process, log, directory) in list(running.items()):
                    if process.poll() is not None:
                        self.results[name] = Run(process.returncode, log, directory)
                        del running[name], self.running[name]
                    elif time.monotonic() > deadline:
                        process.kill()
                        self.results[name] = Run("timeout", log, directory)
                        del running[name], self.running[name]
                time.sleep(1)
        except BaseException as exc:  # surfaced by result(), in the test that asks
            self.error = exc
        finally:
            self.done.set()

    def result(self) -> dict[str, Run]:
        self.done.wait()
        if self.error is not None:
            raise RuntimeError(f"the e2e pool failed: {self.error!r}") from self.error
        return self.results

    def close(self) -> None:
        """End of session: a run still going (an early failure with -x, Ctrl-C) is killed, never left behind."""
        self.stopping = True
        for process in list(self.running.values()):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        self.thread.join(timeout=30)
        self.judge.__exit__(None, None, None)


_POOL: Pool | None = None


def _is_e2e(item) -> bool:
    return Path(str(item.fspath)).parent == Path(__file__).parent


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(session, config, items):
    global _POOL
    e2e = [item for item in items if _is_e2e(item)]
    if not e2e or _POOL is not None or config.option.collectonly:
        return
    items[:] = [item for item in items if not _is_e2e(item)] + e2e
    if any(item.get_closest_marker("slow") is None or "e2e_runs" in getattr(item, "fixturenames", ()) for item in e2e):
        factory = getattr(config, "_tmp_path_factory", None)
        root = factory.mktemp("e2e") if factory is not None else Path(tempfile.mkdtemp(prefix="visionr3-e2e-"))
        _POOL = Pool(root).start()


def pytest_sessionfinish(session, exitstatus):
    if _POOL is not None:
        _POOL.close()


@pytest.fixture(scope="session")
def judge():
    """The loopback stand-in for a remote judge API (the judged recipes' `visionr3.reward.judge.base_url`)."""
    if _POOL is None:
        pytest.skip("the e2e pool was not started (no e2e test selected at collection)")
    return _POOL.judge


@pytest.fixture(scope="session")
def e2e_runs() -> dict[str, Run]:
    """`demo` (2 GRPO steps of 2 prompts x 8, then merge) and `recipe:<name>` for each recipe (one step), started
    at collection; this waits for them."""
    if _POOL is None:
        pytest.skip("the e2e pool was not started (no e2e test selected at collection)")
    return _POOL.result()
