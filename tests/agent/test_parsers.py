"""Tool-call parsers: every malformed call becomes an error call; nothing is silently dropped."""

import json

import pytest

from visionr3.agent.parsers import MALFORMED_CALL, parse_bbox_json, parse_hermes


def _error_of(call):
    assert call.name == MALFORMED_CALL
    return json.loads(call.arguments)["error"]


def test_hermes_calls_in_order():
    text = (
        'I will zoom.\n<tool_call>\n{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n</tool_call>'
        '<tool_call>{"name": "resize_image", "arguments": "{\\"action\\": \\"resize\\"}"}</tool_call>'
    )
    content, calls = parse_hermes(text)
    assert content == "I will zoom.\n"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("crop", {"bbox_2d": [1, 2, 3, 4]}),
        ("resize_image", {"action": "resize"}),  # double-encoded arguments are accepted
    ]


@pytest.mark.parametrize(
    "block,reason",
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ('<tool_call>["crop"]</tool_call>', "must be a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', "no \"name\""),
        ('<tool_call>{"name": "crop", "arguments": [1, 2]}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "crop", "arguments": "not json"}</tool_call>', "not a JSON object"),
        ('<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2', "not closed"),
    ],
)
def test_hermes_malformed_blocks_become_error_calls(block, reason):
    _, calls = parse_hermes("thinking " + block)
    assert len(calls) == 1
    assert reason in _error_of(calls[0])


def test_hermes_no_call_is_a_final_answer():
    assert parse_hermes("<answer>red</answer><|im_end|>") == ("<answer>red</answer><|im_end|>", [])


def test_bbox_json_takes_the_last_box():
    _, calls = parse_bbox_json('first {"bbox_2d": [1, 2, 3, 4]} then {"bbox_2d": [10, 20, 30, 40]}', "crop")
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("crop", {"bbox_2d": [10, 20, 30, 40]})]


@pytest.mark.parametrize(
    "text",
    ['look {"bbox_2d": [1, 2, 3', 'look {"bbox_2d": oops}', 'bbox_2d somewhere but no object'],
)
def test_bbox_json_broken_box_is_an_error_call(text):
    _, calls = parse_bbox_json(text, "crop")
    assert len(calls) == 1 and "bbox_2d" in _error_of(calls[0])


def test_bbox_json_answer_ends_the_episode():
    assert parse_bbox_json('{"bbox_2d": [1, 2, 3, 4]} <answer>C</answer>', "crop")[1] == []
    assert parse_bbox_json("<answer>C</answer>", "crop")[1] == []
