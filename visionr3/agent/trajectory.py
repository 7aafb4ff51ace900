"""What a trajectory records: the keys ``visionr3_agent`` writes into ``AgentLoopOutput.extra_fields``.

verl forwards every ``extra_fields`` key unchanged: to the reward function's ``extra_info``
(:mod:`visionr3.reward.score`, :mod:`visionr3.reward.rules`), to the trainer's TransferQueue ``extra_fields`` column
(:mod:`visionr3.train.trainer`: metrics and the rollout dump) and to the eval runner's ``non_tensor_batch``
(:mod:`visionr3.eval.runner`). Writers and readers use the names below, never the strings; the strings are the wire
format (rollout dumps, eval records and logged metric names carry them) and do not change.

Counters (:class:`TrajectoryStats` and the image counts the loop adds when the trajectory ends) are ints per
trajectory; :func:`aggregate_trajectory_metrics` logs them as ``visionr3/<key>/{mean,min,max}``. The rollout dump's
columns (``trainer.rollout_data_dir``) are :func:`dump_columns` plus the trainer's own :data:`DUMP_IMAGE_SIZE`,
:data:`DUMP_BATCH_IMAGES`, :data:`DUMP_REWARD_SCORE`, :data:`DUMP_ROW_INDEX` and :data:`DUMP_ADVANTAGE`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

SCHEMA_VERSION = 1
"""Version of the keys and dump columns below; bump it when one changes meaning. Not written into the rollout dump
(no dump line carries a version today, and adding a column would change the dump)."""

# ---- extra_fields keys ---------------------------------------------------------------------------------------------

TOOL_CALLS = "tool_calls"
"""Tool calls the model made (every parsed or malformed call)."""
VALID_TOOL_CALLS = "valid_tool_calls"
"""Calls that returned an image."""
INVALID_TOOL_CALLS = "invalid_tool_calls"
"""The model's fault: malformed, unknown tool, bad arguments, over the image limit."""
TOOL_DATA_ERRORS = "tool_data_errors"
"""The data's fault: the tool could not use the source (counted in neither of the two above)."""
IMAGE_LIMIT_HITS = "image_limit_hits"
"""Calls refused (or trajectories ended) at ``max_images``."""
TOOL_ERRORS = "tool_errors"
"""The error text the model was shown, per failed call (list of str)."""
CROP_BOXES = "crop_boxes"
"""Source-pixel ``[x1, y1, x2, y2]`` of each valid crop, in call order (list of lists of int)."""
TOOL_CALL_LOG = "tool_call_log"
"""One JSON string per call, in call order (a :class:`ToolCallLogEntry`)."""
NUM_IMAGES = "num_images"
"""Images in the trajectory, the prompt's included."""
TOOL_IMAGES = "tool_images"
"""Images the tools inserted (``num_images`` minus the prompt's)."""
IMAGE_TOKENS = "image_tokens"
"""``<|image_pad|>`` tokens in prompt and response."""
ASSISTANT_TURNS = "assistant_turns"
"""The decoded text of each run of trained tokens (list of str)."""
SELF_REWARD_STATUS = "self_reward_status"
"""Vision-SR1's second pass: one of :data:`SELF_REWARD_STATUSES` (absent when the pass is off)."""
SELF_ANSWER = "self_answer"
"""Vision-SR1's second pass: its decoded answer, ``None`` when it did not run."""
SELF_ANSWER_TOKENS = "self_answer_tokens"
"""Vision-SR1's second pass: tokens of its answer."""
REWARD_EXTRA_INFO = "reward_extra_info"
"""Written by verl's reward loop, not by ours: the reward function's dict (accuracy, format, ...)."""

TRAJECTORY_COUNTERS = (
    TOOL_CALLS,
    VALID_TOOL_CALLS,
    INVALID_TOOL_CALLS,
    TOOL_DATA_ERRORS,
    NUM_IMAGES,
    TOOL_IMAGES,
    IMAGE_TOKENS,
    IMAGE_LIMIT_HITS,
    SELF_ANSWER_TOKENS,
)
SELF_REWARD_STATUSES = ("answered", "no_description", "empty_description", "leaky_description", "failed")


@dataclass
class TrajectoryStats:
    """Counters for one trajectory; written into ``AgentLoopOutput.extra_fields`` when it ends (field names are the
    keys above)."""

    tool_calls: int = 0
    valid_tool_calls: int = 0
    invalid_tool_calls: int = 0  # the model's fault: malformed, unknown tool, bad arguments, over the image limit
    tool_data_errors: int = 0  # the data's fault: the tool could not use the source (counted in neither of the above)
    image_limit_hits: int = 0
    tool_errors: list[str] = field(default_factory=list)
    crop_boxes: list[list[int]] = field(default_factory=list)
    # One JSON object per call, in call order: {"name", "arguments", "valid", "error", "data_error", "box"} (JSON
    # strings, so the field stays a list of plain strings through verl's batches). Eval records and the viewer read it.
    tool_call_log: list[str] = field(default_factory=list)


class ToolCallLogEntry(TypedDict):
    """One :data:`TOOL_CALL_LOG` entry (``visionr3.agent.loop.call_log_entry``)."""

    name: str
    arguments: Any  # parsed when JSON, else the raw text
    valid: bool  # the call returned an image
    error: str | None  # the error the model was shown
    data_error: bool  # the error was the source's fault
    box: list[int] | None  # source pixels, valid crops only


# ---- metrics -------------------------------------------------------------------------------------------------------


def aggregate_trajectory_metrics(extra_fields: Sequence[Mapping[str, Any] | None], prefix: str = "visionr3/") -> dict[str, float]:
    """``{prefix}<counter>/{mean,min,max}`` over trajectories, plus the tool-call rate and the valid-call ratio.

    Trajectories that lack a counter (another agent loop in the same batch) are left out of that counter's stats.
    """
    metrics: dict[str, float] = {}
    rows = [row for row in extra_fields if isinstance(row, Mapping)]
    for key in TRAJECTORY_COUNTERS:
        values = np.array([float(row[key]) for row in rows if isinstance(row.get(key), (int, float, np.number))])
        if values.size:
            metrics[f"{prefix}{key}/mean"] = float(values.mean())
            metrics[f"{prefix}{key}/min"] = float(values.min())
            metrics[f"{prefix}{key}/max"] = float(values.max())
    rewards: dict[str, list[float]] = {}
    for row in rows:  # the reward function's dict (accuracy, format, ...), which verl keeps per trajectory
        for key, value in (row.get(REWARD_EXTRA_INFO) or {}).items():
            if isinstance(value, (int, float, np.number)) and key not in TRAJECTORY_COUNTERS:
                rewards.setdefault(key, []).append(float(value))
    for key, values in rewards.items():
        metrics[f"{prefix}reward/{key}/mean"] = float(np.mean(values))
    statuses = [row.get(SELF_REWARD_STATUS) for row in rows if row.get(SELF_REWARD_STATUS)]
    if statuses:  # Vision-SR1's second pass: how often it could run, and why not
        for status in SELF_REWARD_STATUSES:
            metrics[f"{prefix}self_reward/{status}_rate"] = float(np.mean([s == status for s in statuses]))
    calls = [float(row[TOOL_CALLS]) for row in rows if isinstance(row.get(TOOL_CALLS), (int, float, np.number))]
    if calls:
        metrics[f"{prefix}tool_call_rate"] = float(np.mean([c > 0 for c in calls]))
        valid = sum(float(row.get(VALID_TOOL_CALLS) or 0) for row in rows)
        metrics[f"{prefix}valid_call_ratio"] = valid / sum(calls) if sum(calls) else 0.0
    return metrics


# ---- the rollout dump (trainer.rollout_data_dir) -------------------------------------------------------------------

DUMP_FIELDS = (CROP_BOXES, ASSISTANT_TURNS, TOOL_CALLS, VALID_TOOL_CALLS, NUM_IMAGES, SELF_ANSWER, SELF_REWARD_STATUS)
"""``extra_fields`` keys copied into the dump as they are."""
DUMP_IMAGE = "image"
"""The saved prompt image, relative to the dump folder (``<step>.images/<i>.jpg``), or ``None``."""
DUMP_IMAGE_SIZE = "image_size"
"""``[width, height]`` of the prompt image before the display copy was made, or ``None``."""
DUMP_BATCH_IMAGES = "batch_images"
"""What verl's batch holds per image (``visionr3.train.trainer.batch_image_summary``)."""
DUMP_REWARD_SCORE = "reward_score"
"""The reward function's own score, before visionr3's shaping."""
DUMP_ROW_INDEX = "row_index"
"""The dataset row (its ``extra_info.index``)."""
DUMP_ADVANTAGE = "advantage"
"""The advantage the actor trained the trajectory with (the mean over its response tokens: GRPO's is one value on
every token), or ``None`` where the batch held none."""


def dump_columns(extra_fields: Sequence[Mapping[str, Any] | None], image_names: Sequence[str | None]) -> dict[str, list]:
    """The per-trajectory columns visionr3 adds to verl's rollout dump (``trainer.rollout_data_dir``), which holds
    only the decoded prompt/response, the ground truth and the score: every reward component of the reward
    function's dict, the loop's ``crop_boxes`` / ``assistant_turns`` / counters, the parsed ``tool_call_log``, and
    ``image`` (the saved prompt image, relative to the dump folder) — what ``visionr3 view`` needs to draw boxes."""
    rows = [row if isinstance(row, Mapping) else {} for row in extra_fields]
    columns: dict[str, list] = {DUMP_IMAGE: list(image_names)}
    reward_keys = sorted({k for row in rows for k, v in (row.get(REWARD_EXTRA_INFO) or {}).items()
                          if isinstance(v, (int, float, np.number)) and k != "score"})
    for key in reward_keys:
        columns[key] = [dump_number((row.get(REWARD_EXTRA_INFO) or {}).get(key)) for row in rows]
    for key in DUMP_FIELDS:
        if any(key in row for row in rows):
            columns[key] = [dump_value(row.get(key)) for row in rows]
    if any(TOOL_CALL_LOG in row for row in rows):
        columns[TOOL_CALL_LOG] = [[json.loads(c) for c in (row.get(TOOL_CALL_LOG) or [])] for row in rows]
    return columns


def dump_number(value: Any) -> float | None:
    """A number as the dump's JSON holds it (``None`` stays ``None``)."""
    return None if value is None else float(value)


def dump_value(value: Any) -> Any:
    """A value as the dump's JSON holds it: numpy arrays and scalars become lists and Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [dump_value(v) for v in value]
    return value


def reward_rows(extra_fields: Sequence[Mapping[str, Any] | None]) -> list[dict[str, float]]:
    """Each trajectory's reward dict (``extra_fields["reward_extra_info"]``), ``{}`` where there is none."""
    rows = []
    for row in extra_fields:
        info = row.get(REWARD_EXTRA_INFO) if isinstance(row, Mapping) else None
        rows.append(dict(info) if isinstance(info, Mapping) else {})
    return rows
