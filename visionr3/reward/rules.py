"""Rule rewards as verl custom reward functions (``reward.custom_reward_function.path/name``).

``answer_match`` is the CPU demo's reward: exact match of the last ``<answer>…</answer>`` against the ground truth
(case and surrounding whitespace ignored), plus a small format term. It returns a dict, so each component is logged
as its own metric by verl, and it echoes the agent loop's per-trajectory tool metrics (verl passes the loop's
``extra_fields`` in ``extra_info``) so they appear next to the reward.
"""

from __future__ import annotations

import re
from typing import Any

from visionr3.agent.trajectory import (
    IMAGE_TOKENS,
    INVALID_TOOL_CALLS,
    NUM_IMAGES,
    TOOL_CALLS,
    TOOL_DATA_ERRORS,
    VALID_TOOL_CALLS,
)

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FORMAT_WEIGHT = 0.1
# tool_data_errors: calls that failed on the source (a data problem), counted apart from the model's invalid calls.
ECHOED_TOOL_METRICS = (TOOL_CALLS, VALID_TOOL_CALLS, INVALID_TOOL_CALLS, TOOL_DATA_ERRORS, NUM_IMAGES, IMAGE_TOKENS)


def extract_answer(text: str) -> str | None:
    """The content of the last ``<answer>…</answer>``, stripped; ``None`` if there is none."""
    matches = ANSWER.findall(text)
    return matches[-1].strip() if matches else None


def answer_match(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs) -> dict:
    """``score = accuracy + 0.1 * format``; accuracy 1 iff the last answer equals the ground truth (case-insensitive)."""
    answer = extract_answer(solution_str)
    accuracy = float(answer is not None and answer.lower() == str(ground_truth).strip().lower())
    has_format = float(answer is not None)
    result = {"score": accuracy + FORMAT_WEIGHT * has_format, "acc": accuracy, "format": has_format}
    for key in ECHOED_TOOL_METRICS:
        value = (extra_info or {}).get(key)
        if isinstance(value, (int, float)):
            result[key] = float(value)
    return result
