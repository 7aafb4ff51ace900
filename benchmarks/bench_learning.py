"""Does GRPO improve a policy on CPU, and does zooming pay? Two arms of verl's real trainer, side by side.

    .venv/bin/python benchmarks/bench_learning.py [--out outputs/bench_learning] [--steps 20] [--seeds 2]
        [--arms tool notool] [--prompts 4] [--n 8] [--eval-rows 64]

The task is the synthetic square (:mod:`visionr3.demo.synthetic`): a 32-pixel square in the named quarter of a
448-pixel canvas, seen at the CPU preset's 224 pixels, where the tiny model cannot tell its colour; the crop tool's
quarter shows it at 52 pixels. Each arm starts from the tiny Qwen2.5-VL after the same phased supervised warm-up
(:data:`visionr3.demo.run.LEARNING_WARMUP`, then 100 steps of :data:`visionr3.demo.run.HESITANT_PHASE`'s size) in
its own format, then runs ``--steps`` GRPO steps of ``visionr3 train --config-name cpu_demo`` (HF rollout, the
``exact_match_plus_format`` reward) on the same rows with the same seed:

- **tool**: ``visionr3_agent`` with the crop/zoom tool. The warm-up demonstrates a call on the named quarter, and its
  last phase answers 3 demonstrations in 5 from the full view with the tool offered: the start policy calls first on
  about 2 samples in 5 and greedily answers without zooming. GRPO has to find out that zooming pays.
- **notool**: the same loop with no tool at all (the warm-up answers from the full view).

Held-out evaluation: ``visionr3 eval --backend hf`` (greedy) of each arm's start policy (the warm-up) and end policy
(the last checkpoint, merged by ``visionr3 merge``'s code) on ``--eval-rows`` rows no run trains on.

Prints per-window tables (reward, accuracy, tool-call rate, valid-call ratio, turns, step seconds) per arm and seed,
the held-out table, writes ``curve.json`` and ``curve.png`` (accuracy per step, both arms, seed spread shaded) into
``--out``, and ends with ``tool_acc_start=<a> tool_acc_end=<b> notool_acc_end=<c> seeds=<k>`` (means over seeds).
Runs go one at a time (each trainer holds 5-8 GB; two at once reached 20.9 GB and Ray's memory monitor killed both);
benchmarks/README.md has how long an arm takes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NO_TOOL = "actor_rollout_ref.rollout.multi_turn.tool_config_path=null"
TRAIN_SEED, HELDOUT_SEED = 100, 9_000
"""Row seeds: seed ``k`` trains on rows drawn with ``TRAIN_SEED + k``; every run is evaluated on the same held-out
rows, drawn with ``HELDOUT_SEED`` (the warm-ups draw their demonstrations from their own generator, seeded ``k``)."""


@dataclass(frozen=True)
class Arm:
    warmup_task: str  # visionr3.demo.warmup.TASKS
    last_phase: dict  # appended to LEARNING_WARMUP: the same number of warm-up steps in both arms
    overrides: tuple[str, ...] = ()  # trainer and eval overrides


def arms() -> dict[str, Arm]:
    from visionr3.demo.run import HESITANT_PHASE

    same_steps = {key: value for key, value in HESITANT_PHASE.items() if key != "direct_share"}
    return {"tool": Arm("zoom", HESITANT_PHASE), "notool": Arm("direct", same_steps, (NO_TOOL,))}
METRICS = {  # table column -> verl / visionr3 metric
    "reward": "critic/score/mean",
    "accuracy": "visionr3/reward/accuracy/mean",
    "tool calls": "visionr3/tool_call_rate",
    "valid calls": "visionr3/valid_call_ratio",
    "turns": "training/num_turns/mean",
    "step s": "timing_s/step",
}


@dataclass
class RunResult:
    arm: str
    seed: int
    start_accuracy: float
    end_accuracy: float
    steps: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def series(self, column: str) -> list[float | None]:
        if column == "valid calls":  # a step without calls has no valid-call ratio (visionr3 logs 0 for it)
            return [row.get(METRICS[column]) if row.get(METRICS["tool calls"]) else None for row in self.steps]
        return [row.get(METRICS[column]) for row in self.steps]


def evaluate(model: Path, heldout: Path, out: Path, arm: Arm, max_turns: int) -> float:
    """Greedy held-out accuracy of ``model`` through ``visionr3 eval`` (the zoom recipe's loop and reward at CPU
    scale; the no-tool arm without its tool)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(out.stem + ".*"):  # a rerun into the same --out: eval writes a .config folder too
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    command = [
        sys.executable, "-m", "visionr3.cli", "eval", "--model", str(model), "--data", str(heldout), "--out", str(out),
        "--recipe", "zoom", "--config-name", "cpu", "--backend", "hf", "--max-turns", str(max_turns),
        "--no-progress", "--no-images", *arm.overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_learning: eval of {model} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    rows = json.loads(out.with_name(out.stem + ".summary.json").read_text())["rows"]
    (overall,) = [row for row in rows if row["category"] == "overall"]  # one benchmark: the synthetic rows
    return float(overall["accuracy"])


def run_arm(name: str, seed: int, args: argparse.Namespace, train: Path, heldout: Path) -> RunResult:
    from visionr3.cluster.merge import merge_checkpoint
    from visionr3.demo.run import LEARNING_WARMUP, grpo_command, phased_warmup, read_step_metrics
    from visionr3.testing.tiny_model import tiny_model_dir

    arm, directory = arms()[name], args.out / f"{name}_seed{seed}"
    started = time.perf_counter()
    phases = (*LEARNING_WARMUP, arm.last_phase)
    policy, _ = phased_warmup(tiny_model_dir("qwen2_5_vl"), phases, seed=seed, task=arm.warmup_task, log_every=0)
    start_accuracy = evaluate(policy, heldout, directory / "eval_start.jsonl", arm, args.max_turns)
    print(f"[{name} seed {seed}] warm-up policy {policy}: held-out accuracy {start_accuracy:.3f}", flush=True)

    metrics = directory / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    overrides = [
        *arm.overrides,
        f"data.train_batch_size={args.prompts}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.prompts}",
        f"actor_rollout_ref.actor.optim.optimizer={args.optimizer}",  # a torch.optim class (verl's build_optimizer)
        f"actor_rollout_ref.actor.optim.lr={args.lr}",
        f"actor_rollout_ref.actor.optim.lr_warmup_steps={args.lr_warmup_steps}",
        f"actor_rollout_ref.rollout.temperature={args.temperature}",
        f"actor_rollout_ref.rollout.multi_turn.max_assistant_turns={args.max_turns}",
        f"data.seed={seed}",
        # the tiny model's micro-batches of 8 trajectories fit easily and cut the number of forward passes by 4
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    ]
    command = grpo_command(policy, train, heldout, directory, steps=args.steps, n=args.n, overrides=overrides)
    log = directory / "train.log"
    print(f"[{name} seed {seed}] GRPO: {args.steps} steps of {args.prompts} prompts x {args.n}; log: {log}", flush=True)
    with open(log, "w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=directory,
                              env={**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics)}).returncode
    if code != 0:
        raise SystemExit(f"bench_learning: the trainer exited with {code}; see {log}")
    steps = read_step_metrics(metrics)

    merged = directory / "merged_hf"
    merge_checkpoint(directory / "checkpoints" / f"global_step_{args.steps}" / "actor", merged, overwrite=True, progress=False)
    end_accuracy = evaluate(merged, heldout, directory / "eval_end.jsonl", arm, args.max_turns)
    print(f"[{name} seed {seed}] end policy: held-out accuracy {end_accuracy:.3f}", flush=True)
    return RunResult(name, seed, start_accuracy, end_accuracy, steps, time.perf_counter() - started)


def window_table(result: RunResult, window: int) -> str:
    from visionr3.demo.curve import window_mean

    columns = list(METRICS)
    lines = [f"{result.arm} seed {result.seed}", f"{'steps':<9}" + "".join(f"{c:>12}" for c in columns)]
    for first in range(0, len(result.steps), window):
        cells = []
        for column in columns:
            value = window_mean(result.series(column)[first : first + window], window)
            cells.append(f"{value:>12.2f}" if value == value else f"{'-':>12}")
        last = min(first + window, len(result.steps))
        lines.append(f"{f'{first + 1}-{last}':<9}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_learning"))
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps per run (default: 12)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per arm, seeds 0..k-1 (default: 1)")
    parser.add_argument("--arms", nargs="+", choices=["notool", "tool"], default=["tool", "notool"])
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step (default: 2)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (default: 8)")
    parser.add_argument("--lr", type=float, default=3e-4, help="actor lr (default: 3e-4; at 1e-3 one step garbled the tiny policy's calls)")
    parser.add_argument("--optimizer", default="AdamW",
                        help="the actor's torch.optim class (default: AdamW; SGD steps along the gradient itself, where "
                        "AdamW moves every weight by about lr: NOTE.md, \"The gradient-sign check\")")
    parser.add_argument("--lr-warmup-steps", type=int, default=0, help="steps of verl's linear lr warm-up (default: 0)")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="sampling temperature (default: the CPU preset's 0.7; the start policy's top-quarter calls are right in ~1 of 3 samples)")
    parser.add_argument("--max-turns", type=int, default=3, help="assistant turns per trajectory (default: 3)")
    parser.add_argument("--eval-rows", type=int, default=32, help="held-out rows (default: 32)")
    parser.add_argument("--window", type=int, default=None, help="steps per table row (default: a quarter of the run)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from visionr3.demo.curve import default_window, plot_accuracy, window_mean
    from visionr3.demo.synthetic import write_parquet

    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    heldout = write_parquet(args.out / "data" / "heldout.parquet", args.eval_rows, seed=HELDOUT_SEED)
    results: list[RunResult] = []
    for seed in range(args.seeds):
        train = write_parquet(args.out / "data" / f"train_seed{seed}.parquet", args.steps * args.prompts, seed=TRAIN_SEED + seed)
        for name in args.arms:
            results.append(run_arm(name, seed, args, train, heldout))

    window = args.window or default_window(args.steps)
    print()
    for result in results:
        print(window_table(result, window), end="\n\n")
    print(f"{'held-out accuracy':<20}{'seed':>6}{'start':>8}{'end':>8}{'first window':>14}{'last window':>13}{'minutes':>9}")
    for r in results:
        accuracy = r.series("accuracy")
        print(f"{r.arm:<20}{r.seed:>6}{r.start_accuracy:>8.3f}{r.end_accuracy:>8.3f}"
              f"{window_mean(accuracy, window):>14.3f}{window_mean(accuracy, window, last=True):>13.3f}{r.seconds / 60:>9.1f}")

    by_arm = {name: [r for r in results if r.arm == name] for name in args.arms}
    curve = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "arms": {name: [{"seed": r.seed, "start_accuracy": r.start_accuracy, "end_accuracy": r.end_accuracy,
                         "seconds": r.seconds, **{c: r.series(c) for c in METRICS}} for r in runs]
                 for name, runs in by_arm.items()},
    }
    (args.out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n", encoding="utf-8")
    png = plot_accuracy({name: [r.series("accuracy") for r in runs] for name, runs in by_arm.items()}, args.out / "curve.png",
                        title=f"bench_learning: training accuracy per GRPO step ({args.prompts} prompts x {args.n})")
    print(f"\ncurve: {png}, {args.out / 'curve.json'}")

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else float("nan")

    tool, notool = by_arm.get("tool", []), by_arm.get("notool", [])
    print(f"tool_acc_start={mean([r.start_accuracy for r in tool]):.3f} tool_acc_end={mean([r.end_accuracy for r in tool]):.3f} "
          f"notool_acc_end={mean([r.end_accuracy for r in notool]):.3f} seeds={args.seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
