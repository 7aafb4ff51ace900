"""What one CPU GRPO step costs, and what batching the HF replica's requests saves.

    .venv/bin/python benchmarks/bench_cpu_step.py                  # generation only, 2-4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_cpu_step.py --step           # + the demo's GRPO step, today vs now (~12 min)
    .venv/bin/python benchmarks/bench_cpu_step.py --step --arm fused=actor_rollout_ref.model.use_fused_kernels=true

Part 1 (generation, in this process): one :class:`~visionr3.rollout.hf.server.HFServer` on the tiny Qwen2.5-VL serves
the demo's shape of work — 2 prompts x 4 samples arriving together, each prompt with its own 224 x 224 image (64
image tokens) — once one request per ``generate`` call (``engine_kwargs.hf.max_batch_size=1``, the replica before
batching) and once batched (the default). A ragged case adds different prompt lengths, images and token budgets, so
rows are left-padded. Greedy rows must be token-identical between the two; the table prints the largest log-prob
difference (padding and batch shapes change float summation order, nothing else). The random model never stops on
its own, so every row runs to its budget (``ignore_eos``): the batch never waits on one long row.

Part 2 (``--step``): the CPU demo's GRPO run (``visionr3 demo``'s model, data, cached warm-up and trainer command;
3 steps of 2 prompts x 4 rollouts) once per arm, one after the other: ``today`` (the replica before batching: one request
per ``generate`` call; verl's 2 s replay-buffer poll) and ``now`` (the defaults), plus any ``--arm
NAME=override[,override...]``. It prints verl's own stage timers per arm (``timing_s/gen``, ``old_log_prob``,
``update_actor``, ...; the mean of steps 2..N, step 1 carries one-off costs) and the ratio to ``today``. Each trainer
run holds ~5 GB; run one trainer at a time on a shared machine.

Timings are printed, never asserted; the script exits 0 when it has printed its tables (1 if greedy rows differ or a
trainer run fails).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Arms of part 2: trainer overrides on `visionr3 train --config-name cpu_demo` (hydra syntax).
TODAY = ["+actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size=1"]
TODAY_ENV = {"VISIONR3_REPLAY_BUFFER_POLL_S": "2.0"}  # verl's own poll interval (visionr3.platform.verl_fixes)
STAGES = ("gen", "reward", "old_log_prob", "adv", "update_actor", "update_weights", "step")


# ---------------------------------------------------------------------------------------------------------------------
# part 1: generation
# ---------------------------------------------------------------------------------------------------------------------


def _server():
    from verl.utils.config import omega_conf_to_dataclass

    from visionr3.rollout.hf.server import HFServer
    from visionr3.testing.agent_harness import compose_verl_config
    from visionr3.testing.tiny_model import tiny_model_dir

    model_dir = tiny_model_dir("qwen2_5_vl")
    config = compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dir}",
            "actor_rollout_ref.rollout.name=hf",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "data.max_prompt_length=512",
            "data.max_response_length=384",
        ]
    )
    return HFServer(omega_conf_to_dataclass(config.actor_rollout_ref.rollout), str(model_dir))


def _requests(processor, ragged: bool, tokens: int) -> list[tuple[list[int], list, int]]:
    """``(prompt_ids, images, max_tokens)`` of 2 prompts x 4 samples (ragged: every row its own)."""
    from PIL import Image

    rows = []
    for i in range(8):
        prompt = i // 4 if not ragged else i
        size = (224, 224) if not ragged else (224 - 28 * (i % 3), 224 + 28 * (i % 2))
        image = Image.new("RGB", size, (40 + 25 * prompt, 200 - 20 * prompt, 90))
        question = "What colour is the small square?" + (" Answer in one word." * (i % 4) if ragged else "")
        content = [{"type": "image"}, {"type": "text", "text": question}]
        rendered = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        ids = processor(text=[rendered], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        rows.append((ids, [image], tokens - (7 * i if ragged else 0)))
    return rows


async def _serve_all(server, rows, params: dict) -> list:
    return await asyncio.gather(
        *[
            server.generate(ids, {**params, "max_tokens": budget}, f"bench-{i}", image_data=images)
            for i, (ids, images, budget) in enumerate(rows)
        ]
    )


def bench_generation(tokens: int, repeats: int) -> bool:
    import torch

    server = _server()
    print(f"HF replica, tiny Qwen2.5-VL, {torch.get_num_threads()} torch threads; 8 concurrent requests, "
          f"{tokens} new tokens each (ragged: {tokens - 49}..{tokens}); median of {repeats}")
    print(f"{'case':<18}{'mode':<9}{'one-at-a-time s':>16}{'batched s':>11}{'ratio':>7}{'calls':>7}"
          f"{'tokens equal':>14}{'max |dlogp|':>13}")
    identical = True
    for ragged in (False, True):
        rows = _requests(server.processor, ragged, tokens)
        for mode, params in (("greedy", {"temperature": 0.0}), ("t=0.7", {"temperature": 0.7})):
            params = {**params, "logprobs": True, "ignore_eos": True}
            seconds, outputs, calls = {}, {}, {}
            for batch in (1, 8):
                server.max_batch_size = batch
                asyncio.run(_serve_all(server, rows, params))  # warm-up
                runs = []
                for _ in range(repeats):
                    before = server.generate_calls
                    start = time.perf_counter()
                    outputs[batch] = asyncio.run(_serve_all(server, rows, params))
                    runs.append(time.perf_counter() - start)
                    calls[batch] = server.generate_calls - before
                seconds[batch] = statistics.median(runs)
            equal, diff = "-", "-"
            if mode == "greedy":
                same = all(a.token_ids == b.token_ids for a, b in zip(outputs[1], outputs[8]))
                identical &= same
                equal = "yes" if same else "NO"
                diff = max(
                    abs(x - y) for a, b in zip(outputs[1], outputs[8]) for x, y in zip(a.log_probs, b.log_probs)
                )
                diff = f"{diff:.1e}"
            case = "ragged" if ragged else "2 prompts x 4"
            print(f"{case:<18}{mode:<9}{seconds[1]:>16.2f}{seconds[8]:>11.2f}{seconds[1] / seconds[8]:>7.2f}"
                  f"{f'{calls[1]}/{calls[8]}':>7}{equal:>14}{diff:>13}")
    return identical


# ---------------------------------------------------------------------------------------------------------------------
# part 2: the GRPO step
# ---------------------------------------------------------------------------------------------------------------------


def _grpo_inputs(work: Path):
    from visionr3.demo.run import DEMO_ROLLOUTS, warmup_checkpoint
    from visionr3.demo.synthetic import write_parquet
    from visionr3.testing.tiny_model import tiny_model_dir

    size, _, warmup = DEMO_ROLLOUTS["hf"]
    policy, _ = warmup_checkpoint(tiny_model_dir("qwen2_5_vl", size=size), task="zoom", **warmup)
    train = write_parquet(work / "data" / "train.parquet", 32, seed=0, task="zoom")
    val = write_parquet(work / "data" / "val.parquet", 4, seed=1, task="zoom")
    return policy, train, val


def run_arm(name: str, overrides: list[str], work: Path, steps: int, env: dict | None = None) -> list[dict] | None:
    from visionr3.demo.run import grpo_command, read_step_metrics

    policy, train, val = _grpo_inputs(work)
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    command = grpo_command(policy, train, val, out, steps=steps, n=4, overrides=["trainer.save_freq=-1", *overrides])
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics), "HF_HUB_OFFLINE": "1", **(env or {})}
    print(f"  {name}: {steps} steps ({' '.join(overrides) or 'defaults'}); log {out / 'train.log'}", flush=True)
    start = time.perf_counter()
    with open(out / "train.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out).returncode
    print(f"  {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
    return read_step_metrics(metrics) if code == 0 else None


def bench_step(arms: dict[str, list[str]], steps: int, work: Path) -> bool:
    results = {
        name: run_arm(name, overrides, work, steps, TODAY_ENV if name == "today" else None)
        for name, overrides in arms.items()
    }
    names = [name for name in arms if results[name]]
    if not names:
        return False
    print(f"\nverl's stage timers (s), mean of steps 2..{steps} (step 1 in brackets)")
    print(f"{'stage':<16}" + "".join(f"{name:>20}" for name in names) + "".join(f"{'x ' + n:>10}" for n in names[1:]))

    def mean(rows, key):
        later = [row[key] for row in rows[1:] if key in row] or [row[key] for row in rows if key in row]
        return statistics.fmean(later) if later else float("nan")

    for stage in STAGES:
        key = f"timing_s/{stage}"
        cells = [f"{mean(results[n], key):.2f} ({results[n][0].get(key, float('nan')):.1f})" for n in names]
        base = mean(results[names[0]], key)
        ratios = [base / mean(results[n], key) if mean(results[n], key) else float("nan") for n in names[1:]]
        print(f"{stage:<16}" + "".join(f"{c:>20}" for c in cells) + "".join(f"{r:>10.2f}" for r in ratios))
    for key in ("response_length/mean", "num_turns/mean", "training/rollout_probs_diff_mean"):
        print(f"{key:<16}" + "".join(f"{statistics.fmean(r.get(key, float('nan')) for r in results[n]):>20.4f}"
                                     for n in names))
    return len(names) == len(arms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request in part 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-generation", action="store_true", help="part 2 only")
    parser.add_argument("--step", action="store_true", help="also run the demo's GRPO steps, per arm (part 2)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE...]",
                        help="an extra arm of part 2: trainer overrides on the defaults")
    parser.add_argument("--only", nargs="*", help="run only these arms of part 2 (today, now, or --arm names)")
    parser.add_argument("--work-dir", default=None, help="where part 2 writes (default: a temporary directory)")
    args = parser.parse_args(argv)

    ok = True
    if not args.skip_generation:
        ok &= bench_generation(args.tokens, args.repeats)
    if args.step:
        arms = {"today": TODAY, "now": []}
        for spec in args.arm:
            name, _, overrides = spec.partition("=")
            arms[name] = [o for o in overrides.split(",") if o]
        if args.only:
            arms = {name: arms[name] for name in args.only}
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_cpu_step_"))
        ok &= bench_step(arms, args.steps, work)
    print(f"bench_cpu_step: {'done' if ok else 'FAILED (see above)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
