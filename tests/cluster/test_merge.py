"""``visionr3 merge`` (visionr3/cluster/merge.py) on real verl FSDP checkpoints of both tiny Qwen-VL architectures.

The checkpoints are written by verl's own code, as the trainer writes them: two gloo ranks (world size 2, so the merge
and our verification must reassemble DTensor shards) each build verl's ``TrainingWorker`` with the FSDP2 engine on the
CPU platform and call its ``save_checkpoint`` (verl's ``FSDPCheckpointManager``), once for Qwen2.5-VL and once for
Qwen3-VL. Only ``latest_checkpointed_iteration.txt``, which verl's trainer writes after the workers, is written here.
The Qwen2.5-VL run trains with Qwen2.5-VL's stock chat template (verl's ``custom_chat_template``), which cannot render
tools, so the merge must replace it with ours. Built once per module (~30-45 s on 2 cores); each merge ~5-10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from visionr3.cluster.merge import MergeError, merge_checkpoint, resolve_actor_dir, resolve_chat_template
from visionr3.platform import free_port

REPO = Path(__file__).resolve().parents[2]

# Qwen2.5-VL-Instruct's stock template (images and video, no `tools`): what a run without our template saves.
QWEN25_VL_STOCK_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# One rank of the checkpoint writer: verl's TrainingWorker (FSDP2 engine, fp32) saving through its checkpoint manager.
SAVE_CHECKPOINTS = """
import json, os, sys
from verl.trainer.config import CheckpointConfig
from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
from verl.workers.engine_workers import TrainingWorker, TrainingWorkerConfig

for spec in json.loads(sys.argv[1]):
    config = TrainingWorkerConfig(
        model_type="language_model",
        model_config=HFModelConfig(path=spec["model"], override_config={"attn_implementation": "sdpa"},
                                   use_remove_padding=False, enable_gradient_checkpointing=False,
                                   custom_chat_template=spec["template"]),
        engine_config=FSDPEngineConfig(strategy="fsdp2", model_dtype="fp32", use_torch_compile=False,
                                       use_dynamic_bsz=False, micro_batch_size_per_gpu=1),
        optimizer_config=FSDPOptimizerConfig(lr=1e-3, total_training_steps=1),
        checkpoint_config=CheckpointConfig(save_contents=["model"]),
    )
    worker = TrainingWorker(config=config)
    worker.reset()
    worker.save_checkpoint(os.path.join(spec["root"], "global_step_1", "actor"), global_step=1)
    del worker
print("saved")
"""

_SCRUBBED = ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES", "VERL_ENGINE_DEVICE", "RAY_ADDRESS", "RANK", "WORLD_SIZE",
             "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")



@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``{"qwen2_5_vl": root, "qwen3_vl": root}``: trainer-style checkpoint roots with ``global_step_1/actor`` holding
    two FSDP2 shards each, written by verl on two gloo ranks."""
    from visionr3.testing.tiny_model import tiny_model_dir

    base = tmp_path_factory.mktemp("fsdp_checkpoints")
    roots = {arch: base / arch for arch in ("qwen2_5_vl", "qwen3_vl")}
    specs = [
        {"model": str(tiny_model_dir("qwen2_5_vl")), "root": str(roots["qwen2_5_vl"]), "template": QWEN25_VL_STOCK_TEMPLATE},
        {"model": str(tiny_model_dir("qwen3_vl")), "root": str(roots["qwen3_vl"]), "template": None},
    ]
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(VERL_PLATFORM="cpu", VERL_USE_EXTERNAL_MODULES="visionr3.plugin", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", SAVE_CHECKPOINTS, json.dumps(specs)], cwd=REPO, text=True,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    try:
        outputs = [rank.communicate(timeout=420)[0] for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    for rank, output in zip(ranks, outputs):
        assert rank.returncode == 0 and output.rstrip().endswith("saved"), output[-6000:]
    for root in roots.values():
        (root / "latest_checkpointed_iteration.txt").write_text("1")  # verl's trainer writes it after the workers
    return roots


def _tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_merges_qwen25vl_two_shards_with_the_tool_template(checkpoints, tmp_path):
    """From the checkpoint root: the latest step is found, verl merges the two shards, our tool template replaces the
    stock one, and the verification compares all 57 tensors exactly. Independently of both verl and our
    reassembly, the merged weights equal the tiny model's (the engine saved them untrained, in fp32) cast to bf16."""
    import torch
    from transformers import AutoProcessor

    from visionr3.config import config_path
    from visionr3.testing.tiny_model import tiny_model_dir

    actor = checkpoints["qwen2_5_vl"] / "global_step_1" / "actor"
    assert sorted(p.name for p in actor.glob("model_world_size_*")) == [
        "model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"]
    assert (actor / "huggingface" / "chat_template.jinja").read_text() == QWEN25_VL_STOCK_TEMPLATE

    out = tmp_path / "merged"
    report = merge_checkpoint(checkpoints["qwen2_5_vl"], out, progress=False)

    assert report.actor_dir == actor and report.resolved_from.startswith("latest step 1")
    assert report.target == out and report.world_size == 2 and report.model_type == "qwen2_5_vl"
    assert report.verified and report.tensors_compared == 57 and report.max_abs_diff == 0.0
    assert report.dtype == "bfloat16" and report.renders_tools is True
    assert report.chat_template == "qwen2_5_vl_tool.jinja" and report.template_changed
    assert "verified 57 tensors, max abs diff 0 (bfloat16)" in report.summary()
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # the staging folder is gone

    ours = config_path("chat_templates", "qwen2_5_vl_tool.jinja").read_text()
    assert (out / "chat_template.jinja").read_text() == ours
    processor = AutoProcessor.from_pretrained(out)
    assert processor.chat_template == ours and processor.tokenizer.chat_template == ours
    tool = {"type": "function", "function": {"name": "image_zoom_in_tool", "parameters": {"type": "object"}}}
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        tools=[tool], tokenize=False, add_generation_prompt=True)
    assert "<tools>" in text and "image_zoom_in_tool" in text and "<tool_call>" in text and "<|image_pad|>" in text

    merged, original = _tensors(out), _tensors(tiny_model_dir("qwen2_5_vl"))
    assert set(merged) == set(original)
    assert all(merged[name].dtype == torch.bfloat16 for name in merged)
    assert all(torch.equal(merged[name], original[name].to(torch.bfloat16)) for name in merged)


def test_cli_merges_qwen3vl_step_folder_and_keeps_its_template(checkpoints, tmp_path, capsys):
    """``visionr3 merge <root>/global_step_1 OUT --force`` for Qwen3-VL over a previous output: exit 0, the old
    files replaced, the checkpoint's own (tool-capable) template kept, and a one-line summary at the end."""
    from visionr3.cli import main

    step = checkpoints["qwen3_vl"] / "global_step_1"
    out = tmp_path / "qwen3_merged"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "stale.safetensors").write_text("an older merge")
    assert main(["merge", str(step), str(out), "--force"]) == 0
    assert not (out / "stale.safetensors").exists() and (out / "model.safetensors").is_file()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"checkpoint: {step / 'actor'} (actor/ of global_step_1), world size 2, qwen3_vl")
    summary = lines[-1]
    assert summary.startswith(f"merged {step / 'actor'} (W=2, Qwen3VLForConditionalGeneration) -> {out}: verified ")
    assert "max abs diff 0 (bfloat16)" in summary and "tools rendered" in summary
    assert "chat template the checkpoint's;" in summary and "replaced" not in summary
    kept = (step / "actor" / "huggingface" / "chat_template.jinja").read_text()
    assert (out / "chat_template.jinja").read_text() == kept
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_vl"


def _link_actor(src: Path, dst: Path, skip: set[str]) -> Path:
    """A copy of an actor folder made of symlinks, without the entries named in ``skip``."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name not in skip:
            (dst / entry.name).symlink_to(entry)
    return dst


def test_missing_shard_is_named_and_cli_exits_2_without_traceback(checkpoints, tmp_path, capsys):
    from visionr3.cli import main

    actor = _link_actor(checkpoints["qwen2_5_vl"] / "global_step_1" / "actor", tmp_path / "actor",
                        skip={"model_world_size_2_rank_1.pt"})
    with pytest.raises(MergeError, match=r"missing model shard in .*actor \(world_size 2\): model_world_size_2_rank_1\.pt$"):
        merge_checkpoint(actor, tmp_path / "out")
    assert main(["merge", str(actor), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionr3 merge: error: missing model shard") and "model_world_size_2_rank_1.pt" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_huggingface_dir_and_world_size_mismatch(checkpoints, tmp_path):
    src = checkpoints["qwen2_5_vl"] / "global_step_1" / "actor"
    no_hf = _link_actor(src, tmp_path / "no_hf" / "actor", skip={"huggingface"})
    with pytest.raises(MergeError, match=r"missing .*no_hf/actor/huggingface: verl's checkpoint manager writes"):
        merge_checkpoint(no_hf, tmp_path / "out")
    wrong = _link_actor(src, tmp_path / "wrong" / "actor", skip={"fsdp_config.json"})
    (wrong / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 4}))
    expected = ", ".join(f"model_world_size_4_rank_{r}\\.pt" for r in range(4))
    with pytest.raises(MergeError, match=rf"missing model shards in .*\(world_size 4\): {expected}$"):
        merge_checkpoint(wrong, tmp_path / "out")


def test_a_failure_inside_verl_keeps_the_existing_output(checkpoints, tmp_path):
    """A corrupt shard fails inside verl's merger: the error says so and names the checkpoint, ``--force`` has not
    touched the existing output, and no staging folder is left behind."""
    src = checkpoints["qwen2_5_vl"] / "global_step_1" / "actor"
    actor = _link_actor(src, tmp_path / "ckpt" / "actor", skip={"model_world_size_2_rank_1.pt"})
    (actor / "model_world_size_2_rank_1.pt").write_bytes(b"not a torch file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"previous": "model"}')
    with pytest.raises(MergeError, match=r"^verl's model_merger failed on .*ckpt/actor: "):
        merge_checkpoint(actor, out, overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", r"checkpoint not found: .*/missing does not exist"),
        ("empty", r"not a verl FSDP checkpoint: .*/empty has no fsdp_config\.json, no global_step_N/ folders"),
        ("no_tracker", r"no latest_checkpointed_iteration\.txt in .*/no_tracker to name the latest step; pass one of "
                       r"its step folders: .*global_step_2, .*global_step_10$"),
        ("stale_tracker", r"latest_checkpointed_iteration\.txt names step 7, but .*/global_step_7 does not exist"),
        ("step_without_actor", r"no actor/ checkpoint in .*/global_step_3 \(expected .*global_step_3/actor\)"),
        ("actor_without_config", r"not a verl FSDP actor checkpoint: .*/actor/fsdp_config\.json is missing"),
    ],
)
def test_wrong_directories_are_named(tmp_path, layout, message):
    path = tmp_path / layout
    if layout == "empty":
        path.mkdir()
    elif layout == "no_tracker":
        for step in (2, 10):
            (path / f"global_step_{step}" / "actor").mkdir(parents=True)
    elif layout == "stale_tracker":
        (path / "global_step_1" / "actor").mkdir(parents=True)
        (path / "latest_checkpointed_iteration.txt").write_text("7")
    elif layout == "step_without_actor":
        path = path / "global_step_3"
        path.mkdir(parents=True)
    elif layout == "actor_without_config":
        path = path / "actor"
        path.mkdir(parents=True)
    with pytest.raises(MergeError, match=message):
        merge_checkpoint(path, tmp_path / "out")


def test_latest_step_comes_from_verls_tracker(tmp_path):
    for step in (1, 3, 20):
        (tmp_path / f"global_step_{step}" / "actor").mkdir(parents=True)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("3")  # not the highest folder: the tracker decides
    assert resolve_actor_dir(tmp_path) == (
        tmp_path / "global_step_3" / "actor", "latest step 3 (latest_checkpointed_iteration.txt)")
    assert resolve_actor_dir(tmp_path / "global_step_20") == (
        tmp_path / "global_step_20" / "actor", "actor/ of global_step_20")


def test_output_is_protected(checkpoints, tmp_path):
    root = checkpoints["qwen3_vl"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "weights.bin").write_text("x")
    with pytest.raises(MergeError, match=r"output .*/busy is not empty; pass --force"):
        merge_checkpoint(root, busy)
    with pytest.raises(MergeError, match=r"output .*/busy is not empty and holds no config\.json; --force replaces only"):
        merge_checkpoint(root, busy, overwrite=True)  # e.g. a mistyped output path
    with pytest.raises(MergeError, match=r"contains the checkpoint"):
        merge_checkpoint(root, root.parent, overwrite=True)  # --force must never delete the checkpoint
    assert (root / "global_step_1" / "actor" / "fsdp_config.json").is_file()


def test_chat_template_choice(tmp_path):
    from visionr3.config import config_path

    auto = resolve_chat_template("auto", "qwen2_5_vl")
    assert auto.text == config_path("chat_templates", "qwen2_5_vl_tool.jinja").read_text() and auto.require_tools
    assert resolve_chat_template("auto", "qwen3_vl").text is None  # Qwen3-VL's stock template renders tools
    assert resolve_chat_template("none", "qwen2_5_vl").text is None
    mine = tmp_path / "mine.jinja"
    mine.write_text("{{ messages }}")
    chosen = resolve_chat_template(str(mine), "qwen3_vl")
    assert chosen.text == "{{ messages }}" and chosen.label == str(mine) and not chosen.require_tools
    with pytest.raises(MergeError, match=r"--chat-template: .*/absent\.jinja is not a file"):
        resolve_chat_template(str(tmp_path / "absent.jinja"), "qwen2_5_vl")
    (tmp_path / "blank.jinja").write_text("  \n")
    with pytest.raises(MergeError, match=r"--chat-template: .*/blank\.jinja is empty"):
        resolve_chat_template(str(tmp_path / "blank.jinja"), "qwen2_5_vl")


def test_merge_help_from_the_installed_command():
    command = Path(sys.executable).with_name("visionr3")
    proc = subprocess.run([str(command), "merge", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for expected in ("usage: visionr3 merge", "checkpoint", "output", "--chat-template", "--no-verify", "--force",
                     "latest_checkpointed_iteration"):
        assert expected in proc.stdout, expected
