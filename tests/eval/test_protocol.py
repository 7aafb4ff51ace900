"""The evaluation protocol: fixed-seed option shuffling (deterministic across processes), re-prompting, validation."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from visionr3.data.prompts import STYLES, mc_prompt
from visionr3.eval.protocol import EvalProtocol, option_order, shuffle_row

OPTIONS = ["red", "green", "blue", "yellow"]


def mc_info(**overrides):
    info = {
        "benchmark": "vstar", "source_id": "q7", "question_stem": "What colour is the cup?", "options": list(OPTIONS),
        "answer": "C", "answer_text": "blue", "prompt_style": "zoom", "category": "direct_attributes",
    }
    info.update(overrides)
    return info


def test_option_order_is_a_pure_function_of_seed_benchmark_and_id():
    first = option_order(4, seed=0, benchmark="vstar", sample_id="q7")
    assert sorted(first) == [0, 1, 2, 3]
    assert option_order(4, seed=0, benchmark="vstar", sample_id="q7") == first
    # another interpreter (another PYTHONHASHSEED) gives the same order: no salted hash() anywhere
    code = "from visionr3.eval.protocol import option_order; print(option_order(4, seed=0, benchmark='vstar', sample_id='q7'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.strip()
    assert other == str(first)


def test_orders_differ_across_questions_and_seeds_and_spread_the_gold_letter():
    orders = {tuple(option_order(4, seed=0, benchmark="vstar", sample_id=f"q{i}")) for i in range(200)}
    assert len(orders) > 12  # not a constant permutation
    assert option_order(4, seed=1, benchmark="vstar", sample_id="q7") != option_order(4, seed=0, benchmark="vstar", sample_id="q7") or \
        option_order(4, seed=2, benchmark="vstar", sample_id="q7") != option_order(4, seed=0, benchmark="vstar", sample_id="q7")
    # where does source option 0 (V*'s gold in DeepEyes' eval) land? every letter, roughly evenly
    positions = Counter(option_order(4, seed=0, benchmark="vstar", sample_id=f"q{i}").index(0) for i in range(400))
    assert set(positions) == {0, 1, 2, 3}
    assert min(positions.values()) > 60


def test_shuffle_row_reprompts_with_the_shuffled_options_and_keeps_the_gold_text():
    prompt = [{"role": "system", "content": "be brief"}, *STYLES["zoom"].messages(mc_prompt("What colour is the cup?", OPTIONS), 1)]
    shown = shuffle_row(prompt, mc_info(), seed=0, sample_id="q7")
    order = option_order(4, seed=0, benchmark="vstar", sample_id="q7")
    assert shown.order == order
    assert shown.options == [OPTIONS[i] for i in order]
    assert shown.options["ABCD".index(shown.answer)] == "blue" == shown.answer_text
    user = [m for m in shown.prompt if m["role"] == "user"][0]["content"]
    assert user.startswith("<image>") and user.count("<image>") == 1
    for letter, option in zip("ABCD", shown.options):
        assert f"{letter}. {option}" in user
    assert shown.prompt[0] == {"role": "system", "content": "be brief"}  # the row's system message survives
    unshuffled = shuffle_row(prompt, mc_info(), seed=0, sample_id="q7", shuffle=False)
    assert unshuffled.options == OPTIONS and unshuffled.answer == "C"


def test_shuffle_row_uses_the_requested_prompt_style():
    shown = shuffle_row([{"role": "user", "content": "<image>x"}], mc_info(prompt_style="vlm_r3"), seed=3, sample_id="q1")
    assert STYLES["vlm_r3"].messages(mc_prompt("What colour is the cup?", shown.options), 1) == shown.prompt


@pytest.mark.parametrize("missing", ["options", "answer", "question_stem", "prompt_style"])
def test_shuffle_row_names_a_missing_field(missing):
    info = mc_info()
    del info[missing]
    with pytest.raises(ValueError, match=f"extra_info.{missing}"):
        shuffle_row([{"role": "user", "content": "<image>x"}], info, seed=0, sample_id="q1")


def test_protocol_validation_and_differences():
    with pytest.raises(ValueError, match="identical greedy"):
        EvalProtocol(samples=4)
    with pytest.raises(ValueError, match="scoring"):
        EvalProtocol(scoring="vibes")
    sampled = EvalProtocol(samples=4, temperature=1.0)
    assert not sampled.greedy and EvalProtocol().greedy
    diff = EvalProtocol(max_turns=3).differences(EvalProtocol(max_turns=5).as_dict())
    assert diff == {"max_turns": (3, 5)}
