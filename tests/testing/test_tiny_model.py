"""The tiny checkpoints load like real ones: Auto classes in a fresh interpreter, verl's loaders, real token ids."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from visionr3.testing.tiny_model import QWEN_TOKEN_IDS, directory_size_mb

# The contract, run in a fresh interpreter exactly as an outside user would: nothing from visionr3 imported.
PLAIN_LOAD = """
import json, sys
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
d = sys.argv[1]
processor = AutoProcessor.from_pretrained(d)
model = AutoModelForImageTextToText.from_pretrained(d)
tokenizer = AutoTokenizer.from_pretrained(d)
print(json.dumps({
    "processor": type(processor).__name__,
    "model": type(model).__name__,
    "image_pad": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
}))
"""


@pytest.mark.parametrize(
    "arch,processor_cls,model_cls",
    [
        ("qwen2_5_vl", "Qwen2_5_VLProcessor", "Qwen2_5_VLForConditionalGeneration"),
        ("qwen3_vl", "Qwen3VLProcessor", "Qwen3VLForConditionalGeneration"),
    ],
)
def test_cli_writes_a_checkpoint_auto_classes_load(tmp_path, arch, processor_cls, model_cls):
    out = tmp_path / arch
    build = subprocess.run(
        [sys.executable, "-m", "visionr3.testing.tiny_model", "--out", str(out), "--arch", arch],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    assert f"wrote tiny {arch} checkpoint" in build.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
                 "generation_config.json", "chat_template.jinja"):
        assert (out / name).exists(), name
    assert directory_size_mb(out) < 60

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(out)], capture_output=True, text=True, env=env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert result == {"processor": processor_cls, "model": model_cls, "image_pad": 151655}


def test_build_is_deterministic(tmp_path, tiny_model_dirs):
    from visionr3.testing.tiny_model import build_tiny_model

    rebuilt = build_tiny_model(tmp_path / "again", "qwen2_5_vl", seed=0)
    reseeded = build_tiny_model(tmp_path / "seed1", "qwen2_5_vl", seed=1)
    cached = load_file(tiny_model_dirs["qwen2_5_vl"] / "model.safetensors")
    same = load_file(rebuilt / "model.safetensors")
    other = load_file(reseeded / "model.safetensors")
    assert cached.keys() == same.keys() == other.keys()
    assert all(torch.equal(cached[k], same[k]) for k in cached)
    assert not all(torch.equal(cached[k], other[k]) for k in cached)


def test_real_qwen_special_token_ids(model_dir, arch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for token, token_id in QWEN_TOKEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    think = tokenizer.encode("<think>", add_special_tokens=False)
    if arch == "qwen3_vl":
        assert think == [151667]
    else:  # Qwen2.5's vocabulary has no <think> special token: it is plain text there
        assert len(think) > 1 and max(think) < 151643
    config = json.loads((model_dir / "config.json").read_text())
    text_config = config.get("text_config", config)
    assert text_config["vocab_size"] == 151936
    assert config["image_token_id"] == 151655


def test_verl_loaders(model_dir):
    from transformers import AutoConfig
    from verl.utils import hf_processor, hf_tokenizer

    tokenizer = hf_tokenizer(str(model_dir))
    processor = hf_processor(str(model_dir))
    assert processor is not None, "verl would treat the model as text-only"
    assert callable(processor.get_rope_index)  # bound by verl for M-RoPE position ids
    assert tokenizer.pad_token_id == 151643
    assert AutoConfig.from_pretrained(model_dir).model_type in ("qwen2_5_vl", "qwen3_vl")


def test_cache_is_reused(tiny_model_dirs):
    from visionr3.testing.tiny_model import tiny_model_dir

    before = (tiny_model_dirs["qwen2_5_vl"] / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir("qwen2_5_vl") == tiny_model_dirs["qwen2_5_vl"]
    assert (tiny_model_dirs["qwen2_5_vl"] / "model.safetensors").stat().st_mtime_ns == before
