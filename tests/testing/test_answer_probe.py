"""The answer probe renders a sampled trajectory exactly as the chat template renders the same chat."""

import random

import pytest

from visionr3.demo.synthetic import make_sample, quarter_box
from visionr3.testing.answer_probe import ANSWER_PREFIX, AnswerProbe, call_text
from visionr3.testing.tiny_model import tiny_model_dir


@pytest.fixture(scope="module")
def probe():
    return AnswerProbe(tiny_model_dir("qwen2_5_vl"))


@pytest.fixture(scope="module")
def sample():
    return make_sample(random.Random(3))


def test_a_sampled_call_written_as_text_reads_like_the_templates_own_tool_call(probe, sample):
    """The gradient-sign check probes the engine's turns as raw text; the demonstration renders a structured
    ``tool_calls`` message. The same call both ways gives the same context, so the same probabilities."""
    _, seen = probe._shown(sample)
    call = {"bbox_2d": quarter_box(sample.quarter, seen)}
    expected = probe.demonstration(sample)
    got = probe.trajectory(sample, [call_text(probe.tool.name, call), ANSWER_PREFIX], [call])
    assert got == pytest.approx(expected, abs=1e-6)
    assert sum(got.values()) == pytest.approx(1.0)


def test_text_before_the_answer_is_part_of_the_context(probe, sample):
    _, seen = probe._shown(sample)
    call = {"bbox_2d": quarter_box(sample.quarter, seen)}
    plain = probe.trajectory(sample, [call_text(probe.tool.name, call), "<answer>"], [call])
    thought = probe.trajectory(sample, [call_text(probe.tool.name, call), "It is clear now. <answer>"], [call])
    assert plain != pytest.approx(thought, abs=1e-6)


def test_the_quarter_average_is_the_mean_of_the_four_calls(probe, sample):
    from visionr3.demo.synthetic import QUARTERS

    _, seen = probe._shown(sample)
    each = []
    for quarter in QUARTERS:
        call = {"bbox_2d": quarter_box(quarter, seen)}
        each.append(probe.trajectory(sample, [call_text(probe.tool.name, call), ANSWER_PREFIX], [call]))
    mean = probe.quarters(sample)
    assert mean == pytest.approx({colour: sum(p[colour] for p in each) / 4 for colour in mean}, abs=1e-9)


def test_a_trajectory_it_cannot_render_exactly_is_refused(probe, sample):
    call = {"bbox_2d": [10, 10, 5, 5]}  # x2 < x1: the tool rejects it
    with pytest.raises(ValueError, match="not valid"):
        probe.trajectory(sample, [call_text(probe.tool.name, call), ANSWER_PREFIX], [call])
    with pytest.raises(ValueError, match="one call per turn"):
        probe.trajectory(sample, ["<answer>"], [{"bbox_2d": [0, 0, 10, 10]}])
    with pytest.raises(ValueError, match="one call per turn"):
        probe.trajectory(sample, ["no answer here"], [])
