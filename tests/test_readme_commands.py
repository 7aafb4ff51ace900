"""README's and docs/'s commands, as written (issue 20): every shell block is marked, and each command runs, is composed
(``--cfg job`` / argparse), is run by a named heavier test, or is skipped for a written reason
(visionr3.testing.readme_commands). Commands run in a temporary folder that links the repository's files, with the
venv's bin first on PATH; only temporary paths are substituted, and the source files the commands read are written
here in their published layouts (tests/data/test_prepare.py's builders)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from visionr3.testing.readme_commands import as_written, blocks, commands, read_records, write_recorders

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
OUTPUTS = {"outputs", "data", "results", "merged", "checkpoints"}  # where commands write: never linked


def all_commands():
    return [command for block in blocks(ROOT) for command in commands(block)]


def test_every_shell_block_is_marked_with_one_mode_per_command():
    found = blocks(ROOT)
    assert len(found) >= 15, [b.file for b in found]
    errors = []
    for block in found:
        try:
            commands(block)
        except ValueError as error:
            errors.append(str(error))
    assert not errors, "\n".join(errors)


def test_e2e_commands_name_a_test_that_exists():
    for command in all_commands():
        if command.mode == "e2e":
            assert (ROOT / command.detail).is_file(), command


def _test_module(path: str):
    """Builders of another test module (its files in their published layouts), loaded by path."""
    spec = importlib.util.spec_from_file_location("_readme_" + Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prepare_builders():
    return _test_module("tests/data/test_prepare.py")


def write_sources(cwd: Path) -> None:
    """The files data.md's and training.md's `visionr3 prepare` commands name, in each format's published layout."""
    import pandas as pd

    b = _prepare_builders()
    scratch = cwd / ".sources"
    source, _ = b.build_visionthink(scratch, smart=True)
    source.rename(cwd / "VisionThink-Smart-Train")
    source, _ = b.build_deepeyes(scratch)
    (cwd / "DeepEyes-Datasets-47k").mkdir()
    source.rename(cwd / "DeepEyes-Datasets-47k/train.parquet")
    b.build_vstar(cwd)
    (cwd / "CV-Bench").mkdir()
    pd.DataFrame([b.cvbench_published(i) for i in range(3)]).to_parquet(cwd / "CV-Bench/test_2d.parquet")
    source, _ = b.build_mme_realworld(scratch)
    source.rename(cwd / "MME_RealWorld.json")
    (scratch / "MME-RealWorld").rename(cwd / "MME-RealWorld")
    # VLM-R3's RL json names images by absolute paths on the authors' machine (docs/data.md's --path-map)
    b.write_image(cwd / "images/textvqa/1.jpg", (640, 480), "red")
    b.write_image(cwd / "images/crops/1_0.jpg", (64, 64), "red")
    (cwd / "vlm_r3_rl.json").write_text(json.dumps([
        {"image_path": "/data/vlm_r3/images/textvqa/1.jpg", "question": "What colour is the wall?",
         "answer": "<answer>red</answer>", "source": "textvqa"}]))
    (cwd / "vlir_sft.json").write_text(json.dumps([
        {"image_path": "textvqa/1.jpg", "question": "What colour is the wall?",
         "response_list": ['<think>Look. {"bbox_2d": [1, 2, 30, 40]}', "It is red.</think><answer>red</answer>"],
         "img_crop_list": ["crops/1_0.jpg"]}]))
    # a rollout dump (trainer.rollout_data_dir) for `visionr3 view outputs/zoom/rollouts/`
    (cwd / "outputs/zoom/rollouts").mkdir(parents=True)
    (cwd / "outputs/zoom/rollouts/1.jsonl").write_text(json.dumps(
        {"input": "user\nWhat colour?", "output": "<answer>red</answer>", "gts": "red", "score": 1.0, "step": 1}) + "\n")
    # eval records (tests/eval/test_view.py's four, images beside them) where eval-and-viewer.md's `view` commands read
    results = _test_module("tests/eval/test_view.py").write_fixture(scratch / "view")["results"]
    for target in ("outputs/eval/demo.jsonl", "results/vstar.jsonl", "results/lmms.jsonl"):
        (cwd / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results, cwd / target)
        if not (cwd / target).with_name("results.images").exists():
            shutil.copytree(results.with_name("results.images"), (cwd / target).with_name("results.images"))
    shutil.rmtree(scratch)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A temporary folder that looks like a checkout after `make venv`: the repository's files linked, `.venv` the
    venv running the tests, the commands' source files written."""
    cwd = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in OUTPUTS:
            (cwd / entry.name).symlink_to(entry)
    (cwd / ".venv").symlink_to(VENV_BIN.parent)
    write_sources(cwd)
    return cwd


def shell_env(path_first: Path, **extra) -> dict:
    env = {**os.environ, "PATH": f"{path_first}{os.pathsep}{os.environ['PATH']}", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def bash(text: str, cwd: Path, env: dict, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -eo pipefail\n{text}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cpu_commands_run_as_written(workdir):
    ran = [c for c in all_commands() if c.mode == "run"]
    assert len(ran) >= 10
    env = shell_env(VENV_BIN)
    failures = []
    for command in ran:
        text = as_written(command.text, workdir / "placeholders").replace("/tmp/", f"{workdir}/tmp/")
        done = bash(text, workdir, env)
        if done.returncode:
            failures.append(f"{command}\n  exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    assert not failures, "\n".join(failures)
    # what they promise to write is there
    for path in ["data/visionthink/train.parquet", "data/vlm_r3/train.parquet", "data/zoom/train.parquet",
                 "data/eval/vstar.parquet", "data/eval/cvbench_2d.parquet", "data/eval/mme_realworld.parquet",
                 "data/vlm_r3/vlir.parquet", "constraints-gpu.txt", "rollouts.html", "outputs/eval/demo.html",
                 "results/vstar.html", "results/lmms.html", "tmp/tiny-qwen25vl/config.json",
                 "tmp/tiny-qwen3vl/config.json"]:
        assert (workdir / path).is_file(), path


def test_gpu_and_cluster_commands_compose(workdir, tmp_path):
    """Each command runs through bash as written with recording `visionr3`/`python` first on PATH; then every recorded
    command line is composed in one process (Hydra `--cfg job`, argparse for the rest)."""
    composed = [c for c in all_commands() if c.mode in ("compose", "e2e") and not c.text.startswith(("make ", "python -m lmms_eval"))]
    recorders, payload = tmp_path / "bin", []
    write_recorders(recorders, str(VENV_BIN / "python"))
    failures = []
    for number, command in enumerate(composed):
        records = tmp_path / f"records{number}"
        records.mkdir()
        done = bash(as_written(command.text, workdir / "placeholders"), workdir,
                    shell_env(recorders, READMECMD_RECORDS=str(records)))
        argvs = read_records(records)
        if done.returncode or not (argvs or command.text.startswith("export ")):
            failures.append(f"{command}\n  bash exit {done.returncode}, {len(argvs)} commands: {done.stderr[-1500:]}")
        payload += [(str(workdir), argv, str(command)) for argv in argvs]
    assert not failures, "\n".join(failures)
    (tmp_path / "records.json").write_text(json.dumps([[cwd, argv] for cwd, argv, _ in payload]))
    subprocess.run([str(VENV_BIN / "python"), "-m", "visionr3.testing.readme_commands", str(tmp_path / "records.json"),
                    str(tmp_path / "results.json")], check=True, env=shell_env(VENV_BIN), timeout=300)
    results = json.loads((tmp_path / "results.json").read_text())
    for (_, _, where), result in zip(payload, results):
        if result["status"] or ("--cfg" in result["argv"] or result["argv"][1] in ("train", "sft")) and not result["printed"]:
            failures.append(f"{where}\n  {result['argv']}: exit {result['status']}\n{result['output']}")
    assert not failures, "\n".join(failures)
    assert len(results) >= 20
