"""Tool-call parsers registered with verl's ``ToolParser`` registry.

verl's own ``hermes`` parser logs and *drops* a malformed ``<tool_call>`` block; when every call of a turn is
malformed the episode silently ends, and the model never learns what it did wrong. Our parsers never drop: a block
that cannot be used becomes a :data:`MALFORMED_CALL` function call carrying the reason, which ``visionr3_agent``
turns into an error turn the model sees.

- ``visionr3_hermes``: Qwen's ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (all of them, in order).
- ``bbox_json``: VLM-R3's bare ``{"bbox_2d": [x1, y1, x2, y2]}`` written inline in the reasoning, no tags. The *last*
  such object of the segment is the call (VLM-R3's rule); a segment that closes ``</answer>`` is a final answer.

The parsers decode with special tokens kept (like verl's hermes), so the returned content is what the model wrote.
"""

from __future__ import annotations

import asyncio
import json
import re

from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser

MALFORMED_CALL = "__visionr3_malformed_call__"
"""Name of the placeholder call for a block that could not be parsed; its arguments are ``{"error": reason}``."""

HERMES_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
# A JSON object that mentions bbox_2d, allowing one level of nesting for the list (VLM-R3 takes the last {...}).
BBOX_OBJECT = re.compile(r"\{[^{}]*\"bbox_2d\"[^{}]*\}?")


def malformed(reason: str) -> FunctionCall:
    return FunctionCall(name=MALFORMED_CALL, arguments=json.dumps({"error": reason}, ensure_ascii=False))


def parse_hermes_block(block: str) -> FunctionCall:
    """One ``<tool_call>`` body -> a call, or a :func:`malformed` placeholder saying why not."""
    try:
        payload = json.loads(block)
    except json.JSONDecodeError as exc:
        return malformed(f"the tool call is not valid JSON ({exc.msg} at position {exc.pos})")
    if not isinstance(payload, dict):
        return malformed("the tool call must be a JSON object with \"name\" and \"arguments\"")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return malformed("the tool call has no \"name\"")
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some models double-encode; keep it if it decodes to an object
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return malformed(f"the arguments of {name} are not a JSON object")
    if not isinstance(arguments, dict):
        return malformed(f"the arguments of {name} must be a JSON object")
    return FunctionCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def parse_hermes(text: str) -> tuple[str, list[FunctionCall]]:
    """(text without the call blocks, calls in order). An unterminated ``<tool_call>`` is a malformed call."""
    calls = [parse_hermes_block(block.strip()) for block in HERMES_BLOCK.findall(text)]
    content = HERMES_BLOCK.sub("", text)
    if "<tool_call>" in content:
        calls.append(malformed("the tool call was not closed with </tool_call>"))
        content = content[: content.index("<tool_call>")]
    return content, calls


def parse_bbox_json(text: str, tool_name: str) -> tuple[str, list[FunctionCall]]:
    """VLM-R3: the last inline ``{"bbox_2d": [...]}`` of a segment is a call to ``tool_name``."""
    if "</answer>" in text or "bbox_2d" not in text:
        return text, []
    matches = list(BBOX_OBJECT.finditer(text))
    if not matches:
        return text, [malformed("write the box as {\"bbox_2d\": [x1, y1, x2, y2]}")]
    last = matches[-1]
    try:
        payload = json.loads(last.group(0))
    except json.JSONDecodeError as exc:
        return text, [malformed(f"the box is not valid JSON ({exc.msg}); write {{\"bbox_2d\": [x1, y1, x2, y2]}}")]
    if not isinstance(payload, dict) or "bbox_2d" not in payload:
        return text, [malformed("write the box as {\"bbox_2d\": [x1, y1, x2, y2]}")]
    return text, [FunctionCall(name=tool_name, arguments=json.dumps(payload, ensure_ascii=False))]


class _DecodingParser(ToolParser):
    async def _decode(self, responses_ids: list[int]) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.tokenizer.decode, responses_ids)


@ToolParser.register("visionr3_hermes")
class HermesParser(_DecodingParser):
    """Qwen hermes tool calls; malformed blocks become error calls instead of vanishing."""

    async def extract_tool_calls(self, responses_ids: list[int], tools=None) -> tuple[str, list[FunctionCall]]:
        return parse_hermes(await self._decode(responses_ids))


@ToolParser.register("bbox_json")
class BBoxJSONParser(_DecodingParser):
    """VLM-R3's bare ``{"bbox_2d": [...]}``, routed to the first available tool that takes ``bbox_2d``."""

    async def extract_tool_calls(self, responses_ids: list[int], tools=None) -> tuple[str, list[FunctionCall]]:
        return parse_bbox_json(await self._decode(responses_ids), _bbox_tool_name(tools))


def _bbox_tool_name(tools) -> str:
    for tool in tools or []:
        function = getattr(tool, "function", None)
        properties = getattr(getattr(function, "parameters", None), "properties", None) or {}
        if "bbox_2d" in properties:
            return function.name
    return "image_zoom_in_tool"
