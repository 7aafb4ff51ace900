"""The end-to-end runs, two at a time: the CPU demo and every recipe's CPU variant.

Each run is a `visionr3 ...` subprocess with its own Ray instance, and mostly start-up and waiting (Ray, workers,
model loads), so two of them take little more wall time than one on 2 cores. Two at a time, not more: each needs
about 5 GB, and four at once ran out of 24 GB. The session fixture starts them all the first time an e2e test asks,
and each test then checks its own run's outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def judge():
    """The loopback stand-in for a remote judge API (the judged recipes' `visionr3.reward.judge.base_url`)."""
    with OpenAIStubServer() as server:
        yield server


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

    return warmup_checkpoint(base, 100)[0]


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


@pytest.fixture(scope="session")
def e2e_runs(judge, tmp_path_factory) -> dict[str, Run]:
    """`demo` (2 GRPO steps of 2 prompts x 8, then merge) and `recipe:<name>` for each recipe (one step)."""
    root = tmp_path_factory.mktemp("e2e")
    policy_for("zoom")  # build (or find) the cached warm-up once, before the runs compete for the cores
    jobs: dict[str, tuple[list[str], Path]] = {
        "demo": ([VISIONR3, "demo", "--output-dir", str(root / "demo"), "--steps", "2", "--n", "8"], root / "demo"),
    }
    for recipe in RECIPES:
        directory = root / recipe
        directory.mkdir(parents=True)
        jobs[f"recipe:{recipe}"] = (recipe_command(recipe, directory, judge.base_url), directory)
    waiting, running, results = list(jobs), {}, {}
    deadline = time.monotonic() + 2400
    while waiting or running:
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
        for name, (process, log, directory) in list(running.items()):
            if process.poll() is not None:
                results[name] = Run(process.returncode, log, directory)
                del running[name]
            elif time.monotonic() > deadline:
                process.kill()
                results[name] = Run("timeout", log, directory)
                del running[name]
        time.sleep(1)
    return results
