"""The rollout server actor of the ``"hf"`` backend: :class:`HFServer`.

:class:`HFServer` (the Ray actor) loads the checkpoint with transformers (``AutoModelForImageTextToText`` when the
config has a ``vision_config``, else ``AutoModelForCausalLM``; ``attn_implementation="sdpa"``; the processor via
:func:`visionr3.processing.load_processor`, which also works without torchvision) and serves
``async generate(prompt_ids, sampling_params, request_id, image_data=..., ...) -> TokenOutput``, the signature the
client calls. Model calls are serialized by an ``asyncio.Lock`` and run in a thread, so control calls (sleep,
abort, weight loads queued behind the lock) never wait on a blocked event loop. Requests that wait for the model
together — the ``n`` samples of a GRPO group arrive at once — run as one left-padded batch in one ``generate`` call
(``engine_kwargs.hf.max_batch_size``, :meth:`HFServer._generate_waiting`); greedy rows come out token-identical to
one-at-a-time generation (``tests/rollout/test_hf_batching.py``). Details of each sampling parameter are in
:meth:`HFServer.generate`.

Weights are loaded from the checkpoint at start whatever ``rollout.load_format`` says (``dummy`` only saves vLLM
the disk read; the first hybrid sync overwrites them anyway). ``sleep``/``wake_up`` move the model off/onto a CUDA
device in hybrid and colocated mode with ``free_cache_engine`` (so FSDP can use the memory while training); on CPU,
in standalone mode, and for the KV-cache calls there is nothing to free (no cache outlives a request), so they are
no-ops.

The actor class is composed of mixins, one concern each: this module (loading, status, the request path with its
admission and abort rules, memory controls), :class:`~visionr3.rollout.hf.sampling.SamplingMixin` (vLLM sampling
parameters → transformers ``generate``), :class:`~visionr3.rollout.hf.openai_http.OpenAIEndpointMixin` (the
OpenAI-compatible HTTP endpoint) and :class:`~visionr3.rollout.hf.server_weights.WeightSyncMixin` (receiving
weights). Mixins, not separate objects: Ray exposes the actor class's own methods, and all of them share one model
and one model lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import ray
import torch

from verl.workers.rollout.replica import RolloutMode, TokenOutput

from visionr3.rollout.hf.config import DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH_SIZE, _engine_options, _get
from visionr3.rollout.hf.openai_http import OpenAIEndpointMixin
from visionr3.rollout.hf.sampling import SamplingMixin, _Request, batch_key
from visionr3.rollout.hf.server_weights import WeightSyncMixin

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Waiting:
    """A request ready for the model, and where its ``(token_ids, log_probs, aborted)`` goes."""

    request: _Request
    future: asyncio.Future


def _settle(future: asyncio.Future, result: Any = None, exception: Optional[BaseException] = None) -> None:
    if future.done():  # the caller went away
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


class HFServer(OpenAIEndpointMixin, SamplingMixin, WeightSyncMixin):
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
        # Batching (see _generate_waiting): admitted requests still computing their image inputs, requests waiting
        # for the model, the task that runs them, and what it has done.
        self.max_batch_size = max(1, int(self.options.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)))
        self.batch_wait_s = float(self.options.get("batch_wait_ms", DEFAULT_BATCH_WAIT_MS)) / 1000
        self._preparing = 0
        self._waiting: list[_Waiting] = []
        self._batcher: Optional[asyncio.Task] = None
        self.generate_calls = 0
        self.batched_requests = 0

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
            "max_batch_size": self.max_batch_size,
            "generate_calls": self.generate_calls,
            "batched_requests": self.batched_requests,
        }

    async def get_server_address(self) -> tuple[str, int]:
        """``(host, port)`` of the OpenAI endpoint (served once :meth:`start_http_server` has run)."""
        return self._host, self._port

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
          (requests are served in arrival order; requests waiting together share a batch, see
          :func:`~visionr3.rollout.hf.sampling.batch_key` for which can).
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
        self._preparing += 1
        waiting = None
        try:
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
            finally:
                self._preparing -= 1
            waiting = _Waiting(request, asyncio.get_running_loop().create_future())
            self._waiting.append(waiting)
            if self._batcher is None or self._batcher.done():
                self._batcher = asyncio.create_task(self._generate_waiting())
            token_ids, log_probs, aborted = await waiting.future
            return self._output(token_ids, log_probs, "aborted" if aborted else "completed")
        finally:
            if waiting is not None and waiting in self._waiting:  # cancelled before its batch was taken
                self._waiting.remove(waiting)
            self._inflight.pop(ticket, None)
            if request_id not in self._inflight.values():
                self._aborted_ids.discard(request_id)

    # -- batching: the model runs requests that wait together in one generate call ----------------------------------

    async def _generate_waiting(self) -> None:
        """The one task that runs the model for waiting requests, while any wait: under the model lock, it gathers a
        batch (:meth:`_gather_batch`), generates it in a worker thread and hands each request its result."""
        while self._waiting:
            async with self._lock:
                await self._gather_batch()
                if not self._waiting:
                    return
                batch = self._take_batch()
                try:
                    self._wake_if_asleep()
                    await self._run_batch(batch)
                except BaseException as exc:  # never leave a caller waiting
                    for waiting in batch:
                        _settle(waiting.future, exception=exc)
                    raise

    async def _gather_batch(self) -> None:
        """Wait (at most ``batch_wait_ms``) while requests that have been admitted are still preparing their inputs and
        the batch is not full: the ``n`` requests of a GRPO group arrive together, a few milliseconds apart."""
        if self.max_batch_size <= 1 or self.batch_wait_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while self._preparing > 0 and len(self._waiting) < self.max_batch_size and loop.time() < deadline:
            await asyncio.sleep(0.002)

    def _take_batch(self) -> list[_Waiting]:
        """The oldest waiting request and, in arrival order, every later one with its :func:`batch_key` (up to
        ``max_batch_size``); a request with no key goes alone."""
        head = self._waiting[0]
        key = batch_key(head.request)
        batch = [head]
        if key is not None:
            for waiting in self._waiting[1:]:
                if len(batch) >= self.max_batch_size:
                    break
                if batch_key(waiting.request) == key:
                    batch.append(waiting)
        for waiting in batch:
            self._waiting.remove(waiting)
        return batch

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        live = []
        for waiting in batch:
            if waiting.future.done():  # the caller went away
                continue
            if self._is_aborted(waiting.request):
                waiting.future.set_result(([], None, True))
            else:
                live.append(waiting)
        if not live:
            return
        try:
            results = await asyncio.to_thread(self._generate_blocking, [w.request for w in live])
        except Exception as exc:
            if len(live) == 1:
                _settle(live[0].future, exception=exc)
                return
            # One bad request must not fail the others: each runs again alone and gets its own result or error.
            for waiting in live:
                try:
                    (result,) = await asyncio.to_thread(self._generate_blocking, [waiting.request])
                    _settle(waiting.future, result=result)
                except Exception as alone:
                    _settle(waiting.future, exception=alone)
            return
        for waiting, result in zip(live, results):
            _settle(waiting.future, result=result)

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


__all__ = ["HFServer"]
