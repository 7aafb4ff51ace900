"""A chat with an image and a tool call goes through template, processor and model: forward, backward, generate."""

import pytest
import torch

from visionr3.demo.warmup import assistant_label_mask
from visionr3.testing.conversations import CROP_TOOL_SCHEMA, images_of, marked_canvas, tool_conversation
from visionr3.testing.tiny_model import QWEN_TOKEN_IDS

IM_START, IM_END = QWEN_TOKEN_IDS["<|im_start|>"], QWEN_TOKEN_IDS["<|im_end|>"]


@pytest.fixture(scope="module")
def batch(processor):
    messages = tool_conversation(marked_canvas())
    text = processor.apply_chat_template(messages, tools=[CROP_TOOL_SCHEMA], tokenize=False)
    return messages, processor(text=[text], images=images_of(messages), return_tensors="pt")


@pytest.fixture(scope="module")
def model(model_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)


def test_token_stream_has_real_qwen_ids(batch, processor):
    _, inputs = batch
    ids = inputs["input_ids"][0].tolist()
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<tool_call>", "</tool_call>"):
        assert QWEN_TOKEN_IDS[token] in ids, token
    assert ids.count(QWEN_TOKEN_IDS["<|vision_start|>"]) == 2  # the prompt image and the tool's crop
    # Each image expands to grid_t * grid_h * grid_w / merge_size**2 pads.
    merge = processor.image_processor.merge_size
    expected_pads = int(inputs["image_grid_thw"].prod(dim=1).sum()) // merge**2
    assert ids.count(QWEN_TOKEN_IDS["<|image_pad|>"]) == expected_pads
    assert processor.tokenizer.decode(ids).count("<tool_call>\n{\"name\": \"image_zoom_in_tool\"") == 1


def test_forward_backward_on_assistant_tokens(batch, model, processor):
    _, inputs = batch
    ids = inputs["input_ids"][0].tolist()
    header = processor.tokenizer.encode("assistant\n", add_special_tokens=False)
    mask = assistant_label_mask(ids, IM_START, IM_END, header)
    labels = inputs["input_ids"].clone()
    labels[0, [not m for m in mask]] = -100
    assert not any(m for m, t in zip(mask, ids) if t == QWEN_TOKEN_IDS["<|image_pad|>"]), "image pads are never targets"

    model.train()
    model.zero_grad()
    loss = model(**inputs, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    named = dict(model.named_parameters())
    vision = [p for n, p in named.items() if "visual" in n]
    text = [p for n, p in named.items() if "visual" not in n]
    assert vision and all(p.grad is not None for p in vision), "gradients must reach the vision tower through the crop"
    assert any(p.grad.abs().sum() > 0 for p in vision)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in text)
    model.zero_grad()


def test_generate_after_image_prompt(model, processor):
    canvas = marked_canvas()
    messages = tool_conversation(canvas)[:2]
    prompt = processor.apply_chat_template(messages, tools=[CROP_TOOL_SCHEMA], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[canvas.image], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6 or int(out[0, -1]) in (IM_END, QWEN_TOKEN_IDS["<|endoftext|>"])
    assert torch.equal(out[0, : inputs["input_ids"].shape[1]], inputs["input_ids"][0])


def test_mrope_position_ids_via_verl_processor(batch, processor):
    """verl binds the model's get_rope_index to the processor: 3 M-RoPE rows (t, h, w) over the full sequence."""
    _, inputs = batch
    kwargs = {"mm_token_type_ids": inputs["mm_token_type_ids"]} if "mm_token_type_ids" in inputs else {}
    position_ids, _ = processor.get_rope_index(
        input_ids=inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"],
        **kwargs,
    )
    assert position_ids.shape == (3, 1, inputs["input_ids"].shape[1])
    # Inside an image the three rows differ (h/w vary over the patch grid); in text they are equal.
    pads = inputs["input_ids"][0] == QWEN_TOKEN_IDS["<|image_pad|>"]
    assert not torch.equal(position_ids[1, 0, pads], position_ids[2, 0, pads])
    text = ~pads
    assert torch.equal(position_ids[0, 0, text], position_ids[1, 0, text])


@pytest.mark.parametrize(
    "ids,expected",
    [
        # <|im_start|>user x <|im_end|> <|im_start|>assistant\n y z <|im_end|>
        ([1, 7, 9, 2, 1, 5, 6, 3, 4, 2], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]),
        ([1, 5, 6, 3], [0, 0, 0, 1]),  # an unterminated assistant turn counts to the end
        ([1, 7, 2], [0, 0, 0]),
    ],
)
def test_assistant_label_mask(ids, expected):
    assert assistant_label_mask(ids, im_start=1, im_end=2, assistant_header=[5, 6]) == [bool(e) for e in expected]
