"""`visionr3 eval` end to end on CPU: the real CLI, verl's AgentLoopWorker with the zoom recipe's loop and crop tool,
the hf backend, on a V*-format file made by `visionr3 prepare` and the synthetic mark task.

The policy is the CPU demo's cached warm-up of the tiny Qwen2.5-VL (it calls the zoom tool in the format it was
taught; its boxes are mostly invalid, so its tool turns are error turns). Numbers are not the point: the records,
the protocol in them, the option shuffling, the summary and the resume path are.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from visionr3.data.formats import LETTERS
from visionr3.eval.protocol import EvalProtocol, option_order
from visionr3.eval.records import read_records

COLOURS = ["red", "green", "blue", "yellow"]


def write_vstar(root: Path, count: int) -> Path:
    from visionr3.data.synthetic import make_sample

    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(root / "test_questions.jsonl", "w") as f:
        for i in range(count):
            sample = make_sample(rng)
            sample.image.save(root / "img" / f"{i}.png")
            lines = "\n".join(f"({LETTERS[j]}) {c}" for j, c in enumerate(COLOURS))
            text = f"What is the colour of the small square?\n{lines}\nAnswer with the option's letter from the given choices directly."
            row = {"image": f"img/{i}.png", "text": text, "label": LETTERS[COLOURS.index(sample.colour)],
                   "category": ["direct_attributes", "relative_position"][i % 2], "question_id": f"q{i}"}
            f.write(json.dumps(row) + "\n")
    return root / "test_questions.jsonl"


def visionr3(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "visionr3.cli", *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if check and result.returncode != 0:
        raise AssertionError(f"visionr3 {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from visionr3.data.synthetic import write_parquet

    root = tmp_path_factory.mktemp("eval")
    source = write_vstar(root / "vstar_bench", 4)
    visionr3("prepare", "vstar", str(source), "--image-root", str(root / "vstar_bench"), "--out", str(root / "vstar.parquet"))
    write_parquet(root / "marks.parquet", 3, seed=7)
    return root


@pytest.fixture(scope="module")
def policy():
    from visionr3.demo import warmup_checkpoint
    from visionr3.testing.tiny_model import tiny_model_dir

    return str(warmup_checkpoint(tiny_model_dir(), 100)[0])


def eval_args(policy: str, workdir: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", policy, "--recipe", "zoom", "--config-name", "cpu", "--data", str(workdir / "vstar.parquet"),
            str(workdir / "marks.parquet"), "--out", str(out), "--max-response-tokens", "384", "--max-prompt-tokens", "1024",
            "--batch-size", "4", "--no-progress", *extra]


def test_eval_cli_records_protocol_shuffling_summary_and_resume(policy, workdir):
    out = workdir / "run" / "results.jsonl"
    visionr3(*eval_args(policy, workdir, out, "--limit", "2"))
    first = out.read_text().splitlines()
    assert len(first) == 4  # 2 rows of each file
    with out.open("a") as f:
        f.write(first[0][: len(first[0]) // 2])  # a crash in the middle of a write

    done = visionr3(*eval_args(policy, workdir, out))
    lines = out.read_text().splitlines()
    assert lines[:4] == first  # finished samples are kept byte for byte, not recomputed
    records = read_records(out)
    assert len(records) == 7 and len({r.key for r in records}) == 7
    assert "| vstar | overall | 4 | 4 |" in done.stdout and "| ALL | macro |" in done.stdout
    assert (out.parent / "results.summary.md").exists() and (out.parent / "results.summary.json").exists()

    protocol = records[0].protocol
    assert all(r.protocol == protocol for r in records)
    expected = EvalProtocol().as_dict()
    assert protocol["agent_loop"] == "visionr3_agent" and protocol["max_turns"] == 5 and protocol["temperature"] == 0.0
    assert protocol["max_pixels"] == 50176 and protocol["crop_max_pixels"] == 802816  # the CPU preset, the tool YAML
    assert protocol["shuffle_options"] is True and protocol["shuffle_seed"] == expected["shuffle_seed"] == 0
    assert protocol["scoring"] == "rules" and protocol["backend"] == "hf"

    vstar = [r for r in records if r.benchmark == "vstar"]
    assert {r.category for r in vstar} == {"direct_attributes", "relative_position"}
    for r in vstar:
        order = option_order(4, seed=0, benchmark="vstar", sample_id=r.sample_id)
        assert r.option_order == order and r.options == [COLOURS[i] for i in order]
        assert r.options[LETTERS.index(r.answer)] == r.answer_text
        for letter, option in zip(LETTERS, r.options):
            assert f"{letter}. {option}" in r.prompt
        assert r.turns and r.turns[0].role == "assistant" and r.num_turns >= 1
        assert r.correct == (r.reward["accuracy"] >= 0.5)
        assert (out.parent / r.images[0]).exists() and r.image_size == [448, 448] and r.seen_size == [224, 224]

    marks = [r for r in records if r.benchmark != "vstar"]
    assert len(marks) == 3
    for r in marks:
        assert r.answer in COLOURS and not r.options
        assert r.tool_calls and r.tool_calls[0].name == "image_zoom_in_tool"
        assert isinstance(r.tool_calls[0].arguments, dict) and "bbox_2d" in r.tool_calls[0].arguments
        roles = [t.role for t in r.turns]
        assert roles[:3] == ["assistant", "tool", "assistant"]
        tool_turn = r.turns[1].text
        assert "<tool_response>" in tool_turn
        if not r.tool_calls[0].valid:
            assert r.tool_calls[0].error in tool_turn and r.tool_calls[0].image is None
        else:
            assert r.tool_calls[0].box and (out.parent / r.images[r.tool_calls[0].image]).exists()

    refused = visionr3(*eval_args(policy, workdir, out, "--max-turns", "2"), check=False)
    assert refused.returncode == 2 and "another protocol" in refused.stderr and "max_turns" in refused.stderr
    assert out.read_text().splitlines() == lines  # nothing written


def test_sampled_eval_is_reproducible_with_a_seed(policy, workdir, tmp_path):
    """k=2 at T=1: the same rows evaluated twice give the same turns (seeds come from the protocol seed, the sample
    index, the question and the turn, not from the order requests reach the engine)."""
    import pyarrow.parquet as pq

    from visionr3.eval.runner import EvalSettings, Evaluator

    protocol = EvalProtocol(recipe="zoom", samples=2, temperature=1.0, seed=5, max_response_tokens=256, max_prompt_tokens=1024)
    settings = EvalSettings(model=policy, out=str(tmp_path / "a.jsonl"), protocol=protocol, data=[str(workdir / "marks.parquet")],
                            config_name="cpu", batch_size=3, progress=False, save_images=False)
    rows = pq.read_table(workdir / "marks.parquet").to_pylist()
    with Evaluator(settings) as evaluator:
        runs = [[r for k in (0, 1) for r in evaluator.run_rows(rows, data_file="marks", sample=k)] for _ in range(2)]
    first, second = runs
    assert [r.key for r in first] == [r.key for r in second] and len(first) == 6
    assert {r.sample for r in first} == {0, 1}
    assert [[t.text for t in r.turns] for r in first] == [[t.text for t in r.turns] for r in second]


def test_openai_backend_evaluates_through_a_loopback_server_like_the_hf_backend(policy, workdir, tmp_path):
    """`backend=openai` against the policy served over real HTTP (the hf server's OpenAI endpoint, as `vllm serve`
    would serve it): same records, and the greedy first turn equals the in-process hf backend's."""
    from visionr3.eval.runner import EvalSettings, Evaluator
    from visionr3.testing.hf_http import ServedHF

    def run(out: Path, backend: str, base_url: str | None = None) -> list:
        protocol = EvalProtocol(recipe="zoom", backend=backend, max_response_tokens=384, max_prompt_tokens=1024)
        settings = EvalSettings(model=policy, out=str(out), protocol=protocol, data=[str(workdir / "marks.parquet")],
                                config_name="cpu", limit=2, progress=False, save_images=False, base_url=base_url,
                                served_model="policy")
        with Evaluator(settings) as evaluator:
            return evaluator.run()

    hf = run(tmp_path / "hf.jsonl", "hf")
    with ServedHF(policy, prompt_length=1024, response_length=384, temperature=0.0) as served:
        api = run(tmp_path / "api.jsonl", "openai", served.base_url)
    assert [r.key for r in api] == [r.key for r in hf] and all(not r.error for r in api)
    assert api[0].protocol["backend"] == "openai"
    assert {k: v for k, v in api[0].protocol.items() if k != "backend"} == {k: v for k, v in hf[0].protocol.items() if k != "backend"}
    for a, b in zip(api, hf):
        assert a.turns and a.turns[0].text == b.turns[0].text
        assert [c.name for c in a.tool_calls] == [c.name for c in b.tool_calls]


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


def test_judge_scoring_asks_the_recipes_judge_and_survives_its_faults(policy, workdir, tmp_path):
    """`scoring=judge`: the zoom recipe's judge (DeepEyes' prompt) over loopback HTTP, with a fault on the first
    attempt of every request (429s, 5xx, hangs, malformed bodies): every answer is judged, none is lost."""
    from visionr3.eval.runner import EvalSettings, Evaluator
    from visionr3.testing.openai_server import FaultRates, OpenAIStubServer

    with OpenAIStubServer(faults=FaultRates.mix(1.0), faults_on_first_attempt_only=True, hang=2.0) as judge:
        protocol = EvalProtocol(recipe="zoom", scoring="judge", max_response_tokens=384, max_prompt_tokens=1024)
        overrides = [f"visionr3.reward.judge.base_url={judge.base_url}", f"visionr3.reward.judge.model={judge.model}",
                     "visionr3.reward.judge.timeout=1", "visionr3.reward.judge.api_key_env=null"]
        settings = EvalSettings(model=policy, out=str(tmp_path / "judged.jsonl"), protocol=protocol, overrides=overrides,
                                data=[str(workdir / "marks.parquet")], config_name="cpu", progress=False, save_images=False)
        with Evaluator(settings) as evaluator:
            records = evaluator.run()
        asked = judge.requests
    answered = [r for r in records if r.prediction]
    # the first attempt at each distinct judge prompt faults, and its retry answers (identical prompts fault once)
    assert answered and asked > len(answered)
    for r in records:
        assert r.protocol["scoring"] == "judge" and r.protocol["judge_model"] == judge.model
        assert r.reward["judge_failed"] == 0.0
        assert r.reward["judged"] == (1.0 if r.prediction else 0.0)
        assert r.correct == (r.prediction.strip().lower() == r.answer.lower())  # the stub judges by exact match
