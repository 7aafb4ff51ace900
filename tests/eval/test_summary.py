"""Summary arithmetic on hand-built records: Avg@k, std over passes, pass@k, MMVP pairs, errors, macro average."""

from __future__ import annotations

import json

import pytest

from visionr3.eval.records import SampleRecord, ToolCall, read_records, RecordWriter
from visionr3.eval.summary import render_table, summarize, summarize_group, write_summary


def rec(benchmark, sid, sample, correct, category="", tools=0, valid=0, turns=1, error=None, pair=None):
    calls = [ToolCall(name="image_zoom_in_tool", valid=i < valid) for i in range(tools)]
    return SampleRecord(
        key=f"{benchmark}/{sid}#{sample}", benchmark=benchmark, sample_id=sid, sample=sample, category=category,
        correct=correct, tool_calls=calls, num_turns=turns, error=error, extra={} if pair is None else {"pair_id": pair},
    )


def test_avg_at_k_weighs_questions_equally_and_std_is_over_passes():
    # q1: 2/2 right, q2: 1/2 right, q3: 0/2 -> Avg@2 = (1 + .5 + 0) / 3 = .5; passes: pass0 2/3, pass1 1/3
    records = [rec("b", "q1", 0, True), rec("b", "q1", 1, True), rec("b", "q2", 0, True), rec("b", "q2", 1, False),
               rec("b", "q3", 0, False), rec("b", "q3", 1, False)]
    row = summarize_group("b", "overall", records)
    assert row.questions == 3 and row.samples == 6
    assert row.accuracy == pytest.approx(0.5)
    assert row.std_k == pytest.approx(1 / 6)  # pstdev of (2/3, 1/3)
    assert row.pass_at_k == pytest.approx(2 / 3)


def test_greedy_rows_have_no_pass_at_k_and_errors_count_as_wrong():
    records = [rec("b", "q1", 0, True), rec("b", "q2", 0, True, error="backend died"), rec("b", "q3", 0, False)]
    row = summarize_group("b", "overall", records)
    assert row.accuracy == pytest.approx(1 / 3) and row.errors == 1 and row.pass_at_k is None and row.std_k == 0


def test_tool_rates_and_turns():
    records = [rec("b", "q1", 0, True, tools=2, valid=1, turns=3), rec("b", "q2", 0, False, turns=1)]
    row = summarize_group("b", "overall", records)
    assert row.tool_rate == pytest.approx(0.5) and row.valid_tool_rate == pytest.approx(0.5) and row.turns == pytest.approx(2)
    assert summarize_group("b", "overall", [rec("b", "q", 0, True)]).valid_tool_rate is None


def test_mmvp_pairs_need_both_questions_right():
    records = [rec("mmvp", "1", 0, True, pair=0), rec("mmvp", "2", 0, True, pair=0),
               rec("mmvp", "3", 0, True, pair=1), rec("mmvp", "4", 0, False, pair=1)]
    assert summarize_group("mmvp", "overall", records).pairs == pytest.approx(0.5)


def test_rows_per_category_then_overall_then_macro_all():
    records = [rec("vstar", "a", 0, True, "direct_attributes"), rec("vstar", "b", 0, False, "direct_attributes"),
               rec("vstar", "c", 0, True, "relative_position"), rec("cvbench", "x", 0, False)]
    rows = summarize(records)
    assert [(r.benchmark, r.category) for r in rows] == [
        ("cvbench", "overall"), ("vstar", "direct_attributes"), ("vstar", "relative_position"), ("vstar", "overall"),
        ("ALL", "macro")]
    assert rows[3].accuracy == pytest.approx(2 / 3)
    assert rows[-1].accuracy == pytest.approx((0 + 2 / 3) / 2)  # macro over benchmarks, not 2/4
    table = render_table(rows)
    assert "| vstar | overall | 3 | 3 | 66.7 |" in table


def test_write_summary_and_records_round_trip(tmp_path):
    out = tmp_path / "results.jsonl"
    records = [rec("vstar", "a", 0, True, "direct_attributes", tools=1, valid=1)]
    with RecordWriter(out) as writer:
        writer.write_all(records)
    back = read_records(out)
    assert back == records and back[0].tool_calls[0].valid
    json_path, md_path = write_summary(back, out, {"recipe": "zoom", "shuffle_seed": 0})
    assert json_path.name == "results.summary.json" and md_path.name == "results.summary.md"
    data = json.loads(json_path.read_text())
    assert data["protocol"]["recipe"] == "zoom" and data["rows"][0]["accuracy"] == 1.0
    assert "- shuffle_seed: 0" in md_path.read_text()


def test_a_torn_last_line_is_dropped_and_cut_before_appending(tmp_path):
    out = tmp_path / "r.jsonl"
    with RecordWriter(out) as writer:
        writer.write(rec("b", "q1", 0, True))
    with out.open("a") as f:
        f.write('{"key": "b/q2#0", "bench')  # the crash
    assert [r.key for r in read_records(out)] == ["b/q1#0"]
    with RecordWriter(out) as writer:
        writer.write(rec("b", "q2", 0, False))
    assert [r.key for r in read_records(out)] == ["b/q1#0", "b/q2#0"]


def test_a_foreign_line_is_an_error_naming_file_and_line(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(rec("b", "q1", 0, True).to_json() + "\n" + '{"input": "x", "output": "y"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not a visionr3 eval record"):
        read_records(out)


def test_a_data_error_call_keeps_its_flag_from_the_loop_log_to_the_record_file(tmp_path):
    entry = {"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 30, 40]}, "valid": False,
             "error": "the source image cannot be used: image of 20100x100 exceeds the aspect-ratio limit of 200",
             "data_error": True, "box": None}
    call = ToolCall.from_log(entry)
    assert call.data_error and not call.valid and not ToolCall.from_log({**entry, "data_error": False}).data_error
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as writer:
        writer.write(SampleRecord(key="b/1#0", benchmark="b", sample_id="1", tool_calls=[call]))
    (record,) = read_records(path)
    assert record.tool_calls[0].data_error is True and record.tool_calls[0].error == entry["error"]
