"""Group-level shaping and advantages on constructed groups, against hand-computed values (visionr3.reward.shaping),
and the trainer's glue that feeds it reward dicts (visionr3.train.trainer)."""

import math

import numpy as np
import pytest
import torch

from visionr3.reward.shaping import (
    ApplyRatioConfig,
    apply_ratio_penalties,
    decoupled_advantages,
    direct_answer_ratio,
    grpo_advantages,
    zero_variance_groups,
)
from visionr3.agent.trajectory import reward_rows
from visionr3.reward.shaping import custom_advantages, shape_scores

PAPER = ApplyRatioConfig(enable=True, variant="paper", theta=0.2, penalty=0.1)
CODE = ApplyRatioConfig(enable=True, variant="code", theta=0.2, penalty=0.1)

# One prompt, 8 rollouts: (accuracy, called the resize tool)
FEW_DIRECT = [(1, True), (1, True), (1, True), (1, True), (1, True), (1, False), (0, False), (0, True)]  # r = 1/6
MANY_DIRECT = [(1, False), (1, False), (1, True), (0, True), (0, False), (1, True), (0, False), (0, True)]  # r = 2/4
NONE_CORRECT = [(0, False), (0, True), (0, True), (0, False)]


def _split(group):
    return [a for a, _ in group], [c for _, c in group]


@pytest.mark.parametrize(
    "group, config, expected",
    [
        # paper, r = 1/6 < 0.2: every direct answer (correct or not) pays 0.1, tool answers pay nothing
        (FEW_DIRECT, PAPER, [0, 0, 0, 0, 0, 0.1, 0.1, 0]),
        # paper, r = 0.5 >= 0.2: every tool answer pays 0.1
        (MANY_DIRECT, PAPER, [0, 0, 0.1, 0.1, 0, 0.1, 0, 0.1]),
        # paper, nothing correct: r undefined, no penalty
        (NONE_CORRECT, PAPER, [0, 0, 0, 0]),
        # code, 0 < r = 1/6 < 0.2: only the correct direct answer pays 0.1
        (FEW_DIRECT, CODE, [0, 0, 0, 0, 0, 0.1, 0, 0]),
        # code, r >= 0.2: nothing changes (direct 1.0 keeps beating tool 0.9)
        (MANY_DIRECT, CODE, [0] * 8),
        # code, r = 0: nothing (the code's 0 < r condition)
        (NONE_CORRECT, CODE, [0] * 4),
    ],
)
def test_apply_ratio_penalties(group, config, expected):
    accuracy, called = _split(group)
    penalties, _ = apply_ratio_penalties(["u"] * len(group), accuracy, called, config)
    np.testing.assert_allclose(penalties, expected)


def test_apply_ratio_is_per_group_and_reports_ratios():
    acc1, call1 = _split(FEW_DIRECT)
    acc2, call2 = _split(MANY_DIRECT)
    uids = ["a"] * 8 + ["b"] * 8
    penalties, ratios = apply_ratio_penalties(uids, acc1 + acc2, call1 + call2, PAPER)
    np.testing.assert_allclose(penalties[:8], [0, 0, 0, 0, 0, 0.1, 0.1, 0])
    np.testing.assert_allclose(penalties[8:], [0, 0, 0.1, 0.1, 0, 0.1, 0, 0.1])
    np.testing.assert_allclose(ratios[:8], 1 / 6)
    np.testing.assert_allclose(ratios[8:], 0.5)
    assert direct_answer_ratio(np.array([False, False]), np.array([True, False])) is None


def test_code_variant_reproduces_the_released_tie():
    """VisionThink tool track: direct-correct 1.0, tool-correct 0.9 (+0.5 format each). With r < θ the code sets
    direct-correct to 0.9, so direct and tool answers tie — the behaviour papers.md §1.4 documents."""
    accuracy, called = _split(FEW_DIRECT)
    scores = np.array([(1.0 - 0.1 * c) * a + 0.5 for a, c in zip(accuracy, called)])
    penalties, _ = apply_ratio_penalties(["u"] * 8, accuracy, called, CODE)
    shaped = scores - penalties
    assert shaped[5] == pytest.approx(shaped[0]) == pytest.approx(1.4)


def test_disabled_and_invalid_rows_are_untouched():
    accuracy, called = _split(FEW_DIRECT)
    off, _ = apply_ratio_penalties(["u"] * 8, accuracy, called, ApplyRatioConfig())
    assert not off.any()
    valid = [True] * 5 + [False] + [True] * 2  # the only correct direct answer is excluded: r = 0 -> direct pays
    penalties, ratios = apply_ratio_penalties(["u"] * 8, accuracy, called, PAPER, valid)
    np.testing.assert_allclose(penalties, [0, 0, 0, 0, 0, 0, 0.1, 0])
    assert ratios[0] == 0.0
    with pytest.raises(ValueError, match="variant"):
        ApplyRatioConfig.from_dict({"enable": True, "variant": "both"})
    with pytest.raises(ValueError, match="unknown keys"):
        ApplyRatioConfig.from_dict({"thetaa": 0.3})


def test_grpo_advantages_match_verl_without_exclusions():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rng = np.random.default_rng(0)
    scores = rng.choice([0.0, 0.1, 1.0, 1.5], size=12)
    uids = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 3 + ["d"])
    mask = torch.ones(12, 5)
    rewards = torch.zeros(12, 5)
    rewards[:, -1] = torch.tensor(scores, dtype=torch.float32)
    expected, _ = compute_grpo_outcome_advantage(rewards, mask, uids)
    ours = grpo_advantages(list(uids), scores)
    np.testing.assert_allclose(ours, expected[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_excluded_rows_get_zero_and_leave_the_statistics():
    scores = [1.0, 0.0, 1.0, 0.0]
    valid = [True, True, True, False]  # the 4th judge call failed
    adv = grpo_advantages(["u"] * 4, scores, valid)
    kept = np.array([1.0, 0.0, 1.0])
    expected = (kept - kept.mean()) / (kept.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(adv[:3], expected)
    assert adv[3] == 0.0
    # a group left with one valid row has nothing to compare against
    assert not grpo_advantages(["u"] * 3, [1.0, 0.0, 0.0], [True, False, False]).any()
    # unnormalised variant: just centred
    np.testing.assert_allclose(grpo_advantages(["u"] * 2, [1.0, 0.0], norm_by_std=False), [0.5, -0.5])


def test_decoupled_advantages_are_the_sum_of_per_term_advantages():
    uids = ["u"] * 4
    answer = [1.0, 1.0, 0.0, 0.0]
    visual = [1.0, 0.0, 1.0, 0.0]
    adv = decoupled_advantages(uids, {"answer": answer, "visual": visual})
    a = (np.array(answer) - 0.5) / (np.std(answer, ddof=1) + 1e-6)
    v = (np.array(visual) - 0.5) / (np.std(visual, ddof=1) + 1e-6)
    np.testing.assert_allclose(adv, a + v)
    # summed rewards (the released code) rank rollout 2 and 3 equal; decoupled too here, but scales differ:
    summed = grpo_advantages(uids, np.add(answer, visual))
    assert not np.allclose(adv, summed)
    with pytest.raises(ValueError):
        decoupled_advantages(uids, {})


def test_zero_variance_groups():
    uids = ["a", "a", "b", "b", "c"]
    assert zero_variance_groups(uids, [1.0, 1.0, 0.0, 1.0, 0.5]) == {"a"}  # c has one rollout: not a group
    assert zero_variance_groups(["a", "a"], [0.5, 0.5 + 1e-5]) == {"a"}  # VisionThink's std < 1e-4


def test_trainer_glue_reads_reward_dicts():
    extra = [{"reward_extra_info": {"accuracy": 1.0, "tool_calls": 0.0, "visual": 1.0}}, None, {"other": 1}]
    assert reward_rows(extra) == [{"accuracy": 1.0, "tool_calls": 0.0, "visual": 1.0}, {}, {}]

    accuracy, called = _split(FEW_DIRECT)
    rewards = [{"accuracy": float(a), "tool_calls": float(c)} for a, c in zip(accuracy, called)]
    scores = np.array([(1.0 - 0.1 * c) * a + 0.5 for a, c in zip(accuracy, called)])
    valid = np.ones(8, dtype=bool)
    shaped, metrics = shape_scores(["u"] * 8, scores, rewards, valid, {"apply_ratio": {"enable": True, "variant": "paper"}})
    np.testing.assert_allclose(scores - shaped, [0, 0, 0, 0, 0, 0.1, 0.1, 0])
    assert metrics["visionr3/shaping/penalised_rate"] == pytest.approx(0.25)
    assert metrics["visionr3/shaping/direct_answer_ratio/mean"] == pytest.approx(1 / 6)
    same, none = shape_scores(["u"] * 8, scores, rewards, valid, {})
    assert same is scores and none == {}

    # Vision-SR1 v2: score = 0.9 acc + 0.1 format + 1.0 visual, visual decoupled from the rest
    rewards = [{"visual": v} for v in (1.0, 0.0, 1.0, 0.0)]
    scores = np.array([2.0, 1.0, 1.0, 0.0])
    adv = custom_advantages(["u"] * 4, scores, rewards, np.ones(4, dtype=bool), {"visual": 1.0})
    rest = np.array([1.0, 1.0, 0.0, 0.0])
    expected = decoupled_advantages(["u"] * 4, {"visual": [1.0, 0.0, 1.0, 0.0], "rest": rest})
    np.testing.assert_allclose(adv, expected)
    assert math.isclose(float(adv.sum()), 0.0, abs_tol=1e-9)
