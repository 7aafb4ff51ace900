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


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_bit_identical_in_a_thread_beside_global_rng_use_and_in_another_process(tmp_path, tiny_model_dirs):
    """The weights depend on the seed alone: a build in a thread while this thread keeps reseeding and drawing from
    torch's global RNG, a build by the CLI in a fresh process, and the session's cached build are the same bytes."""
    import threading

    from visionr3.testing.tiny_model import build_tiny_model

    thread = threading.Thread(target=build_tiny_model, args=(tmp_path / "thread", "qwen2_5_vl", 0))
    thread.start()
    draws = 0
    while thread.is_alive():
        torch.manual_seed(draws)
        torch.rand(256)
        draws += 1
    thread.join()
    assert draws > 10  # the global RNG really was busy during the build
    cli = subprocess.run(
        [sys.executable, "-m", "visionr3.testing.tiny_model", "--out", str(tmp_path / "cli"), "--arch", "qwen2_5_vl"],
        capture_output=True, text=True,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    reseeded = build_tiny_model(tmp_path / "seed1", "qwen2_5_vl", seed=1)
    cached = _digest(tiny_model_dirs["qwen2_5_vl"])
    assert _digest(tmp_path / "thread") == _digest(tmp_path / "cli") == cached
    assert _digest(reseeded) != cached
    weights, other = load_file(tmp_path / "thread" / "model.safetensors"), load_file(reseeded / "model.safetensors")
    assert weights.keys() == other.keys()
    assert not any(torch.equal(weights[k], other[k]) for k in weights if weights[k].std() > 0)  # every random tensor


def test_weights_follow_the_qwen_init(tiny_model_dirs):
    weights = load_file(tiny_model_dirs["qwen2_5_vl"] / "model.safetensors")
    embed = weights["model.embed_tokens.weight"]  # the saved (checkpoint) names
    assert abs(embed.std().item() - 0.02) < 1e-3 and torch.count_nonzero(embed[151643]) == 0  # the padding row
    norms = [k for k in weights if "norm" in k and k.endswith(".weight")]
    assert norms and all(torch.equal(weights[k], torch.ones_like(weights[k])) for k in norms)


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


def test_cache_is_reused_and_verified(tiny_model_dirs):
    from visionr3.testing.cache import MANIFEST
    from visionr3.testing.tiny_model import tiny_model_dir

    cached = tiny_model_dirs["qwen2_5_vl"]
    before = (cached / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir("qwen2_5_vl") == cached
    assert (cached / "model.safetensors").stat().st_mtime_ns == before
    manifest = json.loads((cached / MANIFEST).read_text())
    assert manifest["key"] in cached.name and "model.safetensors" in manifest["files"]


def test_a_tampered_or_unmanifested_cache_entry_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    from visionr3.testing.cache import MANIFEST
    from visionr3.testing.tiny_model import tiny_model_dir

    monkeypatch.setenv("VISIONR3_CACHE", str(tmp_path))
    first = tiny_model_dir("qwen3")
    good = _digest(first)
    with open(first / "model.safetensors", "r+b") as f:  # one flipped byte deep in the weights
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert tiny_model_dir("qwen3") == first and _digest(first) == good
    (first / MANIFEST).unlink()  # what an older builder (or a half-copied directory) leaves
    assert tiny_model_dir("qwen3") == first and _digest(first) == good and (first / MANIFEST).exists()
