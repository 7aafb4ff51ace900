"""lmms-eval's `--model visionr3` (visionr3/eval/lmms.py): the real lmms-eval CLI, found through our entry point, on
a V*-format task (tests/eval/lmms_tasks/) scored by lmms-eval's own V* code, with requests answered by the recipe's
agent loop and tools.

Two engines behind the same loop:

* ``backend=openai`` against a loopback server whose replies are scripted *from the pixels it is sent*
  (:class:`visionr3.testing.square_policy.SquarePolicy`): in the first turn it finds the square in the full image and
  asks the zoom tool for a box around it; in the second it reads the square's colour from the image the tool returned
  and answers that option's letter. V* accuracy is 100 only if the question and image reached the model, verl's loop
  parsed the call, our zoom tool cropped the right region and sent it back, the zoom recipe's extractor took the
  letter out of ``<answer>`` and lmms-eval scored it.
* ``backend=hf``: the tiny random Qwen2.5-VL in-process (the default engine); its text is noise, so the test checks
  the run's shape: lmms-eval's metric, one record per request with turns, the gold from the task's doc_to_target.

lmms-eval 0.7.3 catches an exception raised during evaluation (ours or its own), prints it as "Error during
evaluation" and exits 0 without a results file; :func:`run_lmms_eval` turns that into a failure that quotes it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (`make venv` installs it)")

from visionr3.data.rows import LETTERS  # noqa: E402
from visionr3.demo.synthetic import COLOURS, make_sample  # noqa: E402
from visionr3.eval.records import read_records  # noqa: E402
from visionr3.testing.square_policy import SquarePolicy  # noqa: E402

TASKS = Path(__file__).parent / "lmms_tasks"
TASK = "visionr3_vstar_mini"
OPTIONS = sorted(COLOURS)  # red... in a fixed order: (A) blue (B) green (C) red (D) yellow


def write_task(root: Path, count: int, seed: int = 0) -> Path:
    """The task folder with ``count`` V*-format rows (the columns of lmms-lab's vstar-bench) in data/test.parquet."""
    import datasets

    folder = root / "lmms_tasks"
    shutil.copytree(TASKS, folder)
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        sample = make_sample(rng, size=(448, 448), side=24)
        options = " ".join(f"({LETTERS[j]}) {colour}" for j, colour in enumerate(OPTIONS))
        rows.append({
            "question_id": f"q{i}", "text": f"What is the colour of the small square? {options}", "image": sample.image,
            "label": LETTERS[OPTIONS.index(sample.colour)], "category": "direct_attributes",
        })
    features = datasets.Features({
        "question_id": datasets.Value("string"), "text": datasets.Value("string"), "image": datasets.Image(),
        "label": datasets.Value("string"), "category": datasets.Value("string"),
    })
    (folder / "data").mkdir()
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(folder / "data" / "test.parquet"))
    return folder


def lmms_eval_cli(workdir: Path, tasks: Path, model_args: str, *extra: str) -> subprocess.CompletedProcess:
    """``python -m lmms_eval --model visionr3 ...``, offline, in ``workdir`` (results under ``workdir/lmms_out``)."""
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "visionr3", "--model_args", model_args, "--tasks", TASK,
        "--include_path", str(tasks), "--output_path", str(workdir / "lmms_out"), "--log_samples", *extra,
    ]
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(workdir / "hf_datasets"),
    }
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def failure(result: subprocess.CompletedProcess, new_results: int) -> str | None:
    """Why an lmms-eval run produced nothing to check, or ``None``. lmms-eval 0.7.3 exits 0 after an exception during
    evaluation (it prints the traceback and "Error during evaluation: ..."), so the exit status alone says little."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # loguru's colours
    error = next((line for line in log.splitlines() if "Error during evaluation" in line), None)
    if result.returncode != 0:
        return f"lmms_eval exited {result.returncode}"
    if error is not None:
        return f"lmms_eval exited 0 but raised during evaluation ({error.strip()})"
    if new_results != 1:
        return f"lmms_eval exited 0 but wrote {new_results} results files instead of 1"
    return None


def run_lmms_eval(workdir: Path, tasks: Path, model_args: str, *extra: str) -> dict:
    """A successful :func:`lmms_eval_cli` run's results JSON, its samples (``_samples``) and its output (``_log``)."""
    out = workdir / "lmms_out"
    before = set(out.rglob("*_results.json")) if out.exists() else set()
    result = lmms_eval_cli(workdir, tasks, model_args, *extra)
    written = set(out.rglob("*_results.json")) - before
    why = failure(result, len(written))
    if why is not None:
        raise AssertionError(f"{why}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    (path,) = written
    results = json.loads(path.read_text())
    (samples,) = path.parent.glob(path.name.replace("_results.json", f"_samples_{TASK}.jsonl"))
    results["_samples"] = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    results["_log"] = result.stdout + result.stderr
    return results


# ---- tests ------------------------------------------------------------------------------------------------------


def test_the_entry_point_gives_lmms_eval_our_model():
    from lmms_eval.models import get_model, list_available_models

    from visionr3.eval.lmms import VisionR3

    assert "visionr3" in list_available_models()
    assert get_model("visionr3") is VisionR3


@dataclass
class OpenAIRun:
    server: Any
    workdir: Path
    tasks: Path
    records: Path
    model_args: str
    results: dict
    requests: int  # what the server had received when the run ended


@pytest.fixture(scope="module")
def openai_run(tmp_path_factory):
    """One lmms-eval run of 3 V* questions with the zoom recipe against the scripted endpoint (kept up for reruns)."""
    from visionr3.testing.openai_server import OpenAIStubServer
    from visionr3.testing.tiny_model import tiny_model_dir

    workdir = tmp_path_factory.mktemp("lmms_openai")
    tasks = write_task(workdir, 3)
    records = workdir / "records" / "vstar.jsonl"
    with OpenAIStubServer(reply=SquarePolicy()) as server:
        model_args = (
            f"pretrained={tiny_model_dir('qwen2_5_vl')},recipe=zoom,backend=openai,base_url={server.base_url},"
            f"max_response_tokens=256,records={records}"
        )
        results = run_lmms_eval(workdir, tasks, model_args, "--batch_size", "3")
        yield OpenAIRun(server, workdir, tasks, records, model_args, results, server.requests)


def test_tool_loop_answers_lmms_eval_vstar_through_an_openai_endpoint(openai_run):
    results, records = openai_run.results, openai_run.records
    saved = read_records(records)
    assert sorted(r.key for r in saved) == [f"{TASK}/{i}#0" for i in range(3)]
    for record in saved:  # first: a failed trajectory reaches lmms-eval as an empty answer, i.e. as accuracy < 100
        assert record.error is None, f"{record.key}: {record.error}"
    # lmms-eval's own V* scorer: every letter right, so the loop really went image -> zoom -> crop -> answer
    assert results["results"][TASK]["vstar_overall_acc,none"] == 100.0
    assert [s["filtered_resps"] for s in results["_samples"]] == [s["target"] for s in results["_samples"]]
    assert openai_run.requests == 6  # two turns per question

    for record in saved:
        assert [t.role for t in record.turns] == ["assistant", "tool", "assistant"], f"{record.key}: {record.turns}"
        assert len(record.tool_calls) == 1, f"{record.key}: one scripted zoom call, the record holds {record.tool_calls}"
        (call,) = record.tool_calls
        assert call.name == "image_zoom_in_tool" and call.valid and call.box, f"{record.key}: {call}"
        assert record.prediction == record.answer and record.correct  # gold from the task's doc_to_target
        assert record.protocol["recipe"] == "zoom" and record.protocol["backend"] == "openai"
        assert record.protocol["shuffle_options"] is False  # the task's option order
        assert (records.parent / record.images[call.image]).is_file()
        assert "Answer with the option's letter" in record.prompt  # the task's post-prompt, inside the zoom style
    assert "'max_new_tokens': 16" in results["_log"]  # the ignored task kwargs are reported


@pytest.mark.slow
def test_a_rerun_reuses_the_records_and_can_return_the_response(openai_run):
    """Same records file, ``return=response``: the finished trajectories are reused (no request reaches the model)
    and lmms-eval receives the assistant turns' text instead of the extracted answer."""
    results = run_lmms_eval(openai_run.workdir, openai_run.tasks, openai_run.model_args + ",return=response",
                            "--batch_size", "3")
    assert openai_run.server.requests == openai_run.requests
    responses = [s["filtered_resps"] for s in results["_samples"]]
    assert all("<tool_call>" in r and r.rstrip().endswith("</answer>") for r in responses), responses
    # (no accuracy check: V*'s letter regex reads free text poorly — "...is red." gives "D" — which is why
    # return=answer is the default)
    assert len(read_records(openai_run.records)) == 3

    # a run under another protocol is refused instead of reusing (or mixing in) the other run's trajectories
    # (lmms-eval 0.7.3 prints the traceback and exits 0, so the message and the missing results are the signal)
    results_files = set((openai_run.workdir / "lmms_out").rglob("*_results.json"))
    failed = lmms_eval_cli(openai_run.workdir, openai_run.tasks, openai_run.model_args + ",max_response_tokens=128")
    written = set((openai_run.workdir / "lmms_out").rglob("*_results.json")) - results_files
    assert (failure(failed, len(written)) or "").startswith("lmms_eval exited 0 but raised during evaluation")
    assert not written
    assert re.search(r"vstar\.jsonl was written under another protocol \(.*max_response_tokens: file 256 vs now 128",
                     failed.stdout + failed.stderr), failed.stderr[-3000:]
    assert openai_run.server.requests == openai_run.requests


def test_failed_requests_are_reported_and_all_failed_is_an_error_not_a_score(tmp_path):
    """``generate_until`` driven as lmms-eval drives it (its ``task_dict`` set, ``Instance`` requests) against the
    scripted endpoint: a question whose image has no square makes the policy fail that request (a 500 after the
    backend's retries), so it is answered ``""`` and kept in the records with its error; when every request fails the
    model raises rather than hand lmms-eval a score made of failures."""
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from visionr3.eval.lmms import VisionR3
    from visionr3.testing.openai_server import OpenAIStubServer
    from visionr3.testing.tiny_model import tiny_model_dir

    square = make_sample(random.Random(0), size=(448, 448), side=24)
    docs = [{"image": square.image}, {"image": Image.new("RGB", (448, 448), (236, 236, 230))}]  # the 2nd: no square
    question = "What is the colour of the small square?\n" + "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(OPTIONS))

    def request(doc_id: int) -> Instance:
        arguments = (question, {"temperature": 0}, lambda doc: [doc["image"]], doc_id, "mini", "test")
        return Instance("generate_until", arguments, idx=0, metadata={"task": "mini", "doc_id": doc_id, "repeats": 1})

    records = tmp_path / "records.jsonl"
    # the response budget holds the crop's image tokens too (169 for a square away from the edges): the CPU preset's 384
    with OpenAIStubServer(reply=SquarePolicy()) as server:
        model = VisionR3(pretrained=str(tiny_model_dir("qwen2_5_vl")), recipe="zoom", config_name="cpu",
                         backend="openai", base_url=server.base_url, max_response_tokens=384, records=str(records))
        model.task_dict = {"mini": {"test": docs}}
        try:
            answers = model.generate_until([request(0), request(1)])
            with pytest.raises(RuntimeError, match=r"visionr3: 1 of 1 requests failed \(first, mini/1#0: "
                                                   r"OpenAIBackendError: .*no square.*nothing was evaluated"):
                model.generate_until([request(1)])
        finally:
            model.clean()
    assert answers == [LETTERS[OPTIONS.index(square.colour)], ""]
    saved = {r.key: r for r in read_records(records)}
    assert saved["mini/0#0"].error is None and saved["mini/0#0"].tool_calls[0].valid
    assert "PolicyError: no square" in saved["mini/1#0"].error and saved["mini/1#0"].turns == []


def test_the_in_process_hf_model_runs_lmms_eval_tasks(tmp_path):
    from visionr3.testing.tiny_model import tiny_model_dir

    tasks = write_task(tmp_path, 2)
    records = tmp_path / "hf.jsonl"
    model_args = (
        f"pretrained={tiny_model_dir('qwen2_5_vl')},recipe=zoom,backend=hf,max_response_tokens=48,records={records}"
    )
    results = run_lmms_eval(tmp_path, tasks, model_args, "--limit", "2", "--batch_size", "2")

    assert "vstar_overall_acc,none" in results["results"][TASK]
    assert len(results["_samples"]) == 2
    saved = read_records(records)
    assert sorted(r.key for r in saved) == [f"{TASK}/0#0", f"{TASK}/1#0"]
    samples = sorted(results["_samples"], key=lambda s: s["doc_id"])
    for record, sample in zip(sorted(saved, key=lambda r: r.row), samples):
        assert record.error is None, f"{record.key}: {record.error}"
        assert record.num_turns >= 1 and record.turns[0].role == "assistant"
        assert 0 < record.response_tokens <= 48
        assert record.answer == sample["target"]
        assert sample["filtered_resps"] == record.prediction  # what lmms-eval scored is the recipe's extracted answer
        assert record.protocol["backend"] == "hf" and record.model.endswith(Path(tiny_model_dir("qwen2_5_vl")).name)


# ---- request handling (pure) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gen_kwargs", "fixed", "expected"),
    [
        ({"temperature": 0, "max_new_tokens": 16}, {}, (0.0, 1.0, -1)),
        ({}, {}, (0.0, 1.0, -1)),
        ({"temperature": 0.7, "top_p": 0.9}, {}, (0.7, 0.9, -1)),
        ({"temperature": 0.7, "do_sample": False}, {}, (0.0, 1.0, -1)),  # HF semantics: no sampling
        ({"temperature": 0.0, "top_p": 0.5}, {}, (0.0, 1.0, -1)),  # greedy ignores top_p
        ({"temperature": 0}, {"temperature": 1.0, "top_k": 20}, (1.0, 1.0, 20)),  # model_args win
        ({"temperature": 0.7, "do_sample": False}, {"temperature": 0.5}, (0.5, 1.0, -1)),
    ],
)
def test_resolve_sampling(gen_kwargs, fixed, expected):
    from visionr3.eval.lmms import Sampling, resolve_sampling

    fixed = {"temperature": None, "top_p": None, "top_k": None, **fixed}
    assert resolve_sampling(gen_kwargs, fixed) == Sampling(*expected)


def test_ignored_gen_kwargs_and_question_text():
    from visionr3.eval.lmms import ignored_gen_kwargs, question_text

    assert ignored_gen_kwargs({"max_new_tokens": 16, "temperature": 0, "until": ["\n\n"], "do_sample": False}) == {
        "max_new_tokens": 16, "until": ["\n\n"]}
    assert question_text("<image>\nWhat is it?", 1) == "<image>\nWhat is it?"  # the task placed its one image
    assert question_text("<image> and <image>: same?", 1) == "and : same?"  # a count that does not match is dropped
    assert question_text("What is it?", 2) == "What is it?"


def test_bad_model_args_and_visuals_are_named():
    from visionr3.eval.lmms import VisionR3, as_images, parse_batch_size

    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['temprature'\]"):
        VisionR3(pretrained="/x", temprature=0.5)
    with pytest.raises(ValueError, match="return='text'"):
        VisionR3(pretrained="/x", **{"return": "text"})
    with pytest.raises(ValueError, match="recipe='deepeyes'"):
        VisionR3(pretrained="/x", recipe="deepeyes")
    with pytest.raises(ValueError, match=r"task 'mvbench' \(test\) doc 3: visual 0 is a str \('/v/a.mp4'\)"):
        as_images(["/v/a.mp4"], where="task 'mvbench' (test) doc 3")
    assert parse_batch_size("auto") == parse_batch_size("auto:4") == 16 and parse_batch_size(8) == 8
    with pytest.raises(ValueError, match="--batch_size"):
        parse_batch_size("0")
