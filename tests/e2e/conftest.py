"""The end-to-end runs, two at a time, in the background: the CPU demo and every recipe's CPU variant.

Each run is a `visionr3 ...` subprocess with its own Ray instance, and mostly start-up and waiting (Ray, workers,
model loads), so two of them take little more wall time than one on 2 cores. Two at a time, not more: each needs
about 5 GB, and four at once ran out of 24 GB.

The pool starts as soon as collection has picked the e2e tests (after `-m`/`-k` deselection), in a background
thread, and the e2e tests are moved to the end of the session: the rest of the suite runs while the trainers start
up, and each e2e test then waits only for its own run. (Started from the first e2e test instead, the session sat idle
for the pool's ~5 minutes.)

Every run starts from a policy that performs its recipe's mechanism — a short supervised warm-up in that recipe's
format (:data:`WARMUP`, cached like the tiny model), built by one child process in launch order, so the next
warm-up trains while the first runs start up — and writes verl's rollout dump (``trainer.rollout_data_dir``), from
which the tests read what the trainer's batch held. The session summary lists each run's wall time.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from visionr3.demo.synthetic import write_parquet
from visionr3.config import RECIPES
from visionr3.testing.openai_server import OpenAIStubServer
from visionr3.testing.tiny_model import tiny_model_dir

PARALLEL = 2
SLOTS = {"demo:vllm": 2, "visionthink:vllm": 2, "two_nodes": 2}
"""Runs that need both slots: a vLLM server (4-6 GB) beside its trainer (~5 GB) runs alone, never beside the HF pair
(docs/vllm-on-cpu.md); so does the two-node drill (two trainer workers, two rollout servers and a second raylet). A
unit test that starts vLLM takes one slot for its duration (:meth:`Pool.hold`, through
tests/conftest.py's ``pool_slot``): beside the HF pair, `vllm serve` took the machine to 21.9 GB of 24."""
VISIONR3 = str(Path(sys.executable).with_name("visionr3"))
RESPONSE_LENGTH = {"zoom": 384, "visionthink": 160, "vlm_r3": 320, "vision_sr1": 128}
"""Tokens per trajectory: room for the recipe's image turn (a quadrant crop is 169 tokens, the resized image 64)."""
TASK = {"zoom": "zoom", "visionthink": "zoom", "vlm_r3": "zoom", "vision_sr1": "sr1"}
"""The synthetic rows each recipe's step trains on (visionr3.demo.synthetic)."""
WARMUP = {"visionthink": ("visionthink", 100), "vlm_r3": ("vlm_r3", 100), "vision_sr1": ("sr1", 100)}
"""recipe -> (warm-up task, steps) of its starting policy (visionr3.demo.warmup): every recipe's step starts from a policy
that performs the recipe's own mechanism (all cached). 100 steps: after 60, sampled at the CPU preset's temperature
0.7, the VisionThink and VLM-R3 policies garbled every call of a step; after 100, 31 of 32 sampled resize calls and 31
of 32 inline boxes were valid. The zoom step starts from the CPU demo's own policy (the same task and tool; its longer
warm-up, DEMO_WARMUP, answers after the crop: 31 of the CI demo's 32 trajectories), which the demo builds anyway: a
100-step zoom warm-up garbled the turn after the crop and answered about 1 in 4 (CI on 2b4925d: none of 4).
tests/e2e/test_recipes_cpu.py says what each test relies on."""


JUDGE_FAULTS = {"vlm_r3": "rule", "visionthink": "exclude"}
"""Recipe runs whose judge fails on purpose (:data:`JUDGE_FAULT_PLANS`, their own loopback server, 2 retries, 10-s
attempts, every answer judged) with an API key set (:attr:`Pool.api_key`, in the run's environment as a user exports
it), and the ``on_failure`` their recipe sets: tests/e2e/test_recipes_cpu.py checks the failed samples rule-scored or
excluded and the key in no file the run wrote. VLM-R3 rather than zoom for ``rule``: its answer is "the <answer> tag,
else the last line", so each of its trajectories is judged, where the zoom policy may leave one unanswered."""
JUDGE_FAULT_PLANS = {
    "vlm_r3": (("timeout", "rate_limit", "server_error"), ("rate_limit", "server_error")),
    "visionthink": (("timeout", "rate_limit", "server_error") * 100,),
}
"""Faults per attempt for the distinct judge requests of a run, in turn (:class:`OpenAIStubServer`'s ``fault_plan``).
VLM-R3 (one generation batch): with 2 retries the 1st, 3rd, ... time out, get a 429 with ``Retry-After`` and a 500,
and fail; the others get a 429 and a 500 and are answered on their third attempt. VisionThink: the judge is down for
the whole step, every attempt faults (300 per content: more than the 32 generation batches of its cap x 2 samples x
3 attempts could ask). Its DAPO filtering refills the batch from later generation batches, whose
answers repeat earlier ones: the client's cache answers those that were answered, and the server counts a failed
one's next judging as attempts 4-6 of its content; so an alternating plan failed only in groups that filtering
dropped (CI on 2b4925d: no failed sample in the trained batch)."""

@dataclass
class Run:
    """One finished e2e subprocess: its exit code (or "timeout"), its log, its output directory and its wall time."""

    returncode: int | str
    log: Path
    directory: Path
    seconds: float = 0.0

    def check(self) -> None:
        assert self.returncode == 0, f"{self.returncode}; {self.log}:\n" + self.log.read_text(errors="replace")[-6000:]


BAD_ROWS = {0: "truncated", 2: "bomb", 3: "no ground truth"}
"""Row -> fault in the bad-data run's parquet of 6 demo rows (:func:`bad_rows`)."""


def bad_rows(path: Path) -> Path:
    """6 demo rows, three of them bad (:data:`BAD_ROWS`): row 0's PNG cut in half (its header is intact, so only
    decoding fails, in the trainer's fetch), row 2's image 12000x8000 (over PIL's decompression-bomb limit), row 3 without a
    ground truth. The build skips rows 2 and 3; row 0 is in step 1's batch (no shuffle)."""
    import io

    from PIL import Image

    write_parquet(path, 6, seed=4)
    frame = pd.read_parquet(path)
    images = [list(images) for images in frame["images"]]
    whole = images[0][0]["bytes"]
    images[0] = [{**images[0][0], "bytes": whole[: len(whole) // 2]}]
    bomb = io.BytesIO()
    Image.new("1", (12000, 8000)).save(bomb, format="PNG")
    images[2] = [{**images[2][0], "bytes": bomb.getvalue()}]
    frame["images"] = images
    frame.at[3, "reward_model"] = {**frame.at[3, "reward_model"], "ground_truth": None}
    frame.to_parquet(path)
    return path


def cpu_demo_command(policy: Path | str, rows: Path, *overrides: str) -> list[str]:
    """``visionr3 train --config-name cpu_demo`` on ``policy`` with ``rows`` as both training and validation set."""
    return [VISIONR3, "train", "--config-name", "cpu_demo", f"actor_rollout_ref.model.path={policy}",
            f"data.train_files={rows}", f"data.val_files={rows}", *overrides]


def rows_for(recipe: str, directory: Path) -> Path:
    """Synthetic rows without an `agent_name` column, so the recipe's default agent loop decides."""
    path = write_parquet(directory / "rows.parquet", 2, seed=0, task=TASK[recipe])
    frame = pd.read_parquet(path).drop(columns=["agent_name"])
    frame.to_parquet(path)
    return path


class Warmups:
    """The runs' starting policies (:data:`WARMUP`), built by one child process in launch order and cached like the
    demo's; :meth:`path` waits for one. A child, not a thread of the pytest process: a warm-up is many small torch
    calls, and in a thread their Python half holds the GIL the unit tests in the main thread need."""

    MARK = "warm-up\t"
    CHILD = (
        "import json, sys\n"
        "from visionr3.demo.run import warmup_checkpoint\n"
        "from visionr3.testing.tiny_model import tiny_model_dir\n"
        "for spec in sys.argv[1:]:\n"
        "    settings = json.loads(spec)\n"
        "    base = tiny_model_dir('qwen2_5_vl', size=settings.pop('size'))\n"
        "    path = warmup_checkpoint(base, log_every=0, **settings)[0]\n"
        "    print(f'warm-up\\t{spec}\\t{path}', flush=True)\n"
    )
    SMALL = ("visionthink",)
    """Recipes whose policy is also warmed up on the ``small`` model, for VisionThink's vLLM run (vLLM cannot serve the
    tiny one; the vLLM demo warms up its own)."""

    def __init__(self, log: Path):
        self.log = log
        self.paths: dict[str, Path] = {}
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None

    @staticmethod
    def spec(recipe: str, size: str = "tiny", lr: float | None = None) -> str:
        """:func:`~visionr3.demo.run.warmup_checkpoint`'s settings for a recipe's step, as JSON; lr 1e-2 on the tiny
        model, 3e-3 on the small one unless given."""
        task, steps = WARMUP[recipe]
        return json.dumps({"size": size, "task": task, "steps": steps, "lr": lr or (1e-2 if size == "tiny" else 3e-3), "seed": 0})

    @staticmethod
    def demo_spec(rollout: str = "hf") -> str:
        """The settings `visionr3 demo --rollout <rollout>` warms up with (visionr3.demo.run.DEMO_ROLLOUTS): same key."""
        from visionr3.demo.run import DEMO_ROLLOUTS

        size, _, settings = DEMO_ROLLOUTS[rollout]
        return json.dumps({"size": size, "task": "zoom", **settings, "seed": 0})

    def path(self, recipe: str, size: str = "tiny", lr: float | None = None) -> Path:
        return self.wait(self.spec(recipe, size, lr))

    def demo(self, rollout: str = "hf") -> Path:
        return self.wait(self.demo_spec(rollout))

    def wait(self, task: str) -> Path:
        with self.lock:
            if self.process is None:
                # launch order: the demo's (the zoom step's too) first, the vLLM runs' (which run last) last
                specs = list(dict.fromkeys([
                    self.demo_spec(),
                    *(self.spec(r) for r in WARMUP), self.demo_spec("vllm"), *(self.spec(r, "small") for r in self.SMALL),
                ]))
                with open(self.log, "w") as err:
                    self.process = subprocess.Popen([sys.executable, "-c", self.CHILD, *specs], stdout=subprocess.PIPE,
                                                    stderr=err, text=True)
            while task not in self.paths:
                line = self.process.stdout.readline()
                if not line:
                    code = self.process.wait()
                    tail = self.log.read_text(errors="replace")[-4000:]
                    raise RuntimeError(f"the warm-up process exited ({code}) before the {task!r} policy:\n{tail}")
                if line.startswith(self.MARK):
                    built, where = line[len(self.MARK):].rstrip("\n").split("\t")
                    self.paths[built] = Path(where)
            return self.paths[task]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def recipe_command(recipe: str, directory: Path, judge_url: str, policy: Path) -> list[str]:
    rows = rows_for(recipe, directory)
    command = [
        VISIONR3, "train", "--recipe", recipe, "--config-name", "cpu",
        f"actor_rollout_ref.model.path={policy}",
        f"data.train_files={rows}", f"data.val_files={rows}",
        f"data.max_response_length={RESPONSE_LENGTH[recipe]}",
        "actor_rollout_ref.rollout.n=2",
        f"trainer.default_local_dir={directory / 'checkpoints'}",
        "trainer.logger=[console,file]",
    ]
    if recipe != "vision_sr1":
        command.append(f"visionr3.reward.judge.base_url={judge_url}")
    if recipe == "vlm_r3":  # its step is saved: the test compares the frozen vision tower with the policy's
        command.append("trainer.save_freq=1")
    (directory / "policy.txt").write_text(str(policy))
    # verl's rollout dump with visionr3's columns (what `visionr3 view` reads; the tests read what the batch held)
    command.append(f"trainer.rollout_data_dir={directory / 'rollouts'}")
    return command


GRADIENT_SIGN = {"candidate_seeds": list(range(8)), "steps": 2, "lr": 1e-3, "temperature": 0.7, "n": 12}
"""The gradient-sign run (tests/e2e/test_gradient_sign.py): K GRPO steps on one batch of two prompt groups, from the
demo's policy: the first row is paid +1 for one colour (``prefer``), the second -1 for another (``avoid``), every
other answer 0. One-sided rewards, so under GRPO's group baseline the rewarded answer's advantage is the only positive
one (first row) or the only negative one (second row): its probability has one direction to go, whatever the other
answers do (a +1/-1 pair on one row let AdamW raise the unpaid colours past both: NOTE.md, "The gradient-sign check").
The two rows and colours are chosen from the policy (:func:`gradient_sign_rows`). Temperature 0.7: at 1.0 the demo's
policy wrote a colour on 6 of 16 trajectories. lr 1e-3: at 2e-3 an earlier policy stopped answering after one
update."""


def gradient_sign_rows(policy: Path) -> tuple[tuple[int, str], tuple[int, str]]:
    """``((seed, prefer), (seed, avoid))``: two synthetic rows (:func:`~visionr3.demo.synthetic.make_sample` seeds
    from ``candidate_seeds``) and two different colours, each as likely on its row as the choice allows (the largest
    smaller probability), averaged over a call on each quarter (the crops a warmed-up policy samples:
    :meth:`~visionr3.testing.answer_probe.AnswerProbe.quarters`). The check moves an answer only where the engine
    samples it, so both must be common whatever float history built the policy (the demo's favours blue on most rows);
    different, since pushing one colour up on one row and down on the other would pull against each other."""
    import itertools
    import random

    from visionr3.demo.synthetic import make_sample
    from visionr3.testing.answer_probe import AnswerProbe

    probe = AnswerProbe(policy)
    seeds = GRADIENT_SIGN["candidate_seeds"]
    share = {seed: probe.quarters(make_sample(random.Random(seed))) for seed in seeds}
    choices = [
        ((first, prefer), (second, avoid))
        for first, second in itertools.permutations(seeds, 2)
        for prefer, avoid in itertools.permutations(sorted(share[first]), 2)
    ]
    return max(choices, key=lambda choice: min(share[choice[0][0]][choice[0][1]], share[choice[1][0]][choice[1][1]]))


def gradient_sign_command(directory: Path, policy: Path) -> list[str]:
    """``visionr3 train --config-name cpu_demo`` on :data:`GRADIENT_SIGN`'s two synthetic rows, the same batch every step
    (the cluster preset does not shuffle), rewarded by tests/e2e/grad_sign_reward.py; the last step saved."""
    import random

    from visionr3.demo.synthetic import make_row, make_sample

    (first, prefer), (second, avoid) = gradient_sign_rows(policy)
    spec = {**GRADIENT_SIGN, "sample_seeds": [first, second], "prefer": prefer, "avoid": avoid}
    rows = []
    for index, (seed, reward) in enumerate(((first, {"prefer": prefer}), (second, {"avoid": avoid}))):
        row = make_row(make_sample(random.Random(seed)), index=index)
        row["extra_info"] = {**row["extra_info"], **reward}
        rows.append(row)
    path = directory / "rows.parquet"
    pd.DataFrame(rows * spec["steps"]).to_parquet(path)
    (directory / "spec.json").write_text(json.dumps({**spec, "policy": str(policy)}))  # what the test reads back
    return cpu_demo_command(
        policy, path,
        "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        f"actor_rollout_ref.rollout.n={spec['n']}",
        f"actor_rollout_ref.rollout.temperature={spec['temperature']}",
        f"actor_rollout_ref.actor.optim.lr={spec['lr']}",
        f"reward.custom_reward_function.path={Path(__file__).with_name('grad_sign_reward.py')}",
        "reward.custom_reward_function.name=compute_score",
        f"trainer.total_training_steps={spec['steps']}", f"trainer.save_freq={spec['steps']}",
        f"trainer.default_local_dir={directory / 'checkpoints'}",
        "trainer.logger=[console,file]",
        f"trainer.rollout_data_dir={directory / 'rollouts'}",
    )


SLOW_RUNS: dict[str, str] = {}
"""Runs whose tests are marked ``slow`` (run name -> test file): started only when one of those tests is selected
(``-m slow``). None today: the gradient-sign run is back in the default suite."""


class Pool:
    """The e2e subprocesses, scheduled PARALLEL at a time by a daemon thread; :meth:`result` waits for one run."""

    def __init__(self, root: Path, skip: frozenset[str] = frozenset()):
        self.root = root
        self.skip = skip  # runs whose tests were not selected (SLOW_RUNS)
        self.judge = OpenAIStubServer()
        self.faulty_judges = {name: OpenAIStubServer(fault_plan=JUDGE_FAULT_PLANS[name], hang=120, retry_after=1)
                              for name in JUDGE_FAULTS}
        self.api_key = f"sk-visionr3-e2e-{secrets.token_hex(16)}"  # a fake key: what matters is where it shows up
        self.run_env: dict[str, dict[str, str]] = {}  # run -> variables added to its environment
        self.warmups = Warmups(root / "warmups.log")
        self.results: dict[str, Run] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.stopping = False
        self.running: dict[str, subprocess.Popen] = {}
        self.reserved = 0  # slots held by unit tests (hold)
        self.slot_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run_all, name="e2e-pool", daemon=True)

    def start(self) -> "Pool":
        self.judge.__enter__()
        for server in self.faulty_judges.values():
            server.__enter__()
        self.thread.start()
        return self

    def busy(self) -> int:
        """Slots taken: the running runs' and the unit tests' (:meth:`hold`)."""
        return sum(SLOTS.get(name, 1) for name in list(self.running)) + self.reserved

    @contextlib.contextmanager
    def hold(self, slots: int = 1):
        """Take ``slots`` of the pool's for the ``with`` block: no run starts into them, and the block begins once the
        running ones leave them free (at most one run's time; never, once the pool is done)."""
        with self.slot_lock:
            self.reserved += slots
        try:
            while not self.done.is_set() and self.busy() > PARALLEL:
                time.sleep(1)
            yield
        finally:
            with self.slot_lock:
                self.reserved -= slots

    def _jobs(self) -> list[tuple[str, Callable[[], tuple[list[str], Path]]]]:
        """(name, prepare) in launch order; ``prepare`` builds the run's policy (a cached warm-up) and command."""
        root = self.root

        def demo() -> tuple[list[str], Path]:
            self.warmups.demo()  # the demo's own warm-up (same key), built here rather than inside the subprocess
            return [VISIONR3, "demo", "--output-dir", str(root / "demo"), "--steps", "2", "--n", "8"], root / "demo"

        def demo_vllm() -> tuple[list[str], Path]:
            self.warmups.demo("vllm")
            directory = root / "demo_vllm"
            return [VISIONR3, "demo", "--rollout", "vllm", "--output-dir", str(directory), "--steps", "2", "--n", "4"], directory

        def visionthink_vllm() -> tuple[list[str], Path]:
            """VisionThink's step with the policy *and* its judge (``use: always``) on vLLM, alone: the resize tool's
            full-resolution image goes back into verl's vLLM rollout, and every answer to a small Qwen3 served by vLLM
            inside the job (verl's GenRM on its own pool, reached through its reward router). One run, not two: each
            vLLM run's start-up costs ~5 minutes of CI's tail, where runs go one at a time."""
            directory = root / "visionthink_vllm"
            directory.mkdir(parents=True, exist_ok=True)
            policy = self.warmups.path("visionthink", size="small")
            judge = tiny_model_dir("qwen3", size="small")
            command = recipe_command("visionthink", directory, "unused", policy)
            command = [arg for arg in command if not arg.startswith("visionr3.reward.judge.base_url=")]
            # DAPO filtering is the HF step's to test (recipe:visionthink): the small policy's two groups scored
            # [1.5, 1.5] and [0.5, 0.5] in earlier runs, which filtering would refill up to its cap on vLLM's CPU
            return [*command, "cluster=cpu_vllm", "algorithm.filter_groups.enable=false",
                    # the CPU variant names its loopback stub as the judge model; vLLM serves the judge under its path
                    "judge=local_qwen3_cpu", f"reward.reward_model.model_path={judge}",
                    f"visionr3.reward.judge.model={judge}",
                    "ray_kwargs.ray_init.num_gpus=2",  # the judge's own pool: one more logical GPU
                    "visionr3.reward.judge.timeout=300",  # the CPU variant's 30 s: a loaded 2-core machine took longer
                    "visionr3.reward.judge.max_retries=0"], directory  # a random judge's reply never parses: no retries

        def gradient_sign() -> tuple[list[str], Path]:
            """GRPO on one prompt group, repeated: tests/e2e/test_gradient_sign.py."""
            directory = root / "gradient_sign"
            directory.mkdir(parents=True, exist_ok=True)
            policy = self.warmups.demo()  # the demo's policy (its warm-up is built for the demo anyway)
            return gradient_sign_command(directory, policy), directory

        def resume() -> tuple[list[str], Path]:
            """The kill-and-resume drill (tests/e2e/test_resume.py): three trainer runs one after another, one slot."""
            directory = root / "resume"
            policy = self.warmups.demo()
            return [sys.executable, "-m", "visionr3.testing.resume_drill", "--out", str(directory),
                    "--policy", str(policy)], directory

        def qwen3_vl() -> tuple[list[str], Path]:
            """One GRPO step of the tiny Qwen3-VL with the normalised-coordinate crop tool (tests/e2e/test_qwen3_vl.py):
            the untrained model, so whatever it writes goes through verl's trainer, with a reward that differs between
            samples (tests/e2e/text_digest_reward.py) so the gradient is not zero."""
            directory = root / "qwen3_vl"
            directory.mkdir(parents=True, exist_ok=True)
            rows = write_parquet(directory / "rows.parquet", 2, seed=3)
            tools = "${visionr3.config:tools/crop_zoom_qwen3.yaml}"
            return cpu_demo_command(
                tiny_model_dir("qwen3_vl"), rows,
                f"actor_rollout_ref.rollout.multi_turn.tool_config_path={tools}",
                "data.max_response_length=192", "actor_rollout_ref.rollout.n=2",
                f"reward.custom_reward_function.path={Path(__file__).with_name('text_digest_reward.py')}",
                "reward.custom_reward_function.name=compute_score",
                "trainer.total_training_steps=1", "trainer.save_freq=-1",
                "trainer.logger=[console,file]", f"trainer.rollout_data_dir={directory / 'rollouts'}",
            ), directory

        def filter_groups_bound() -> tuple[list[str], Path]:
            """DAPO filtering with every group scoring alike (tests/e2e/constant_reward.py) and
            ``max_num_gen_batches=2`` (tests/e2e/test_filter_groups.py): the run must stop, naming the setting, after
            its second generation batch. The untrained tiny model and short responses: only the count matters."""
            directory = root / "filter_groups_bound"
            directory.mkdir(parents=True, exist_ok=True)
            rows = write_parquet(directory / "rows.parquet", 4, seed=9)
            return cpu_demo_command(
                tiny_model_dir("qwen2_5_vl"), rows,
                "data.max_response_length=48", "actor_rollout_ref.rollout.n=2",
                f"reward.custom_reward_function.path={Path(__file__).with_name('constant_reward.py')}",
                "reward.custom_reward_function.name=compute_score",
                "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=reward",
                "algorithm.filter_groups.max_num_gen_batches=2",
                "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.logger=[console,file]",
            ), directory

        def bad_data() -> tuple[list[str], Path]:
            """A training set with rows that cannot train (tests/e2e/test_bad_data.py, :func:`bad_rows`): the build
            skips and counts two (``data.skip_bad_rows``), the trainer the one whose pixels do not decode."""
            directory = root / "bad_data"
            directory.mkdir(parents=True, exist_ok=True)
            rows = bad_rows(directory / "rows.parquet")
            return cpu_demo_command(
                tiny_model_dir("qwen2_5_vl"), rows, "data.shuffle=false",
                "data.skip_bad_rows=true", "data.max_response_length=48", "actor_rollout_ref.rollout.n=2",
                "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.logger=[console,file]",
                f"trainer.rollout_data_dir={directory / 'rollouts'}",
            ), directory

        def two_nodes() -> tuple[list[str], Path]:
            """The two-node drill (tests/e2e/test_two_nodes.py): a two-node Ray cluster and its trainers, alone."""
            directory = root / "two_nodes"
            policy = self.warmups.demo()
            return [sys.executable, "-m", "visionr3.testing.two_nodes_drill", "--out", str(directory),
                    "--policy", str(policy)], directory

        def recipe(name: str) -> Callable[[], tuple[list[str], Path]]:
            def prepare() -> tuple[list[str], Path]:
                directory = root / name
                directory.mkdir(parents=True, exist_ok=True)
                policy = self.warmups.demo() if name == "zoom" else self.warmups.path(name)
                if name not in JUDGE_FAULTS:
                    return recipe_command(name, directory, self.judge.base_url, policy), directory
                self.run_env[f"recipe:{name}"] = {"OPENAI_API_KEY": self.api_key}
                command = recipe_command(name, directory, self.faulty_judges[name].base_url, policy)
                # use=always: VLM-R3's `undecided` never asks about a colour, which the rules always decide
                return [*command, "visionr3.reward.judge.use=always", "visionr3.reward.judge.max_retries=2",
                        "visionr3.reward.judge.timeout=10"], directory

            return prepare

        # the demo and the zoom step share the demo's warm-up, so both start at once; the other warm-ups train meanwhile
        order = ["zoom", *(name for name in RECIPES if name != "zoom")]
        # the long one-slot runs first (demo, gradient_sign, the resume drill's three runs: ~15 min each), so the
        # short ones fill the second slot at the end instead of one long run holding it alone before the two-slot
        # runs (CI on b7ea904: the resume drill ran alone for ~15 min there)
        jobs = [("demo", demo), ("gradient_sign", gradient_sign), ("resume", resume),
                *((f"recipe:{name}", recipe(name)) for name in order),
                ("qwen3_vl", qwen3_vl), ("filter_groups_bound", filter_groups_bound), ("bad_data", bad_data),
                ("two_nodes", two_nodes), ("demo:vllm", demo_vllm), ("visionthink:vllm", visionthink_vllm)]
        jobs = [job for job in jobs if job[0] not in self.skip]
        only = os.environ.get("VISIONR3_E2E_ONLY")  # a developer's shortcut (docs/development.md); CI runs them all
        return [job for job in jobs if job[0] in only.split(",")] if only else jobs

    def _prepare_all(self, jobs, ready: "queue.Queue") -> None:
        """Builds each run's policy and command in launch order (warm-ups are CPU work: the next one trains while
        the first runs start up); a failure is queued in the job's place and reported by the scheduler."""
        for name, prepare in jobs:
            if self.stopping:
                return
            try:
                ready.put((name, prepare()))
            except BaseException as exc:
                ready.put((name, exc))

    def _run_all(self) -> None:
        try:
            jobs = self._jobs()
            ready: queue.Queue = queue.Queue()
            threading.Thread(target=self._prepare_all, args=(jobs, ready), name="e2e-prepare", daemon=True).start()
            pending, running, waiting = len(jobs), {}, None
            # the pool's own limit, under CI's 90 minutes: at 3000 s a fresh-clone CI (50 min in all) killed the last
            # vLLM run ~10 s before it would have finished; the resume and two-node drills added ~20 minutes of runs;
            # at 4800 s the CI on 649fb7f reached its last vLLM run at the limit (the tail was cut by ~7 minutes since)
            deadline = time.monotonic() + 5000
            while (pending or running) and not self.stopping:
                while pending and self.busy() < PARALLEL:
                    if waiting is None:
                        try:
                            waiting = ready.get_nowait()
                        except queue.Empty:
                            break
                    name, prepared = waiting
                    if self.busy() + SLOTS.get(name, 1) > PARALLEL:
                        break  # the next run needs more slots than are free: wait for the running ones
                    waiting = None
                    pending -= 1
                    if isinstance(prepared, BaseException):
                        raise RuntimeError(f"preparing the e2e run {name!r} failed: {prepared!r}") from prepared
                    command, directory = prepared
                    directory.mkdir(parents=True, exist_ok=True)
                    log = directory / "run.log"
                    env = {**os.environ, **self.run_env.get(name, {}),
                           "VERL_FILE_LOGGER_PATH": str(directory / "metrics.jsonl")}
                    if name.startswith("demo"):
                        env.pop("VERL_FILE_LOGGER_PATH")  # the demo names its own metrics file
                    with open(log, "w") as out:
                        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=directory, env=env)
                    running[name] = (process, log, directory, time.monotonic())
                    self.running[name] = process
                for name, (process, log, directory, started) in list(running.items()):
                    if process.poll() is not None:
                        self.results[name] = Run(process.returncode, log, directory, time.monotonic() - started)
                        del running[name], self.running[name]
                    elif time.monotonic() > deadline:
                        process.kill()
                        self.results[name] = Run("timeout", log, directory, time.monotonic() - started)
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
        self.warmups.close()
        self.thread.join(timeout=30)
        self.judge.__exit__(None, None, None)
        for server in self.faulty_judges.values():
            server.__exit__(None, None, None)


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
        selected = {Path(str(item.fspath)).name for item in e2e}
        _POOL = Pool(root, skip=frozenset(run for run, tests in SLOW_RUNS.items() if tests not in selected)).start()
        config.visionr3_e2e_pool = _POOL  # tests/conftest.py's pool_slot


def pytest_terminal_summary(terminalreporter):
    if _POOL is not None and _POOL.results:
        times = ", ".join(f"{name} {run.seconds:.0f} s" for name, run in _POOL.results.items())
        terminalreporter.write_line(f"e2e runs (wall time, 2 at a time): {times}")


def pytest_sessionfinish(session, exitstatus):
    if _POOL is not None:
        _POOL.close()


class BatchImageOracle:
    """What verl's batch must hold for a dumped trajectory's images, re-made here from the dataset row.

    The dump (``batch_images``, visionr3.train.trainer) records, per image of the trajectory, the ``image_grid_thw`` and a
    digest of that image's rows of ``multi_modal_inputs["pixel_values"]`` — what the actor trained on. This re-makes
    the images independently: the row's source image as the dataset resizes it (and the VisionThink loop's
    low-resolution first view), then each valid call of the dumped ``tool_call_log`` re-run through the recipe's
    tool YAML on that source; each goes through the checkpoint's processor on its own.
    """

    def __init__(self, model_dir: Path):
        from omegaconf import OmegaConf

        from visionr3.config import config_path
        from visionr3.processing import load_processor

        self.processor = load_processor(model_dir)
        self.max_pixels = int(OmegaConf.load(config_path("cluster", "cpu.yaml")).data.max_pixels)

    def expected(self, source, calls: list[dict], tool_yaml: str, low_res_factor: float | None = None) -> list[dict]:
        """``[{"grid_thw", "sha256"}]`` for the prompt image and the image of each valid call, in order."""
        import asyncio

        from PIL import Image
        from verl.tools.tool_registry import initialize_tools_from_config

        from visionr3.config import config_path
        from visionr3.rollout.hf.digests import tensor_digest
        from visionr3.processing import fetch_image, seen_size
        from visionr3.tools.geometry import downsampled_size
        from visionr3.tools.image_tools import call_tool

        patch = self.processor.image_processor.patch_size
        shown = fetch_image(source, patch_size=patch, max_pixels=self.max_pixels)
        first = shown
        if low_res_factor:
            first = shown.resize(downsampled_size(*shown.size, low_res_factor), resample=Image.Resampling.LANCZOS)
        images = [first]
        (tool,) = initialize_tools_from_config(str(config_path("tools", tool_yaml)))
        create_kwargs = {"source_images": [source], "seen_sizes": [seen_size(self.processor, first.size)],
                         "full_sizes": [shown.size]}
        for call in calls:
            if call["valid"]:
                assert call["name"] == tool.name, call
                response, _, info = asyncio.run(call_tool(tool, call["arguments"], create_kwargs))
                assert info.get("valid"), (call, response.text)
                images += response.image
        out = []
        for image in images:
            features = self.processor.image_processor(images=[image], return_tensors="pt")
            out.append({"grid_thw": features["image_grid_thw"][0].tolist(), "sha256": tensor_digest(features["pixel_values"])})
        return out

    def check(self, row: dict, rows_file: Path, tool_yaml: str, low_res_factor: float | None = None) -> None:
        """The dumped row's batch images are exactly the re-made ones (grid and pixel digest, image by image)."""
        import pandas as pd

        from visionr3.processing import open_image

        source = open_image(pd.read_parquet(rows_file).iloc[row["row_index"]]["images"][0])
        want = self.expected(source, row["tool_call_log"], tool_yaml, low_res_factor)
        held = [{"grid_thw": image["grid_thw"], "sha256": image["sha256"]} for image in row["batch_images"]]
        assert held == want, (
            f"row {row['row_index']} ({row['uid']}): verl's batch holds {len(held)} image(s) that are not the prompt "
            f"image and the {row['valid_tool_calls']} crop(s) re-made from its source: {held} != {want}"
        )


@pytest.fixture(scope="session")
def batch_image_oracle() -> BatchImageOracle:
    return BatchImageOracle(tiny_model_dir("qwen2_5_vl"))  # the warm-ups save this checkpoint's processor unchanged


def read_dump(directory: Path) -> list[dict]:
    """Every row of verl's rollout dump in ``directory`` (``<step>.jsonl``), in step order."""
    import json

    files = sorted(directory.glob("*.jsonl"), key=lambda path: int(path.stem))
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def rollout_dump():
    return read_dump


@pytest.fixture(scope="session")
def judge() -> OpenAIStubServer:
    """The loopback stand-in for a remote judge API (`visionr3.reward.judge.base_url` of the judged recipes not in
    :data:`JUDGE_FAULTS`)."""
    if _POOL is None:
        pytest.skip("the e2e pool was not started (no e2e test selected at collection)")
    return _POOL.judge


@pytest.fixture(scope="session")
def faulty_judges() -> dict[str, OpenAIStubServer]:
    """recipe -> the loopback judge API of its run, which fails on purpose (:data:`JUDGE_FAULTS`)."""
    if _POOL is None:
        pytest.skip("the e2e pool was not started (no e2e test selected at collection)")
    return _POOL.faulty_judges


@pytest.fixture(scope="session")
def api_key() -> str:
    """The fake API key in the environment of the :data:`JUDGE_FAULTS` runs."""
    if _POOL is None:
        pytest.skip("the e2e pool was not started (no e2e test selected at collection)")
    return _POOL.api_key


@pytest.fixture(scope="session")
def e2e_runs() -> dict[str, Run]:
    """`demo` (2 GRPO steps of 2 prompts x 8, then merge) and `recipe:<name>` for each recipe (one step), started
    at collection; this waits for them."""
    if _POOL is None:
        pytest.skip("the e2e pool was not started (no e2e test selected at collection)")
    return _POOL.result()
