"""Each reward formula as a table of (trajectory, accuracy, params) -> (score, components), plus the formula API."""

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionr3.reward.formulas import FORMULAS, get_formula, vlm_r3_min_segment_chars, vlm_r3_unique_boxes
from visionr3.reward.grade import Grade
from visionr3.reward.types import RewardInput

CARS = ("blue car", "red car", "green car", "white car")

# VisionThink tool track: a resize call, then the answer (the tool response is not an assistant turn)
VT_CALL = (
    "<think>too small to read</think>\n"
    '<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n</tool_call>'
)
VT_ANSWER = "<think>now it reads STOP</think>\n<answer>STOP</answer>"
VT_TOOL_RESPONSE = (
    "<tool_response>\nThe resized image is shown below:\n\n</tool_response>\nPlease carefully analyze ... continue "
    "your reasoning process inside <think> and </think> and then write your final answer inside <answer> and </answer>."
)

VLM_R3 = '<think>The sign is small. {"bbox_2d": [10, 20, 30, 40]} Now it reads STOP.</think><answer>STOP</answer>'
SR1 = "<description>a red car on a road</description>\n<think>the car is red</think>\n\\boxed{red}"
LONG = "x" * 1000


def inp(response="", ground_truth="STOP", **fields):
    return RewardInput(response=response, ground_truth=ground_truth, **fields)


CASES = [
    # --- visionthink (tool track): (1 - 0.1·called)·acc + 0.5·format + 0·called ---------------------------------------
    ("visionthink", inp(turns=(VT_ANSWER,)), 1.0, None, 1.5, {"accuracy": 1, "format": 1, "tool": 0, "penalty": 0}),
    ("visionthink", inp(VT_ANSWER), 1.0, None, 1.5, {"accuracy": 1, "format": 1, "tool": 0, "penalty": 0}),
    ("visionthink", inp(turns=(VT_ANSWER,)), 0.0, None, 0.5, {"accuracy": 0, "format": 1, "tool": 0, "penalty": 0}),
    (
        "visionthink",
        inp(turns=(VT_CALL, VT_ANSWER), tool_calls=1),
        1.0,
        None,
        1.4,
        {"accuracy": 1, "format": 1, "tool": 1, "penalty": 0.1},
    ),
    (
        "visionthink",
        inp(turns=(VT_CALL, VT_ANSWER), tool_calls=1),
        0.0,
        None,
        0.5,
        {"accuracy": 0, "format": 1, "tool": 1, "penalty": 0},
    ),
    (  # a call with broken JSON still counts as a call (the loop's counter), as in the code
        "visionthink",
        inp(turns=("<think>x</think><tool_call>{oops</tool_call>", VT_ANSWER), tool_calls=1, valid_tool_calls=0),
        1.0,
        None,
        1.4,
        {"accuracy": 1, "format": 1, "tool": 1, "penalty": 0.1},
    ),
    (
        "visionthink",
        inp(turns=(VT_CALL, VT_ANSWER), tool_calls=1),
        1.0,
        {"use_tool_reward_weight": 0.5},
        1.9,
        {"accuracy": 1, "format": 1, "tool": 1, "penalty": 0.1},
    ),
    (  # paper Eq. 5 shaping pairs with no per-call discount
        "visionthink",
        inp(turns=(VT_CALL, VT_ANSWER), tool_calls=1),
        1.0,
        {"tool_call_penalty": 0.0},
        1.5,
        {"accuracy": 1, "format": 1, "tool": 1, "penalty": 0},
    ),
    ("visionthink", inp(turns=("<answer>STOP</answer>",)), 1.0, None, 1.0, {"accuracy": 1, "format": 0}),
    ("visionthink", inp(turns=(VT_CALL,), tool_calls=1), 0.0, None, 0.0, {"tool": 1, "format": 0}),
    # --- visionthink_general: acc + 0.5·format ------------------------------------------------------------------------
    ("visionthink_general", inp(VT_ANSWER), 1.0, None, 1.5, {"accuracy": 1, "format": 1}),
    ("visionthink_general", inp(VT_ANSWER), 0.0, None, 0.5, {"accuracy": 0, "format": 1}),
    ("visionthink_general", inp("<answer>STOP</answer>"), 1.0, None, 1.0, {"accuracy": 1, "format": 0}),
    # --- vlm_r3: acc + 0.5·format + region (gated on acc == 1) + length -----------------------------------------------
    ("vlm_r3", inp(VLM_R3), 1.0, None, 2.1, {"accuracy": 1, "format": 1, "region": 0.5, "length": 0.1}),
    ("vlm_r3", inp(VLM_R3), 0.0, None, 0.6, {"accuracy": 0, "format": 1, "region": 0, "length": 0.1}),
    (
        "vlm_r3",
        inp(VLM_R3),
        0.0,
        {"region_requires_correct": False},
        1.1,
        {"accuracy": 0, "format": 1, "region": 0.5, "length": 0.1},
    ),
    (  # one malformed call voids the region reward
        "vlm_r3",
        inp(VLM_R3.replace("</think>", ' {"bbox_2d": [1, 2, 3, 4],}</think>')),
        1.0,
        None,
        1.6,
        {"accuracy": 1, "format": 1, "region": 0, "length": 0.1},
    ),
    (  # a crop-free answer still earns the full length bonus (a known weakness, kept)
        "vlm_r3",
        inp("<think>the sign reads STOP clearly</think><answer>STOP</answer>"),
        1.0,
        None,
        1.6,
        {"accuracy": 1, "format": 1, "region": 0, "length": 0.1},
    ),
    (  # reasoning that ends on a call earns no length bonus
        "vlm_r3",
        inp('<think>look here {"bbox_2d": [1, 2, 3, 4]}</think><answer>STOP</answer>'),
        1.0,
        None,
        2.0,
        {"accuracy": 1, "format": 1, "region": 0.5, "length": 0},
    ),
    (
        "vlm_r3",
        inp('ab {"bbox_2d": [1, 2, 3, 4]} cdef\n<answer>STOP</answer>'),
        1.0,
        None,
        2.02,
        {"accuracy": 1, "format": 1, "region": 0.5, "length": 0.02},
    ),
    ("vlm_r3", inp("no tags\nSTOP"), 1.0, None, 1.1, {"accuracy": 1, "format": 0, "region": 0, "length": 0.1}),
    # --- vision_sr1: 0.9·acc + 0.1·format + 1.0·visual ----------------------------------------------------------------
    (
        "vision_sr1",
        inp(SR1, "red", self_answer="<think>red car</think>\\boxed{red}", self_status="answered"),
        1.0,
        None,
        2.0,
        {"accuracy": 1, "format": 1, "visual": 1},
    ),
    (
        "vision_sr1",
        inp(SR1, "red", self_answer="\\boxed{blue}", self_status="answered"),
        1.0,
        None,
        1.0,
        {"accuracy": 1, "format": 1, "visual": 0},
    ),
    (
        "vision_sr1",
        inp(SR1, "red", self_answer="<answer>red</answer>", self_status="answered"),
        0.0,
        None,
        1.1,
        {"accuracy": 0, "format": 1, "visual": 1},
    ),
    (  # the description gave the answer away: no visual reward, even though the second pass was right
        "vision_sr1",
        inp(SR1, "red", self_answer="\\boxed{red}", self_status="leaky_description"),
        1.0,
        None,
        1.0,
        {"accuracy": 1, "format": 1, "visual": 0},
    ),
    (  # no <description>: the released code sent the whole response (answer included) to the second pass
        "vision_sr1",
        inp("<think>red</think>\\boxed{red}", "red", self_answer="\\boxed{red}", self_status="no_description"),
        1.0,
        None,
        0.9,
        {"accuracy": 1, "format": 0, "visual": 0},
    ),
    ("vision_sr1", inp(SR1, "red", self_status="answered"), 1.0, None, 1.0, {"visual": 0}),
    ("vision_sr1", inp(SR1, "red", self_answer="\\boxed{red}", self_status="off"), 1.0, None, 1.0, {"visual": 0}),
    (  # the visual pass is graded with the row's options
        "vision_sr1",
        inp(SR1, "red car", options=CARS, self_answer="\\boxed{B}", self_status="answered"),
        0.0,
        None,
        1.1,
        {"visual": 1},
    ),
    # --- vision_r1: 0.9·acc + 0.1·format ------------------------------------------------------------------------------
    ("vision_r1", inp("<think>2+2</think>\\boxed{4}", "4"), 1.0, None, 1.0, {"accuracy": 1, "format": 1}),
    ("vision_r1", inp("<think>2+2</think>\\boxed{5}", "4"), 0.0, None, 0.1, {"accuracy": 0, "format": 1}),
    ("vision_r1", inp("\\boxed{4}", "4"), 1.0, None, 0.9, {"accuracy": 1, "format": 0}),
    # --- deepeyes (code): 0.8·acc + 0.2·format + 1.2·tool, format in {0, -1} ------------------------------------------
    ("deepeyes", inp(VT_ANSWER, tool_images=1), 1.0, None, 2.0, {"accuracy": 1, "format": 0, "tool": 1}),
    ("deepeyes", inp(VT_ANSWER), 1.0, None, 0.8, {"accuracy": 1, "format": 0, "tool": 0}),
    ("deepeyes", inp(VT_ANSWER, tool_images=2), 0.0, None, 0.0, {"accuracy": 0, "format": 0, "tool": 0}),
    ("deepeyes", inp(VT_ANSWER, tool_images=1), 0.3, None, 0.24, {"tool": 0}),  # tool credit needs acc > 0.5
    ("deepeyes", inp("<think>x<answer>STOP</answer>"), 1.0, None, 0.6, {"accuracy": 1, "format": -1}),
    (  # vision tokens written as text earn no tool credit: only the loop's image counter does
        "deepeyes",
        inp("<think>x</think><|vision_start|><|image_pad|><|vision_end|><answer>STOP</answer>"),
        1.0,
        None,
        0.8,
        {"tool": 0},
    ),
    (  # anti-hack: a >= 1000-char answer gets acc 0 and a format error
        "deepeyes",
        inp(f"<think>x</think><answer>{LONG}</answer>", tool_images=1),
        1.0,
        None,
        -0.2,
        {"accuracy": 0, "format": -1, "tool": 0},
    ),
    ("deepeyes", inp(f"<think>x</think><answer>{LONG[:-1]}</answer>"), 1.0, None, 0.8, {"accuracy": 1, "format": 0}),
    ("deepeyes", inp(f"<think>{LONG}</think> no answer tag"), 0.0, None, -0.2, {"format": -1}),  # code judged it all
    ("deepeyes", inp(VT_ANSWER, tool_images=1), 1.0, {"tool_weight": 0.4}, 1.2, {"tool": 1}),
    # --- deepeyes (paper): acc + format + 1[acc>0]·tool ---------------------------------------------------------------
    ("deepeyes", inp(VT_ANSWER, tool_images=1), 1.0, {"variant": "paper"}, 2.0, {"tool": 1}),
    ("deepeyes", inp(VT_ANSWER, tool_images=1), 0.3, {"variant": "paper"}, 1.3, {"tool": 1}),
    ("deepeyes", inp("<think>x<answer>STOP</answer>"), 1.0, {"variant": "paper"}, 0.0, {"format": -1}),
    # --- mini_o3: accuracy only ---------------------------------------------------------------------------------------
    ("mini_o3", inp(VT_ANSWER, tool_images=3), 1.0, None, 1.0, {"accuracy": 1}),
    ("mini_o3", inp("garbage"), 0.0, None, 0.0, {"accuracy": 0}),
    # --- visionr3 (the CPU demo): acc + 0.1·[an <answer> exists] ------------------------------------------------------
    ("exact_match_plus_format", inp("<answer>STOP</answer>"), 1.0, None, 1.1, {"accuracy": 1, "format": 1}),
    ("exact_match_plus_format", inp("STOP"), 0.0, None, 0.0, {"accuracy": 0, "format": 0}),
]


@pytest.mark.parametrize(("formula", "trajectory", "accuracy", "params", "score", "components"), CASES)
def test_formula_table(formula, trajectory, accuracy, params, score, components):
    result = get_formula(formula).combine(trajectory, accuracy, params)
    assert result.score == pytest.approx(score)
    assert list(result.components) == list(get_formula(formula).components)
    for key, value in components.items():
        assert result.components[key] == pytest.approx(value), key
    assert result.accuracy_source == "rule" and not result.excluded


PREDICTIONS = [
    ("visionthink", inp(turns=(VT_CALL, VT_ANSWER)), "STOP"),
    # the tool response spells out "<answer> and </answer>": only the assistant's turns are searched
    ("visionthink", inp(VT_CALL + VT_TOOL_RESPONSE + "<think>x</think>", turns=(VT_CALL, "<think>x</think>")), None),
    ("visionthink", inp("<think>x</think><answer>cut off"), "cut off"),
    ("visionthink_general", inp("<think>x</think>no tags"), None),
    ("vlm_r3", inp("<answer>A</answer> <answer>B</answer>"), "B"),
    ("vlm_r3", inp("reasoning\nso the answer is B\n"), "so the answer is B"),  # VLM-R3's last-line fallback
    ("vision_sr1", inp(SR1), "red"),
    ("vision_sr1", inp("<think>maybe \\boxed{blue}</think> \\boxed{red}"), "red"),
    ("vision_sr1", inp("<think>maybe \\boxed{blue}</think> red"), "blue"),  # falls back to final_answer
    ("vision_r1", inp("<think>x</think>no box"), None),
    ("deepeyes", inp("<think>x</think><answer> left </answer>"), "left"),
    ("deepeyes", inp("<think>x</think> left"), None),  # the code judged the whole response
    ("mini_o3", inp("<answer>\\boxed{C}</answer>"), "C"),
    ("mini_o3", inp("reasoning\nC"), None),
    ("exact_match_plus_format", inp("<answer>a</answer><answer> b </answer>"), "b"),
]


@pytest.mark.parametrize(("formula", "trajectory", "expected"), PREDICTIONS)
def test_formula_prediction(formula, trajectory, expected):
    assert get_formula(formula).prediction(trajectory) == expected


@pytest.mark.parametrize(
    ("formula", "trajectory", "expected"),
    [
        ("exact_match_plus_format", inp("<answer> Stop </answer>"), Grade(True, True, "exact")),
        # the demo's plain exact match
        ("exact_match_plus_format", inp("<answer>Stop.</answer>"), Grade(False, True, "exact")),
        ("visionthink", inp("<answer>Stop.</answer>"), Grade(True, True, "exact")),  # every other formula normalises
        ("exact_match_plus_format", inp("STOP"), Grade(False, True, "none")),
        ("vision_sr1", inp("<think>x</think>\\boxed{B}", "red car", options=CARS), Grade(True, True, "choice")),
    ],
)
def test_formula_grade(formula, trajectory, expected):
    assert get_formula(formula).grade(trajectory) == expected


@pytest.mark.parametrize(
    ("text", "boxes", "min_chars"),
    [
        (VLM_R3, 1, 18),
        ('{"bbox_2d": [1, 2, 3, 4]} a {"bbox_2d": [1, 2, 3, 4]} b', 1, 0),  # duplicates count once; leading call
        ('x {"bbox_2d": [1, 2, 3, 4]} y {"bbox_2d": [5, 6, 7, 8]} zz', 2, 1),
        ('{"bbox_2d": [1, 2, 3, 4}', None, 24),  # not JSON
        ('{"bbox": [1, 2, 3, 4]}', None, 22),  # no bbox_2d key
        ('{"label": "cat"} text', 0, 21),  # not a region call at all
        ("plain <think>text</think><answer>long answer</answer>", 0, 10),
        ("", 0, 0),
    ],
)
def test_vlm_r3_terms(text, boxes, min_chars):
    assert vlm_r3_unique_boxes(text) == boxes
    assert vlm_r3_min_segment_chars(text) == min_chars


# The CPU demo's reward (formula ``exact_match_plus_format``): accuracy = the last <answer>…</answer> equals the gold,
# case and surrounding whitespace ignored; format = there is one; score = accuracy + 0.1·format. (response, gold,
# accuracy, format) — the numbers the demo has always produced.
DEMO_CASES = [
    ("<answer>red</answer>", "red", 1, 1),
    ("<answer> Red </answer>", "red", 1, 1),
    ("<think>hmm</think>\n<answer>\nRED\n</answer>", "red", 1, 1),
    ("<answer>red</answer>", " RED ", 1, 1),  # the gold is stripped and case-folded too
    ("<answer>red.</answer>", "red", 0, 1),  # exact: punctuation counts
    ("<answer>blue</answer>", "red", 0, 1),
    ("<answer>blue</answer><answer>red</answer>", "red", 1, 1),  # the last answer counts
    ("<answer>red</answer><answer>blue</answer>", "red", 0, 1),
    ("<answer>re<answer>red</answer>", "red", 0, 1),  # the answer runs from the first open tag: "re<answer>red"
    ("<answer></answer>", "red", 0, 1),
    ("<answer></answer>", "", 1, 1),  # an empty gold is matched by an empty answer
    ("<answer>red</answer>", "", 0, 1),
    ("<answer>red", "red", 0, 0),  # never closed: no answer
    ("red", "red", 0, 0),  # no tags: no answer, however right
    ("no answer at all", "", 0, 0),
]


@pytest.mark.parametrize(("response", "ground_truth", "accuracy", "has_format"), DEMO_CASES)
def test_exact_match_plus_format_demo_reward(response, ground_truth, accuracy, has_format):
    formula = get_formula("exact_match_plus_format")
    trajectory = inp(response, ground_truth)
    result = formula.combine(trajectory, float(formula.grade(trajectory).correct))
    assert result.components == {"accuracy": accuracy, "format": has_format}
    assert result.score == pytest.approx(accuracy + 0.1 * has_format)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(["<answer>", "</answer>", "red", "Red", " ", "\n", "blue", "."]), max_size=10).map(
        "".join
    ),
    st.sampled_from(["red", "Red ", "blue", ""]),
)
def test_exact_match_plus_format_demo_reward_property(response, ground_truth):
    """Any response: format says whether an <answer> is closed, accuracy needs it, score = accuracy + 0.1·format."""
    formula = get_formula("exact_match_plus_format")
    trajectory = inp(response, ground_truth)
    result = formula.combine(trajectory, float(formula.grade(trajectory).correct))
    accuracy, has_format = result.components["accuracy"], result.components["format"]
    closed = "<answer>" in response and "</answer>" in response[response.index("<answer>"):]
    assert has_format == float(closed) and accuracy in (0.0, 1.0) and accuracy <= has_format
    assert result.score == pytest.approx(accuracy + 0.1 * has_format)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(FORMULAS)),
    st.lists(
        st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "}", '{"bbox_2d": [1, 2, 3, 4]}']),
        max_size=12,
    ).map("".join),
    st.sampled_from([0.0, 0.5, 1.0]),
    st.integers(0, 3),
)
def test_every_formula_reports_every_component(name, response, accuracy, tools):
    formula = get_formula(name)
    trajectory = inp(response, turns=(response,), tool_calls=tools, tool_images=tools)
    result = formula.combine(trajectory, accuracy)
    assert list(result.components) == list(formula.components)
    assert all(math.isfinite(value) for value in result.as_verl_dict().values())


def test_formula_names():
    assert set(FORMULAS) == {
        "exact_match_plus_format",
        "visionthink",
        "visionthink_general",
        "vlm_r3",
        "vision_sr1",
        "vision_r1",
        "deepeyes",
        "mini_o3",
    }


def test_unknown_formula_lists_the_known_ones():
    with pytest.raises(KeyError, match="visionthink_general"):
        get_formula("visionthinc")


def test_unknown_param_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match=r"visionr3\.reward\.params.*format_wieght"):
        get_formula("visionthink").combine(inp(VT_ANSWER), 1.0, {"format_wieght": 1.0})


def test_unknown_deepeyes_variant_is_an_error():
    with pytest.raises(ValueError, match="variant"):
        get_formula("deepeyes").combine(inp(VT_ANSWER), 1.0, {"variant": "blog"})


def test_defaults_are_read_only():
    with pytest.raises(TypeError):
        get_formula("visionthink").defaults["format_weight"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    "text",
    ["<answer>" * 10_000, "{" * 20_000, '{"bbox_2d": [' * 10_000, "<think></think><answer></answer>" * 1_000 + "x"],
    ids=["answers", "braces", "bbox-calls", "tag-pairs"],
)
def test_degenerate_samples_score_in_linear_time(text):
    start = time.perf_counter()
    for formula in FORMULAS.values():
        trajectory = inp(text, self_answer=text, self_status="answered", tool_images=1)
        formula.combine(trajectory, float(formula.grade(trajectory).correct))
    assert time.perf_counter() - start < 3.0
