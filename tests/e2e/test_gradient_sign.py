"""The gradient-sign check: GRPO through verl's real trainer moves the policy the way the reward says.

One batch of two prompt groups, repeated for K steps (``GRADIENT_SIGN`` in tests/e2e/conftest.py, which runs it): the
demo's policy, the crop tool, ``visionr3_agent``, the HF rollout, verl's GRPO; the reward (tests/e2e/grad_sign_reward.py)
pays row 0 +1 for one colour and row 1 -1 for another, every other answer 0. So, in one run, a reward that prefers an
answer and the negated reward of another: the preferred answer's probability must rise and the avoided one's fall.
Both are read from the policy itself (the start checkpoint and the trainer's last FSDP shard), at the answer of every
trajectory the engine sampled that :class:`visionr3.testing.answer_probe.AnswerProbe` can re-render exactly (one
valid zoom call, then an answer) — the contexts the reward reached, not a fixed one: measured on the right crop only,
the check failed on a fresh clone while the trained contexts moved the right way (NOTE.md, "The gradient-sign check").

What it catches, each shown once by breaking it on purpose (NOTE.md, "The gradient-sign check"):

- a flipped advantage sign: the preferred answer falls and the avoided one rises;
- a response mask that trains on tool/observation tokens: the engine returns no log-probs for tokens it did not
  generate, so verl's rollout-vs-actor probability gap on the trained tokens jumps (``rollout_probs_diff_mean``);
- a rollout engine that keeps stale weights: visionr3's weight-sync check (the replica's digests against the
  actor's, after every sync) reads it, and the engine's probabilities drift from the actor's.
"""

import json
import math
import random

import pytest
import torch


@pytest.fixture(scope="module")
def run(e2e_runs):
    run = e2e_runs["gradient_sign"]
    run.check()
    return run


@pytest.fixture(scope="module")
def spec(run):
    """conftest's GRADIENT_SIGN, and the starting policy, as the run was given them."""
    return json.loads((run.directory / "spec.json").read_text())


@pytest.fixture(scope="module")
def steps(run):
    rows = [json.loads(line) for line in (run.directory / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["data"] for row in rows if "actor/pg_loss" in row["data"]]


def probed(trajectories):
    """The dumped trajectories the probe renders exactly: one valid zoom call, then a turn with an answer."""
    return [
        row for row in trajectories
        if row["tool_calls"] == row["valid_tool_calls"] == 1 and len(row["assistant_turns"]) == 2
        and "<answer>" in row["assistant_turns"][-1]
    ]


@pytest.fixture(scope="module")
def probabilities(run, spec, rollout_dump, tmp_path_factory):
    """``{row: [(before, after), ...]}``: the colour distribution of the starting policy and of the last FSDP shard
    (fp32) at the answer of each of the row's probed trajectories."""
    from transformers import AutoModelForImageTextToText

    from visionr3.demo.synthetic import make_sample
    from visionr3.processing import load_processor
    from visionr3.testing.answer_probe import AnswerProbe

    start = spec["policy"]
    actor = run.directory / "checkpoints" / f"global_step_{spec['steps']}" / "actor"
    state = torch.load(actor / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    state = {name: tensor.to_local() if hasattr(tensor, "to_local") else tensor for name, tensor in state.items()}
    model = AutoModelForImageTextToText.from_pretrained(start, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head: tied
    after_dir = tmp_path_factory.mktemp("after")
    model.save_pretrained(after_dir)
    load_processor(start).save_pretrained(after_dir)

    samples = [make_sample(random.Random(seed)) for seed in spec["sample_seeds"]]  # the run's rows
    before, after = AnswerProbe(start), AnswerProbe(after_dir)
    result: dict[int, list] = {index: [] for index in range(len(samples))}
    for row in probed(rollout_dump(run.directory / "rollouts")):
        sample = samples[row["row_index"]]
        turns, calls = row["assistant_turns"], [call["arguments"] for call in row["tool_call_log"]]
        result[row["row_index"]].append((before.trajectory(sample, turns, calls), after.trajectory(sample, turns, calls)))
    return result


def test_the_run_sampled_both_rewarded_answers(run, spec, rollout_dump):
    """The check has a signal only if the engine sampled the preferred and the avoided answer somewhere in the run,
    on trajectories the probe reads."""
    trajectories = rollout_dump(run.directory / "rollouts")
    assert len(trajectories) == spec["steps"] * spec["n"] * len(spec["sample_seeds"])
    scores = [row["score"] for row in probed(trajectories)]
    assert 1.0 in scores and -1.0 in scores, scores


def mean_log_change(pairs, colour: str) -> float:
    """How far ``colour``'s probability moved, as the mean over contexts of log(after / before)."""
    return sum(math.log(after[colour] / before[colour]) for before, after in pairs) / len(pairs)


def test_the_preferred_answer_rises_and_the_avoided_one_falls(probabilities, spec):
    preferred, avoided = probabilities[0], probabilities[1]
    assert len(preferred) >= 4 and len(avoided) >= 4, {row: len(pairs) for row, pairs in probabilities.items()}
    rise = mean_log_change(preferred, spec["prefer"])
    fall = mean_log_change(avoided, spec["avoid"])
    # the margins: see NOTE.md, "The gradient-sign check" (measured, and with the advantage's sign flipped)
    assert rise > 0.1, (rise, preferred)
    assert fall < -0.1, (fall, avoided)


def test_the_engine_sampled_with_the_weights_being_trained(steps, spec):
    """A stale engine, or a mask that trains tokens the engine never generated, shows up here: after every update the
    replica held the actor's weights, and the engine's probabilities of the trained tokens match the actor's."""
    assert len(steps) == spec["steps"]
    assert [row["visionr3/weight_sync/match"] for row in steps] == [1.0] * len(steps)
    gaps = [row["training/rollout_probs_diff_mean"] for row in steps]
    assert max(gaps) < 0.05, gaps  # measured 0.003-0.006
