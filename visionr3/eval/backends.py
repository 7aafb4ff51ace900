"""Inference backends for evaluation: what answers verl's agent loop's one model call.

verl's agent loops reach the model only through ``await client.generate(request_id=..., prompt_ids=...,
sampling_params=..., image_data=...) -> TokenOutput`` (token-in/token-out). Training puts verl's rollout replicas
behind that call; evaluation puts one of these, in the evaluating process:

* ``hf`` — :class:`visionr3.rollout.hf.server.HFServer` constructed in-process (the same class the CPU trainer
  rolls out with; transformers ``generate``, CPU or one GPU);
* ``vllm`` — :class:`VLLMEngineClient`, vLLM's ``AsyncLLM`` engine in-process (GPU, or vLLM's CPU build), called exactly as verl's
  ``vLLMHttpServer.generate`` calls it (``TokensPrompt`` with the expanded image pads de-duplicated, the images as
  ``multi_modal_data``), so evaluation sees the engine training saw;
* ``openai`` — :class:`visionr3.eval.openai_backend.OpenAIChatClient`, any OpenAI-compatible chat endpoint (a
  ``vllm serve`` of the checkpoint, or an API model): the conversation is sent as chat messages with image parts.

:class:`SeededClient` wraps any of them so sampled evaluation is reproducible: each request gets a seed derived from
the protocol seed, the sample index and the trajectory's first prompt, plus the turn number — not from the order in
which concurrent trajectories happen to reach the engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from ``parts`` (sha256, the same in every process)."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def image_digest(image: Any) -> str:
    """sha256 of a PIL image's size, mode and pixels (two questions with the same text differ by their image)."""
    if not hasattr(image, "tobytes"):
        return str(image)
    return hashlib.sha256(f"{image.size}{image.mode}".encode() + image.tobytes()).hexdigest()


class SeededClient:
    """Adds ``seed`` to every request's sampling parameters: ``stable_seed(base, first prompt ids and images, turn)``.

    verl keeps one ``request_id`` for all turns of a trajectory; the first call's prompt identifies the question
    (the k samples of one question run in different passes, each with its own ``base`` = protocol seed + k)."""

    def __init__(self, inner: Any, base_seed: int):
        self.inner = inner
        self.base_seed = int(base_seed)
        self._requests: dict[str, tuple[int, int]] = {}  # request id -> (seed, turns so far)

    async def generate(self, *args: Any, **kwargs: Any):
        request_id = kwargs.get("request_id", args[0] if args else "")
        prompt_ids = kwargs.get("prompt_ids")
        if request_id not in self._requests:
            images = kwargs.get("image_data") or []
            self._requests[request_id] = (stable_seed(self.base_seed, list(prompt_ids or []), *map(image_digest, images)), 0)
        seed, turn = self._requests[request_id]
        self._requests[request_id] = (seed, turn + 1)
        params = dict(kwargs.get("sampling_params") or {})
        params["seed"] = stable_seed(seed, turn)
        kwargs["sampling_params"] = params
        return await self.inner.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def hf_client(rollout_config: Any, model_path: str):
    """An in-process :class:`HFServer` for ``model_path`` (device ``auto``: CUDA when available)."""
    from visionr3.rollout.hf.server import HFServer

    return HFServer(rollout_config, model_path)


CPU_KVCACHE_SPACE_GIB = "1"
"""``VLLM_CPU_KVCACHE_SPACE`` when unset: 1 GiB holds an eval batch of the tiny models many times over (vLLM's CPU
default takes a share of the machine's memory, beside a trainer on a 24 GB box)."""


class VLLMEngineClient:
    """vLLM's ``AsyncLLM`` in this process, behind verl's token-in/token-out ``generate`` (GPU, or vLLM's CPU build).

    The request is built as verl 0.9.1's ``vLLMHttpServer.generate`` builds it: ``max_tokens`` defaults to the
    rollout budget and is clamped to the context left, ``logprobs`` is off, the Qwen2.5-VL image pads that the agent
    loop expanded are collapsed again (vLLM expands them itself), images go in ``multi_modal_data``.

    Without CUDA (vLLM's CPU build) the engine gets what that build needs: ``dtype`` float32 unless given (the
    checkpoints' and the hf backend's dtype, so greedy runs compare), ``enforce_eager`` (no compile warm-up: minutes
    on 2 cores), no ``gpu_memory_utilization`` (the CPU KV cache is ``VLLM_CPU_KVCACHE_SPACE`` GiB, defaulted to
    :data:`CPU_KVCACHE_SPACE_GIB`). Its attention needs ``head_dim >= 32``. The engine spawns its engine-core
    process, so a script that builds this client needs an ``if __name__ == "__main__":`` guard."""

    def __init__(
        self,
        model_path: str,
        processor: Any,
        *,
        prompt_length: int,
        response_length: int,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_images: int = 16,
        seed: int = 0,
        dtype: str | None = None,
    ):
        import torch
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.processor = processor
        self.prompt_length = int(prompt_length)
        self.response_length = int(response_length)
        self.max_model_len = self.prompt_length + self.response_length
        if torch.cuda.is_available():
            device_args: dict[str, Any] = {"gpu_memory_utilization": float(gpu_memory_utilization), "dtype": dtype or "bfloat16"}
        else:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_SPACE_GIB)  # read by the engine core it spawns
            device_args = {"dtype": dtype or "float32", "enforce_eager": True}
        args = AsyncEngineArgs(
            model=model_path,
            tensor_parallel_size=int(tensor_parallel_size),
            max_model_len=self.max_model_len,
            limit_mm_per_prompt={"image": int(max_images)},
            seed=int(seed),
            enable_prefix_caching=True,
            **device_args,
        )
        self.engine = AsyncLLM.from_engine_args(args)

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **_: Any,
    ):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from verl.utils.tokenizer import normalize_token_ids
        from verl.workers.rollout.replica import TokenOutput
        from verl.workers.rollout.utils import qwen2_5_vl_dedup_image_tokens

        if video_data:
            raise NotImplementedError("video inputs are not evaluated")
        prompt_ids = normalize_token_ids(prompt_ids)
        params = dict(sampling_params)
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room within max_model_len {self.max_model_len}")
        max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", None))
        if max_tokens is None:
            max_tokens = min(self.response_length, self.max_model_len - len(prompt_ids))
        params["logprobs"] = 0 if params.pop("logprobs", False) else None
        params.pop("do_sample", None)
        sampling = SamplingParams(max_tokens=max(1, min(int(max_tokens), room)), **params)
        prompt_ids = qwen2_5_vl_dedup_image_tokens(prompt_ids, self.processor)
        prompt: dict[str, Any] = {"prompt_token_ids": prompt_ids, "multi_modal_data": {"image": image_data} if image_data else {}}
        if mm_processor_kwargs:
            prompt["mm_processor_kwargs"] = mm_processor_kwargs
        final = None
        async for output in self.engine.generate(prompt=TokensPrompt(**prompt), sampling_params=sampling, request_id=f"{request_id}-{os.urandom(4).hex()}"):
            final = output
        if final is None or not final.outputs:
            return TokenOutput(token_ids=[], log_probs=None, stop_reason="aborted", extra_fields={"global_steps": 0})
        out = final.outputs[0]
        return TokenOutput(
            token_ids=list(out.token_ids), log_probs=None, stop_reason="completed", extra_fields={"global_steps": 0}
        )

    def shutdown(self) -> None:
        self.engine.shutdown()

    async def aclose(self) -> None:
        """:meth:`shutdown` from the event loop the engine answered on: its output tasks, cancelled by the shutdown,
        get to finish there (closing the loop with them pending logs "Task was destroyed but it is pending")."""
        self.shutdown()
        for _ in range(3):
            await asyncio.sleep(0)


__all__ = ["SeededClient", "VLLMEngineClient", "hf_client", "stable_seed"]
