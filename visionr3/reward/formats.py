"""Per-formula format checks — each a pure function of the model's text returning a float, as the papers' code did.

Each check reproduces one released reward function (papers.md §1.3, §2.3, §3.2, §4.3); the weights are applied in
:mod:`visionr3.reward.formulas`, so every function here returns the unweighted value (1.0/0.0, or DeepEyes'
0.0/−1.0). They are deliberately separate rather than one configurable regex: the small differences between them
(``\\s*`` here, a tag count there) are exactly what a reproduction has to get right.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# --- VisionThink (verl/utils/reward_score/general_qa_tool.py, general_qa_gpt.py) --------------------------------

_VT_DIRECT = re.compile(r"^<think>.*</think>.*<answer>.*</answer>$", re.DOTALL)
_VT_TOOL_STEP = re.compile(r"^<think>.*</think>.*<tool_call>.*</tool_call>$", re.DOTALL)
_VT_GENERAL = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


def _visionthink_direct_answer(turn: str) -> bool:
    """``<think>…</think>…<answer>…</answer>``, one of each tag, no ``<tool_call>``."""
    return (  # counts first: with one of each tag the greedy pattern cannot backtrack badly
        turn.count("<think>") == 1
        and turn.count("</think>") == 1
        and turn.count("<answer>") == 1
        and turn.count("</answer>") == 1
        and "<tool_call>" not in turn
        and "</tool_call>" not in turn
        and _VT_DIRECT.match(turn) is not None
    )


def _visionthink_tool_step(turn: str) -> bool:
    """``<think>…</think>…<tool_call>…</tool_call>``, one think pair, one call, no ``<answer>``.

    The released code tests the call count with ``and`` (``count('<tool_call>') != 1 and count('</tool_call>') != 1``),
    so two calls in a turn passed; its rollout rejects them, and so does this check.
    """
    return (
        turn.count("<think>") == 1
        and turn.count("</think>") == 1
        and turn.count("<tool_call>") == 1
        and turn.count("</tool_call>") == 1
        and "<answer>" not in turn
        and "</answer>" not in turn
        and _VT_TOOL_STEP.match(turn) is not None
    )


def visionthink_format(turns: Sequence[str]) -> float:
    """VisionThink's tool track: every non-final turn a tool step, the final turn a direct answer. 1.0 or 0.0.

    Turns are the assistant's own segments (no tool responses), each stripped — the released code forgot to strip
    the final turn of a multi-turn trajectory, which only made a trailing newline a format error.
    """
    turns = [turn.strip() for turn in turns]
    if not turns:
        return 0.0
    steps_ok = all(_visionthink_tool_step(turn) for turn in turns[:-1])
    return float(steps_ok and _visionthink_direct_answer(turns[-1]))


def _framed(text: str, start: str, end: str) -> bool:
    """A necessary condition for the fullmatch patterns below, checked first: with it they run in linear time, without
    it lazy ``.*?`` chains backtrack quadratically (or worse) on a degenerate sample full of tags."""
    stripped = text.strip()
    return stripped.startswith(start) and stripped.endswith(end)


def visionthink_general_format(text: str) -> float:
    """VisionThink's general (no-tool) track: ``\\s*<think>.*?</think>\\s*<answer>.*?</answer>\\s*``, whole text."""
    return float(_framed(text, "<think>", "</answer>") and _VT_GENERAL.fullmatch(text) is not None)


# --- VLM-R3 (src/r1-v/src/open_r1/rgrpo.py::format_reward) -------------------------------------------------------

_VLM_R3 = re.compile(r".*?<answer>.*?</answer>\s*", re.DOTALL)


def vlm_r3_format(text: str) -> float:
    """VLM-R3: the text ends with an ``<answer>…</answer>`` (``<think>`` is not required). 1.0 or 0.0 — the paper's
    0.5 is the formula's ``format_weight``."""
    return float(_framed(text, "", "</answer>") and _VLM_R3.fullmatch(text) is not None)


# --- Vision-SR1 / Vision-R1 (train_examples/reward_function/see_think_selfReward.py, cot_val.py) -----------------

_WHITESPACE_RUN = re.compile(r"\s+")
_SR1_DELIMITERS = frozenset("<>/")
_SR1 = re.compile(r"^\s*<description>.*?</description>\s*<think>.*?</think>\s*\\boxed\{.*?\}\s*$", re.DOTALL)
_R1 = re.compile(r"\s*<think>.*?</think>\s*\\boxed\{.*?\}\s*", re.DOTALL)


def _sr1_clean(text: str) -> str:
    """Vision-SR1's pre-clean: whitespace around ``<``, ``>`` and ``/`` removed, so ``< think >``, ``</ think>`` and
    ``<think>\\n`` all read as plain tags (the ``<think>`` vs ``<think>\\n`` mismatch of papers.md §3.4, issue #14)."""
    # Same result as re.sub(r"\s*(<|>|/)\s*", r"\1", text) — a whitespace run touching <, > or / goes — in linear
    # time: that regex is quadratic on long whitespace runs.
    def keep_or_drop(run: re.Match) -> str:
        before, after = text[run.start() - 1 : run.start()], text[run.end() : run.end() + 1]
        return "" if before in _SR1_DELIMITERS or after in _SR1_DELIMITERS else run.group()

    return _WHITESPACE_RUN.sub(keep_or_drop, text)


def vision_sr1_format(text: str) -> float:
    """Vision-SR1: ``<description>…</description> <think>…</think> \\boxed{…}`` and nothing else. 1.0 or 0.0."""
    cleaned = _sr1_clean(text)
    return float(_framed(cleaned, "<description>", "}") and _SR1.fullmatch(cleaned) is not None)


def vision_r1_format(text: str) -> float:
    """Vision-R1 baseline (Vision-SR1 repo, ``cot_val.py``): ``<think>…</think> \\boxed{…}`` and nothing else."""
    cleaned = _sr1_clean(text)
    return float(_framed(cleaned, "<think>", "}") and _R1.fullmatch(cleaned) is not None)


# --- DeepEyes (verl/utils/reward_score/vl_agent.py::compute_score) ------------------------------------------------

VISION_OPEN = "<|vision_start|><|image_pad|>"
VISION_CLOSE = "<|image_pad|><|vision_end|>"


def deepeyes_format(text: str) -> float:
    """DeepEyes: −1.0 if any pair is unbalanced, else 0.0.

    Pairs: ``<think>``/``</think>``; the textual vision markers ``<|vision_start|><|image_pad|>`` /
    ``<|image_pad|><|vision_end|>`` (the response is decoded with special tokens skipped, so only markers the model
    wrote *as text* remain — counting them is how the check catches a policy imitating image tokens); and
    ``<answer>``/``</answer>`` after the last ``</think>``. The ≥1000-character answer guard needs the extracted
    answer, so it lives in the formula.
    """
    unbalanced = (
        text.count("<think>") != text.count("</think>")
        or text.count(VISION_OPEN) != text.count(VISION_CLOSE)
        or _answer_tags_unbalanced(text.split("</think>")[-1])
    )
    return -1.0 if unbalanced else 0.0


def _answer_tags_unbalanced(text: str) -> bool:
    return text.count("<answer>") != text.count("</answer>")
