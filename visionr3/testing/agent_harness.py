"""Run verl's real ``AgentLoopWorker`` in-process on CPU against a scripted model server (``ScriptedServer``).

Why: an agent loop's contract with the trainer is the ``DataProto`` that ``AgentLoopWorker.generate_sequences``
returns (responses, ``response_mask``, M-RoPE ``position_ids``, ``multi_modal_inputs``, extra fields...). Testing a
loop object on its own skips the worker's half of that contract, and running the whole trainer needs GPUs, Ray and
an inference server. This module runs the worker itself — verl's own class, unmodified — with the scripted server in
place of vLLM, on the tiny checkpoints of :mod:`visionr3.testing.tiny_model`:

    from visionr3.testing.agent_harness import compose_verl_config, dataset_row, run_agent_loop_worker
    from visionr3.testing.scripted_server import ScriptedServer

    config = compose_verl_config([f"actor_rollout_ref.model.path={tiny_model_dir()}",
                                  "actor_rollout_ref.rollout.multi_turn.tool_config_path=/abs/tools.yaml"])
    server = ScriptedServer(tokenizer, [["<answer>4</answer>"]], prompt_length=..., response_length=...)
    out = run_agent_loop_worker(config, server, [dataset_row("<image>How many?", [image])])

What is real and what is not:

* config: verl's own ``ppo_trainer`` Hydra config, composed from the installed package (``verl/trainer/config``)
  with CPU-friendly defaults (:data:`CPU_DEFAULT_OVERRIDES`) in front of the caller's overrides;
* worker: ``verl.experimental.agent_loop.agent_loop.AgentLoopWorker(config, server)``, the plain class that verl's
  ``AgentLoopManager`` wraps in ``ray.remote`` — constructed directly, so no Ray. Its constructor loads tokenizer,
  processor and HF config from ``actor_rollout_ref.model.path`` (a real local checkpoint directory), the dataset class
  from ``data.custom_cls``, the tools from ``multi_turn.tool_config_path`` and the agent-loop registry entries from
  ``agent.agent_loop_config_path``, exactly as in training;
* input: the generation batch the v0 trainer hands the worker (``RayPPOTrainer._get_gen_batch``): the dataset rows
  collated by verl's ``collate_fn`` (so ``raw_prompt`` is an object array filled element-wise), a ``uid`` per row,
  and the trainer's ``meta_info`` for training or validation;
* only the inference engine is replaced, by the scripted server; no reward workers are attached
  (``reward_loop_worker_handles=None``, as in the trainer without a reward-loop pool), so no score is computed and
  the input's non-tensor fields are passed through to the output.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from visionr3.data.dataset import build_gen_batch, validation_meta_info  # noqa: F401  (build_gen_batch re-exported)

DEFAULT_PROMPT_LENGTH = 1024
DEFAULT_RESPONSE_LENGTH = 512

CPU_DEFAULT_OVERRIDES: tuple[str, ...] = (
    # verl leaves the engine name mandatory (???); the agent loop only reads it for vLLM-specific request options.
    "actor_rollout_ref.rollout.name=vllm",
    # rollout.prompt_length / response_length interpolate these.
    f"data.max_prompt_length={DEFAULT_PROMPT_LENGTH}",
    f"data.max_response_length={DEFAULT_RESPONSE_LENGTH}",
    # our RLHFDataset subclass: loads images without qwen_vl_utils/torchvision (verl resolves pkg:// by import).
    "data.custom_cls.path=pkg://visionr3.data.dataset",
    "data.custom_cls.name=VisionRLDataset",
    "actor_rollout_ref.rollout.agent.num_workers=1",
)
"""Prepended to the caller's overrides by :func:`compose_verl_config`; a later override of the same key wins."""


def verl_config_dir() -> Path:
    """``verl/trainer/config`` of the installed verl."""
    import verl

    return Path(verl.__file__).parent / "trainer" / "config"


def compose_verl_config(overrides: Sequence[str] = ()) -> Any:
    """verl's ``ppo_trainer`` config with :data:`CPU_DEFAULT_OVERRIDES` and then ``overrides`` applied.

    Composed inside Hydra's ``initialize_config_dir`` context, so no global Hydra state survives the call (it raises
    if the caller is itself inside an initialised Hydra). Returns an ``omegaconf.DictConfig``; interpolations stay
    lazy, as in the trainer. ``actor_rollout_ref.model.path`` must be set (to a local checkpoint directory) before
    the config is given to :func:`run_agent_loop_worker`.
    """
    from hydra import compose, initialize_config_dir

    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key=value' strings, not one string")
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name="ppo_trainer", overrides=[*CPU_DEFAULT_OVERRIDES, *overrides])


def dataset_row(
    prompt: str | Sequence[Mapping[str, Any]],
    images: Sequence[Any] = (),
    *,
    agent_name: str = "tool_agent",
    index: int = 0,
    data_source: str = "visionr3/harness",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    tools_kwargs: Mapping[str, Any] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    """One row as ``RLHFDataset.__getitem__`` returns it (plus ``agent_name``, normally a dataset column).

    ``prompt`` is a user-message string or a list of chat messages whose string contents may contain ``<image>``
    placeholders; ``images`` (PIL images, paths or ``{"bytes": ...}`` dicts, as in a parquet ``images`` column) fill
    the placeholders in order, through verl's own ``RLHFDataset._build_messages`` — so ``raw_prompt`` is exactly
    what the dataset would produce, e.g. ``[{"role": "user", "content": [{"type": "image", "image": <PIL>},
    {"type": "text", "text": "..."}]}]``. A string prompt without placeholders gets one ``<image>`` per image in
    front. ``tools_kwargs`` go into ``extra_info["tools_kwargs"]`` and the row, as the dataset does; ``uid``
    groups the n samples of one prompt (the trainer sets one per prompt before repeating; default: a fresh uuid).
    """
    from visionr3.data.dataset import raw_prompt as build_raw_prompt

    images = list(images)
    if isinstance(prompt, str):
        if images and "<image>" not in prompt:
            prompt = "<image>" * len(images) + prompt
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    extra = dict(extra_info or {})
    extra.setdefault("index", index)
    if tools_kwargs is not None:
        extra["tools_kwargs"] = dict(tools_kwargs)
    raw_prompt = build_raw_prompt(messages, images)
    return {
        "data_source": data_source,
        "raw_prompt": raw_prompt,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": extra,
        "index": extra["index"],
        "tools_kwargs": extra.get("tools_kwargs", {}),
        "interaction_kwargs": extra.get("interaction_kwargs", {}),
        "agent_name": agent_name,
        "uid": uid if uid is not None else str(uuid.uuid4()),
        "dummy_tensor": torch.tensor([0], dtype=torch.uint8),
    }


def make_agent_loop_worker(config: Any, server: Any):
    """verl's real ``AgentLoopWorker(config, server)``, constructed in this process (no Ray).

    Handled here, and why:

    * :func:`visionr3.processing.prepare_runtime` first: without torchvision, transformers cannot build a Qwen-VL
      processor and verl's ``HFModelConfig`` would silently load ``processor=None`` (a text-only worker);
    * a VL checkpoint whose processor still fails to load raises here instead of running text-only;
    * ``actor_rollout_ref.model.path`` must be a local directory (the constructor loads tokenizer/processor/config).

    Process-global side effects are verl's own: ``RolloutTraceConfig.init`` (a no-op after the first call in a
    process) and, with ``agent.agent_loop_config_path``, entries added to verl's agent-loop registry.
    """
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    from visionr3.processing import prepare_runtime

    model_path = os.path.expanduser(str(config.actor_rollout_ref.model.path))
    if not os.path.isdir(model_path):
        raise ValueError(
            f"actor_rollout_ref.model.path={model_path!r} is not a local checkpoint directory; the worker loads the "
            "tokenizer and processor from it (use visionr3.testing.tiny_model.tiny_model_dir())"
        )
    prepare_runtime()
    worker = AgentLoopWorker(config, server)
    if worker.processor is None and hasattr(worker.model_config.hf_config, "vision_config"):
        raise RuntimeError(f"no multimodal processor could be loaded from {model_path}; the worker would be text-only")
    return worker


def run_agent_loop_worker(
    config: Any,
    server: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    global_steps: int = 1,
    validate: bool = False,
):
    """Construct verl's ``AgentLoopWorker(config, server)`` and return ``generate_sequences`` of ``rows``.

    ``rows`` are dataset rows (see :func:`dataset_row`), one per trajectory — repeat them yourself for n samples.
    ``meta_info`` is the trainer's: ``{"global_steps", "validate": False}`` for training; for validation also
    ``eos_token_id``, ``pad_token_id``, ``recompute_log_prob=False`` and ``do_sample`` (rollout ``val_kwargs``) —
    and the worker then applies the validation sampling parameters. Returns the output ``DataProto``.

    Callable from sync code (runs its own event loop) and from a running event loop (then it runs on a helper
    thread with a fresh loop, because verl's loop objects bind the loop they are created in).
    """
    worker = make_agent_loop_worker(config, server)
    meta_info: dict[str, Any] = {}
    if validate:
        meta_info = validation_meta_info(worker.tokenizer, config.actor_rollout_ref.rollout.val_kwargs.do_sample)
    batch = build_gen_batch(rows, global_steps=global_steps, validate=validate, meta_info=meta_info)
    return _run_coroutine(lambda: worker.generate_sequences(batch))


def _run_coroutine(make_coroutine):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


__all__ = [
    "CPU_DEFAULT_OVERRIDES",
    "DEFAULT_PROMPT_LENGTH",
    "DEFAULT_RESPONSE_LENGTH",
    "build_gen_batch",
    "compose_verl_config",
    "dataset_row",
    "make_agent_loop_worker",
    "run_agent_loop_worker",
    "verl_config_dir",
]
