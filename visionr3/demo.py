"""The CPU demo behind ``visionr3 demo`` (README's first quickstart command).

What it runs today (the foundation): builds — or reuses from the cache — the tiny offline Qwen-VL checkpoint with the
real Qwen vocabulary, renders a tool-using conversation (image -> crop call -> cropped image -> answer) through our
tool-capable chat template and the processor, takes one supervised training step on it with the loss on assistant
tokens only, and generates a reply. It proves the whole model stack works on this machine and says what it did.

What it will run once the CPU trainer lands (issue 5): verl's real GRPO trainer with the crop/zoom tool and a rule
reward, then a checkpoint merge and reload. Until then this demo does not train with RL, and says so.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def assistant_label_mask(input_ids: list[int], im_start: int, im_end: int, assistant_header: list[int]) -> list[bool]:
    """True on the tokens of assistant turns (after ``<|im_start|>assistant\\n`` up to and including ``<|im_end|>``).

    Everything else — system, user and tool turns, and image pads inside them — is context, not a training target.
    """
    mask = [False] * len(input_ids)
    i, n, h = 0, len(input_ids), len(assistant_header)
    while i < n:
        if input_ids[i] == im_start and input_ids[i + 1 : i + 1 + h] == assistant_header:
            j = i + 1 + h
            while j < n and input_ids[j] != im_end:
                mask[j] = True
                j += 1
            if j < n:
                mask[j] = True
            i = j
        i += 1
    return mask


def run_demo(output_dir: str | os.PathLike = "outputs/cpu_demo", arch: str = "qwen2_5_vl") -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForImageTextToText

    from visionr3.processing import load_processor
    from visionr3.testing.conversations import CROP_TOOL_SCHEMA, images_of, marked_canvas, tool_conversation
    from visionr3.testing.tiny_model import QWEN_TOKEN_IDS, tiny_model_dir

    torch.manual_seed(0)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    model_dir = tiny_model_dir(arch)
    timings["build_or_load_checkpoint_s"] = time.perf_counter() - start
    print(f"[1/4] tiny {arch} checkpoint: {model_dir}")

    processor = load_processor(model_dir)
    canvas = marked_canvas()
    messages = tool_conversation(canvas)
    text = processor.apply_chat_template(messages, tools=[CROP_TOOL_SCHEMA], tokenize=False)
    inputs = processor(text=[text], images=images_of(messages), return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    image_pads = ids.count(QWEN_TOKEN_IDS["<|image_pad|>"])
    print(
        f"[2/4] rendered a tool-using chat: {len(ids)} tokens, {len(images_of(messages))} images "
        f"({image_pads} <|image_pad|> tokens), {sum(len(m.get('tool_calls', [])) for m in messages)} tool call"
    )

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    header = processor.tokenizer.encode("assistant\n", add_special_tokens=False)
    mask = assistant_label_mask(ids, QWEN_TOKEN_IDS["<|im_start|>"], QWEN_TOKEN_IDS["<|im_end|>"], header)
    labels = inputs["input_ids"].clone()
    labels[0, [not m for m in mask]] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    losses = []
    for _ in range(2):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    timings["train_step_s"] = (time.perf_counter() - start) / 2
    print(f"[3/4] 2 supervised steps on {sum(mask)} assistant tokens: loss {losses[0]:.3f} -> {losses[1]:.3f}")

    model.eval()
    prompt = processor.apply_chat_template(messages[:2], tools=[CROP_TOOL_SCHEMA], tokenize=False, add_generation_prompt=True)
    prompt_inputs = processor(text=[prompt], images=[canvas.image], return_tensors="pt")
    start = time.perf_counter()
    with torch.no_grad():
        generated = model.generate(**prompt_inputs, max_new_tokens=16, do_sample=False)
    timings["generate_16_tokens_s"] = time.perf_counter() - start
    reply = processor.tokenizer.decode(generated[0, prompt_inputs["input_ids"].shape[1] :], skip_special_tokens=False)
    print(f"[4/4] generated {generated.shape[1] - prompt_inputs['input_ids'].shape[1]} tokens (random tiny model): {reply!r}")

    summary = {
        "arch": arch,
        "model_dir": str(model_dir),
        "tokens": len(ids),
        "image_pad_tokens": image_pads,
        "assistant_tokens": sum(mask),
        "losses": losses,
        "timings": timings,
        "rl_training": "not yet: verl's GRPO trainer on CPU lands with issue 5",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"demo done: model stack verified on CPU (render, train step, generate); summary in {out / 'summary.json'}. "
        "RL training (verl GRPO + crop tool) is not part of this demo yet."
    )
    return 0
