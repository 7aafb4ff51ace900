"""An HF-transformers rollout backend for verl 0.9.1: rollout name ``"hf"``, so verl's own trainer and agent loop
can generate on a CPU (or any device transformers runs on) without vLLM, SGLang or TensorRT-LLM.

Why it exists
-------------
verl 0.9.1 generates only through *rollout servers*: ``LLMServerManager`` builds one ``RolloutReplica`` per
``tp*dp*pp`` trainer ranks (``RolloutReplicaRegistry``: vllm, sglang, trtllm), the agent loop talks to the replicas'
server actors through ``LLMServerClient`` (``await server.generate.remote(...) -> TokenOutput``), and every
``ActorRolloutRefWorker.init_model`` builds a weight-sync *adapter* from ``_ROLLOUT_REGISTRY[(name, "async")]``
that pushes the trained weights into the server. None of the three shipped engines runs on our CPU machines, and
verl's old ``hf_rollout.HFRollout`` (sync ``generate_sequences``) is not wired into that design any more. This module
provides the three parts under the name ``"hf"``:

* :class:`HFReplica` (``RolloutReplicaRegistry.register("hf", ...)``) — creates one :class:`HFServer` Ray actor per
  replica, named ``hf_server_{replica_rank}_0{suffix}`` (vLLM's scheme: ``vllm_server_{replica_rank}_{node_rank}``;
  ``hf_server_reward_...`` for a reward model), with ``max_concurrency=self.max_concurrency`` and ``num_cpus=0``
  (``engine_kwargs.hf.num_cpus``): a server that reserved a whole CPU would starve a 2-core Ray. Hybrid
  (``init_hybrid(worker_group)``, what verl's trainer does) places it on the node of the replica's trainer workers
  (``NodeAffinitySchedulingStrategy``) and hands it their accelerator ids, like vLLM. Standalone
  (``init_standalone()``) and colocated (``init_colocated(resource_pool)``, how verl's ``RewardModelManager`` starts
  a GenRM judge) just start the actor — colocated pins it, with zero resources, to the first bundle of its slice of
  the pool. verl's base versions would first build a ``CheckpointEngineWorker`` group (and, standalone, a GPU
  resource pool) to receive weight updates and hold the GPUs; a judge's weights never change and this server is one
  process, so neither a CPU nor this server needs them (see :meth:`HFReplica.init_colocated`). ``server_address`` is
  ``"<node ip>:<port>"``, unique per live replica (the load balancer keys its dict by it), where the server answers
  **OpenAI-compatible HTTP**: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``
  (:func:`openai_app`). verl's agent loop does not use it (it is token-in/token-out through the actor handle);
  verl's GenRM path does: ``RewardModelManager`` puts its naive router in front of the replicas' addresses and the
  custom reward function POSTs chat requests to ``http://{reward_router_address}/v1/chat/completions``.
* :class:`HFServer` (the Ray actor) — loads the checkpoint with transformers (``AutoModelForImageTextToText`` when
  the config has a ``vision_config``, else ``AutoModelForCausalLM``; ``attn_implementation="sdpa"``; the processor
  via :func:`visionr3.processing.load_processor`, which also works without torchvision) and serves
  ``async generate(prompt_ids, sampling_params, request_id, image_data=..., ...) -> TokenOutput``, the signature the
  client calls. Model calls are serialized by an ``asyncio.Lock`` and run in a thread, so control calls (sleep,
  abort, weight loads queued behind the lock) never wait on a blocked event loop; there is no cross-request
  batching (one request at a time is what a CPU can do anyway). Details of each sampling parameter are in
  :meth:`HFServer.generate`. The HTTP endpoint (:meth:`HFServer.start_http_server`) is uvicorn bound to the port the
  actor reserved at start, running as a task on the actor's own event loop; a chat request is validated
  (:func:`chat_request`; images as inline ``data:`` URLs only — the server never fetches a URL), rendered with the
  checkpoint's chat template (``chat_template_kwargs`` such as ``{"enable_thinking": false}`` are template variables;
  each image part becomes one ``<|vision_start|><|image_pad|><|vision_end|>`` run, expanded to the image's token
  count), and then takes exactly ``generate``'s path (:meth:`HFServer._serve`) with the decoded images as
  ``image_data``. The reply is vLLM's: text decoded without special tokens, cut at a
  stop string, ``finish_reason`` ``"stop"``/``"length"``, ``usage``; the served model name is the local model path
  (vLLM's default), though any ``model`` string is accepted. Client errors are HTTP 400 with a message.
* :class:`HFServerAdapter` (``_ROLLOUT_REGISTRY[("hf", "async")]``) — built in every trainer worker. It finds the
  server like vLLM's ``ServerAdapter`` does (``replica_rank = RANK // rollout_world_size``, only
  ``rollout_rank == 0`` talks to ``ray.get_actor("hf_server_{replica_rank}_0")``). ``update_weights`` *drains the
  weight generator on every rank* — under FSDP2 each item is produced by ``DTensor.full_tensor()``, a collective,
  so a rank that stopped iterating would hang the others — and rank 0 ships ``(name, cpu tensor)`` buckets of
  ``checkpoint_engine.update_weights_bucket_megabytes`` through Ray's object store. The server maps the names to
  its own ``state_dict`` keys (verl sends HF names after ``convert_weight_keys``, which in transformers 5 are the
  module's own keys; legacy checkpoint names are renamed with transformers' conversion mapping),
  ``load_state_dict(strict=False)``s each bucket, and refuses — with the offending names in the message — any key
  it cannot place (nothing of that bucket is loaded) and, at the end of the sync, any of its own keys that were
  never sent (tied weights count once). After a successful sync the server's weights equal the actor's.

Weights are loaded from the checkpoint at start whatever ``rollout.load_format`` says (``dummy`` only saves vLLM
the disk read; the first hybrid sync overwrites them anyway). ``sleep``/``wake_up`` move the model off/onto a CUDA
device in hybrid and colocated mode with ``free_cache_engine`` (so FSDP can use the memory while training); on CPU,
in standalone mode, and for the KV-cache calls there is nothing to free (no cache outlives a request), so they are
no-ops.

Engine options (``actor_rollout_ref.rollout.engine_kwargs.hf``, all optional): ``device`` (``"auto"``: CUDA when
available, else CPU), ``dtype`` (default: ``rollout.dtype`` on an accelerator, ``float32`` on CPU — the CPU actor
trains in fp32, and a bf16 rollout would make rollout and actor log-probs disagree), ``attn_implementation``
(``"sdpa"``), ``num_cpus`` (Ray CPUs the server reserves, ``0``), ``num_threads`` (``torch.set_num_threads`` in the
server), ``allow_partial_weight_update`` (``False``: a sync that leaves some server weight unsent is an error). On CPU
``num_threads`` defaults to every core the process may use (Ray would otherwise pin a ``num_cpus=0`` actor to one
thread); set it to ``cores // replicas per node`` when several replicas generate at once.

Registration: importing this module registers ``"hf"`` in both registries (:func:`register`, idempotent). It has to
happen in the TaskRunner/driver (replica) *and* every trainer worker (adapter), i.e. through the visionr3 verl
plug-in. Trainer config: ``actor_rollout_ref.rollout.name=hf`` (``mode=async``, the default) and
``actor_rollout_ref.rollout.tensor_model_parallel_size=1`` (verl's default 2 asks for two trainer ranks per replica).

A local LLM judge (verl's GenRM) on CPU::

    reward.reward_model.enable=True reward.reward_model.model_path=<judge checkpoint>
    reward.reward_model.rollout.name=hf reward.reward_model.rollout.tensor_model_parallel_size=1
    reward.reward_model.rollout.response_length=<judge token budget when a request names none>
    reward.custom_reward_function.path=<file or pkg:// module> reward.custom_reward_function.name=<async function>
    # its own pool (scores stream during rollout), else it shares the trainer's global_pool:
    reward.reward_model.enable_resource_pool=True reward.reward_model.n_gpus_per_node=1 reward.reward_model.nnodes=1

verl starts one judge replica per ``tensor_model_parallel_size`` devices of the pool (each a full model copy), so
on CPU keep the pool small or raise ``tensor_model_parallel_size`` to the pool's size for a single judge; a pool's
devices are logical Ray GPUs there (``ray_kwargs.ray_init.num_gpus``, see :mod:`visionr3.platform.cpu`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import ray
import torch

from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, RolloutReplicaRegistry, TokenOutput

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf"
"""``actor_rollout_ref.rollout.name`` of this backend."""
ADAPTER_FQN = f"{__name__}.HFServerAdapter"
SERVER_NAME_PREFIX = f"{ROLLOUT_NAME}_"
"""Server actors are named ``{prefix}server_{replica_rank}_{node_rank}{suffix}``, like vLLM's ``vllm_server_...``."""

_SAMPLING_EPS = 1e-5  # vLLM: temperature below this means greedy
_IGNORED_SAMPLING_KEYS = frozenset(
    # vLLM SamplingParams fields that only shape detokenized text/streaming, which this server does not return
    {"detokenize", "spaces_between_special_tokens", "output_kind", "stream_interval", "flat_logprobs"}
)


def server_actor_name(replica_rank: int, node_rank: int = 0, *, role: str = "", name_suffix: str = "") -> str:
    """Ray actor name of a replica's server (``role``: ``""``, ``"reward"`` or ``"teacher"``), as vLLM names them."""
    role_part = f"{role}_" if role else ""
    return f"{SERVER_NAME_PREFIX}server_{role_part}{replica_rank}_{node_rank}{name_suffix}"


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (CPU, contiguous): equal digests mean bit-identical tensors."""
    t = tensor.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def named_tensor_digests(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: Optional[str] = None) -> dict[str, str]:
    """``{name: tensor_digest}`` of ``(name, tensor)`` pairs, floating tensors cast to ``dtype`` first (e.g. the
    replica's ``"float32"``: a bf16 replica holds the fp32 actor's weights rounded, and that is still "in sync").
    A DTensor is gathered (``full_tensor``, a collective: every rank must iterate)."""
    cast = getattr(torch, dtype) if dtype else None
    digests: dict[str, str] = {}
    for name, tensor in named_tensors:
        tensor = tensor.detach()
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        if cast is not None and tensor.is_floating_point():
            tensor = tensor.to(cast)
        digests[name] = tensor_digest(tensor)
    return digests


def combined_digest(digests: Mapping[str, Optional[str]]) -> str:
    """One SHA-256 over ``{name: digest}`` (sorted by name; a missing weight counts as ``None``)."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}={digests[name]}\n".encode())
    return h.hexdigest()


def weight_mismatches(expected: Mapping[str, str], held: Mapping[str, Optional[str]]) -> list[str]:
    """Names whose digest in ``held`` (what a replica holds, :meth:`HFServer.get_weight_digests`) is not the one in
    ``expected`` (the actor's, :func:`named_tensor_digests`); a name the replica has no weight for is a mismatch."""
    return sorted(name for name, digest in expected.items() if held.get(name) != digest)


def replica_weight_report(expected: Mapping[str, str], servers: Sequence[Any]) -> dict[str, Any]:
    """Whether every server (an :class:`HFServer` actor handle) holds the weights ``expected`` describes (the actor's
    :func:`named_tensor_digests`, cast to the server's dtype): ``{"match", "mismatched" (names, sorted),
    "actor_digest", "replica_digests" (one per server)}``. The trainer runs it after every weight sync."""
    held = ray.get([server.get_weight_digests.remote(list(expected)) for server in servers])
    mismatched = sorted({name for digests in held for name in weight_mismatches(expected, digests)})
    return {
        "match": not mismatched,
        "mismatched": mismatched,
        "actor_digest": combined_digest(expected),
        "replica_digests": [combined_digest(digests) for digests in held],
    }


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj.key`` / ``obj[key]`` for dataclasses, DictConfigs and dicts alike."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    try:
        return getattr(obj, key)
    except (AttributeError, KeyError):
        pass
    try:
        return obj.get(key, default)  # DictConfig / BaseConfig
    except Exception:
        return default


def _engine_options(config: Any) -> dict:
    options = _get(_get(config, "engine_kwargs", None) or {}, ROLLOUT_NAME, None) or {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(options, DictConfig):
            options = OmegaConf.to_container(options, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        pass
    return dict(options)


def _first_bundle(resource_pool: Any) -> tuple[Any, int]:
    """``(placement group, bundle index)`` of the first bundle of a verl ``RayResourcePool`` (or of its
    ``SubRayResourcePool`` slice), indexed as ``RayWorkerGroup`` does: global rank → ``pgs[rank // per node]``."""
    from verl.utils.device import get_device_name

    placement_groups = resource_pool.get_placement_groups(device_name=get_device_name())
    start = int(getattr(resource_pool, "start_bundle_index", 0))
    per_node = int(resource_pool.store[0])
    return placement_groups[start // per_node], start % per_node


def _worker_placement(_actor_self) -> tuple[str, list[str]]:
    """Runs inside a trainer worker (via ``__ray_call__``): its node id and accelerator ids."""
    context = ray.get_runtime_context()
    try:
        from verl.utils.device import get_resource_name

        resource = get_resource_name()
    except Exception:
        resource = "GPU"
    ids = context.get_accelerator_ids().get(resource, []) or []
    return context.get_node_id(), [str(i) for i in ids]


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI chat API (text and inline images): request parsing and the FastAPI app in front of HFServer
# ---------------------------------------------------------------------------------------------------------------------


class OpenAIRequestError(ValueError):
    """Something wrong with an OpenAI request: answered with HTTP 400 and this message (``param``: the field)."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``POST /v1/chat/completions`` body, split into what the template and the sampler need."""

    messages: tuple[dict, ...]
    """Every message with its ``content`` flattened to one string (text parts joined by newlines) — or, for a message
    with image parts, a list of ``{"type": "text", "text"}`` and ``{"type": "image"}`` parts in their order (what
    vLLM hands a Qwen-VL template: it renders text parts back to back, each image part as one vision run)."""
    sampling_params: Mapping[str, Any]
    """In :meth:`HFServer.generate`'s vocabulary (``max_tokens``, ``temperature``, ``stop``, ``seed``, ...)."""
    chat_template_kwargs: Mapping[str, Any]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    include_stop_str_in_output: bool = False
    model: Optional[str] = None
    ignored_fields: tuple[str, ...] = ()
    images: tuple[Any, ...] = ()
    """The decoded (RGB PIL) images of every image part, in the order they appear in ``messages``."""
    mm_processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """vLLM's ``mm_processor_kwargs``: image processor options (verl's agent loop passes its own on), used both to
    count an image's tokens and to compute its pixel values."""


# Fields the endpoint takes and passes on as sampling parameters, with their JSON type and the check they must pass.
_CHAT_SAMPLING_FIELDS: dict[str, tuple[type, Any, str]] = {
    "temperature": (float, lambda v: v >= 0, "must be >= 0"),
    "top_p": (float, lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "top_k": (int, lambda v: v >= -1, "must be -1 (off), 0 (off) or a positive integer"),
    "min_p": (float, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "repetition_penalty": (float, lambda v: v > 0, "must be > 0"),
    "presence_penalty": (float, None, ""),
    "frequency_penalty": (float, None, ""),
    "min_tokens": (int, lambda v: v >= 0, "must be >= 0"),
    "seed": (int, None, ""),
    "n": (int, lambda v: v >= 1, "must be >= 1"),
    "ignore_eos": (bool, None, ""),
    "skip_special_tokens": (bool, None, ""),
    "logprobs": (bool, None, ""),
}
# Accepted and meaningless for a single-tenant, non-streaming server.
_CHAT_IGNORED_SILENTLY = frozenset(
    {"model", "messages", "user", "metadata", "store", "service_tier", "stream_options", "parallel_tool_calls",
     "tool_choice", "request_id", "priority", "prompt_cache_key", "safety_identifier",
     # vLLM's detokenizer option; transformers' decode never inserts spaces between special tokens
     "spaces_between_special_tokens"}
)
_CHAT_TEMPLATE_RESERVED = frozenset(
    {"conversation", "messages", "tokenize", "return_dict", "return_tensors", "padding", "truncation", "max_length",
     "tokenizer_kwargs", "return_assistant_tokens_mask", "chat_template", "tools", "documents", "processor_kwargs",
     "add_generation_prompt", "continue_final_message"}
)


def _typed(body: Mapping, key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        expected = "a number" if kind is float else kind.__name__
        raise OpenAIRequestError(f"{key!r} must be {expected}, got {value!r}", key)
    return kind(value)


_IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})


def _message_content(content: Any, where: str, images: list, accept_images: bool) -> Any:
    """A message's ``content`` for the chat template: one string when it is text only (text parts joined by
    newlines, as before images were accepted), else the list of text/image parts; decoded images go to ``images``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIRequestError(f"{where}.content must be a string or a list of content parts, got {content!r}")
    parts: list[dict] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind is None or kind in ("text", "input_text"):
            raise OpenAIRequestError(f"{where}.content[{j}] must be {{'type': 'text', 'text': str}}, got {part!r}")
        elif kind in _IMAGE_PART_TYPES:
            if not accept_images:
                raise OpenAIRequestError(
                    f"{where}.content[{j}] is a {kind!r} part, but the model this hf server runs is text-only"
                )
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            images.append(decode_image_url(url, f"{where}.content[{j}]"))
            parts.append({"type": "image"})
        else:
            raise OpenAIRequestError(
                f"{where}.content[{j}] is a {kind!r} part; the hf server's OpenAI endpoint takes text and image_url "
                "parts only"
            )
    if not any(part["type"] == "image" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def decode_image_url(url: Any, where: str = "image_url") -> Any:
    """An inline ``data:image/<format>;base64,<data>`` URL → an RGB PIL image (:func:`visionr3.processing.open_image`,
    which composites transparency on white as qwen-vl-utils does). Anything else is an :class:`OpenAIRequestError`:
    the server fetches nothing over the network, so ``http(s)://`` (and ``file:``) URLs are refused by name."""
    if not isinstance(url, str) or not url:
        raise OpenAIRequestError(f"{where}.image_url must be {{'url': 'data:image/...;base64,...'}}, got {url!r}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise OpenAIRequestError(
            f"{where}: the hf server does not fetch remote images (no network access); send the image inline as a "
            f"data:image/png;base64,... URL instead of {url[:80]!r}"
        )
    header, sep, payload = url.partition(",")
    if scheme != "data" or not sep or not header.lower().startswith("data:image/") or ";base64" not in header.lower():
        raise OpenAIRequestError(
            f"{where}: only inline base64 images are accepted (data:image/<png|jpeg|...>;base64,<data>), got "
            f"{url[:60]!r}"
        )
    import base64
    import binascii

    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OpenAIRequestError(f"{where}: the data URL's payload is not valid base64 ({exc})") from None
    from PIL import Image

    from visionr3.processing import open_image

    try:
        image = open_image(data)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise OpenAIRequestError(f"{where}: the data URL ({header}) does not decode to an image: {exc}") from None
    return image


def chat_request(body: Any, *, accept_images: bool = True) -> ChatRequest:
    """Validate an OpenAI chat-completion body (``POST /v1/chat/completions``) → :class:`ChatRequest`.

    Taken: ``messages`` (text parts, and ``image_url`` parts holding inline ``data:image/...;base64`` URLs — decoded
    here, see :func:`decode_image_url`; refused when ``accept_images`` is false, i.e. for a text-only model),
    ``model`` (any string: one model is served), ``max_tokens`` / ``max_completion_tokens`` (the latter wins; absent:
    the rollout config's budget, as in :meth:`HFServer.generate`), ``temperature``, ``top_p``, ``seed``, ``stop``
    (string or list), ``n`` (1), ``logprobs`` (no ``top_logprobs``), ``presence_penalty``/``frequency_penalty`` (0),
    and vLLM's extensions ``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``stop_token_ids``,
    ``ignore_eos``, ``skip_special_tokens``, ``include_stop_str_in_output``, ``chat_template_kwargs`` (template
    variables, e.g. ``{"enable_thinking": false}``; a template that does not use one ignores it),
    ``add_generation_prompt`` (True), ``continue_final_message``, ``mm_processor_kwargs`` (image processor options).
    Refused with :class:`OpenAIRequestError`: ``stream``, ``tools``, ``logit_bias``, a non-text ``response_format``,
    a per-request ``chat_template``, and malformed values. Other fields are ignored (listed in ``ignored_fields``).
    """
    if not isinstance(body, Mapping):
        raise OpenAIRequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIRequestError("'messages' must be a non-empty list of {'role', 'content'} objects", "messages")
    flat = []
    images: list = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise OpenAIRequestError(
                f"messages[{i}] must be an object with a string 'role', got {message!r}", "messages"
            )
        content = _message_content(message.get("content"), f"messages[{i}]", images, accept_images)
        flat.append({**message, "content": content})

    if body.get("stream"):
        raise OpenAIRequestError("streaming is not supported by the hf server; send stream=false", "stream")
    if body.get("tools"):
        raise OpenAIRequestError("tool calling is not supported by the hf server's OpenAI endpoint", "tools")
    if body.get("logit_bias"):
        raise OpenAIRequestError("logit_bias is not supported by the hf server", "logit_bias")
    if body.get("chat_template") is not None:
        raise OpenAIRequestError(
            "a per-request chat_template is not supported; the checkpoint's is used", "chat_template"
        )
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, Mapping) or response_format.get("type") != "text"
    ):
        raise OpenAIRequestError("only response_format {'type': 'text'} is supported", "response_format")
    top_logprobs = _typed(body, "top_logprobs", int)
    if top_logprobs:
        raise OpenAIRequestError(
            "top_logprobs > 0 is not supported (logprobs=true gives the sampled tokens' log-probabilities)",
            "top_logprobs",
        )

    params: dict[str, Any] = {}
    for key, (kind, check, requirement) in _CHAT_SAMPLING_FIELDS.items():
        value = _typed(body, key, kind)
        if value is None:
            continue
        if check is not None and not check(value):
            raise OpenAIRequestError(f"{key!r} {requirement}, got {value!r}", key)
        params[key] = value
    max_tokens = _typed(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _typed(body, "max_tokens", int)
    if max_tokens is not None:
        if max_tokens < 1:
            raise OpenAIRequestError(f"'max_tokens' must be >= 1, got {max_tokens}", "max_tokens")
        params["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise OpenAIRequestError(f"'stop' must be a string or a list of strings, got {stop!r}", "stop")
        params["stop"] = [s for s in stop if s]
    stop_token_ids = body.get("stop_token_ids")
    if stop_token_ids is not None:
        if not isinstance(stop_token_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in stop_token_ids
        ):
            raise OpenAIRequestError(
                f"'stop_token_ids' must be a list of integers, got {stop_token_ids!r}", "stop_token_ids"
            )
        params["stop_token_ids"] = stop_token_ids

    template_kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(template_kwargs, Mapping) or not all(isinstance(k, str) for k in template_kwargs):
        raise OpenAIRequestError(
            f"'chat_template_kwargs' must be an object, got {template_kwargs!r}", "chat_template_kwargs"
        )
    reserved = sorted(_CHAT_TEMPLATE_RESERVED & set(template_kwargs))
    if reserved:
        raise OpenAIRequestError(f"chat_template_kwargs may not set {reserved}", "chat_template_kwargs")
    add_generation_prompt = _typed(body, "add_generation_prompt", bool)
    continue_final_message = bool(_typed(body, "continue_final_message", bool))
    if continue_final_message and add_generation_prompt:
        raise OpenAIRequestError("continue_final_message and add_generation_prompt cannot both be true")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise OpenAIRequestError(f"'model' must be a string, got {model!r}", "model")
    mm_processor_kwargs = body.get("mm_processor_kwargs") or {}
    if not isinstance(mm_processor_kwargs, Mapping) or not all(isinstance(k, str) for k in mm_processor_kwargs):
        raise OpenAIRequestError(
            f"'mm_processor_kwargs' must be an object, got {mm_processor_kwargs!r}", "mm_processor_kwargs"
        )

    handled = set(_CHAT_SAMPLING_FIELDS) | _CHAT_IGNORED_SILENTLY | {
        "max_tokens", "max_completion_tokens", "stop", "stop_token_ids", "chat_template_kwargs", "stream", "tools",
        "logit_bias", "chat_template", "response_format", "top_logprobs", "add_generation_prompt",
        "continue_final_message", "include_stop_str_in_output", "mm_processor_kwargs",
    }
    return ChatRequest(
        messages=tuple(flat),
        sampling_params=params,
        chat_template_kwargs=dict(template_kwargs),
        add_generation_prompt=not continue_final_message if add_generation_prompt is None else add_generation_prompt,
        continue_final_message=continue_final_message,
        include_stop_str_in_output=bool(_typed(body, "include_stop_str_in_output", bool)),
        model=model,
        ignored_fields=tuple(sorted(k for k in body if k not in handled)),
        images=tuple(images),
        mm_processor_kwargs=dict(mm_processor_kwargs),
    )


def truncate_at_stop(text: str, stop: Sequence[str], include: bool = False) -> tuple[str, Optional[str]]:
    """``(text cut at the earliest stop string, that string)``, or ``(text, None)``; ``include`` keeps the stop
    string (vLLM's ``include_stop_str_in_output``)."""
    found = [(text.find(s), -len(s), s) for s in stop if s and s in text]
    if not found:
        return text, None
    index, _, matched = min(found)
    return text[: index + len(matched) if include else index], matched


def _openai_error(status: int, message: str, param: Optional[str] = None):
    from fastapi.responses import JSONResponse

    kind = "BadRequestError" if status == 400 else "InternalServerError"
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": status}}
    )


def openai_app(server: "HFServer"):
    """FastAPI app of an :class:`HFServer`: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

    Client errors are 400s with vLLM's error body (``{"error": {"message", "type", "param", "code"}}``), which the
    ``openai`` SDK raises as ``BadRequestError``; an unexpected failure is a 500 with its message. Neither reaches the
    actor: the next request is served as usual.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    # Plain Starlette endpoints (``request`` passed positionally): FastAPI's parameter injection would have to
    # resolve the postponed annotations of this module (``from __future__ import annotations``).
    async def health(request) -> JSONResponse:
        return JSONResponse({})

    async def models(request) -> JSONResponse:
        return JSONResponse(server.list_models())

    async def chat_completions(request) -> JSONResponse:
        try:
            body = await request.json()
        except Exception as exc:
            return _openai_error(400, f"the request body is not valid JSON: {exc}")
        try:
            return JSONResponse(await server.chat_completions(body))
        except OpenAIRequestError as exc:
            return _openai_error(400, str(exc), exc.param)
        except Exception as exc:
            logger.exception("hf server: chat completion failed")
            return _openai_error(500, f"{type(exc).__name__}: {exc}")

    app = FastAPI(title="visionr3 hf rollout server", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.add_route("/health", health, methods=["GET"])
    app.router.add_route("/v1/models", models, methods=["GET"])
    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    return app


# ---------------------------------------------------------------------------------------------------------------------
# Server actor
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Request:
    """One generate call, with every sampling decision resolved."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    greedy: bool
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    min_tokens: int
    want_logprobs: bool
    logprobs_mode: str
    stop: list[str]
    stop_token_ids: list[int]
    ignore_eos: bool
    seed: Optional[int]
    skip_special_tokens: bool
    mm_inputs: dict = field(default_factory=dict)
    epoch: int = 0


class HFServer:
    """The rollout server actor of one :class:`HFReplica`: a transformers model behind verl's server interface.

    Construct it through :class:`HFReplica` (which wraps it with ``ray.remote`` and names it); the constructor
    arguments mirror ``vLLMHttpServer``'s. ``config`` is the ``RolloutConfig`` (dataclass or DictConfig),
    ``model_config`` verl's model config (``HFModelConfig``, its DictConfig, a dict, or a checkpoint path).
    """

    def __init__(
        self,
        config: Any,
        model_config: Any,
        rollout_mode: RolloutMode = RolloutMode.STANDALONE,
        replica_rank: int = 0,
        node_rank: int = 0,
        cuda_visible_devices: Optional[str] = None,
    ) -> None:
        self.config = config
        self.rollout_mode = rollout_mode
        self.replica_rank = replica_rank
        self.node_rank = node_rank
        self.options = _engine_options(config)
        self.global_steps: int = 0  # weight version; vLLM starts at None, but v1 metrics cast it to int

        # Device: decided before anything initialises CUDA, so the trainer workers' devices can be made visible.
        want = str(self.options.get("device", "auto"))
        if cuda_visible_devices and want != "cpu":
            try:
                from verl.utils.device import get_visible_devices_keyword

                os.environ[get_visible_devices_keyword()] = cuda_visible_devices
            except Exception:
                os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(want)
        num_threads = self.options.get("num_threads")
        if num_threads is None and self.device.type == "cpu":
            # Ray pins OMP_NUM_THREADS=1 in an actor that reserves no CPU; on a CPU the server is the only thing
            # computing while the trainer waits for rollouts, so let torch use every core this process may run on.
            num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if num_threads:
            torch.set_num_threads(int(num_threads))

        self._load_model(model_config)
        self._created = int(time.time())

        # Request bookkeeping (all touched only on the actor's event loop, except _abort_epoch/_aborted_ids which the
        # generation thread reads).
        self._lock = asyncio.Lock()
        self._inflight: dict[int, str] = {}  # admission ticket -> request id (ids need not be unique)
        self._tickets = 0
        self._abort_epoch = 0
        self._aborted_ids: set[str] = set()
        self._paused = False
        self._rejecting = False
        self._resume_event = asyncio.Event()
        self._resume_event.set()
        self._asleep = False
        self._warned_keys: set[str] = set()
        self._weight_update: Optional[set[str]] = None  # keys received in the current sync, None when not syncing

        seed = int(_get(config, "seed", 0) or 0) + int(replica_rank)
        torch.manual_seed(seed)  # vLLM seeds its engine with replica_rank + rollout.seed too

        # The port is reserved now (a bound socket kept open, so "host:port" is unique per live replica) and served
        # by start_http_server(), which must run on the event loop that will keep serving it.
        from verl.utils.net_utils import get_free_port

        self._host = ray.util.get_node_ip_address().strip("[]")
        self._port, self._port_sock = get_free_port(self._host, with_alive_sock=True)
        self._http_server = None
        self._http_task: Optional[asyncio.Task] = None

    # -- loading -------------------------------------------------------------------------------------------------------

    def _load_model(self, model_config: Any) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig

        from verl.utils import hf_tokenizer

        from visionr3.processing import load_processor, prepare_runtime

        prepare_runtime()
        if isinstance(model_config, (str, os.PathLike)):
            path, trust_remote_code = str(model_config), False
        else:
            path = _get(model_config, "local_path", None)
            if not path or not os.path.isdir(str(path)):
                from verl.utils.fs import copy_to_local

                path = copy_to_local(str(_get(model_config, "path")))
            trust_remote_code = bool(_get(model_config, "trust_remote_code", False))
        self.model_path = str(path)

        hf_config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        self.is_multimodal = hasattr(hf_config, "vision_config")
        self.tokenizer = hf_tokenizer(self.model_path, trust_remote_code=trust_remote_code)
        self.processor = None
        if self.is_multimodal:
            self.processor = load_processor(self.model_path, trust_remote_code=trust_remote_code)

        dtype = self.options.get("dtype")
        if dtype is None:
            dtype = _get(self.config, "dtype", "bfloat16") if self.device.type != "cpu" else "float32"
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        auto_cls = AutoModelForImageTextToText if self.is_multimodal else AutoModelForCausalLM
        model = auto_cls.from_pretrained(
            self.model_path,
            dtype=self.dtype,
            attn_implementation=self.options.get("attn_implementation", "sdpa"),
            trust_remote_code=trust_remote_code,
        )
        model.requires_grad_(False)
        model.eval()
        self.model = model.to(self.device)

        # Keep only the token ids of the checkpoint's generation config. Its sampling defaults (Qwen2.5-VL ships
        # top_k=1, temperature=0.1, repetition_penalty=1.05) would otherwise fill every parameter a request leaves
        # unset; verl's vLLM server overrides them with the rollout config in the same way.
        source = model.generation_config
        eos = source.eos_token_id if source.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_ids = sorted({eos} if isinstance(eos, int) else set(eos or []))
        if self.tokenizer.eos_token_id is not None:
            self.eos_token_ids = sorted(set(self.eos_token_ids) | {self.tokenizer.eos_token_id})
        pad = source.pad_token_id if source.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0)
        self.model.generation_config = GenerationConfig(
            bos_token_id=source.bos_token_id, eos_token_id=self.eos_token_ids or None, pad_token_id=self.pad_token_id
        )

        # Never sample an <|image_pad|>/<|video_pad|> (nothing stands behind it: every downstream consumer would
        # break) or a row of the embedding past the tokenizer's vocabulary — what verl patches into vLLM.
        vocab_rows = self.model.get_output_embeddings().weight.shape[0]
        banned = set(range(len(self.tokenizer), vocab_rows))
        if self.processor is not None:
            from verl.workers.rollout.utils import get_vision_placeholder_token_ids

            banned |= set(get_vision_placeholder_token_ids(self.processor))
        self.banned_token_ids = sorted(i for i in banned if 0 <= i < vocab_rows)
        mask = torch.zeros(vocab_rows, dtype=torch.bool)
        mask[self.banned_token_ids] = True
        self._banned_mask = mask

        text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        self.max_model_len = int(
            _get(self.config, "max_model_len", None) or getattr(text_config, "max_position_embeddings", 0) or 1 << 30
        )

        state = self.model.state_dict(keep_vars=True)
        self._state_keys = list(state)
        # Tied weights (e.g. lm_head.weight and embed_tokens.weight) are one Parameter under several keys.
        self._alias_group = {key: id(value) for key, value in state.items()}
        self._renamings = self._weight_renamings()
        logger.info(
            "HFServer replica %d: %s (%s) on %s/%s", self.replica_rank, type(self.model).__name__,
            self.model_path, self.device, self.dtype,
        )

    def _weight_renamings(self) -> list[tuple[str, str]]:
        """(pattern, replacement) pairs that turn legacy checkpoint names into this model's keys."""
        pairs = []
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping

            for transform in get_model_conversion_mapping(self.model) or []:
                sources = getattr(transform, "source_patterns", None)
                targets = getattr(transform, "target_patterns", None)
                if type(transform).__name__ != "WeightRenaming" or not sources or not targets:
                    continue
                if isinstance(sources, str):
                    sources = [sources]
                if isinstance(targets, str):
                    targets = [targets]
                if len(targets) == 1:
                    pairs.extend((source, targets[0]) for source in sources)
        except Exception:  # conversion mappings are a transformers-5 detail; without them names must match exactly
            logger.debug("no transformers weight renamings available", exc_info=True)
        return pairs

    # -- status --------------------------------------------------------------------------------------------------------

    async def ready(self) -> dict:
        """Returns once the model is loaded (Ray runs ``__init__`` first), with a description of the server."""
        return await self.get_info()

    async def get_info(self) -> dict:
        return {
            "model_class": type(self.model).__name__,
            "model_path": self.model_path,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "multimodal": self.is_multimodal,
            "num_threads": torch.get_num_threads(),
            "global_steps": self.global_steps,
            "rollout_mode": getattr(self.rollout_mode, "value", self.rollout_mode),
            "replica_rank": self.replica_rank,
            "asleep": self._asleep,
            "eos_token_ids": list(self.eos_token_ids),
            "banned_token_ids": len(self.banned_token_ids),
        }

    async def get_server_address(self) -> tuple[str, int]:
        """``(host, port)`` of the OpenAI endpoint (served once :meth:`start_http_server` has run)."""
        return self._host, self._port

    # -- OpenAI-compatible HTTP ----------------------------------------------------------------------------------------

    @property
    def served_model_name(self) -> str:
        """The name ``/v1/models`` lists: the local model path, vLLM's default (``--served-model-name`` unset)."""
        return self.model_path

    async def start_http_server(self) -> tuple[str, int]:
        """Serve the OpenAI API (:func:`openai_app`) on the reserved port; idempotent; returns ``(host, port)``.

        uvicorn runs as a task of *the calling event loop* — in the Ray actor, the actor's own loop, which keeps
        running between calls — bound to the socket reserved in ``__init__`` (no second bind, no port race).
        """
        if self._http_task is None:
            import uvicorn

            config = uvicorn.Config(
                openai_app(self), log_config=None, log_level="warning", access_log=False, lifespan="off"
            )
            self._http_server = uvicorn.Server(config)
            self._http_task = asyncio.get_running_loop().create_task(
                self._http_server.serve(sockets=[self._port_sock])
            )
        while not self._http_server.started:
            if self._http_task.done():
                error = None if self._http_task.cancelled() else self._http_task.exception()
                raise RuntimeError(f"the hf server's HTTP endpoint on port {self._port} did not start") from error
            await asyncio.sleep(0.01)
        return self._host, self._port

    async def stop_http_server(self) -> None:
        """Stop serving HTTP (the port is released); the actor's token-in/token-out interface keeps working."""
        if self._http_task is not None:
            self._http_server.should_exit = True
            await asyncio.wait_for(self._http_task, timeout=10)
            self._http_task = None

    def list_models(self) -> dict:
        """The body of ``GET /v1/models``."""
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served_model_name,
                    "object": "model",
                    "created": self._created,
                    "owned_by": "visionr3",
                    "root": self.model_path,
                    "max_model_len": self.max_model_len,
                }
            ],
        }

    async def chat_completions(self, body: Any) -> dict:
        """One OpenAI chat completion (the JSON body of ``POST /v1/chat/completions``) → the response body.

        Raises :class:`OpenAIRequestError` (HTTP 400) for anything wrong with the request — including what
        :meth:`_resolve_request` refuses (``n > 1``, penalties, a prompt longer than the context); generation itself
        is :meth:`generate`'s path (admission, model lock, worker thread). See :func:`chat_request` for the fields.
        """
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            # image decoding and the image processor run off the event loop, like generation
            chat = await asyncio.to_thread(chat_request, body, accept_images=self.processor is not None)
            for key in chat.ignored_fields:
                self._warn_once(f"openai:{key}", f"hf server's OpenAI endpoint ignores request field {key!r}")
            prompt_ids = await asyncio.to_thread(self._render_chat, chat)
            if not chat.images and self._count_placeholders(prompt_ids):
                raise OpenAIRequestError(
                    "the rendered messages contain image/video placeholder tokens but the request has no image parts"
                )
            request = self._resolve_request(request_id, prompt_ids, dict(chat.sampling_params))
        except OpenAIRequestError:
            raise
        except (ValueError, TypeError, KeyError) as exc:  # template errors, _resolve_request's refusals
            raise OpenAIRequestError(f"{type(exc).__name__}: {exc}") from exc
        out = await self._serve(request, list(chat.images) or None, dict(chat.mm_processor_kwargs) or None)
        return self._chat_response(chat, request, out)

    def _render_chat(self, chat: ChatRequest) -> list[int]:
        """Messages → prompt ids: the checkpoint's chat template (processor's for a VL model), then the tokenizer
        without special tokens added (the template already wrote them) — what vLLM's chat endpoint does. Each image
        part renders as one ``<|image_pad|>``, which is then expanded to that image's token count
        (:meth:`_expand_image_pads`), so the ids are what verl's agent loop would have built."""
        renderer = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        if not getattr(renderer, "chat_template", None):
            raise OpenAIRequestError(f"{self.model_path} has no chat template; the chat endpoint needs one")
        try:
            text = renderer.apply_chat_template(
                list(chat.messages),
                tokenize=False,
                add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message,
                **chat.chat_template_kwargs,
            )
        except Exception as exc:  # jinja's TemplateError (e.g. raise_exception in the template) and friends
            raise OpenAIRequestError(f"the chat template rejected the messages: {type(exc).__name__}: {exc}") from exc
        prompt_ids = self.tokenizer.encode(text, add_special_tokens=False)
        if chat.images:
            prompt_ids = self._expand_image_pads(prompt_ids, list(chat.images), chat.mm_processor_kwargs)
        return prompt_ids

    def _expand_image_pads(self, prompt_ids: list[int], images: list, mm_processor_kwargs: Mapping) -> list[int]:
        """Replace the i-th ``<|image_pad|>`` by ``grid_thw(image i).prod() // merge_size**2`` copies: the image
        processor's own count, computed the way verl's agent loop inserts a tool image."""
        image_processor = self.processor.image_processor
        image_token_id = int(self.processor.image_token_id)
        found = sum(1 for t in prompt_ids if t == image_token_id)
        if found != len(images):
            raise OpenAIRequestError(
                f"the rendered messages hold {found} {self.processor.image_token} placeholder(s) for {len(images)} "
                "image part(s); image placeholders must not be written as text"
            )
        merge = int(getattr(image_processor, "merge_size", 2))
        grids = image_processor(images=images, **dict(mm_processor_kwargs or {}))["image_grid_thw"]
        counts = iter([int(grid.prod()) // merge**2 for grid in grids])
        expanded: list[int] = []
        for token in prompt_ids:
            expanded.extend([token] * next(counts) if token == image_token_id else [token])
        return expanded

    def _chat_response(self, chat: ChatRequest, request: _Request, out: TokenOutput) -> dict:
        """OpenAI's ``chat.completion`` object for one finished request, with vLLM's text and finish semantics."""
        token_ids = list(out.token_ids)
        stop_ids = set(request.stop_token_ids) | (set() if request.ignore_eos else set(self.eos_token_ids))
        text_ids = token_ids
        finish_reason, stop_reason = None, None
        if out.stop_reason == "aborted":
            finish_reason = "abort"
        elif token_ids and token_ids[-1] in stop_ids:  # EOS / stop_token_ids: the token is not part of the text
            text_ids = token_ids[:-1]
            finish_reason = "stop"
            stop_reason = token_ids[-1] if token_ids[-1] in request.stop_token_ids else None
        text = self.tokenizer.decode(text_ids, skip_special_tokens=request.skip_special_tokens)
        if finish_reason != "abort":
            text, matched = truncate_at_stop(text, request.stop, chat.include_stop_str_in_output)
            if matched is not None:
                finish_reason, stop_reason = "stop", matched
            elif finish_reason is None:
                finish_reason = "length" if len(token_ids) >= request.max_tokens else "stop"
        logprobs = None
        if request.want_logprobs and out.log_probs is not None:
            logprobs = {
                "content": [
                    {
                        "token": piece,
                        "logprob": value,
                        "bytes": list(piece.encode("utf-8")),
                        "top_logprobs": [],
                    }
                    for piece, value in (
                        (self.tokenizer.decode([t], skip_special_tokens=False), lp)
                        for t, lp in zip(token_ids, out.log_probs)
                    )
                ]
            }
        return {
            "id": request.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model or self.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                    "stop_reason": stop_reason,
                }
            ],
            "usage": {
                "prompt_tokens": len(request.prompt_ids),
                "completion_tokens": len(token_ids),
                "total_tokens": len(request.prompt_ids) + len(token_ids),
            },
        }

    # -- generation ----------------------------------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> TokenOutput:
        """Token-in/token-out generation, as ``vLLMHttpServer.generate`` (``sampling_params`` is never mutated).

        * ``prompt_ids`` already contain the expanded ``<|image_pad|>`` runs, ``image_data`` is every image of the
          conversation so far, in order: the processor's image processor is re-run on it (with
          ``mm_processor_kwargs``, the same call verl's agent loop makes) for ``pixel_values``/``image_grid_thw``, and
          the number of image tokens it expects must equal the number in ``prompt_ids`` (else ``ValueError``).
          Videos/audio are not supported (``NotImplementedError``).
        * Budget: ``max_tokens`` (or ``max_new_tokens``); absent, vLLM's default
          ``min(response_length, prompt_length + response_length - len(prompt_ids))``; clamped to
          ``[1, max_model_len - len(prompt_ids)]`` (a prompt that leaves no room is a ``ValueError``, as in vLLM).
        * Sampling: ``temperature`` (< 1e-5, or ``do_sample=False``: greedy), ``top_k`` (``-1``/``0``: off),
          ``top_p``, ``min_p``, ``repetition_penalty``, ``min_tokens``; unset ones come from the rollout config.
          ``seed`` makes a request reproducible on its own (the global generator is re-seeded under the model lock);
          with ``rollout.full_determinism`` it defaults to ``replica_rank + rollout.seed`` as in vLLM.
          Non-zero ``presence_penalty``/``frequency_penalty`` and ``n > 1`` are rejected.
        * Stopping: the EOS ids of the checkpoint's generation config and tokenizer (unless ``ignore_eos``),
          ``stop_token_ids`` (the stopping token is returned), and ``stop`` strings: generation stops at the first
          token after which the decoded continuation (``skip_special_tokens`` as given, default True) contains a
          stop string, and that token is the last one returned — vLLM's token semantics.
          ``include_stop_str_in_output`` only changes vLLM's *text*, which neither vLLM's verl server nor this one
          returns; it is accepted and has no effect on ``token_ids``.
        * ``logprobs`` (truthy): one float per returned token, the log-probability of the sampled token under the
          distribution it was sampled from (``rollout.logprobs_mode="processed_logprobs"``, verl's default: after the
          repetition penalty, the ban on vision placeholders/out-of-vocabulary rows, temperature, top-k/top-p/min-p,
          renormalised; greedy decoding applies no temperature). With top-k/top-p off this is
          ``log_softmax(logits / temperature)``, which is what verl's actor recomputes. ``"raw_logprobs"`` gives
          ``log_softmax`` of the unprocessed logits.
        * Returns ``TokenOutput(token_ids, log_probs, stop_reason="completed"|"aborted", num_preempted=0,
          extra_fields={"global_steps", "num_cached_tokens": 0})``; ``LLMServerClient`` adds
          ``min_global_steps``/``max_global_steps`` from ``global_steps``. ``priority`` is accepted and ignored
          (requests are served in arrival order).
        """
        from verl.utils import normalize_token_ids

        if video_data:
            raise NotImplementedError("the hf rollout server does not support video inputs")
        if audio_data:
            raise NotImplementedError("the hf rollout server does not support audio inputs")
        prompt_ids = normalize_token_ids(prompt_ids)
        request = self._resolve_request(request_id, prompt_ids, dict(sampling_params or {}))
        return await self._serve(request, image_data, mm_processor_kwargs)

    async def _serve(
        self, request: _Request, image_data: Optional[list[Any]] = None, mm_processor_kwargs: Optional[dict] = None
    ) -> TokenOutput:
        """Admit a resolved request (abort/park rules), then generate under the model lock in a worker thread: the
        one path behind both :meth:`generate` and the OpenAI endpoint."""
        request_id, prompt_ids = request.request_id, request.prompt_ids
        rejected = await self._park_until_admitted(request_id)
        if rejected is not None:
            return rejected
        request.epoch = self._abort_epoch
        self._tickets += 1
        ticket = self._tickets
        self._inflight[ticket] = request_id
        try:
            if image_data:
                request.mm_inputs = await asyncio.to_thread(
                    self._multimodal_inputs, prompt_ids, list(image_data), mm_processor_kwargs
                )
            elif self.processor is not None and self._count_placeholders(prompt_ids):
                raise ValueError(
                    f"request {request_id}: prompt_ids contain image/video placeholder tokens but no image_data "
                    "was given"
                )
            async with self._lock:
                if self._is_aborted(request):
                    return self._output([], None, "aborted")
                self._wake_if_asleep()
                token_ids, log_probs, aborted = await asyncio.to_thread(self._generate_blocking, request)
            return self._output(token_ids, log_probs, "aborted" if aborted else "completed")
        finally:
            self._inflight.pop(ticket, None)
            if request_id not in self._inflight.values():
                self._aborted_ids.discard(request_id)

    def _output(self, token_ids: list[int], log_probs: Optional[list[float]], stop_reason: str) -> TokenOutput:
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs,
            stop_reason=stop_reason,
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps, "num_cached_tokens": 0},
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned_keys:
            self._warned_keys.add(key)
            logger.warning(message)

    def _resolve_request(self, request_id: str, prompt_ids: list[int], params: dict) -> _Request:
        config = self.config
        prompt_length = int(_get(config, "prompt_length", 0) or 0)
        response_length = int(_get(config, "response_length", 0) or 0)
        max_possible = self.max_model_len - len(prompt_ids)
        if max_possible < 1:
            raise ValueError(
                f"Prompt length ({len(prompt_ids)}) leaves no room to generate within the model's maximum context "
                f"length ({self.max_model_len}); need at least 1 token of headroom."
            )
        max_tokens = params.pop("max_tokens", None)
        max_new_tokens = params.pop("max_new_tokens", None)
        if max_tokens is None:
            max_tokens = max_new_tokens
        if max_tokens is None:
            max_tokens = min(response_length, prompt_length + response_length - len(prompt_ids))
        max_tokens = max(1, min(int(max_tokens), max_possible))

        temperature = params.pop("temperature", None)
        temperature = float(_get(config, "temperature", 1.0) if temperature is None else temperature)
        do_sample = params.pop("do_sample", None)
        greedy = temperature < _SAMPLING_EPS or do_sample is False
        top_p = params.pop("top_p", None)
        top_p = float(_get(config, "top_p", 1.0) if top_p is None else top_p)
        top_k = params.pop("top_k", None)
        top_k = int(_get(config, "top_k", -1) if top_k is None else top_k)
        repetition_penalty = params.pop("repetition_penalty", None)
        repetition_penalty = float(
            _get(config, "repetition_penalty", 1.0) if repetition_penalty is None else repetition_penalty
        )
        min_p = float(params.pop("min_p", 0.0) or 0.0)
        min_tokens = int(params.pop("min_tokens", 0) or 0)
        want_logprobs = bool(params.pop("logprobs", False))  # vLLM's verl server: `0 if pop("logprobs") else None`
        logprobs_mode = params.pop("logprobs_mode", None) or _get(config, "logprobs_mode", None)
        logprobs_mode = str(logprobs_mode or "processed_logprobs")
        if logprobs_mode not in ("processed_logprobs", "raw_logprobs"):
            raise ValueError(f"logprobs_mode {logprobs_mode!r} not supported by the hf rollout server")
        stop = params.pop("stop", None) or []
        stop = [stop] if isinstance(stop, str) else [s for s in stop if s]
        stop_token_ids = [int(t) for t in (params.pop("stop_token_ids", None) or [])]
        params.pop("include_stop_str_in_output", None)  # text-only in vLLM: see generate()
        ignore_eos = params.pop("ignore_eos", None)
        ignore_eos = bool(_get(config, "ignore_eos", False) if ignore_eos is None else ignore_eos)
        skip_special_tokens = bool(params.pop("skip_special_tokens", True))
        seed = params.pop("seed", None)
        if seed is None and _get(config, "full_determinism", False):
            seed = self.replica_rank + int(_get(config, "seed", 0) or 0)
        n = int(params.pop("n", 1) or 1)
        if n != 1:
            raise ValueError(f"the hf rollout server returns one sequence per request; got n={n}")
        for key in ("presence_penalty", "frequency_penalty"):
            if float(params.pop(key, 0.0) or 0.0) != 0.0:
                raise ValueError(f"sampling parameter {key} is not supported by the hf rollout server")
        for key in list(params):
            if key in _IGNORED_SAMPLING_KEYS:
                params.pop(key)
        for key in params:
            self._warn_once(f"param:{key}", f"hf rollout server ignores sampling parameter {key!r}")

        return _Request(
            request_id=request_id,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            greedy=greedy,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k if top_k > 0 else 0,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            min_tokens=min_tokens,
            want_logprobs=want_logprobs,
            logprobs_mode=logprobs_mode,
            stop=stop,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
            seed=None if seed is None else int(seed),
            skip_special_tokens=skip_special_tokens,
        )

    def _count_placeholders(self, prompt_ids: list[int]) -> int:
        ids = set(self._placeholder_ids())
        return sum(1 for t in prompt_ids if t in ids)

    def _placeholder_ids(self) -> list[int]:
        if self.processor is None:
            return []
        from verl.workers.rollout.utils import get_vision_placeholder_token_ids

        return list(get_vision_placeholder_token_ids(self.processor))

    def _multimodal_inputs(self, prompt_ids: list[int], images: list[Any], mm_processor_kwargs: Optional[dict]) -> dict:
        """``pixel_values``/``image_grid_thw`` for ``images`` and ``mm_token_type_ids`` for ``prompt_ids``."""
        if self.processor is None or getattr(self.processor, "image_processor", None) is None:
            raise ValueError(f"image_data given, but {self.model_path} has no image processor (text-only model)")
        from verl.utils.tokenizer import build_multimodal_processor_inputs

        from PIL import Image

        from visionr3.processing import open_image

        # PIL images go to the processor untouched, exactly as the agent loop gave them to it; anything else (paths,
        # bytes, dataset dicts) is decoded first.
        pil_images = [image if isinstance(image, Image.Image) else open_image(image) for image in images]
        image_token = self.processor.image_token
        image_token_id = self.processor.image_token_id
        # The processor's own expansion of one placeholder per image: the exact call verl's agent loop uses to build
        # the prompt (ToolAgentLoop / _compute_multi_modal_inputs), so the counts agree by construction.
        encoded = build_multimodal_processor_inputs(
            self.processor,
            text=[image_token * len(pil_images)],
            images=pil_images,
            mm_processor_kwargs=mm_processor_kwargs,
        )
        expected = int((encoded["input_ids"][0] == image_token_id).sum())
        found = sum(1 for t in prompt_ids if t == image_token_id)
        if expected != found:
            raise ValueError(
                f"prompt_ids hold {found} {image_token} tokens but the {len(pil_images)} image(s) in image_data expand "
                f"to {expected} (mm_processor_kwargs={mm_processor_kwargs!r}); prompt and images do not match"
            )
        inputs = {"pixel_values": encoded["pixel_values"], "image_grid_thw": encoded["image_grid_thw"]}
        # transformers 5 computes M-RoPE positions only when it is given the token types.
        if hasattr(self.processor, "create_mm_token_type_ids"):
            inputs["mm_token_type_ids"] = torch.tensor(self.processor.create_mm_token_type_ids([prompt_ids]))
        return inputs

    def _is_aborted(self, request: _Request) -> bool:
        return request.epoch != self._abort_epoch or request.request_id in self._aborted_ids

    def _generate_blocking(self, request: _Request) -> tuple[list[int], Optional[list[float]], bool]:
        """Runs in a worker thread, holding the model lock."""
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
        from transformers import StoppingCriteriaList

        server = self
        device = self.device
        prompt_len = len(request.prompt_ids)
        banned_mask = self._banned_mask.to(device)

        class BanTokens(LogitsProcessor):
            def __call__(self, input_ids, scores):
                return scores.masked_fill(banned_mask[: scores.shape[-1]], float("-inf"))

        class StopOnStringOrAbort(StoppingCriteria):
            def __init__(self):
                self.aborted = False
                self.scanned = 0
                self.longest = max((len(s) for s in request.stop), default=0)

            def __call__(self, input_ids, scores, **kwargs):
                stop = False
                if server._is_aborted(request):
                    self.aborted = stop = True
                elif request.stop:
                    text = server.tokenizer.decode(
                        input_ids[0, prompt_len:].tolist(), skip_special_tokens=request.skip_special_tokens
                    )
                    start = max(0, self.scanned - self.longest - 4)  # a match must end in the new text
                    stop = any(s in text[start:] for s in request.stop)
                    self.scanned = len(text)
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        eos = [] if request.ignore_eos else list(self.eos_token_ids)
        eos = sorted(set(eos) | set(request.stop_token_ids))
        generation = dict(
            max_new_tokens=request.max_tokens,
            min_new_tokens=min(request.min_tokens, request.max_tokens) or None,
            eos_token_id=eos or None,
            pad_token_id=self.pad_token_id,
            repetition_penalty=request.repetition_penalty,
            return_dict_in_generate=True,
            output_scores=request.want_logprobs and request.logprobs_mode == "processed_logprobs",
            output_logits=request.want_logprobs and request.logprobs_mode == "raw_logprobs",
            use_cache=True,
            num_beams=1,
        )
        if request.greedy:
            # Sampling fields stay unset (transformers fills its neutral defaults and would warn about any other
            # value); its warpers are not applied without do_sample anyway.
            generation.update(do_sample=False)
        else:
            generation.update(
                do_sample=True,
                temperature=request.temperature,
                top_k=request.top_k,
                top_p=request.top_p,
                min_p=request.min_p if request.min_p > 0 else None,
            )
        generation_config = GenerationConfig(**generation)
        criterion = StopOnStringOrAbort()

        input_ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=device)
        model_inputs = {}
        for key, value in request.mm_inputs.items():
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(self.dtype)
            model_inputs[key] = value
        with torch.no_grad():
            if request.seed is not None:
                torch.manual_seed(request.seed)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=generation_config,
                logits_processor=LogitsProcessorList([BanTokens()]) if self.banned_token_ids else None,
                stopping_criteria=StoppingCriteriaList([criterion]),
                **model_inputs,
            )
        token_ids = out.sequences[0, prompt_len:].tolist()
        log_probs = None
        if request.want_logprobs:
            steps = out.scores if request.logprobs_mode == "processed_logprobs" else out.logits
            chosen = torch.tensor(token_ids, dtype=torch.long, device=steps[0].device)
            stacked = torch.stack([s[0] for s in steps[: len(token_ids)]]).float()
            log_probs = torch.log_softmax(stacked, dim=-1).gather(-1, chosen[:, None])[:, 0].tolist()
        return token_ids, log_probs, criterion.aborted

    # -- admission / abort (partial rollout) ------------------------------------------------------------------------

    async def _park_until_admitted(self, request_id: str) -> Optional[TokenOutput]:
        while self._paused:
            if self._rejecting:
                return self._output([], None, "aborted")
            await self._resume_event.wait()
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict[str, Any]:
        """Stop every in-flight request at its next token (it returns its tokens so far with ``"aborted"``) and
        hold new ones until :meth:`resume_generation` (or fail them, ``reject_request=True``), as vLLM does."""
        self._paused = True
        self._rejecting = reject_request
        self._resume_event.clear()
        request_ids = list(self._inflight.values())
        self._abort_epoch += 1
        while self._inflight:
            await asyncio.sleep(0.01)
        return {"aborted_count": len(request_ids), "request_ids": request_ids}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict[str, Any]:
        if request_id not in self._inflight.values():
            return {"aborted": False, "request_id": request_id, "error": f"Request {request_id} not found"}
        self._aborted_ids.add(request_id)
        return {"aborted": True, "request_id": request_id}

    async def resume_generation(self) -> None:
        self._paused = False
        self._rejecting = False
        self._resume_event.set()

    async def wait_for_requests_to_drain(self) -> None:
        while self._inflight:
            await asyncio.sleep(0.01)

    # -- memory / lifecycle controls ------------------------------------------------------------------------------

    def _offloads(self) -> bool:
        return (
            self.device.type != "cpu"
            and self.rollout_mode in (RolloutMode.HYBRID, RolloutMode.COLOCATED)
            and bool(_get(self.config, "free_cache_engine", True))
        )

    def _wake_if_asleep(self) -> None:
        if self._asleep:
            self.model.to(self.device)
            self._asleep = False

    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Hybrid on an accelerator: move the weights back (tags ``None``/``["weights"]``); otherwise a no-op."""
        if self._asleep and (tags is None or "weights" in tags):
            async with self._lock:
                await asyncio.to_thread(self._wake_if_asleep)

    async def sleep(self) -> None:
        """Hybrid on an accelerator with ``free_cache_engine``: park the weights on the CPU; otherwise a no-op."""
        if not self._offloads() or self._asleep:
            return
        async with self._lock:  # waits for the running generation
            await asyncio.to_thread(self._offload)

    def _offload(self) -> None:
        self.model.to("cpu")
        self._asleep = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    async def clear_kv_cache(self) -> None:
        """No KV cache outlives a request here: nothing to clear."""

    async def release_kv_cache(self) -> None:
        """No persistent KV cache: nothing to release."""

    async def resume_kv_cache(self) -> None:
        """No persistent KV cache: nothing to restore."""

    async def start_profile(self, **kwargs: Any) -> None:
        """Profiling is not implemented for the hf server (verl's profiler config is ignored)."""

    async def stop_profile(self) -> None:
        """See :meth:`start_profile`."""

    async def set_global_steps(self, global_steps: int) -> None:
        """Set the weight version reported as ``extra_fields["global_steps"]``."""
        self.global_steps = global_steps

    # -- weights ------------------------------------------------------------------------------------------------------

    def _resolve_weight_name(self, name: str) -> Optional[str]:
        if name in self._alias_group:
            return name
        candidates = [name]
        for prefix in ("_fsdp_wrapped_module.", "module.", "_orig_mod."):
            candidates += [c.replace(prefix, "") for c in candidates if prefix in c]
        for candidate in candidates:
            if candidate in self._alias_group:
                return candidate
            for pattern, replacement in self._renamings:
                renamed, count = re.subn(pattern, replacement, candidate)
                if count and renamed in self._alias_group:
                    return renamed
        return None

    async def begin_weight_update(self) -> None:
        """Start a weight sync: :meth:`finish_weight_update` then checks that every weight was sent."""
        self._weight_update = set()

    async def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> list[str]:
        """Load ``(name, tensor)`` pairs (names as verl sends them); returns the server keys loaded.

        Raises ``ValueError`` naming every name that matches no weight of the model, without loading anything of
        this batch; shape mismatches raise too (from ``load_state_dict``).
        """
        mapped: dict[str, torch.Tensor] = {}
        unknown = []
        for name, tensor in named_tensors:
            key = self._resolve_weight_name(name)
            if key is None:
                unknown.append(name)
            else:
                mapped[key] = tensor
        if unknown:
            raise ValueError(
                f"hf rollout server {self.model_path} ({type(self.model).__name__}) has no weight for "
                f"{len(unknown)} received name(s): {sorted(unknown)[:20]}{' ...' if len(unknown) > 20 else ''}; "
                f"its keys look like {self._state_keys[:3]}"
            )
        async with self._lock:
            result = await asyncio.to_thread(self.model.load_state_dict, mapped, strict=False)
        if result.unexpected_keys:  # cannot happen after the check above; keep the guarantee explicit
            raise ValueError(f"unexpected keys while loading weights: {result.unexpected_keys}")
        if self._weight_update is not None:
            self._weight_update.update(mapped)
        return sorted(mapped)

    async def finish_weight_update(
        self, global_steps: Optional[int] = None, allow_partial: Optional[bool] = None
    ) -> dict:
        """End a sync. Raises ``ValueError`` naming the model's weights that were not sent (unless partial updates
        are allowed: argument or ``engine_kwargs.hf.allow_partial_weight_update``)."""
        received = self._weight_update or set()
        self._weight_update = None
        groups = {self._alias_group[k] for k in received}
        missing = [k for k in self._state_keys if self._alias_group[k] not in groups]
        if allow_partial is None:
            allow_partial = bool(self.options.get("allow_partial_weight_update", False))
        if missing and not allow_partial:
            raise ValueError(
                f"weight sync left {len(missing)} of {len(self._state_keys)} weights of the hf rollout server "
                f"unchanged: {missing[:20]}{' ...' if len(missing) > 20 else ''} (names the trainer did not send)"
            )
        if global_steps is not None:
            self.global_steps = global_steps
        return {"loaded": len(received), "missing": missing}

    async def update_weights(
        self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: Optional[int] = None
    ) -> dict:
        """One-shot full sync: :meth:`begin_weight_update`, :meth:`load_weights`, :meth:`finish_weight_update`."""
        await self.begin_weight_update()
        try:
            await self.load_weights(named_tensors)
        except Exception:
            self._weight_update = None
            raise
        return await self.finish_weight_update(global_steps=global_steps)

    async def get_param(self, name: str) -> torch.Tensor:
        """A CPU copy of one weight (server key or any name :meth:`load_weights` accepts), for tests."""
        key = self._resolve_weight_name(name)
        if key is None:
            raise KeyError(name)
        return self.model.state_dict()[key].detach().to("cpu").clone()

    async def get_state_dict_digest(self) -> dict[str, str]:
        """``{key: tensor_digest(weight)}`` of every weight: compare with :func:`tensor_digest` of the sender's."""
        return {key: tensor_digest(value) for key, value in self.model.state_dict().items()}

    async def get_weight_digests(self, names: Sequence[str]) -> dict[str, Optional[str]]:
        """``{name: tensor_digest}`` of the weight each sender's name resolves to (the names :meth:`load_weights`
        accepts; ``None``: no such weight), read under the model lock so no sync is half applied. The trainer
        compares them with the actor's after every weight sync (:func:`weight_mismatches`, ``visionr3.trainer``)."""
        async with self._lock:
            state = self.model.state_dict()
            keys = {name: self._resolve_weight_name(name) for name in names}
            return await asyncio.to_thread(
                lambda: {name: None if key is None else tensor_digest(state[key]) for name, key in keys.items()}
            )


# ---------------------------------------------------------------------------------------------------------------------
# Replica
# ---------------------------------------------------------------------------------------------------------------------


class HFReplica(RolloutReplica):
    """A rollout replica served by one :class:`HFServer` actor (see the module docstring)."""

    def __init__(
        self,
        replica_rank: int,
        config: Any,
        model_config: Any,
        gpus_per_node: int = 8,
        is_reward_model: bool = False,
        is_teacher_model: bool = False,
        name_suffix: str = "",
    ) -> None:
        super().__init__(
            replica_rank, config, model_config, gpus_per_node, is_reward_model, is_teacher_model, name_suffix
        )
        self.server_class = ray.remote(HFServer)

    async def init_standalone(self) -> None:
        """Standalone server (evaluation, tests, a GenRM judge without a resource pool): just the server actor — no
        trainer workers, no resource pool of its own."""
        self.rollout_mode = RolloutMode.STANDALONE
        await self.launch_servers()

    async def init_colocated(self, resource_pool: Any) -> None:
        """A server in an existing resource pool, next to the trainer's processes: how verl's
        ``RewardModelManager`` starts a GenRM judge (its own ``reward_pool`` with
        ``reward.reward_model.enable_resource_pool=True``, else the trainer's ``global_pool``).

        verl's base version first fills the pool slice with a ``RayWorkerGroup`` of ``CheckpointEngineWorker`` actors —
        one process per device of the replica, each building this backend's weight-sync adapter — because a vLLM
        server runs on those workers' GPUs and receives weights through them. Neither applies here: a judge's weights
        never change (nothing syncs a reward model; ``RewardModelManager`` only wakes and sleeps it), and the HF
        server is a single process that needs no per-rank workers. On a CPU those workers would only cost a process
        and a verl import each. So this just launches the server actor, pinned (with zero resources of its own) to the
        first bundle of the replica's slice of the pool, i.e. to that bundle's node.
        """
        self.rollout_mode = RolloutMode.COLOCATED
        self.resource_pool = resource_pool
        await self.launch_servers()

    @property
    def server_name(self) -> str:
        role = "reward" if self.is_reward_model else "teacher" if self.is_teacher_model else ""
        return server_actor_name(self.replica_rank, 0, role=role, name_suffix=self.name_suffix)

    async def launch_servers(self) -> None:
        options = _engine_options(self.config)
        node_id, visible = None, None
        if self.workers:
            placements = await asyncio.gather(*[w.__ray_call__.remote(_worker_placement) for w in self.workers])
            node_id = placements[0][0]
            visible = ",".join(i for _, ids in placements for i in ids) or None

        env_vars: dict[str, str] = {}
        if visible:
            try:
                from verl.plugin.platform import get_platform

                platform = get_platform()
                env_vars.update({var: "1" for var in platform.ray_noset_envvars()})
                env_vars.update(platform.rollout_env_vars())
            except Exception:
                logger.debug("no verl platform env vars for the hf server", exc_info=True)

        actor_options: dict[str, Any] = {
            "name": self.server_name,
            "max_concurrency": self.max_concurrency,
            "num_cpus": options.get("num_cpus", 0),
            "num_gpus": 0,  # hybrid: the trainer workers hold the devices; the server shares them
        }
        if env_vars:
            actor_options["runtime_env"] = {"env_vars": env_vars}
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            actor_options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        elif self.resource_pool is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            placement_group, bundle_index = _first_bundle(self.resource_pool)
            actor_options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=placement_group, placement_group_bundle_index=bundle_index
            )

        server = self.server_class.options(**actor_options).remote(
            config=self.config,
            model_config=self.model_config,
            rollout_mode=self.rollout_mode,
            replica_rank=self.replica_rank,
            node_rank=0,
            cuda_visible_devices=visible,
        )
        await server.ready.remote()  # surfaces model-loading errors here, not at the first request
        host, port = await server.start_http_server.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        """As ``vLLMReplica.abort_all_requests``: abort on every server and return the combined result."""
        results = await asyncio.gather(
            *[server.abort_all_requests.remote(reject_request=reject_request) for server in self.servers]
        )
        return {
            "aborted_count": sum(r.get("aborted_count", 0) for r in results),
            "request_ids": [i for r in results for i in r.get("request_ids", [])],
            "server_results": results,
        }

    async def abort_request(self, request_id: str) -> dict[str, Any]:
        results = await asyncio.gather(*[server.abort_request.remote(request_id) for server in self.servers])
        for result in results:
            if result.get("aborted"):
                return result
        return {"aborted": False, "request_id": request_id, "error": "Request not found on any server"}


# ---------------------------------------------------------------------------------------------------------------------
# Weight-sync adapter (lives in every trainer worker)
# ---------------------------------------------------------------------------------------------------------------------


class HFServerAdapter(BaseRollout):
    """verl's rollout object in each ``ActorRolloutRefWorker``: resume/release the server and push weights into it.

    Built as ``HFServerAdapter(config=rollout_config, model_config=model_config, device_mesh=mesh)`` (and with
    ``replica_rank=`` by ``CheckpointEngineWorker``). Rank bookkeeping is vLLM ``ServerAdapter``'s: ``RANK`` (default:
    ``torch.distributed`` rank, else 0) and ``RAY_LOCAL_WORLD_SIZE`` from the environment.
    """

    def __init__(self, config: Any, model_config: Any, device_mesh: Any = None, replica_rank: int = -1, **kwargs: Any):
        super().__init__(config, model_config, device_mesh)
        self.server_handle = None
        rank = os.environ.get("RANK")
        if rank is None:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        rank = int(rank)
        local_world_size = int(os.environ.get("RAY_LOCAL_WORLD_SIZE", os.environ.get("LOCAL_WORLD_SIZE", 1)))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % rollout_world_size
        self.node_rank = self.rollout_rank // max(1, local_world_size)
        self._has_server = self.rollout_rank == 0
        self.is_leader_rank = self._has_server
        self.server_name = server_actor_name(self.replica_rank, 0)

    def _ensure_server_handle(self) -> bool:
        """Lazily look the server up (it is launched after the trainer workers). False on non-leader ranks."""
        if not self._has_server:
            return False
        if self.server_handle is None:
            self.server_handle = ray.get_actor(self.server_name)
        return True

    async def resume(self, tags: list[str]) -> None:
        if self.config.free_cache_engine and self._ensure_server_handle():
            await self.server_handle.wake_up.remote(tags=tags)

    async def release(self) -> None:
        if self.config.free_cache_engine and self._ensure_server_handle():
            await self.server_handle.sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Iterable[tuple[str, torch.Tensor]],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> dict:
        """Push ``weights`` (a sync or async iterable of ``(name, tensor)``) into the replica's server.

        Every rank iterates ``weights`` to the end, whatever happens (see the module docstring); only the leader rank
        sends. An error reported by the server stops the sending, not the draining, and is raised afterwards.
        Returns ``{"sent": n, "bytes": b, "seconds": s}`` (zeros on other ranks).
        """
        from verl.workers.rollout.utils import ensure_async_iterator

        error: Optional[BaseException] = None
        if wire_format != "named_tensors":
            error = NotImplementedError(f"hf rollout supports wire_format='named_tensors' only, got {wire_format!r}")
        elif peft_config is not None:
            error = NotImplementedError(
                "hf rollout cannot apply LoRA adapter weights; set actor_rollout_ref.model.lora.merge=True so the "
                "trainer sends merged weights"
            )
        sending = error is None and self._ensure_server_handle()
        start = time.time()
        bucket_bytes = int(self.config.checkpoint_engine.update_weights_bucket_megabytes) << 20
        bucket: list[tuple[str, torch.Tensor]] = []
        size = sent = sent_bytes = 0

        async def flush() -> None:
            nonlocal bucket, size, sent, sent_bytes, error, sending
            if not bucket:
                return
            try:
                await self.server_handle.load_weights.remote(bucket)
                sent += len(bucket)
                sent_bytes += size
            except BaseException as exc:  # keep draining: the other ranks are still inside collectives
                error, sending = exc, False
            bucket, size = [], 0

        if sending:
            try:
                await self.server_handle.begin_weight_update.remote()
            except BaseException as exc:
                error, sending = exc, False
        async for name, tensor in ensure_async_iterator(weights):
            tensor = tensor.detach()
            if hasattr(tensor, "full_tensor"):  # a DTensor the engine did not gather: a collective, so on every rank
                tensor = tensor.full_tensor()
            if not sending:
                continue
            tensor = tensor.to("cpu").contiguous()
            bucket.append((name, tensor))
            size += tensor.numel() * tensor.element_size()
            if size >= bucket_bytes:
                await flush()
        if sending:
            await flush()
        if sending:
            try:
                await self.server_handle.finish_weight_update.remote(global_steps=global_steps)
                await self.server_handle.clear_kv_cache.remote()
                if global_steps is not None:
                    await self.server_handle.set_global_steps.remote(global_steps)
            except BaseException as exc:
                error = exc
        if error is not None:
            raise error
        seconds = time.time() - start
        if self._has_server and self.replica_rank == 0:
            logger.info(
                "hf rollout: update_weights sent %d tensors (%.1f MB) in %.2fs", sent, sent_bytes / 2**20, seconds
            )
        return {"sent": sent, "bytes": sent_bytes, "seconds": seconds}

    def generate_sequences(self, prompts):
        raise NotImplementedError(
            "HFServerAdapter only syncs weights; generation goes through HFReplica's server (LLMServerClient)"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------------------

_register_lock = threading.Lock()


def register() -> None:
    """Register ``"hf"`` with verl's replica registry and rollout-adapter registry (idempotent, per process)."""
    with _register_lock:
        RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica_class)
        _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ADAPTER_FQN


def _load_replica_class() -> type[RolloutReplica]:
    return HFReplica


register()

__all__ = [
    "ADAPTER_FQN",
    "ChatRequest",
    "HFReplica",
    "HFServer",
    "HFServerAdapter",
    "OpenAIRequestError",
    "ROLLOUT_NAME",
    "SERVER_NAME_PREFIX",
    "chat_request",
    "combined_digest",
    "decode_image_url",
    "named_tensor_digests",
    "openai_app",
    "register",
    "replica_weight_report",
    "server_actor_name",
    "tensor_digest",
    "truncate_at_stop",
    "weight_mismatches",
]
