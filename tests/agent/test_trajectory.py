"""What a trajectory records (visionr3/agent/trajectory.py): the key strings are a wire format (rollout dumps, eval
records, metric names), the counters the loop writes are the names the readers use, and the metric and dump helpers
read them."""

import dataclasses
import json

import numpy as np

from visionr3.agent import trajectory as t


def test_key_strings_are_the_wire_format():
    assert (t.TOOL_CALLS, t.VALID_TOOL_CALLS, t.INVALID_TOOL_CALLS, t.TOOL_DATA_ERRORS, t.IMAGE_LIMIT_HITS) == (
        "tool_calls", "valid_tool_calls", "invalid_tool_calls", "tool_data_errors", "image_limit_hits")
    assert (t.TOOL_ERRORS, t.CROP_BOXES, t.TOOL_CALL_LOG, t.NUM_IMAGES, t.TOOL_IMAGES, t.IMAGE_TOKENS) == (
        "tool_errors", "crop_boxes", "tool_call_log", "num_images", "tool_images", "image_tokens")
    assert (t.ASSISTANT_TURNS, t.SELF_REWARD_STATUS, t.SELF_ANSWER, t.SELF_ANSWER_TOKENS, t.REWARD_EXTRA_INFO) == (
        "assistant_turns", "self_reward_status", "self_answer", "self_answer_tokens", "reward_extra_info")


def test_stats_fields_are_the_named_keys():
    for f in dataclasses.fields(t.TrajectoryStats):
        assert getattr(t, f.name.upper()) == f.name


def test_metrics_and_dump_columns_read_the_keys():
    log = json.dumps({"name": "zoom", "arguments": {}, "valid": True, "error": None, "data_error": False, "box": [0, 0, 4, 4]})
    rows = [
        {**dataclasses.asdict(t.TrajectoryStats(tool_calls=2, valid_tool_calls=1, tool_call_log=[log])),
         t.NUM_IMAGES: np.int64(2), t.REWARD_EXTRA_INFO: {"score": 1.0, "accuracy": 1.0}},
        {t.TOOL_CALLS: 0, t.VALID_TOOL_CALLS: 0},
        None,
    ]
    metrics = t.aggregate_trajectory_metrics(rows)
    assert metrics["visionr3/tool_calls/mean"] == 1.0 and metrics["visionr3/tool_call_rate"] == 0.5
    assert metrics["visionr3/valid_call_ratio"] == 0.5 and metrics["visionr3/reward/accuracy/mean"] == 1.0
    columns = t.dump_columns(rows, ["0.images/0.jpg", None, None])
    assert columns[t.DUMP_IMAGE] == ["0.images/0.jpg", None, None] and columns["accuracy"] == [1.0, None, None]
    assert columns[t.NUM_IMAGES] == [2, None, None] and type(columns[t.NUM_IMAGES][0]) is int
    assert columns[t.TOOL_CALL_LOG][0][0]["box"] == [0, 0, 4, 4] and columns[t.TOOL_CALL_LOG][1] == []
