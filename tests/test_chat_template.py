"""The tool-capable chat templates: exact rendering, append-only prefixes, and verl's incremental tokenisation."""

import pytest

from visionr3.testing.conversations import CROP_TOOL_SCHEMA, marked_canvas, tool_conversation

TOOL_BLOCK = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "image_zoom_in_tool", "description": "Zoom in on a region of the '
    'image: crop the bounding box and return it enlarged.", "parameters": {"type": "object", "properties": '
    '{"bbox_2d": {"type": "array", "description": "[x1, y1, x2, y2] in pixels of the image you saw"}, "label": '
    '{"type": "string", "description": "what is inside the box (optional)"}}, "required": ["bbox_2d"]}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
CONVERSATION_BODY = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour is the small square?<|im_end|>\n"
    "<|im_start|>assistant\n<think>The square is tiny; zoom in.</think>\n<tool_call>\n"
    '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [572, 392, 656, 476], "label": "square"}}\n'
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>Zoomed in on [572, 392, 656, 476]"
    "\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n<think>It is red.</think><answer>red</answer><|im_end|>\n"
)


def render(processor, messages, **kwargs):
    return processor.apply_chat_template(messages, tools=[CROP_TOOL_SCHEMA], tokenize=False, **kwargs)


def test_tool_conversation_renders_exactly(processor):
    text = render(processor, tool_conversation(marked_canvas()))
    assert text == "<|im_start|>system\nYou are a helpful assistant." + TOOL_BLOCK + CONVERSATION_BODY


@pytest.mark.parametrize("arch_name,expected_system", [("qwen2_5_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"), ("qwen3_vl", "")])
def test_default_system_prompt_without_tools(tiny_model_dirs, arch_name, expected_system):
    from visionr3.processing import load_processor

    processor = load_processor(tiny_model_dirs[arch_name])
    text = processor.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == expected_system + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_consecutive_tool_results_share_one_user_turn(processor):
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"type": "function", "function": {"name": "b", "arguments": {"x": 1}}},
        ]},
        {"role": "tool", "content": "ra"},
        {"role": "tool", "content": "rb"},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith(
        '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": 1}}'
        "\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nra\n</tool_response>\n<tool_response>\nrb\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_rendering_is_append_only(processor):
    """Every prefix of the conversation renders to a prefix of the full text (verl tokenises turns as deltas)."""
    messages = tool_conversation(marked_canvas())
    full = render(processor, messages)
    for k in range(1, len(messages)):
        assert full.startswith(render(processor, messages[:k])), f"prefix of {k} messages"


def test_verl_continuous_token_builder_tool_delta(processor):
    """verl's Qwen builder renders a tool turn as a delta through our template and gets exactly our tool turn."""
    from verl.utils.tokenizer.continuous_token import QwenContinuousTokenBuilder

    builder = QwenContinuousTokenBuilder(processor.tokenizer)
    previous = [{"role": "user", "content": "q"}]
    updated = previous + [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "t", "arguments": "{}"}}]},
        {"role": "tool", "content": "crop saved"},
    ]
    delta = builder.tokenize_context_incremental_messages(updated[:2], updated, tools=[CROP_TOOL_SCHEMA])
    assert processor.tokenizer.decode(delta) == (
        "<|im_start|>user\n<tool_response>\ncrop saved\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
