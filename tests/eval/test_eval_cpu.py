"""`visionr3 eval` end to end on CPU: the real CLI, verl's AgentLoopWorker with the zoom recipe's loop and crop tool,
the recipe's reward, on a V*-format file made by `visionr3 prepare` and the synthetic mark task.

Two kinds of model, chosen by what a test is about:

* the plumbing — records, the protocol in them, option shuffling, the summary, resume, tool-call records, judge
  scoring: a scripted policy (:class:`visionr3.testing.square_policy.SquarePolicy`) served over loopback HTTP and
  reached through ``--backend openai``. By the square's colour it zooms validly, writes a malformed call, asks for a
  box outside the image or answers at once, and it reads its answer from the pixels it is sent, so every path is
  asserted exactly, on any machine;
* an engine — the hf backend in process and over HTTP, seeded sampling, every benchmark format: the tiny random
  Qwen2.5-VL. Those tests assert only what holds for any weights (two paths through the same weights agree, a seed
  reproduces); what the weights say is never checked.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from visionr3.agent.parsers import MALFORMED_CALL
from visionr3.data.rows import LETTERS
from visionr3.demo.synthetic import DATA_SOURCE
from visionr3.eval.protocol import EvalProtocol, option_order
from visionr3.eval.records import read_records
from visionr3.testing.square_policy import ZOOM_TOOL, SquarePolicy, square_colour

COLOURS = ["red", "green", "blue", "yellow"]  # the V* file's options, in source order
PLANS = {"red": "zoom", "blue": "malformed", "green": "outside", "yellow": "answer"}
WRONG = {"green"}  # answered with another colour
POLICY = SquarePolicy(PLANS, wrong=WRONG)
VSTAR_COLOURS = ["red", "yellow", "green", "blue"]  # q0..q3 (`--limit 2` runs red and yellow)
MARK_COLOURS = ["red", "blue", "green"]  # mark rows 0..2
TURNS = {"zoom": 2, "malformed": 2, "outside": 2, "answer": 1}  # assistant turns = requests per trajectory


def samples_of(colours: list[str], rng: random.Random) -> list:
    """One synthetic square per colour, in order (draws until the colour comes up)."""
    from visionr3.demo.synthetic import make_sample

    samples = []
    for colour in colours:
        sample = make_sample(rng)
        while sample.colour != colour:
            sample = make_sample(rng)
        samples.append(sample)
    return samples


def write_vstar(root: Path, colours: list[str]) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """V*'s test_questions.jsonl (one question per colour) and {question_id: the square's box in source pixels}."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    boxes = {}
    with open(root / "test_questions.jsonl", "w") as f:
        for i, sample in enumerate(samples_of(colours, random.Random(0))):
            sample.image.save(root / "img" / f"{i}.png")
            lines = "\n".join(f"({LETTERS[j]}) {c}" for j, c in enumerate(COLOURS))
            text = f"What is the colour of the small square?\n{lines}\nAnswer with the option's letter from the given choices directly."
            row = {"image": f"img/{i}.png", "text": text, "label": LETTERS[COLOURS.index(sample.colour)],
                   "category": ["direct_attributes", "relative_position"][i % 2], "question_id": f"q{i}"}
            f.write(json.dumps(row) + "\n")
            boxes[f"q{i}"] = sample.box
    return root / "test_questions.jsonl", boxes


def write_marks(path: Path, colours: list[str]) -> dict[str, tuple[int, ...]]:
    """The synthetic mark task's parquet (one row per colour) and {sample id: the square's box in source pixels}."""
    import pandas as pd

    from visionr3.demo.synthetic import make_row

    samples = samples_of(colours, random.Random(7))
    pd.DataFrame([make_row(sample, index=i) for i, sample in enumerate(samples)]).to_parquet(path)
    return {str(i): sample.box for i, sample in enumerate(samples)}


def visionr3(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "visionr3.cli", *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if check and result.returncode != 0:
        raise AssertionError(f"visionr3 {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    source, vstar_boxes = write_vstar(root / "vstar_bench", VSTAR_COLOURS)
    visionr3("prepare", "vstar", str(source), "--image-root", str(root / "vstar_bench"), "--out", str(root / "vstar.parquet"))
    mark_boxes = write_marks(root / "marks.parquet", MARK_COLOURS)
    (root / "boxes.json").write_text(json.dumps({"vstar": vstar_boxes, "marks": mark_boxes}))
    return root


@pytest.fixture(scope="module")
def model():
    """The tiny random Qwen2.5-VL: the engine tests run its weights; the scripted tests name it for its tokenizer,
    processor and chat template only."""
    from visionr3.testing.tiny_model import tiny_model_dir

    return str(tiny_model_dir("qwen2_5_vl"))


def eval_args(model: str, workdir: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return ["eval", "--model", model, "--recipe", "zoom", "--config-name", "cpu", "--data", str(workdir / "vstar.parquet"),
            str(workdir / "marks.parquet"), "--out", str(out), "--max-response-tokens", "384", "--max-prompt-tokens", "1024",
            "--batch-size", "4", "--no-progress", "--backend", "openai", "--base-url", base_url, *extra]


def expected_prediction(record, colour: str) -> str:
    """What the scripted policy answers: the letter of the option it names (V*), else the colour word."""
    said = POLICY.answer_for(colour)
    return LETTERS[record.options.index(said)] if record.options else said


def check_trajectory(record, colour: str, square: tuple[int, ...], root: Path) -> None:
    """The record of one scripted trajectory, exactly: turns, the tool call, its crop or its error, the verdict."""
    plan, where = PLANS[colour], f"{record.key} ({colour} square, scripted {PLANS[colour]!r})"
    assert record.error is None, f"{where}: {record.error}"
    roles = [t.role for t in record.turns]
    assert roles == (["assistant"] if plan == "answer" else ["assistant", "tool", "assistant"]), f"{where}: turns {roles}"
    assert record.num_turns == TURNS[plan]
    assert record.prediction == expected_prediction(record, colour), f"{where}: {record.turns[-1].text!r}"
    assert record.correct == (colour not in WRONG) and record.reward["accuracy"] == float(colour not in WRONG), where
    if plan == "answer":
        assert record.tool_calls == [] and record.crop_boxes == [] and len(record.images) == 1, where
        return
    assert len(record.tool_calls) == 1, f"{where}: one scripted call, the records hold {record.tool_calls}"
    (call,) = record.tool_calls
    tool_turn = record.turns[1].text
    assert "<tool_response>" in tool_turn, f"{where}: {tool_turn!r}"
    if plan == "zoom":
        assert call.name == ZOOM_TOOL and call.valid and call.error is None, f"{where}: the valid call was refused: {call}"
        x1, y1, x2, y2 = call.box
        assert x1 <= square[0] and y1 <= square[1] and x2 >= square[2] and y2 >= square[3], f"{where}: {call.box} misses {square}"
        assert record.crop_boxes == [call.box] and call.image == 1 and record.turns[1].images == [1], where
        crop = Image.open(root / record.images[1]).convert("RGB")  # the display copy of the crop: the square, enlarged
        assert crop.size == (x2 - x1, y2 - y1) and square_colour(crop) == colour, f"{where}: {record.images[1]}"
    else:
        if plan == "malformed":
            assert call.name == MALFORMED_CALL and "valid JSON" in call.error, f"{where}: {call}"
        else:  # a well-formed call whose box lies outside the image
            assert call.name == ZOOM_TOOL and call.arguments["bbox_2d"][0] > record.seen_size[0], f"{where}: {call}"
        assert not call.valid and call.error and call.error in tool_turn, f"{where}: {call.error!r} not in {tool_turn!r}"
        assert call.box is None and call.image is None and record.crop_boxes == [] and len(record.images) == 1, where


def test_eval_cli_records_protocol_shuffling_summary_and_resume(model, workdir):
    from visionr3.testing.openai_server import OpenAIStubServer

    out = workdir / "run" / "results.jsonl"
    boxes = json.loads((workdir / "boxes.json").read_text())
    with OpenAIStubServer(reply=POLICY) as server:
        visionr3(*eval_args(model, workdir, out, server.base_url, "--limit", "2"))
        first = out.read_text().splitlines()
        assert len(first) == 4  # 2 rows of each file
        assert server.requests == sum(TURNS[PLANS[c]] for c in VSTAR_COLOURS[:2] + MARK_COLOURS[:2])
        with out.open("a") as f:
            f.write(first[0][: len(first[0]) // 2])  # a crash in the middle of a write

        done = visionr3(*eval_args(model, workdir, out, server.base_url))
        lines = out.read_text().splitlines()
        assert lines[:4] == first  # finished samples are kept byte for byte, not recomputed
        assert server.requests == sum(TURNS[PLANS[c]] for c in VSTAR_COLOURS + MARK_COLOURS)  # the new rows only
        asked = server.requests

        refused = visionr3(*eval_args(model, workdir, out, server.base_url, "--max-turns", "2"), check=False)
        assert refused.returncode == 2 and "another protocol" in refused.stderr and "max_turns" in refused.stderr
        assert out.read_text().splitlines() == lines and server.requests == asked  # nothing written, nothing asked

    records = read_records(out)
    assert len(records) == 7 and len({r.key for r in records}) == 7
    assert "| vstar | overall | 4 | 4 | 75.0 |" in done.stdout and "| ALL | macro |" in done.stdout, done.stdout
    assert (out.parent / "results.summary.md").exists()
    summary = json.loads((out.parent / "results.summary.json").read_text())
    vstar_row = next(r for r in summary["rows"] if (r["benchmark"], r["category"]) == ("vstar", "overall"))
    # red zooms, yellow answers at once, green's box is outside (and its answer wrong), blue's call is malformed
    assert vstar_row["accuracy"] == 0.75 and vstar_row["tool_rate"] == 0.75 and vstar_row["valid_tool_rate"] == 1 / 3
    assert vstar_row["turns"] == 1.75 and vstar_row["errors"] == 0

    protocol = records[0].protocol
    assert all(r.protocol == protocol for r in records)
    expected = EvalProtocol().as_dict()
    assert protocol["agent_loop"] == "visionr3_agent" and protocol["max_turns"] == 5 and protocol["temperature"] == 0.0
    assert protocol["max_pixels"] == 50176 and protocol["crop_max_pixels"] == 802816  # the CPU preset, the tool YAML
    assert protocol["shuffle_options"] is True and protocol["shuffle_seed"] == expected["shuffle_seed"] == 0
    assert protocol["scoring"] == "rules" and protocol["backend"] == "openai"

    vstar = [r for r in records if r.benchmark == "vstar"]
    assert {r.category for r in vstar} == {"direct_attributes", "relative_position"}
    assert sorted(r.answer_text for r in vstar) == sorted(VSTAR_COLOURS)
    for r in vstar:
        order = option_order(4, seed=0, benchmark="vstar", sample_id=r.sample_id)
        assert r.option_order == order and r.options == [COLOURS[i] for i in order]
        assert r.options[LETTERS.index(r.answer)] == r.answer_text
        for letter, option in zip(LETTERS, r.options):
            assert f"{letter}. {option}" in r.prompt
        assert (out.parent / r.images[0]).exists() and r.image_size == [448, 448] and r.seen_size == [224, 224]
        check_trajectory(r, r.answer_text, tuple(boxes["vstar"][r.sample_id]), out.parent)

    marks = [r for r in records if r.benchmark != "vstar"]
    assert sorted(r.answer for r in marks) == sorted(MARK_COLOURS) and all(not r.options for r in marks)
    for r in marks:
        check_trajectory(r, r.answer, tuple(boxes["marks"][r.sample_id]), out.parent)


def test_sampled_eval_is_reproducible_with_a_seed(model, workdir, tmp_path):
    """k=2 at T=1 on the random tiny model: the rows evaluated again, in reverse order, give the same turns for every
    (question, sample), and the two samples of a question differ — seeds come from the protocol seed, the sample
    index, the question and the turn, not from the order requests reach the engine. (Near-uniform random weights
    make 32 sampled tokens of two different seeds differ; a peaked trained model need not.)"""
    import pyarrow.parquet as pq

    from visionr3.eval.runner import EvalSettings, Evaluator

    protocol = EvalProtocol(recipe="zoom", samples=2, temperature=1.0, seed=5, max_response_tokens=32, max_prompt_tokens=1024)
    settings = EvalSettings(model=model, out=str(tmp_path / "a.jsonl"), protocol=protocol, data=[str(workdir / "marks.parquet")],
                            config_name="cpu", batch_size=3, progress=False, save_images=False)
    rows = pq.read_table(workdir / "marks.parquet").to_pylist()
    with Evaluator(settings) as evaluator:
        first = {r.key: r for k in (0, 1) for r in evaluator.run_rows(rows, data_file="marks", sample=k)}
        # reversed, the rows are numbered 0..2 the other way round: keys come from their index (0 included)
        second = {r.key: r for k in (1, 0) for r in evaluator.run_rows(rows[::-1], data_file="marks", sample=k)}
    assert sorted(first) == sorted(second) == sorted(f"{DATA_SOURCE}/{i}#{k}" for i in range(3) for k in (0, 1))
    for key, record in first.items():
        assert record.error is None and second[key].error is None, f"{key}: {record.error or second[key].error}"
        assert [t.text for t in record.turns] == [t.text for t in second[key].turns], f"{key}: the same seed sampled other turns"
    for i in range(3):
        zero, one = first[f"{DATA_SOURCE}/{i}#0"], first[f"{DATA_SOURCE}/{i}#1"]
        assert zero.turns[0].text != one.turns[0].text, f"question {i}: samples 0 and 1 got the same seed"


def test_openai_backend_evaluates_through_a_loopback_server_like_the_hf_backend(model, workdir, tmp_path):
    """`backend=openai` against the model served over real HTTP (the hf server's OpenAI endpoint, as `vllm serve`
    would serve it): same records, and the greedy first turn equals the in-process hf backend's, token for token of
    text (the same weights on the same prompt; the random model's text is noise, which is all this needs)."""
    from visionr3.eval.runner import EvalSettings, Evaluator
    from visionr3.testing.hf_http import ServedHF

    def run(out: Path, backend: str, base_url: str | None = None) -> list:
        protocol = EvalProtocol(recipe="zoom", backend=backend, max_response_tokens=48, max_prompt_tokens=1024)
        settings = EvalSettings(model=model, out=str(out), protocol=protocol, data=[str(workdir / "marks.parquet")],
                                config_name="cpu", limit=2, progress=False, save_images=False, base_url=base_url,
                                served_model="policy")
        with Evaluator(settings) as evaluator:
            return evaluator.run()

    hf = run(tmp_path / "hf.jsonl", "hf")
    with ServedHF(model, prompt_length=1024, response_length=48, temperature=0.0) as served:
        api = run(tmp_path / "api.jsonl", "openai", served.base_url)
    assert [r.key for r in api] == [r.key for r in hf]
    for r in api + hf:
        assert r.error is None, f"{r.key} ({r.protocol['backend']}): {r.error}"
    assert api[0].protocol["backend"] == "openai"
    assert {k: v for k, v in api[0].protocol.items() if k != "backend"} == {k: v for k, v in hf[0].protocol.items() if k != "backend"}
    for a, b in zip(api, hf):
        # only the first turn: a later prompt holds the model's own ids, which HTTP re-tokenises (the documented
        # lossy step of visionr3.eval.openai_backend), so a later turn may legitimately differ
        assert a.turns and b.turns, f"{a.key}: no assistant turn (openai: {a.turns}, hf: {b.turns})"
        assert a.turns[0].role == b.turns[0].role == "assistant"
        assert a.turns[0].text == b.turns[0].text, (
            f"{a.key}: the greedy first turn over HTTP differs from the in-process one:\n"
            f"openai: {a.turns[0].text!r}\nhf:     {b.turns[0].text!r}"
        )


EVAL_FORMATS = {  # format -> (benchmark name in the records, source image size of test_prepare's builders)
    "vstar": ("vstar", (1600, 1200)), "mmvp": ("mmvp", (224, 224)), "cvbench": ("cvbench", (512, 384)),
    "hrbench": ("hrbench_4k", (1024, 768)), "mme_realworld": ("mme_realworld", (1500, 1000)),
}


def test_every_benchmark_format_evaluates_with_shuffled_options_and_a_summary(tmp_path):
    """Small synthetic files in V*, MMVP, CV-Bench, HR-Bench and MME-RealWorld formats (tests/data/test_prepare.py's
    builders) → `visionr3 prepare` → one eval of all five on the random tiny model: every row is asked with its
    options shuffled, graded against the shuffled letter, and summarised per benchmark and category."""
    import importlib.util

    from visionr3.data.prepare import prepare
    from visionr3.eval.runner import EvalSettings, Evaluator
    from visionr3.eval.summary import summarize
    from visionr3.testing.tiny_model import tiny_model_dir

    spec = importlib.util.spec_from_file_location("prepare_fixtures", Path(__file__).parents[1] / "data" / "test_prepare.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    files = []
    for fmt in EVAL_FORMATS:
        source, _ = fixtures.BUILDERS[fmt](tmp_path / fmt)
        prepare(fmt, source, tmp_path / f"{fmt}.parquet", progress=False)
        files.append(str(tmp_path / f"{fmt}.parquet"))

    protocol = EvalProtocol(recipe="zoom", max_response_tokens=64, max_prompt_tokens=2048)
    settings = EvalSettings(model=str(tiny_model_dir("qwen2_5_vl")), out=str(tmp_path / "all.jsonl"), protocol=protocol,
                            data=files, config_name="cpu", batch_size=10, progress=False)
    with Evaluator(settings) as evaluator:
        records = evaluator.run()
    sizes = dict(EVAL_FORMATS.values())
    assert sorted({r.benchmark for r in records}) == sorted(sizes) and len(records) == 10
    for r in records:
        assert not r.error, r.error
        assert r.image_size == list(sizes[r.benchmark]) and (tmp_path / r.images[0]).exists()
        assert r.option_order == option_order(len(r.options), seed=0, benchmark=r.benchmark, sample_id=r.sample_id)
        assert r.options[LETTERS.index(r.answer)] == r.answer_text
        assert r.correct == (r.reward["accuracy"] >= 0.5) and r.turns and r.num_turns >= 1
    mme = [r for r in records if r.benchmark == "mme_realworld"]
    assert {r.category for r in mme} == {"Remote Sensing/color"}
    rows = {(row.benchmark, row.category): row for row in summarize(records)}
    assert rows[("mmvp", "overall")].pairs is not None  # MMVP's pair metric (both questions of pair 0 are here)
    assert ("cvbench", "Count") in rows and ("cvbench", "Depth") in rows
    assert rows[("ALL", "macro")].questions == 10


def test_judge_scoring_asks_the_recipes_judge_and_survives_its_faults(model, workdir, tmp_path):
    """`scoring=judge`: the zoom recipe's judge (DeepEyes' prompt) over loopback HTTP, with a fault on the first
    attempt of every request (429s, 5xx, hangs, malformed bodies): every answer is judged, none is lost, and the
    judge's verdicts (exact match, the stub's rule) are the records' — green's wrong answer included."""
    from visionr3.eval.runner import EvalSettings, Evaluator
    from visionr3.testing.openai_server import FaultRates, OpenAIStubServer

    with OpenAIStubServer(reply=POLICY) as server, \
            OpenAIStubServer(faults=FaultRates.mix(1.0), faults_on_first_attempt_only=True, hang=2.0) as judge:
        protocol = EvalProtocol(recipe="zoom", scoring="judge", backend="openai", max_response_tokens=384,
                                max_prompt_tokens=1024)
        overrides = [f"visionr3.reward.judge.base_url={judge.base_url}", f"visionr3.reward.judge.model={judge.model}",
                     "visionr3.reward.judge.timeout=1", "visionr3.reward.judge.api_key_env=null"]
        settings = EvalSettings(model=model, out=str(tmp_path / "judged.jsonl"), protocol=protocol, overrides=overrides,
                                data=[str(workdir / "marks.parquet")], config_name="cpu", progress=False,
                                save_images=False, base_url=server.base_url)
        with Evaluator(settings) as evaluator:
            records = evaluator.run()
        faults, replies = sum(judge.faults.values()), judge.replies
    assert sorted(r.answer for r in records) == sorted(MARK_COLOURS)
    for r in records:
        assert r.error is None, f"{r.key}: {r.error}"
        assert r.prediction == POLICY.answer_for(r.answer), f"{r.key}: {r.turns[-1].text!r}"
        assert r.protocol["scoring"] == "judge" and r.protocol["judge_model"] == judge.model
        assert r.reward["judged"] == 1.0 and r.reward["judge_failed"] == 0.0, f"{r.key}: {r.reward}"
        assert r.correct == (r.answer not in WRONG), f"{r.key}: judged {r.correct} for {r.prediction!r} vs {r.answer!r}"
    # one judge prompt per answer: the first attempt at each faults, a retry answers it
    assert faults == len(records) and replies >= len(records)
