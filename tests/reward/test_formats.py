"""Per-recipe format checks (papers.md §1.3, §2.3, §3.2, §4.3), one table per recipe."""

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionr3.reward import formats
from visionr3.reward.formats import (
    deepeyes_format,
    vision_r1_format,
    vision_sr1_format,
    visionthink_format,
    visionthink_general_format,
    vlm_r3_format,
)

DIRECT = "<think>the sign is readable</think>\n<answer>STOP</answer>"
CALL = (
    '<think>too small</think>\n<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n</tool_call>'
)


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([DIRECT], 1.0),
        (["\n" + DIRECT + "\n"], 1.0),  # turns are stripped (the code forgot on the final turn)
        ([CALL, DIRECT], 1.0),
        ([CALL, CALL, DIRECT], 1.0),
        ([], 0.0),
        (["<answer>STOP</answer>"], 0.0),  # no think
        (["<think>a</think><think>b</think><answer>STOP</answer>"], 0.0),  # two think pairs
        (["<think>a</think><answer>x</answer><answer>y</answer>"], 0.0),  # two answers
        (["<think>a</think><answer>x</answer> trailing"], 0.0),  # must end with </answer>
        ([DIRECT.replace("<answer>", "<tool_call>x</tool_call><answer>")], 0.0),  # direct answer with a call
        ([CALL], 0.0),  # the final turn must answer
        ([DIRECT, DIRECT], 0.0),  # a non-final turn must be a tool step
        ([CALL + "<answer>x</answer>", DIRECT], 0.0),  # a tool step must not answer
        ([CALL + "\n" + CALL.split("</think>")[1], DIRECT], 0.0),  # two calls in one step
        (["<tool_call>{}</tool_call>", DIRECT], 0.0),  # a tool step must think first
    ],
)
def test_visionthink_format(turns, expected):
    assert visionthink_format(turns) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DIRECT, 1.0),
        ("  <think>\nx\n</think>\n\n<answer>\\boxed{B}</answer>\n", 1.0),
        ("<think>x</think>", 0.0),
        ("<answer>x</answer>", 0.0),
        ("preamble <think>x</think><answer>y</answer>", 0.0),
        ("<think>x</think><answer>y</answer> trailing", 0.0),
    ],
)
def test_visionthink_general_format(text, expected):
    assert visionthink_general_format(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>C</answer>", 1.0),
        ('look at the sign {"bbox_2d": [1, 2, 3, 4]}\n<answer>C</answer>\n', 1.0),  # no <think> needed
        ("<answer>C</answer>", 1.0),
        ("<answer>C</answer> and more", 0.0),
        ("<think>x</think> C", 0.0),
        ("<answer>C", 0.0),
    ],
)
def test_vlm_r3_format(text, expected):
    assert vlm_r3_format(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<description>a red car</description> <think>so red</think> \\boxed{red}", 1.0),
        ("<description>\na red car\n</description>\n<think>\nso red\n</think>\n\\boxed{red}\n", 1.0),
        ("< description >a</ description ><think >b</think> \\boxed{c}", 1.0),  # the pre-clean's spacing
        ("<think>so red</think> \\boxed{red}", 0.0),  # no description
        ("<description>a</description> \\boxed{red}", 0.0),  # no think
        ("<description>a</description><think>b</think> red", 0.0),  # no box
        ("<description>a</description><think>b</think><answer>red</answer>", 0.0),
        ("<caption>a</caption><cot>b</cot><answer>red</answer>", 0.0),  # the cold-start tags (#14) are not it
        ("<description>a</description><think>b</think>\\boxed{red} more text", 0.0),
    ],
)
def test_vision_sr1_format(text, expected):
    assert vision_sr1_format(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think>\\boxed{4}", 1.0),
        ("\n<think>\nx\n</think>\n\n\\boxed{4}\n", 1.0),
        ("<think>x</think>4", 0.0),
        ("\\boxed{4}", 0.0),
        ("<description>d</description><think>x</think>\\boxed{4}", 0.0),
    ],
)
def test_vision_r1_format(text, expected):
    assert vision_r1_format(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>A</answer>", 0.0),
        ("<think>x</think><tool_call>{}</tool_call><think>y</think><answer>A</answer>", 0.0),
        ("no tags at all", 0.0),  # a missing answer is not a format error in DeepEyes' code
        ("<think>x<answer>A</answer>", -1.0),  # unbalanced think
        ("<think>x</think><answer>A", -1.0),  # unbalanced answer after the last </think>
        ("<answer>draft</answer><think>x</think><answer>A</answer></answer>", -1.0),
        ("<answer>draft<think>x</think><answer>A</answer>", 0.0),  # only the text after </think> counts
        ("<think>x</think><|vision_start|><|image_pad|><answer>A</answer>", -1.0),  # imitated vision tokens
        ("<think>x</think><|vision_start|><|image_pad|><|vision_end|><answer>A</answer>", 0.0),
    ],
)
def test_deepeyes_format(text, expected):
    assert deepeyes_format(text) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "\\boxed{", "}"]
        )
        | st.text(max_size=4),
        max_size=20,
    ).map("".join)
)
def test_format_checks_are_total(text):
    for check in (visionthink_general_format, vlm_r3_format, vision_sr1_format, vision_r1_format):
        assert check(text) in (0.0, 1.0)
    assert visionthink_format([text, text]) in (0.0, 1.0)
    assert deepeyes_format(text) in (0.0, -1.0)


SOUP = st.lists(
    st.sampled_from(
        ["<think>", "</think>", "<answer>", "</answer>", "<description>", "</description>", "\\boxed{", "}", " ", "\n"]
    )
    | st.sampled_from(["< think >", "</ answer>", "/", "x"]),
    max_size=14,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(SOUP)
def test_linear_time_rewrites_match_the_released_regexes(text):
    """The prechecks and the linear pre-clean only make the checks fast; results equal the released code's regexes."""
    cleaned = re.sub(r"\s*(<|>|/)\s*", r"\1", text)
    assert formats._sr1_clean(text) == cleaned
    sr1 = r"^\s*<description>.*?</description>\s*<think>.*?</think>\s*\\boxed\{.*?\}\s*$"
    assert vision_sr1_format(text) == float(re.fullmatch(sr1, cleaned, re.DOTALL) is not None)
    r1 = r"<think>.*?</think>\s*\\boxed\{.*?\}\s*$"
    assert vision_r1_format(text) == float(re.fullmatch(r1, cleaned, re.DOTALL) is not None)
    general = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"
    assert visionthink_general_format(text) == float(re.fullmatch(general, text, re.DOTALL) is not None)
    assert vlm_r3_format(text) == float(re.fullmatch(r".*?<answer>.*?</answer>\s*", text, re.DOTALL) is not None)


DEGENERATE = [
    "<answer>" * 10_000,
    "<think></think><answer></answer>" * 1_000 + "x",
    "answer" + " " * 20_000 + "x",
    " \n" * 20_000 + "x",
    "{" * 20_000,
    '{"bbox_2d": [' * 10_000,
    "\\boxed{" * 10_000,
]


@pytest.mark.parametrize("text", DEGENERATE, ids=lambda text: repr(text[:14]))
def test_degenerate_samples_are_checked_in_linear_time(text):
    """A policy stuck in a loop must not stall the reward step (these took seconds to minutes with the raw regexes)."""
    start = time.perf_counter()
    for check in (visionthink_general_format, vlm_r3_format, vision_sr1_format, vision_r1_format, deepeyes_format):
        check(text)
    visionthink_format([text, text])
    assert time.perf_counter() - start < 2.0
