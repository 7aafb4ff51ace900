"""``visionr3_agent``: verl's ``ToolAgentLoop`` for image tools, extended by overriding its hooks (not copied).

Declared in ``configs/agent_loop.yaml`` (``actor_rollout_ref.rollout.agent.agent_loop_config_path``); rows choose it
with the ``agent_name`` column. What it adds to verl's loop, and why:

- **Error turns, never silence.** Malformed calls (bad JSON, no name, unclosed ``<tool_call>``, a box that is not four
  numbers), unknown tools and tool failures all come back as an ``Error: ...`` tool turn the model reads. verl's
  hermes parser drops malformed calls and ends the episode instead (see :mod:`visionr3.agent.parsers`). A call that
  fails because the *source* cannot be used (the tool's ``data_error``) is a data error, not the model's: it is
  counted in ``tool_data_errors``, not ``invalid_tool_calls``.
- **Full-resolution sources.** Before verl resizes the prompt images, the loop keeps the originals from the raw
  prompt and passes them, with the size the model actually saw, to every tool call (``create_kwargs``). Tools crop
  and re-render from the original; box coordinates are mapped from the seen frame.
- **VisionThink's low-resolution first view** (``low_res_factor``): the prompt images are downsampled per side after
  the dataset's budget; the resize tool then re-renders the original at the pre-downsampling size.
- **VLM-R3's inline boxes** (``tool_format: bbox_json``): generation stops at the box (``stop`` strings), the crop is
  inserted *inside the same assistant turn* (``<|vision_start|><|image_pad|>…<|vision_end|>``, mask 0) and generation
  resumes — no user turn, as in the paper's code.
- **Limits** on assistant turns and on images per trajectory (an over-limit call gets an error turn, or ends the
  trajectory with ``image_limit_action: terminate`` as VisionThink does).
- **Per-trajectory metrics** in ``extra_fields`` (verl forwards every key to the reward function's ``extra_info``;
  the keys and their meanings are :mod:`visionr3.agent.trajectory`), ``assistant_turns`` among them (the decoded
  text of each run of trained tokens, so per-turn format rewards need not re-split a response whose tool turns were
  decoded as text).
  (``AgentLoopOutput.metrics`` keeps only verl's own timing fields, so nothing of ours goes there.)
- **Vision-SR1's self-reward pass** (``self_reward``): after the trajectory, the same policy, through the same
  rollout server, answers the question from its own ``<description>`` alone, without the image. The answer goes to
  ``extra_fields`` (``self_answer``, ``self_reward_status``) for the reward function; its tokens are never part of
  the trajectory, so they are never trained on. See :class:`SelfRewardConfig`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from uuid import uuid4

from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput
from verl.experimental.agent_loop.tool_agent_loop import AgentData, AgentState, ToolAgentLoop
from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser
from verl.tools.schemas import ToolResponse

from visionr3.agent import parsers  # noqa: F401  (registers visionr3_hermes and bbox_json with verl's ToolParser)
from visionr3.agent.parsers import MALFORMED_CALL
from visionr3.agent.trajectory import (
    ASSISTANT_TURNS,
    IMAGE_TOKENS,
    NUM_IMAGES,
    SELF_ANSWER,
    SELF_ANSWER_TOKENS,
    SELF_REWARD_STATUS,
    TOOL_IMAGES,
    ToolCallLogEntry,
    TrajectoryStats,
)
from visionr3.config import plain
from visionr3.processing import image_items, seen_size, shared_resize
from visionr3.reward.extract import description as extract_description
from visionr3.tools.geometry import downsampled_size

logger = logging.getLogger(__name__)

# VLM-R3's stop strings: generation pauses right after a box (or a final answer).
VLM_R3_STOP = ["]}", "]\n}", "] }", "</answer>"]


SELF_REWARD_PROMPT = (
    "Text description: {description}\nQuestion: {question}\nYou are provided a text description of a problem and a "
    "question. Determine the answer to the question based on the text description. First provide an internal "
    "step-by-step reasoning within <think> </think> tags, then provide a single word or phrase answer in \\boxed{{}}."
)
"""Vision-SR1's ``ABS_Verify_Prompt`` (papers.md §3.1), verbatim."""

LEAK_MARKERS = ("\\boxed", "<answer>")
"""A description containing these would hand its own answer to the text-only pass (the released code's leak)."""


@dataclass(frozen=True)
class SelfRewardConfig:
    """``self_reward`` of an agent-loop entry: Vision-SR1's second pass.

    ``temperature``/``top_p``/``max_tokens`` are its sampling (the paper: 1.0 / 0.99 / 2048); in validation (greedy
    main pass) it is greedy too. ``prompt`` has ``{description}`` and ``{question}`` fields.
    """

    enable: bool = False
    temperature: float = 1.0
    top_p: float = 0.99
    max_tokens: int = 2048
    prompt: str = SELF_REWARD_PROMPT

    @classmethod
    def from_dict(cls, raw: Any) -> "SelfRewardConfig":
        raw = dict(plain(raw) or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"visionr3_agent: unknown self_reward keys {sorted(unknown)}")
        return cls(**raw)


def description_status(text: str | None) -> str:
    """``answered`` (usable), ``no_description``, ``empty_description`` or ``leaky_description``."""
    if text is None:
        return "no_description"
    if not text.strip():
        return "empty_description"
    if any(marker in text for marker in LEAK_MARKERS):
        return "leaky_description"
    return "answered"


def question_text(extra_info: dict | None, raw_prompt: list[dict]) -> str:
    """The question for the text-only pass: ``extra_info.question``, else the last user turn's text without images."""
    question = (extra_info or {}).get("question")
    if question:
        return str(question)
    for message in reversed(raw_prompt):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content.replace("<image>", "").strip()
        return " ".join(str(item.get("text", "")) for item in content if item.get("type") == "text").strip()
    return ""


def value_runs(mask: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(value, start, end)`` for each maximal run of equal values in ``mask``: in a response mask, the generated
    segments (1) and what the loop inserted between them (0)."""
    runs, start = [], 0
    for value, group in itertools.groupby(mask):
        end = start + sum(1 for _ in group)
        runs.append((int(value), start, end))
        start = end
    return runs


def mask_runs(response_mask: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, end)`` spans of consecutive 1s: the assistant's own tokens, one span per generated segment."""
    return [(start, end) for value, start, end in value_runs(response_mask) if value]


def call_log_entry(tool_call: FunctionCall, response: ToolResponse, info: dict | None) -> ToolCallLogEntry:
    """What one call did, for :attr:`TrajectoryStats.tool_call_log`: the name, the arguments (parsed when they are
    JSON, else the raw text), whether it returned an image, the error the model was shown, whether that error was the
    source's fault (``data_error``), the source-pixel box."""
    info = dict(info or {})
    try:
        arguments: Any = json.loads(tool_call.arguments)
    except (TypeError, json.JSONDecodeError):
        arguments = tool_call.arguments
    if tool_call.name == MALFORMED_CALL and isinstance(arguments, dict):
        arguments = arguments.get("text", arguments)
    valid = bool(info.get("valid")) and bool(response.image)
    error = None if valid else str(info.get("error") or response.text or "tool returned no image")
    box = info.get("source_box")
    return {
        "name": tool_call.name,
        "arguments": arguments,
        "valid": valid,
        "error": error,
        "data_error": bool(info.get("data_error")),
        "box": [int(v) for v in box] if box is not None and valid else None,
    }


def original_images(messages: list[dict]) -> list[Any]:
    """References to the prompt's images at original resolution, in order, before any resizing.

    verl's RLHFDataset puts ``{"type": "image", "image": <PIL or path>, ...}`` items into the raw prompt (opening bytes
    at full resolution). The item itself is returned so :func:`visionr3.processing.open_image` can use whichever
    form it carries.
    """
    items = image_items(messages)
    for item in items:
        if isinstance(item.get("image"), Image.Image):
            item["image"].load()  # decode once here: tool threads of n sibling rollouts share this object
    return items


class VisionAgentLoop(ToolAgentLoop):
    """verl's ToolAgentLoop with error turns, full-resolution sources, image limits and per-trajectory metrics.

    Constructor keywords (the agent-loop YAML entry's fields; everything else is verl's):

    - ``tool_format``: ``visionr3_hermes`` (default) or ``bbox_json`` (VLM-R3 inline boxes) — any name registered
      with verl's ``ToolParser`` works;
    - ``max_turns``: assistant turns (generation calls) per trajectory; default: verl's
      ``multi_turn.max_assistant_turns``;
    - ``max_images``: images per trajectory including the prompt's (default: unlimited);
      ``image_limit_action``: ``error`` (default) or ``terminate``;
    - ``low_res_factor``: VisionThink's first view, e.g. 0.5 per side (default: none);
    - ``stop``: extra stop strings (default for ``bbox_json``: VLM-R3's);
    - ``render_tool_schemas``: put the tools block in the system prompt (default true; VLM-R3 prompts describe the
      box format in the user turn instead);
    - ``self_reward``: Vision-SR1's text-only second pass (:class:`SelfRewardConfig`; off by default).
    """

    def __init__(
        self,
        *args,
        tool_format: str = "visionr3_hermes",
        max_turns: int | None = None,
        max_images: int | None = None,
        image_limit_action: str = "error",
        low_res_factor: float | None = None,
        stop: list[str] | None = None,
        render_tool_schemas: bool = True,
        self_reward: Any = None,
        **kwargs,
    ):
        kwargs.pop("name", None)  # verl passes the YAML entry's name too
        super().__init__(*args, **kwargs)
        self.tool_parser = ToolParser.get_tool_parser(tool_format, self.tokenizer)
        self.tool_parser_name = tool_format
        self.inline_observations = tool_format == "bbox_json"
        if max_turns is not None:
            self.max_assistant_turns = int(max_turns)
        if image_limit_action not in ("error", "terminate"):
            raise ValueError(f"visionr3_agent: image_limit_action must be 'error' or 'terminate', got {image_limit_action!r}")
        self.max_images = int(max_images) if max_images is not None else None
        self.image_limit_action = image_limit_action
        self.low_res_factor = float(low_res_factor) if low_res_factor else None
        stop = plain(stop)
        self.stop = list(stop) if stop else (list(VLM_R3_STOP) if self.inline_observations else [])
        if not render_tool_schemas:
            self.tool_schemas = []
        self.self_reward = SelfRewardConfig.from_dict(self_reward)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self._stats = TrajectoryStats()
        self._sources: list[Any] = []
        self._seen_sizes: list[tuple[int, int]] = []
        self._full_sizes: list[tuple[int, int]] = []
        self._pending_images = 0

    # ---- trajectory ------------------------------------------------------------------------------------------------

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        self._stats = TrajectoryStats()
        self._sources = original_images(list(kwargs["raw_prompt"]))
        info = kwargs.get("extra_info") or {}
        self._row_name = kwargs.get("visionr3_row") or (  # VisionRLDataset's <file> row <n>
            f"data_source {kwargs.get('data_source')!r}, extra_info.index {info.get('index')!r}")
        output = await super().run(sampling_params, **kwargs)
        images = output.multi_modal_data.get("images") or []
        stats = asdict(self._stats)
        turns = await self.loop.run_in_executor(None, self._assistant_turns, output.response_ids, output.response_mask)
        output.extra_fields.update(
            {
                **stats,
                NUM_IMAGES: len(images),
                TOOL_IMAGES: max(0, len(images) - len(self._sources)),
                IMAGE_TOKENS: (output.prompt_ids + output.response_ids).count(self.image_token_id),
                ASSISTANT_TURNS: turns,
            }
        )
        if self.self_reward.enable:
            question = question_text(kwargs.get("extra_info"), list(kwargs["raw_prompt"]))
            output.extra_fields.update(await self._self_reward_pass("".join(turns), question, sampling_params))
        return output

    def _assistant_turns(self, response_ids: list[int], response_mask: list[int]) -> list[str]:
        return [
            self.tokenizer.decode(response_ids[start:end], skip_special_tokens=True)
            for start, end in mask_runs(list(response_mask))
        ]

    async def _self_reward_pass(self, response_text: str, question: str, sampling_params: dict[str, Any]) -> dict:
        """Vision-SR1: answer from the description alone, text only, same server, nothing trained on."""
        description = extract_description(response_text)
        status = description_status(description)
        fields: dict[str, Any] = {SELF_REWARD_STATUS: status, SELF_ANSWER: None, SELF_ANSWER_TOKENS: 0}
        if status != "answered":
            return fields
        config = self.self_reward
        prompt = config.prompt.format(description=description, question=question)
        greedy = float(sampling_params.get("temperature", 1.0) or 0.0) < 1e-5
        params = {
            **sampling_params,
            "temperature": 0.0 if greedy else config.temperature,
            "top_p": 1.0 if greedy else config.top_p,
            "max_tokens": config.max_tokens,
            "logprobs": False,
        }
        try:
            prompt_ids = await self.ct_build_initial_tokens([{"role": "user", "content": prompt}])
            result = await self.server_manager.generate(
                request_id=uuid4().hex, prompt_ids=prompt_ids, sampling_params=params, image_data=None
            )
        except Exception as exc:  # a failed second pass costs this sample its visual reward, not the step
            logger.warning("self-reward pass failed: %s", exc)
            return {**fields, SELF_REWARD_STATUS: "failed"}
        answer = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        return {**fields, SELF_ANSWER: answer, SELF_ANSWER_TOKENS: len(result.token_ids)}

    async def process_multi_modal_info(self, messages: list[dict]) -> dict:
        try:
            data = await super().process_multi_modal_info(messages)
        except Exception as exc:
            # the trainer decodes every prompt image before rollout (VisionR3SyncTrainer._fetch_one_gen_batch), so
            # this is a processor's refusal or a loop run outside it (eval); the prompt's group fails (verl: status
            # "failure") and the replay buffer replaces it (NOTE.md, "visionr3_sync and verl's buffers")
            raise ValueError(f"the row's image cannot be decoded ({getattr(self, '_row_name', 'row unknown')}): "
                             f"{type(exc).__name__}: {exc}") from exc
        images = data.get("images")
        if images:
            self._full_sizes = [image.size for image in images]
            if self.low_res_factor:
                images = [  # shared by the group's samples, like the view it is made from (shared_resize)
                    shared_resize(image, downsampled_size(*image.size, self.low_res_factor), Image.Resampling.LANCZOS)
                    for image in images
                ]
                data["images"] = images
            self._seen_sizes = [seen_size(self.processor, image.size, self.mm_processor_kwargs) for image in images]
        return data

    # ---- generation -----------------------------------------------------------------------------------------------

    async def _handle_generating_state(self, agent_data: AgentData, sampling_params: dict[str, Any], ignore_termination: bool = False) -> AgentState:
        if self.stop:
            stop = list(dict.fromkeys([*(sampling_params.get("stop") or []), *self.stop]))
            sampling_params = {**sampling_params, "stop": stop, "include_stop_str_in_output": True}
        return await super()._handle_generating_state(agent_data, sampling_params, ignore_termination)

    # ---- tools ------------------------------------------------------------------------------------------------------

    async def _handle_processing_tools_state(self, agent_data: AgentData) -> AgentState:
        if self._at_image_limit(agent_data) and self.image_limit_action == "terminate":
            self._stats.image_limit_hits += 1
            return AgentState.TERMINATED
        if self.inline_observations:
            return await self._insert_inline_observation(agent_data)
        return await super()._handle_processing_tools_state(agent_data)

    def _at_image_limit(self, agent_data: AgentData) -> bool:
        return self.max_images is not None and len(agent_data.image_data or []) + self._pending_images >= self.max_images

    async def _call_tool(self, tool_call: FunctionCall, tools_kwargs: dict[str, Any], agent_data: AgentData):
        response, reward, info = await self._execute_call(tool_call, tools_kwargs, agent_data)
        self._stats.tool_call_log.append(json.dumps(call_log_entry(tool_call, response, info), ensure_ascii=False))
        return response, reward, info

    async def _execute_call(self, tool_call: FunctionCall, tools_kwargs: dict[str, Any], agent_data: AgentData):
        self._stats.tool_calls += 1
        active_tools = getattr(agent_data, "_active_tools", self.tools)
        if tool_call.name == MALFORMED_CALL:
            return self._reject(json.loads(tool_call.arguments)["error"])
        if tool_call.name not in active_tools:
            return self._reject(f"unknown tool {tool_call.name!r}; available: {', '.join(sorted(active_tools)) or 'none'}")
        try:
            arguments = json.loads(tool_call.arguments)
        except json.JSONDecodeError as exc:
            return self._reject(f"the arguments of {tool_call.name} are not valid JSON ({exc.msg})")
        if not isinstance(arguments, dict):
            return self._reject(f"the arguments of {tool_call.name} must be a JSON object")
        if self._at_image_limit(agent_data):
            self._stats.image_limit_hits += 1
            return self._reject(f"the limit of {self.max_images} images per conversation is reached; answer now")

        self._pending_images += 1  # parallel calls: images are appended only after the whole gather
        try:
            response, reward, info = await super()._call_tool(tool_call, self._with_sources(tools_kwargs, tool_call.name), agent_data)
        finally:
            self._pending_images -= 1
        info = dict(info or {})
        if info.get("valid") and response.image:
            self._stats.valid_tool_calls += 1
            if "source_box" in info:
                self._stats.crop_boxes.append(list(info["source_box"]))
        else:
            if info.get("data_error"):
                self._stats.tool_data_errors += 1
            else:
                self._stats.invalid_tool_calls += 1
            self._stats.tool_errors.append(str(info.get("error") or response.text or "tool returned no image"))
        return response, reward, info

    def _reject(self, message: str) -> tuple[ToolResponse, float, dict]:
        self._stats.invalid_tool_calls += 1
        self._stats.tool_errors.append(message)
        return ToolResponse(text=f"Error: {message}"), 0.0, {"valid": False, "error": message}

    def _with_sources(self, tools_kwargs: dict[str, Any], tool_name: str) -> dict[str, Any]:
        """Add this trajectory's originals and seen sizes to the tool's ``create_kwargs`` (the row's own keys win)."""
        entry = dict(tools_kwargs.get(tool_name) or {})
        create_kwargs = {
            "source_images": self._sources,
            "seen_sizes": self._seen_sizes,
            "full_sizes": self._full_sizes,
            **{k: v for k, v in dict(entry.get("create_kwargs") or {}).items() if v is not None},
        }
        return {**tools_kwargs, tool_name: {**entry, "create_kwargs": create_kwargs}}

    async def _insert_inline_observation(self, agent_data: AgentData) -> AgentState:
        """VLM-R3: put the crop (or the error) into the running assistant turn as context tokens (mask 0)."""
        tool_call = agent_data.tool_calls[-1]  # VLM-R3 executes the last box of a segment
        response, reward, _ = await self._call_tool(tool_call, agent_data.tools_kwargs, agent_data)
        tokenizer = self.tokenizer
        ids = [] if agent_data.prompt_ids and tokenizer.decode(agent_data.prompt_ids[-1:]).endswith("\n") else tokenizer.encode("\n", add_special_tokens=False)
        new_images = [image for image in response.image or [] if image is not None]
        if new_images:
            merge = int(getattr(self.processor.image_processor, "merge_size", 2))
            grids = self.processor.image_processor(images=new_images, **(agent_data.mm_processor_kwargs or {}))["image_grid_thw"]
            for grid in grids:
                ids += tokenizer.convert_tokens_to_ids(["<|vision_start|>"])
                ids += [self.image_token_id] * (int(grid.prod()) // merge**2)
                ids += tokenizer.convert_tokens_to_ids(["<|vision_end|>"])
        else:
            ids += tokenizer.encode(f"{response.text}\n", add_special_tokens=False)
        if len(agent_data.response_mask) + len(ids) >= self.response_length:
            return AgentState.TERMINATED
        agent_data.prompt_ids = agent_data.prompt_ids + ids
        agent_data.response_mask = agent_data.response_mask + [0] * len(ids)
        if agent_data.response_logprobs:
            agent_data.response_logprobs = agent_data.response_logprobs + [0.0] * len(ids)
        if new_images:
            agent_data.image_data = list(agent_data.image_data or []) + new_images
        if reward is not None:
            agent_data.tool_rewards.append(reward)
        agent_data.user_turns += 1
        return AgentState.GENERATING
