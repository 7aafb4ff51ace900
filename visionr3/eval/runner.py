"""``visionr3 eval``'s engine: a training recipe's agent loop, tools and reward, run on evaluation rows.

Why not a separate inference script, as the papers' repos have: their numbers drifted from training because the
eval script re-implemented the loop (VisionThink's eval returned the original image where training returned a 2x
re-render, VLM-R3's eval had other pixel budgets, DeepEyes' eval ``eval()``-ed tool calls; papers.md). Here the
evaluator composes the recipe's own Hydra config (``recipes/<name>/config.yaml`` on verl's), constructs verl's own
``AgentLoopWorker`` in this process with the recipe's agent loop and tool YAML, and scores every trajectory with the
recipe's reward function (:func:`visionr3.reward.score.score_input`, rules or the judge). Only the inference engine
differs from training (:mod:`visionr3.eval.backends`), and generation uses the rollout's validation parameters —
greedy in every turn by default.

The protocol (:class:`~visionr3.eval.protocol.EvalProtocol`) is resolved against the recipe before anything runs —
``max_turns`` from the agent loop's entry, pixel budgets from ``data`` and the tool YAML — and the resolved values
are the ones written into every record. A protocol knob that differs from the recipe is applied by writing a copy of
the agent-loop and tool YAML files next to the results (``<out>.config/``), which is also the record of what ran.

Multiple-choice rows (``visionr3 prepare``'s eval formats) are re-prompted with their options in the protocol's
fixed-seed order (:func:`~visionr3.eval.protocol.shuffle_row`) and the recipe's prompt style, so one prepared file
serves every recipe. Open-ended rows keep their prompt; their ``agent_name`` becomes the recipe's loop.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from visionr3.agent.loop import value_runs
from visionr3.agent.trajectory import (
    ASSISTANT_TURNS,
    CROP_BOXES,
    NUM_IMAGES,
    SELF_ANSWER,
    SELF_REWARD_STATUS,
    TOOL_CALL_LOG,
    TOOL_CALLS,
    TOOL_IMAGES,
    VALID_TOOL_CALLS,
)
from visionr3.config import VisionR3Settings
from visionr3.eval.protocol import EvalProtocol, shuffle_row
from visionr3.eval.records import RecordWriter, SampleRecord, ToolCall, Turn, read_records, sample_key

logger = logging.getLogger(__name__)

DISPLAY_MAX_SIDE = 1024  # saved display copies of images (boxes stay in source pixels)

_VISION_RUN = re.compile(r"<\|vision_start\|>(?:<\|image_pad\|>|<\|video_pad\|>)*<\|vision_end\|>")
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")


class EvalError(RuntimeError):
    """A run that cannot start or continue (bad data file, protocol mismatch on resume, backend failure)."""


@dataclass
class EvalSettings:
    """Everything ``visionr3 eval`` is given; ``protocol`` holds the knobs that change numbers."""

    model: str
    out: str
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    data: Sequence[str] = ()
    config_name: str = "config"  # the recipe's config (``cpu`` for its CPU variant)
    overrides: Sequence[str] = ()  # Hydra overrides on the recipe config
    batch_size: int = 16  # trajectories in flight together
    limit: int | None = None  # first N rows of each file
    base_url: str | None = None  # openai backend
    served_model: str | None = None  # openai backend: the server's model name (default: the model path)
    api_key_env: str | None = None  # openai backend: the environment variable holding the key (never the key)
    tensor_parallel_size: int = 1  # vllm backend
    gpu_memory_utilization: float = 0.85  # vllm backend
    save_images: bool = True
    progress: bool = True

    @property
    def images_dir(self) -> Path:
        return Path(self.out).with_suffix("").parent / (Path(self.out).stem + ".images")

    @property
    def config_dir(self) -> Path:
        return Path(self.out).parent / (Path(self.out).stem + ".config")


# ---- configuration --------------------------------------------------------------------------------------------------


def compose_recipe(settings: EvalSettings):
    """The recipe's trainer config with the model, the protocol's lengths, budgets and sampling applied."""
    from visionr3.config import RECIPE_SEARCHPATH, recipe_dir
    from visionr3.config import compose

    p = settings.protocol
    overrides = [
        RECIPE_SEARCHPATH,
        f"actor_rollout_ref.model.path={settings.model}",
        f"data.max_prompt_length={p.max_prompt_tokens}",
        f"data.max_response_length={p.max_response_tokens}",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={p.temperature}",
        f"actor_rollout_ref.rollout.val_kwargs.top_p={p.top_p}",
        f"actor_rollout_ref.rollout.val_kwargs.top_k={p.top_k}",
        f"actor_rollout_ref.rollout.val_kwargs.do_sample={not p.greedy}",
        "actor_rollout_ref.rollout.val_kwargs.n=1",
        "actor_rollout_ref.rollout.calculate_log_probs=false",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.seed={p.seed}",
    ]
    if p.min_pixels is not None:
        overrides.append(f"data.min_pixels={p.min_pixels}")
    if p.max_pixels is not None:
        overrides.append(f"data.max_pixels={p.max_pixels}")
    overrides += list(settings.overrides)
    return compose(recipe_dir(p.recipe), settings.config_name, overrides)


def prompt_style(config: Any) -> str:
    """The question wording a composed recipe config (or its parsed ``visionr3`` block) declares
    (``visionr3.prompt_style``): multiple-choice rows are asked again in it, as the recipe's training rows were."""
    from visionr3.data.prompts import STYLES

    block = config if isinstance(config, VisionR3Settings) else VisionR3Settings.from_config(config)
    style = block.prompt_style
    if style not in STYLES:
        raise EvalError(f"visionr3.prompt_style={style!r} in the recipe's config: expected one of {', '.join(sorted(STYLES))}")
    return str(style)


def _load_yaml(path: str | os.PathLike) -> Any:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _write_yaml(path: Path, data: Any) -> str:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(path)


def resolve_protocol(config: Any, settings: EvalSettings) -> tuple[EvalProtocol, Any]:
    """Fill the protocol's unset knobs from the recipe and write the agent-loop/tool YAML copies the run uses.

    Returns the resolved protocol and the config (modified in place: it points at the copies)."""
    from omegaconf import OmegaConf, open_dict

    from visionr3.config import register_resolvers

    register_resolvers()
    p = settings.protocol
    rollout = config.actor_rollout_ref.rollout
    agent_name = str(rollout.agent.default_agent_loop)
    loops = _load_yaml(OmegaConf.select(config, "actor_rollout_ref.rollout.agent.agent_loop_config_path"))
    entry = next((e for e in loops if e.get("name") == agent_name), None)
    if entry is None:
        raise EvalError(f"recipe {p.recipe!r}: agent loop {agent_name!r} is not in its agent_loop_config_path")
    max_turns = p.max_turns
    if max_turns is None:
        max_turns = int(entry.get("max_turns") or rollout.multi_turn.max_assistant_turns or 1)
    entry["max_turns"] = int(max_turns)
    if entry.get("self_reward"):
        # Vision-SR1's text-only pass follows the protocol's sampling (greedy unless sampled).
        entry["self_reward"] = {**entry["self_reward"], "temperature": p.temperature, "top_p": p.top_p}

    tool_path = OmegaConf.select(config, "actor_rollout_ref.rollout.multi_turn.tool_config_path")
    crop_min, crop_max = p.crop_min_pixels, p.crop_max_pixels
    tools_written = None
    if tool_path:
        tools = _load_yaml(tool_path)
        for tool in tools.get("tools") or []:
            cfg = tool.setdefault("config", {})
            if "crop_max_pixels" in cfg or "crop_min_pixels" in cfg or crop_max is not None or crop_min is not None:
                if crop_min is not None:
                    cfg["crop_min_pixels"] = int(crop_min)
                if crop_max is not None:
                    cfg["crop_max_pixels"] = int(crop_max)
                crop_min = cfg.get("crop_min_pixels", crop_min)
                crop_max = cfg.get("crop_max_pixels", crop_max)
        tools_written = _write_yaml(settings.config_dir / "tools.yaml", tools)
    loops_written = _write_yaml(settings.config_dir / "agent_loop.yaml", loops)
    with open_dict(config):
        rollout.agent.agent_loop_config_path = loops_written
        if tools_written:
            rollout.multi_turn.tool_config_path = tools_written
            if OmegaConf.select(config, "data.tool_config_path"):
                config.data.tool_config_path = tools_written
        rollout.multi_turn.max_assistant_turns = int(max_turns)

    judge = judge_settings(config, p.scoring)
    resolved = replace(
        p,
        agent_loop=agent_name,
        max_turns=int(max_turns),
        min_pixels=_int_or_none(OmegaConf.select(config, "data.min_pixels")),
        max_pixels=_int_or_none(OmegaConf.select(config, "data.max_pixels")),
        crop_min_pixels=_int_or_none(crop_min),
        crop_max_pixels=_int_or_none(crop_max),
        judge_model=(str(judge.get("model") or "") or None) if p.scoring == "judge" else None,
    )
    return resolved, config


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def judge_settings(config: Any, scoring: str) -> dict[str, Any]:
    """The recipe's ``visionr3.reward.judge`` for ``scoring=judge`` (asked always unless the recipe asks only when
    the rules cannot tell), or ``use: never`` for ``scoring=rules``."""
    from omegaconf import OmegaConf

    judge = dict(OmegaConf.to_container(config.visionr3.reward.judge, resolve=True)) if "visionr3" in config else {}
    if scoring == "rules":
        judge["use"] = "never"
    elif judge.get("use", "never") == "never":
        judge["use"] = "always"
    return judge


# ---- turning verl's output into records -----------------------------------------------------------------------------


def clean_turn_text(text: str) -> str:
    """A decoded turn (special tokens kept) for reading: images as ``<image>``, chat markers and role headers
    dropped."""
    text = _VISION_RUN.sub("<image>", text)
    text = _SPECIAL.sub("\n", text)
    lines = text.split("\n")
    while lines and lines[0].strip() in ("", "user", "tool", "assistant"):
        lines.pop(0)
    while lines and lines[-1].strip() in ("", "user", "tool", "assistant"):
        lines.pop()
    return "\n".join(lines)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


# ---- the evaluator ---------------------------------------------------------------------------------------------------


class Evaluator:
    """One model, one recipe, one protocol: builds verl's ``AgentLoopWorker`` once and evaluates rows with it."""

    def __init__(self, settings: EvalSettings):
        from visionr3.processing import prepare_runtime

        prepare_runtime()
        self.settings = settings
        model_path = os.path.expanduser(settings.model)
        if not os.path.isdir(model_path):  # every backend: the loop templates and tokenizes with its files
            raise EvalError(f"--model {model_path!r} is not a local checkpoint directory (merge FSDP checkpoints with `visionr3 merge`)")
        config = compose_recipe(settings)
        self.protocol, config = resolve_protocol(config, settings)
        self.config = config
        block = VisionR3Settings.from_config(config)  # the visionr3 block, parsed once (unknown keys named)
        self.prompt_style = prompt_style(block)
        self.judge = judge_settings(config, self.protocol.scoring)
        self.formula = block.formula  # or the deprecated visionr3.reward.recipe, until the next release
        self.reward_params = dict(block.params)
        # before any model is loaded: a refused resume should cost seconds, not a model load
        self.previous: list[SampleRecord] = self.check_resume()
        self.loop = asyncio.new_event_loop()
        self.inner_client = self._make_client()
        self.worker = self._make_worker()
        self.tokenizer = self.worker.tokenizer
        self.processor = self.worker.processor

    # -- construction --

    def _make_client(self) -> Any:
        s, p = self.settings, self.protocol
        rollout = self.config.actor_rollout_ref.rollout
        if p.backend == "hf":
            from visionr3.eval.backends import hf_client

            return hf_client(rollout, s.model)
        if p.backend == "vllm":
            from visionr3.eval.backends import VLLMEngineClient
            from visionr3.processing import load_processor

            return VLLMEngineClient(
                s.model, load_processor(s.model), prompt_length=int(rollout.prompt_length),
                response_length=int(rollout.response_length), tensor_parallel_size=s.tensor_parallel_size,
                gpu_memory_utilization=s.gpu_memory_utilization, seed=p.seed,
            )
        if p.backend == "openai":
            from visionr3.eval.openai_backend import OpenAIChatClient
            from visionr3.processing import load_tokenizer

            if not s.base_url:
                raise EvalError("--backend openai needs --base-url (e.g. http://host:8000/v1)")
            return OpenAIChatClient(
                base_url=s.base_url, model=s.served_model or s.model, api_key_env=s.api_key_env,
                tokenizer=load_tokenizer(s.model), prompt_length=int(rollout.prompt_length),
                response_length=int(rollout.response_length),
            )
        raise EvalError(f"unknown backend {p.backend!r}: expected hf, vllm or openai")

    def _make_worker(self) -> Any:
        from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

        model_path = os.path.expanduser(self.settings.model)
        worker = AgentLoopWorker(self.config, self.inner_client)
        if worker.processor is None and hasattr(worker.model_config.hf_config, "vision_config"):
            raise EvalError(f"no multimodal processor could be loaded from {model_path}")
        return worker

    def close(self) -> None:
        sock = getattr(self.inner_client, "_port_sock", None)  # the hf server's reserved (never served) HTTP port
        if sock is not None:
            sock.close()
        close, shutdown = getattr(self.inner_client, "aclose", None), getattr(self.inner_client, "shutdown", None)
        if callable(close):  # on this loop: the one the client's tasks and sessions live on
            self.loop.run_until_complete(close())
        elif callable(shutdown):
            shutdown()
        if self.protocol.scoring == "judge":  # the judge clients this loop opened (their HTTP sessions)
            from visionr3.reward.judge.client import close_judge_clients

            self.loop.run_until_complete(close_judge_clients())
        self.loop.close()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- rows --

    def prepare_row(self, row: Mapping[str, Any], *, data_file: str, row_number: int) -> tuple[dict, dict]:
        """A parquet-form row → (the dataset item verl's worker takes, the record's question fields)."""
        from visionr3.data.dataset import raw_prompt
        from visionr3.reward.score import ground_truth_text

        row = {k: copy.deepcopy(v) if k != "images" else v for k, v in row.items()}
        info = dict(row.get("extra_info") or {})
        prompt = [dict(m) for m in (row.get("prompt") or [])]
        if not prompt:
            raise EvalError(f"{data_file}: row {row_number}: field 'prompt' is empty")
        benchmark = str(info.get("benchmark") or row.get("data_source") or Path(data_file).stem or "eval")
        # the first of source_id, index, row number that is set (an index of 0 is set: `or` would skip it)
        sample_id = str(next((v for v in (info.get("source_id"), info.get("index")) if v not in (None, "")), row_number))
        fields: dict[str, Any] = {
            "data_file": data_file, "row": row_number, "benchmark": benchmark, "sample_id": sample_id, "category": str(info.get("category") or ""),
            "question": str(info.get("question_stem") or info.get("question") or ""),
            "extra": {k: info[k] for k in ("pair_id", "type", "source_dataset", "cycle_category") if k in info},
        }
        if "options" in info and info.get("options") is not None and "question_stem" in info:
            style = self.prompt_style
            try:
                shown = shuffle_row(
                    prompt, {**info, "prompt_style": style}, seed=self.protocol.shuffle_seed, sample_id=sample_id,
                    shuffle=self.protocol.shuffle_options,
                )
            except (ValueError, KeyError) as exc:
                raise EvalError(f"{data_file}: row {row_number}: {exc}") from exc
            prompt = shown.prompt
            info.update(options=shown.options, answer=shown.answer, question=shown.question)
            row["reward_model"] = {**dict(row.get("reward_model") or {}), "ground_truth": shown.answer}
            fields.update(options=shown.options, answer=shown.answer, answer_text=shown.answer_text, option_order=shown.order)
        else:
            fields.update(answer=ground_truth_text((row.get("reward_model") or {}).get("ground_truth")))
        fields["prompt"] = "\n".join(str(m.get("content", "")) for m in prompt if m.get("role") == "user")
        # copies of the image dicts: verl's _build_messages attaches the opened image to the dict it is given, and the
        # file's row must keep only its bytes, or every source a trajectory decodes would stay alive with the row
        images = [dict(image) if isinstance(image, Mapping) else image for image in row.get("images") or []]
        try:
            messages = raw_prompt(prompt, images)
        except Exception as exc:
            raise EvalError(f"{data_file}: row {row_number}: cannot build the prompt ({exc})") from exc
        item = {
            "data_source": str(row.get("data_source") or benchmark),
            "raw_prompt": messages,
            "reward_model": row.get("reward_model") or {"ground_truth": ""},
            "extra_info": info,
            "index": int(info.get("index", row_number) if str(info.get("index", "")).isdigit() else row_number),
            "tools_kwargs": info.get("tools_kwargs") or {},
            "interaction_kwargs": info.get("interaction_kwargs") or {},
            "agent_name": self.protocol.agent_loop,
        }
        fields["source_image"] = images[0] if images else None
        return item, fields

    def run_rows(
        self, rows: Sequence[Mapping[str, Any]], *, data_file: str = "", start_row: int = 0, sample: int = 0
    ) -> list[SampleRecord]:
        """Evaluate ``rows`` (one trajectory each, sample index ``sample``) and return their records."""
        prepared = [self.prepare_row(r, data_file=data_file, row_number=start_row + i) for i, r in enumerate(rows)]
        return self.run_prepared(prepared, sample=sample)

    def run_prepared(self, prepared: list[tuple[dict, dict]], *, sample: int) -> list[SampleRecord]:
        """Evaluate rows made by :meth:`prepare_row` (any mix of files) as one batch of trajectories."""
        from visionr3.data.dataset import build_gen_batch, validation_meta_info
        from visionr3.eval.backends import SeededClient
        from visionr3.reward.formulas import get_formula
        from visionr3.reward.score import score_input

        client = self.inner_client if self.protocol.greedy else SeededClient(self.inner_client, self.protocol.seed + sample)
        self.worker.llm_client = client
        items = [dict(item, uid=sample_key(fields["benchmark"], fields["sample_id"], sample)) for item, fields in prepared]
        batch = build_gen_batch(
            items, global_steps=0, validate=True, meta_info=validation_meta_info(self.tokenizer, not self.protocol.greedy)
        )
        start = time.perf_counter()
        try:
            output = self.loop.run_until_complete(self.worker.generate_sequences(batch))
        except Exception as exc:  # a backend failure loses this batch only; the records say why
            logger.exception("batch failed")
            seconds = (time.perf_counter() - start) / max(1, len(prepared))
            return [self._failed_record(fields, sample, f"{type(exc).__name__}: {exc}", seconds) for _, fields in prepared]
        seconds = (time.perf_counter() - start) / max(1, len(prepared))
        scored = [self._record(output, i, item, fields, sample=sample, seconds=seconds) for i, (item, fields) in enumerate(prepared)]
        # the batch's rewards together: with a judge, its calls overlap (the client bounds its own concurrency)
        async def score_all() -> list:
            return await asyncio.gather(
                *(score_input(inp, self.formula, self.reward_params or None, self.judge) for _, inp in scored)
            )

        results = self.loop.run_until_complete(score_all())
        for (record, inp), result in zip(scored, results):
            record.prediction = get_formula(self.formula).prediction(inp) or ""
            scores = result.as_verl_dict()
            record.score = float(scores.pop("score"))
            record.reward = scores
            record.correct = float(result.components.get("accuracy", 0.0)) >= 0.5
        return [record for record, _ in scored]

    # -- records --

    def _base_record(self, fields: dict, sample: int, seconds: float) -> SampleRecord:
        keep = {k: v for k, v in fields.items() if k != "source_image"}
        return SampleRecord(
            key=sample_key(fields["benchmark"], fields["sample_id"], sample), sample=sample, seconds=round(seconds, 3),
            model=self.settings.model, protocol=self.protocol.as_dict(), **keep,
        )

    def _failed_record(self, fields: dict, sample: int, error: str, seconds: float) -> SampleRecord:
        record = self._base_record(fields, sample, seconds)
        record.error = error
        return record

    def _record(self, output: Any, i: int, item: dict, fields: dict, *, sample: int, seconds: float) -> tuple[SampleRecord, Any]:
        """The record of trajectory ``i`` (everything but its score) and the ``RewardInput`` to score it with."""
        from visionr3.processing import open_image, save_display_copy, seen_size
        from visionr3.reward.score import reward_input

        record = self._base_record(fields, sample, seconds)
        tok = self.tokenizer
        prompt_length = output.batch["prompts"].shape[1]
        valid = int(output.batch["attention_mask"][i, prompt_length:].sum())
        response = output.batch["responses"][i, :valid].tolist()
        mask = output.batch["response_mask"][i, :valid].tolist()
        nt = output.non_tensor_batch

        def extra(key: str, default: Any = None) -> Any:
            value = nt[key][i] if key in nt else None
            return default if value is None else value

        # images: the question's image, then one per image a tool returned (re-rendered from the source box)
        source = None
        if fields.get("source_image") is not None:
            try:
                source = open_image(fields["source_image"])
            except Exception as exc:  # an unreadable image is a data error of this sample only
                record.error = f"cannot open the image: {exc}"
        calls = [json.loads(c) for c in extra(TOOL_CALL_LOG, [])]
        image_dir = self.settings.images_dir
        rel_root = Path(self.settings.out).parent
        stem = _safe(f"{record.benchmark}_{record.sample_id}_{sample}")
        if source is not None:
            record.image_size = [source.width, source.height]
            budget = {k: v for k, v in (("min_pixels", self.protocol.min_pixels), ("max_pixels", self.protocol.max_pixels)) if v}
            try:
                record.seen_size = list(seen_size(self.processor, source.size, budget))
            except Exception:
                record.seen_size = []
            if self.settings.save_images:
                save_display_copy(source, image_dir / f"{stem}_0.jpg", DISPLAY_MAX_SIDE)
                record.images.append(os.path.relpath(image_dir / f"{stem}_0.jpg", rel_root))
        for call in calls:
            tool_call = ToolCall.from_log(call)
            if tool_call.valid and source is not None and self.settings.save_images:
                shown = source.crop(tuple(tool_call.box)) if tool_call.box else source
                path = image_dir / f"{stem}_{len(record.images)}.jpg"
                save_display_copy(shown, path, DISPLAY_MAX_SIDE)
                tool_call.image = len(record.images)
                record.images.append(os.path.relpath(path, rel_root))
            record.tool_calls.append(tool_call)
        record.crop_boxes = [list(map(int, b)) for b in extra(CROP_BOXES, [])]

        # turns: runs of generated (mask 1) and inserted (mask 0) tokens
        tool_images = iter([c.image for c in record.tool_calls if c.image is not None])
        for value, a, b in value_runs(mask):
            text = clean_turn_text(tok.decode(response[a:b], skip_special_tokens=False))
            role = "assistant" if value == 1 else "tool"
            images = [] if role == "assistant" else [j for j in (next(tool_images, None) for _ in range(text.count("<image>"))) if j is not None]
            if role == "tool" and not text.strip() and not images:
                continue
            record.turns.append(Turn(role=role, text=text, images=images))
        record.num_turns = sum(1 for t in record.turns if t.role == "assistant")
        record.response_tokens = valid

        # score: the recipe's reward on the same inputs verl's reward loop would give it
        info = dict(item["extra_info"])
        for key in (ASSISTANT_TURNS, TOOL_CALLS, VALID_TOOL_CALLS, TOOL_IMAGES, NUM_IMAGES, SELF_ANSWER, SELF_REWARD_STATUS, CROP_BOXES):
            if key in nt and nt[key][i] is not None:
                info[key] = nt[key][i]
        solution = tok.decode(response, skip_special_tokens=True)
        return record, reward_input(item["data_source"], solution, item["reward_model"].get("ground_truth"), info)

    # -- files --

    def read_rows(self, path: str) -> list[dict]:
        import pyarrow.parquet as pq

        if not Path(path).exists():
            raise EvalError(f"{path}: no such data file (make one with `visionr3 prepare`)")
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise EvalError(f"{path}: not a parquet file of `visionr3 prepare` ({exc})") from exc
        for name in ("prompt", "images"):
            if name not in table.column_names:
                raise EvalError(f"{path}: column '{name}' is missing (make the file with `visionr3 prepare`)")
        rows = table.to_pylist()
        return rows[: self.settings.limit] if self.settings.limit else rows

    def check_resume(self) -> list[SampleRecord]:
        """The records ``settings.out`` already holds; ``EvalError`` if they were made under another protocol."""
        out = Path(self.settings.out)
        try:
            previous = read_records(out)
        except ValueError as exc:
            raise EvalError(f"cannot resume: {exc}") from exc
        for record in previous[:1]:
            knobs = self.protocol.mismatch(record.protocol)
            if knobs:
                raise EvalError(f"{out} was written under another protocol ({knobs}); use a new --out or the same settings")
        return previous

    def run(self, on_record: Callable[[SampleRecord], None] | None = None) -> list[SampleRecord]:
        """Evaluate every data file × k samples into ``settings.out``, resuming from what it already holds.

        Returns every record of the file (old and new)."""
        previous = self.previous
        done = {r.key for r in previous}
        # the file's rows, not prepared items: a batch prepares its rows and drops them when its records are written,
        # so the sources its trajectories decoded go with it (a prepared item kept to the end of the run kept its
        # decoded source: 25 MB a row at 4K, benchmarks/bench_rollout_scale.py)
        todo: dict[int, list[tuple[str, int, dict]]] = {sample: [] for sample in range(self.protocol.samples)}
        for data_file in self.settings.data:
            for number, row in enumerate(self.read_rows(data_file)):
                _, fields = self.prepare_row(row, data_file=data_file, row_number=number)  # its key; nothing decoded
                for sample, pending in todo.items():
                    key = sample_key(fields["benchmark"], fields["sample_id"], sample)
                    if key not in done:
                        pending.append((data_file, number, row))
                        done.add(key)
        progress = _progress(sum(map(len, todo.values())), len(previous), self.settings.progress)
        records = list(previous)
        with RecordWriter(self.settings.out) as writer:
            size = max(1, self.settings.batch_size)
            for sample, pending in todo.items():
                for start in range(0, len(pending), size):
                    batch = [self.prepare_row(row, data_file=f, row_number=n) for f, n, row in pending[start : start + size]]
                    new = self.run_prepared(batch, sample=sample)
                    del batch
                    for record in new:
                        writer.write(record)
                        records.append(record)
                        if on_record:
                            on_record(record)
                    progress.update(len(new))
        progress.close()
        self.previous = records
        return records



def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total + initial, initial=initial, desc="eval", unit="sample", disable=not enabled, dynamic_ncols=True)


__all__ = ["EvalError", "EvalSettings", "Evaluator", "clean_turn_text", "compose_recipe", "prompt_style", "resolve_protocol"]
