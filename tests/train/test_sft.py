"""Cold-start SFT through verl's own SFT trainer: row converters, the vision-token mask, and a real CPU run.

The run test is the user's command (``visionr3 sft --config-name sft_cpu``) in a fresh process: verl's
engine-based ``sft_trainer`` with visionr3's CPU platform (gloo, FSDP2) trains the tiny Qwen2.5-VL for three steps on
VLM-R3-style rows (crops inside the assistant turn) and tool-style rows (crops in tool turns), saves a verl FSDP
checkpoint, and verl's ``model_merger`` turns it into a Hugging Face directory that loads and differs from the base.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from visionr3.data.converters import Context
from visionr3.data.prompts import STYLES, VLM_R3_PROMPT
from visionr3.data.rows import RowError
from visionr3.data.sft_rows import chat_row, sr1_coldstart, vlir, write_sft_parquet

REPO = Path(__file__).resolve().parents[2]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "image_zoom_in_tool",
        "description": "Zoom in on a region.",
        "parameters": {"type": "object", "properties": {"bbox_2d": {"type": "array"}}, "required": ["bbox_2d"]},
    },
}]


def _ctx(root: Path) -> Context:
    return Context(image_root=root, style=STYLES["vlm_r3"], agent_name="visionr3_vlm_r3")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """A source image and two crops on disk, as VLIR ships them (paths relative to an image root)."""
    root = tmp_path_factory.mktemp("vlir_images")
    (root / "crops").mkdir()
    canvas = Image.new("RGB", (448, 336), (236, 236, 230))
    canvas.paste((40, 70, 220), (300, 200, 316, 216))
    canvas.save(root / "scene.png")
    canvas.crop((280, 180, 336, 236)).resize((112, 112)).save(root / "crops" / "c0.png")
    canvas.crop((0, 0, 112, 84)).save(root / "crops" / "c1.png")
    return root


def vlir_record(colour: str = "blue") -> dict:
    return {
        "image_path": "scene.png",
        "question": "What colour is the small square?",
        "response_list": [
            '<think>There is a small mark on the right.\n{"bbox_2d": [280, 180, 336, 236]}',
            'The mark is a square.\n{"bbox_2d": [0, 0, 112, 84]}\n',
            f"Nothing else there.</think>\n<answer>{colour}</answer>",
        ],
        "img_crop_list": ["crops/c0.png", "crops/c1.png"],
    }


def tool_row(image_dir: Path, colour: str = "blue") -> dict:
    """A tool-style demonstration: zoom call, the crop in a tool turn, the answer (like the demo's warm-up)."""
    scene, crop = Image.open(image_dir / "scene.png"), Image.open(image_dir / "crops" / "c0.png")
    return chat_row(
        [
            {"role": "user", "content": [{"type": "image", "image": scene}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "image_zoom_in_tool",
                                                              "arguments": {"bbox_2d": [280, 180, 336, 236]}}}]},
            {"role": "tool", "content": [{"type": "image", "image": crop}, {"type": "text", "text": "Zoomed in."}]},
            {"role": "assistant", "content": f"<answer>{colour}</answer>"},
        ],
        TOOLS,
    )


@pytest.fixture(scope="module")
def rows_file(image_dir, tmp_path_factory) -> Path:
    rows = []
    for i, colour in enumerate(["blue", "red", "green", "yellow"]):
        rows.append(vlir(vlir_record(colour), i, _ctx(image_dir)))
        rows.append(tool_row(image_dir, colour))
    path, count = write_sft_parquet(rows, tmp_path_factory.mktemp("sft_rows") / "rows.parquet")
    assert count == 8
    return path


# --- converters -----------------------------------------------------------------------------------------------------


def test_vlir_crops_sit_inside_the_assistant_turn(image_dir):
    row = vlir(vlir_record(), 0, _ctx(image_dir))
    user, assistant = row["messages"]
    assert user == {"role": "user", "content": "<image>What colour is the small square?" + VLM_R3_PROMPT}
    assert assistant["role"] == "assistant"
    assert assistant["content"] == (
        '<think>There is a small mark on the right.\n{"bbox_2d": [280, 180, 336, 236]}\n<image>'
        'The mark is a square.\n{"bbox_2d": [0, 0, 112, 84]}\n<image>'
        "Nothing else there.</think>\n<answer>blue</answer>\n"  # every segment ends in \n, as VLM-R3's loader does
    )
    files = ["scene.png", "crops/c0.png", "crops/c1.png"]
    assert [image["bytes"] for image in row["images"]] == [(image_dir / f).read_bytes() for f in files]
    assert row["tools"] == ""


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        ({"img_crop_list": ["crops/c0.png", "crops/missing.png"]}, "img_crop_list[1]", "image not found"),
        ({"img_crop_list": ["crops/c0.png"] * 4}, "img_crop_list", "placeholder mismatch"),
        ({"question": None}, "question", "missing field"),
        ({"response_list": []}, "response_list", "wrong type"),
        ({"response_list": ["a", 3]}, "response_list[1]", "wrong type"),
    ],
)
def test_vlir_errors_name_the_field(image_dir, change, field, kind):
    with pytest.raises(RowError) as error:
        vlir({**vlir_record(), **change}, 0, _ctx(image_dir))
    assert error.value.field == field and error.value.kind == kind


def test_sr1_coldstart_sharegpt_and_alpaca(image_dir):
    prompt = "Question: Which colour?\nYou FIRST think ... The final answer MUST BE put in \\boxed{}.<image>"
    sharegpt = {"messages": [{"content": prompt, "role": "user"},
                             {"content": "<think>It is blue.</think>\n\\boxed{blue}", "role": "assistant"}],
                "images": ["scene.png"]}
    row = sr1_coldstart(sharegpt, 0, _ctx(image_dir))
    assert [m["content"] for m in row["messages"]] == [prompt, "<think>It is blue.</think>\n\\boxed{blue}"]
    assert row["images"][0]["bytes"] == (image_dir / "scene.png").read_bytes()

    alpaca = {"instruction": "Text description: a blue square.\nQuestion: Which colour?", "input": "",
              "output": "<think>\nblue\n</think>\n\\boxed{blue}"}
    row = sr1_coldstart(alpaca, 1, _ctx(image_dir))
    assert row["messages"] == [{"role": "user", "content": alpaca["instruction"]},
                               {"role": "assistant", "content": alpaca["output"]}]
    assert row["images"] == []

    with pytest.raises(RowError) as error:
        sr1_coldstart({**sharegpt, "images": []}, 2, _ctx(image_dir))
    assert error.value.kind == "placeholder mismatch"


# --- the dataset: vision tokens masked ---------------------------------------------------------------------------


def _dataset(path, processor, **overrides):
    from visionr3.data.sft_dataset import VisionSFTDataset

    config = OmegaConf.create({"pad_mode": "no_padding", "max_length": 2048, "truncation": "error",
                               "max_pixels": 64 * 32 * 32, "enable_thinking_default": None, **overrides})
    return VisionSFTDataset(str(path), processor.tokenizer, config, processor=processor)


def test_vision_tokens_are_never_trained(rows_file, model_dir, processor):
    """In user, tool and assistant turns (VLIR's crops) no vision token is a target; the assistant's text and its
    ``<|im_end|>`` are; verl's own mask would have trained the crops' pads; M-RoPE positions are Qwen's own."""
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    dataset = _dataset(rows_file, processor)
    tokenizer = processor.tokenizer
    vision = torch.tensor(dataset.vision_ids)
    assert len(vision) == 4  # <|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|>
    get_rope_index = _rope_index(model_dir)
    for index, n_images in [(0, 3), (1, 2)]:  # a VLIR row, a tool row
        item = dataset[index]
        ids, mask = item["input_ids"], item["loss_mask"].bool()
        assert item["multi_modal_inputs"]["image_grid_thw"].shape[0] == n_images
        assert (ids == processor.image_token_id).any()
        assert not torch.isin(ids[mask], vision).any()
        trained = tokenizer.decode(ids[mask])
        if index == 0:
            assert trained.startswith("<think>There is a small mark")
            assert trained.endswith("<answer>blue</answer>\n<|im_end|>\n")
            assert "What colour" not in trained
        else:
            assert '"name": "image_zoom_in_tool"' in trained and "Zoomed in." not in trained
        pos = get_rope_index(ids[None], item["multi_modal_inputs"]["image_grid_thw"])
        assert torch.equal(item["position_ids"][1:], pos)

    # verl's MultiTurnSFTDataset marks every token of an assistant turn, so VLIR's crop pads would be targets.
    messages = dataset._build_messages(dataset.dataframe.iloc[0].to_dict())
    ids, verl_mask, _, _ = MultiTurnSFTDataset._process_single_message(dataset, 1, messages[1], messages)
    assert (torch.isin(ids, vision) & verl_mask.bool()).sum() > 0


def _rope_index(model_dir):
    """Qwen's own M-RoPE index (the model's ``get_rope_index``) as ``(3, L)``."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    image_token = model.config.image_token_id

    def index(ids, grid):
        pos, _ = model.model.get_rope_index(input_ids=ids, image_grid_thw=grid, attention_mask=torch.ones_like(ids),
                                            mm_token_type_ids=(ids == image_token).long())
        return pos[:, 0]

    return index


def test_bad_rows_are_named(tmp_path, image_dir, processor):
    row = vlir(vlir_record(), 0, _ctx(image_dir))
    row["images"] = row["images"][:2]  # three placeholders, two images: written past the converter's check
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visionr3.data.sft_rows import sft_schema

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=sft_schema()), path)
    with pytest.raises(ValueError, match=r"SFT row 0 of .*bad.parquet: messages\[1\] has an <image> placeholder"):
        _dataset(path, processor)[0]
    with pytest.raises(RowError, match="3 <image> placeholder"):
        write_sft_parquet([row], tmp_path / "never.parquet")


# --- verl's SFT trainer, on CPU ----------------------------------------------------------------------------------


def _sft(tmp_path: Path, rows_file: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``visionr3 sft --config-name sft_cpu ...`` in a fresh process (verl's platform and process group are global)."""
    from visionr3.testing.tiny_model import tiny_model_dir

    command = [
        sys.executable, "-m", "visionr3.cli", "sft", "--config-name", "sft_cpu", *extra,
        f"model.path={tiny_model_dir('qwen2_5_vl')}", f"data.train_files={rows_file}",
        f"trainer.default_local_dir={out}", "trainer.total_epochs=2", "trainer.total_training_steps=3",
        "data.micro_batch_size_per_gpu=1", f"hydra.run.dir={out.parent / 'hydra'}",
    ]
    return subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "VERL_FILE_LOGGER_PATH")}
    return env | {"HF_HUB_OFFLINE": "1", "VERL_USE_EXTERNAL_MODULES": "visionr3.plugin"}


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["data"]["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def mixed_rows_file(rows_file, image_dir, tmp_path_factory) -> Path:
    """VLIR rows, tool rows and Vision-SR1's text-only caption -> CoT rows (micro-batches without any image)."""
    import pyarrow.parquet as pq

    text_rows = [sr1_coldstart({"instruction": f"Text description: a {c} square.\nQuestion: which colour?",
                                "output": f"<think>\n{c}\n</think>\n\\boxed{{{c}}}"}, i, _ctx(image_dir))
                 for i, c in enumerate(["blue", "red"])]
    rows = pq.read_table(rows_file).to_pylist()[:6] + text_rows
    path, _ = write_sft_parquet(rows, tmp_path_factory.mktemp("sft_mixed") / "mixed.parquet")
    return path


@pytest.fixture(scope="module")
def single_process_run(mixed_rows_file, tmp_path_factory):
    """The documented CPU command: one process, verl's trainer in it; also saves the full-precision HF model."""
    tmp_path = tmp_path_factory.mktemp("sft_run")
    out = tmp_path / "checkpoints"
    proc = _sft(tmp_path, mixed_rows_file, out, "checkpoint.save_contents=[model,optimizer,extra,hf_model]")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, proc.stdout.strip().splitlines()[-1]


def test_verl_sft_trainer_trains_and_saves(single_process_run):
    """3 steps of verl's engine SFT trainer on VLIR, tool and text-only rows: loss logged and falling, a verl FSDP
    checkpoint, and (checkpoint.save_contents hf_model) a Hugging Face model whose every tensor moved."""
    from safetensors.torch import load_file

    from visionr3.testing.tiny_model import tiny_model_dir

    out, summary = single_process_run
    step = out / "global_step_3"
    assert summary.startswith("visionr3 sft: 3 steps, loss ") and f"checkpoint {step}" in summary, summary
    losses = _losses(out)
    assert len(losses) == 3 and losses[-1] < losses[0] < 13.0, losses  # ~ln(151936) = 11.9 at the start
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (step / "model_world_size_1_rank_0.pt").is_file() and (step / "fsdp_config.json").is_file()

    trained = load_file(step / "huggingface" / "model.safetensors")
    base = load_file(tiny_model_dir("qwen2_5_vl") / "model.safetensors")
    changed = [k for k in trained if not torch.equal(trained[k], base[k].to(trained[k].dtype))]
    assert len(changed) > 0.9 * len(trained), f"{len(changed)}/{len(trained)} tensors changed"
    assert any("visual" in k for k in changed) and any("layers" in k and "visual" not in k for k in changed)


def test_torchrun_two_ranks_match_one_and_merge(single_process_run, mixed_rows_file, tmp_path):
    """``--nproc-per-node 2``: torchrun, data parallel over two gloo ranks, the same global batches (so the same
    losses) as one process; ``visionr3 merge`` reassembles the two shards and verifies them."""
    from safetensors.torch import load_file

    out = tmp_path / "checkpoints"
    proc = _sft(tmp_path, mixed_rows_file, out, "--nproc-per-node", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "-m torch.distributed.run --nproc-per-node=2" in proc.stdout
    one_process, _ = single_process_run
    assert _losses(out) == pytest.approx(_losses(one_process), rel=1e-4)
    step = out / "global_step_3"
    assert {p.name for p in step.glob("model_world_size_*")} == {"model_world_size_2_rank_0.pt",
                                                                "model_world_size_2_rank_1.pt"}

    merged = tmp_path / "merged"
    # the checkpoint root: verl's tracker file names step 3, saved in the SFT layout (no actor/ folder)
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    proc = subprocess.run([sys.executable, "-m", "visionr3.cli", "merge", str(out), str(merged)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "SFT layout" in proc.stdout + proc.stderr
    merged_weights = load_file(merged / "model.safetensors")
    reference = load_file(one_process / "global_step_3" / "huggingface" / "model.safetensors")
    for name, tensor in merged_weights.items():
        torch.testing.assert_close(tensor.float(), reference[name].to(tensor.dtype).float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("where", ["before", "after"])
def test_cfg_job_prints_the_config_and_launches_nothing(tmp_path, monkeypatch, capsys, where):
    """``visionr3 sft --nproc-per-node 8 ... --cfg job`` printed nothing useful: written after the overrides,
    ``--cfg job`` went to torchrun with them, which started 8 ranks. Wherever it stands, it now prints the composed
    config in this process, and neither torchrun nor a one-process world (RANK, MASTER_PORT) is set up."""
    from visionr3 import cli
    from visionr3.train import sft

    def no_launch(*args, **kwargs):
        raise AssertionError(f"launched {args}")

    monkeypatch.setattr(sft, "launch_torchrun", no_launch)
    monkeypatch.setattr(subprocess, "call", no_launch)
    monkeypatch.setattr(sft, "run_config", no_launch)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.chdir(tmp_path)
    overrides = ["model.path=/tmp/some-model", "data.train_files=rows.parquet"]
    flags = ["--cfg", "job"]
    argv = ["sft", "--nproc-per-node", "8", *(flags + overrides if where == "before" else overrides + flags)]
    assert cli.main(argv) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.model.path == "/tmp/some-model" and printed.data.train_files == "rows.parquet"
    assert "RANK" not in os.environ and not list(tmp_path.iterdir())
