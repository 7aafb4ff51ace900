"""The CPU demo behind ``visionr3 demo`` (README's first quickstart command): verl's real GRPO trainer, on CPU.

    visionr3 demo [--output-dir outputs/cpu_demo] [--warmup-steps N] [--steps 3] [--rollout hf|vllm]

Stages (each prints what it did; the whole run takes about 5 minutes on 2 cores, less with a warm cache):

1. **model** — the tiny offline Qwen2.5-VL with the real Qwen vocabulary (cached, :mod:`visionr3.testing.tiny_model`);
   with ``--rollout vllm`` its ``small`` size, the smallest vLLM's CPU attention serves;
2. **data** — the synthetic "name the colour of the small square" task as verl parquet (:mod:`visionr3.demo.synthetic`);
3. **warm-up** — supervised fine-tuning on synthetic tool-using demonstrations (:mod:`visionr3.demo.warmup`), the papers'
   cold start, so the policy emits well-formed ``image_zoom_in_tool`` calls (cached by its settings);
4. **GRPO** — ``visionr3 train --config-name cpu_demo`` in a child process: verl's trainer with the CPU platform, the
   HF rollout replica (``--rollout vllm``: verl's own vLLM replica, preset ``cluster/cpu_vllm.yaml``), ``visionr3_agent`` + crop/zoom tool and the ``exact_match_plus_format`` rule reward; per-step
   metrics go to verl's file logger. ``--recipe vision_sr1`` runs Vision-SR1 instead: description/think/boxed
   answers, the text-only self-reward pass through the same rollout server, and decoupled answer/visual advantages;
5. **merge** — verl's ``model_merger`` turns the last FSDP checkpoint into a Hugging Face directory, which is
   reloaded with ``AutoModelForImageTextToText`` and compared with the checkpoint's weights.

Writes ``<output-dir>/curve.png`` (accuracy per step) and ``<output-dir>/summary.json`` with ``steps``, ``reward_mean``,
``accuracy`` (and its first and last window), ``tool_call_rate``, ``num_turns``, ``step_seconds``, ``weights_synced``
(per-step lists), ``merged_model_dir``, ``rollout_dir`` (verl's rollout dump with
visionr3's columns, one ``<step>.jsonl`` per step; ``visionr3 view`` renders it) and the timings of each stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any



def warmup_checkpoint(
    base_dir: Path, steps: int, seed: int = 0, task: str = "zoom", log_every: int = 10, lr: float = 1e-2,
    answer_weight: float = 1.0, pool_batches: int | None = 8, direct_share: float = 0.0, batch_size: int = 4,
) -> tuple[Path, float]:
    """A cached warm-up of ``base_dir``: ``(checkpoint, seconds spent training)``, 0.0 when the cache answered.
    ``log_every=0`` trains silently (a caller in a background thread must not print into another's stdout).
    ``lr``, ``answer_weight``, ``pool_batches``, ``direct_share``, ``batch_size``: see :data:`DEMO_WARMUP` and
    :func:`visionr3.demo.warmup.supervised_warmup`.

    Keyed by the settings, the warm-up code, the synthetic task's code, the tool YAML and the base model's weights
    (their sha256, not the path), and verified on every read like the tiny models
    (:func:`visionr3.testing.cache.cached_build`)."""
    from omegaconf import OmegaConf

    from visionr3.config import config_path
    from visionr3.testing.cache import sha256_file, cache_root, cached_build
    from visionr3.demo.warmup import supervised_warmup

    # The warm-up shows the policy its prompt image at the same budget as the GRPO run: the CPU preset's.
    data_max_pixels = int(OmegaConf.load(config_path("cluster", "cpu.yaml")).data.max_pixels)
    tool_config = config_path("tools", "crop_zoom.yaml")
    here = Path(__file__).parent
    key = hashlib.sha256(
        f"{sha256_file(Path(base_dir) / 'model.safetensors')}|{steps}|{seed}|{data_max_pixels}|{task}|{lr}|{answer_weight}|{pool_batches}|{direct_share}|{batch_size}".encode()
        + (here / "warmup.py").read_bytes()
        + (here / "synthetic.py").read_bytes()
        + tool_config.read_bytes()
    ).hexdigest()[:16]
    seconds = 0.0

    def build(staging: Path) -> None:
        nonlocal seconds
        seconds = supervised_warmup(
            base_dir, staging, tool_config=tool_config, data_max_pixels=data_max_pixels, steps=steps, seed=seed,
            lr=lr, task=task, log_every=log_every, answer_weight=answer_weight, pool_batches=pool_batches,
            direct_share=direct_share, batch_size=batch_size,
        )["seconds"]

    target, _ = cached_build(cache_root() / "warmup" / key, key, build)
    return target, seconds


def phased_warmup(
    base_dir: Path, phases: Sequence[Mapping[str, Any]], seed: int = 0, task: str = "zoom", log_every: int = 10
) -> tuple[Path, float]:
    """:func:`warmup_checkpoint` run once per phase, each phase starting from the previous one's checkpoint with a
    fresh optimizer (phase ``i`` draws its demonstrations with seed ``seed + 10 * i``). Each phase is cached on its own,
    keyed by its input weights, so phases shared by two settings train once. Returns ``(checkpoint, seconds trained)``.

    Why phases: Adam restarted after the call is learned lets the one colour token's gradient through, and a last
    phase at a lower lr and plain weights settles the call's digits (NOTE.md, "The multi-turn warm-up, measured")."""
    policy, seconds = Path(base_dir), 0.0
    for i, phase in enumerate(phases):
        policy, trained = warmup_checkpoint(policy, seed=seed + 10 * i, task=task, log_every=log_every, **phase)
        seconds += trained
    return policy, seconds


def grpo_command(
    policy: Path, train: Path, val: Path, out: Path, *, steps: int, n: int, preset: str = "cpu", overrides: list[str] = ()
) -> list[str]:
    """``visionr3 train --config-name cpu_demo`` on ``policy``: ``steps`` GRPO steps, the last one saved under
    ``out/checkpoints``, verl's rollout dump under ``out/rollouts`` (``visionr3 view`` renders it). Per-step metrics go
    to verl's file logger: run it with ``VERL_FILE_LOGGER_PATH`` set (:func:`read_step_metrics`)."""
    return [
        sys.executable, "-m", "visionr3.cli", "train", "--config-name", "cpu_demo",
        f"actor_rollout_ref.model.path={policy}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"actor_rollout_ref.rollout.n={n}",
        f"trainer.total_training_steps={steps}",
        f"trainer.save_freq={steps}",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        "trainer.logger=[console,file]",
        f"trainer.rollout_data_dir={out / 'rollouts'}",
        f"cluster={preset}",
        *overrides,
    ]


DEMO_RECIPES: dict[str, tuple[str, list[str]]] = {
    # recipe -> (synthetic task, trainer overrides on cpu_demo.yaml)
    "visionr3": ("zoom", []),
    "vision_sr1": (
        "sr1",
        [
            "visionr3.reward.formula=vision_sr1",
            "visionr3.advantage.decouple={visual: 1.0}",   # the paper's v2: separate answer and visual advantages
            "actor_rollout_ref.rollout.agent.default_agent_loop=visionr3_vision_sr1",
            "actor_rollout_ref.rollout.multi_turn.tool_config_path=null",  # no tools: no schema in its prompts
            # Hot sampling, chosen while verl's equal-length crash was open (now repaired by visionr3.platform.verl_fixes):
            # the warmed-up policy is near-deterministic at 0.7, and 1.5 keeps its groups varied.
            "actor_rollout_ref.rollout.temperature=1.5",
        ],
    ),
}


DEMO_WARMUP = {"steps": 250, "lr": 3e-3, "answer_weight": 3.0, "pool_batches": None}
"""The tiny policy's warm-up (:func:`warmup_checkpoint`), measured with :mod:`visionr3.testing.answer_probe` on held-out
squares (NOTE.md, "The multi-turn warm-up, measured"): it calls the tool and answers on every trajectory,
and reads the colour from the right crop part of the time, so GRPO's groups have reward variance to learn from."""

LEARNING_WARMUP: tuple[dict[str, Any], ...] = (
    {"steps": 150, "lr": 3e-3, "answer_weight": 10.0, "pool_batches": None},
    {"steps": 100, "lr": 3e-3, "answer_weight": 3.0, "pool_batches": None},
    {"steps": 150, "lr": 1e-3, "answer_weight": 1.0, "pool_batches": None},
)
"""The learning benchmark's warm-up (:func:`phased_warmup`): it reads the right crop (the answer probe's argmax 1.00 on
32 held-out squares) and calls the named quarter on part of the rows (NOTE.md, "The multi-turn warm-up, measured")."""

HESITANT_PHASE = {"steps": 100, "lr": 1e-3, "answer_weight": 1.0, "pool_batches": None, "direct_share": 0.6, "batch_size": 5}
"""The learning benchmark's last warm-up phase for the tool arm: in every batch of 5 demonstrations 3 answer from the
full view though the tool is offered. The start policy then zooms on a minority of its samples, whatever the prompt,
and greedily answers without looking closer, at chance: what GRPO has to learn is that zooming pays. Starts that
always called and had to fix the call's digits instead did not learn in 12 steps (NOTE.md, "The learning
benchmark", has both)."""

DEMO_ROLLOUTS: dict[str, tuple[str, str, dict]] = {
    # rollout -> (tiny_model size, cluster preset, warm-up settings)
    "hf": ("tiny", "cpu", DEMO_WARMUP),
    # vLLM's CPU attention needs head_dim >= 32: the small size has 64. At lr 1e-2 its greedy calls were token soup.
    "vllm": ("small", "cpu_vllm", {"steps": 100, "lr": 3e-3}),
}


def read_step_metrics(path: Path) -> list[dict]:
    """verl's file-logger JSONL: one ``{"step": n, "data": {...}}`` per step (validation lines have no actor loss)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row["data"] | {"step": row["step"]} for row in rows if "actor/pg_loss" in row["data"]]


def run_demo(
    output_dir: str | os.PathLike = "outputs/cpu_demo",
    *,
    warmup_steps: int | None = None,
    steps: int = 3,
    n: int = 4,
    train_rows: int = 32,
    recipe: str = "visionr3",
    rollout: str = "hf",
) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from visionr3.demo.curve import default_window, plot_accuracy, window_mean
    from visionr3.demo.synthetic import write_parquet
    from visionr3.testing.tiny_model import tiny_model_dir

    out = Path(output_dir).resolve()
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    if rollout not in DEMO_ROLLOUTS:
        raise ValueError(f"visionr3 demo: unknown rollout {rollout!r}; expected one of {sorted(DEMO_ROLLOUTS)}")
    size, preset, warmup = DEMO_ROLLOUTS[rollout]
    warmup = {**warmup, "steps": warmup_steps or warmup["steps"]}
    base = tiny_model_dir("qwen2_5_vl", size=size)
    timings["model_s"] = time.perf_counter() - start
    print(f"[1/5] model: {size} Qwen2.5-VL (real Qwen vocabulary) at {base}", flush=True)

    if recipe not in DEMO_RECIPES:
        raise ValueError(f"visionr3 demo: unknown recipe {recipe!r}; expected one of {sorted(DEMO_RECIPES)}")
    task, overrides = DEMO_RECIPES[recipe]
    train = write_parquet(out / "data" / "train.parquet", train_rows, seed=0, task=task)
    val = write_parquet(out / "data" / "val.parquet", 4, seed=1, task=task)
    print(f"[2/5] data: {train_rows} training rows of the small-square colour task ({task}) -> {train.parent}", flush=True)

    start = time.perf_counter()
    print(f"[3/5] warm-up: {warmup['steps']} supervised steps on synthetic {task} demonstrations", flush=True)
    policy, trained_s = warmup_checkpoint(base, task=task, **warmup)
    timings["warmup_s"] = time.perf_counter() - start
    print(f"      policy: {policy} ({'trained' if trained_s else 'cached'}, {timings['warmup_s']:.0f} s)", flush=True)

    metrics_file = out / "metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    shutil.rmtree(out / "rollouts", ignore_errors=True)
    command = grpo_command(policy, train, val, out, steps=steps, n=n, preset=preset, overrides=overrides)
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics_file)}
    print(f"[4/5] GRPO: {steps} steps of verl's trainer ({rollout} rollout, n={n}); log: {out / 'train.log'}", flush=True)
    start = time.perf_counter()
    with open(out / "train.log", "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out)
    timings["train_s"] = time.perf_counter() - start
    if result.returncode != 0:
        tail = (out / "train.log").read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail))
        print(f"demo failed: the trainer exited with {result.returncode}; see {out / 'train.log'}")
        return result.returncode
    rows = read_step_metrics(metrics_file)
    for row in rows:
        print(
            f"      step {row['step']}: reward {row['critic/score/mean']:.3f}  "
            f"accuracy {row.get('visionr3/reward/accuracy/mean', float('nan')):.2f}  "
            + (f"visual {row.get('visionr3/reward/visual/mean', float('nan')):.2f}  " if recipe == "vision_sr1" else "")
            + 
            f"tool-call rate {row.get('visionr3/tool_call_rate', float('nan')):.2f}  "
            f"valid calls {row.get('visionr3/valid_call_ratio', float('nan')):.2f}  "
            f"turns {row['training/num_turns/mean']:.2f}  {row['timing_s/step']:.1f} s",
            flush=True,
        )

    accuracy = [row.get("visionr3/reward/accuracy/mean") for row in rows]
    window = default_window(len(rows))
    first, last = window_mean(accuracy, window), window_mean(accuracy, window, last=True)
    curve = plot_accuracy({f"{recipe} ({rollout} rollout, n={n})": [accuracy]}, out / "curve.png",
                          title="visionr3 demo: accuracy per GRPO step")
    print(f"      accuracy, first {window} step(s) {first:.2f} -> last {window} step(s) {last:.2f}; curve: {curve}", flush=True)

    start = time.perf_counter()
    actor_dir = out / "checkpoints" / f"global_step_{steps}" / "actor"
    merged = out / "merged_hf"
    merge_and_verify(actor_dir, merged)
    timings["merge_s"] = time.perf_counter() - start
    print(f"[5/5] merged {actor_dir} -> {merged} with verl's model_merger; reloaded, every tensor equals the checkpoint's (bf16)", flush=True)

    summary = {
        "steps": len(rows),
        "reward_mean": [row["critic/score/mean"] for row in rows],
        "recipe": recipe,
        "rollout": rollout,
        "accuracy": accuracy,
        "accuracy_first_window": first,
        "accuracy_last_window": last,
        "curve": str(curve),
        "visual": [row.get("visionr3/reward/visual/mean") for row in rows],
        "self_answered_rate": [row.get("visionr3/self_reward/answered_rate") for row in rows],
        "tool_call_rate": [row.get("visionr3/tool_call_rate") for row in rows],
        "valid_call_ratio": [row.get("visionr3/valid_call_ratio") for row in rows],
        "tool_images": [row.get("visionr3/tool_images/mean") for row in rows],
        "num_turns": [row["training/num_turns/mean"] for row in rows],
        "step_seconds": [row["timing_s/step"] for row in rows],
        "pg_loss": [row["actor/pg_loss"] for row in rows],
        "rollout_probs_diff_mean": [row.get("training/rollout_probs_diff_mean") for row in rows],
        "weights_synced": [row.get("visionr3/weight_sync/match") for row in rows],
        "policy_dir": str(policy),
        "checkpoint_dir": str(actor_dir),
        "merged_model_dir": str(merged),
        "metrics_file": str(metrics_file),
        "rollout_dir": str(out / "rollouts"),
        "train_files": str(train),
        "timings": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    total = sum(timings.values())
    print(f"demo done in {total:.0f} s: {len(rows)} GRPO steps on CPU, merged model at {merged}; summary in {out / 'summary.json'}")
    return 0


def merge_and_verify(actor_dir: Path, target: Path) -> None:
    """``visionr3 merge`` as a library (:func:`visionr3.cluster.merge.merge_checkpoint`): verl's ``model_merger``, our chat
    template, then a reload that compares every tensor with the shard in the merged dtype (verl writes bfloat16).
    Replaces the previous run's merged model; quiet, since the demo prints its own line."""
    from visionr3.cluster.merge import merge_checkpoint

    merge_checkpoint(actor_dir, target, overwrite=True, progress=False)
