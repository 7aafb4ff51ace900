"""The weight-sync adapter of the ``"hf"`` backend: :class:`HFServerAdapter` (``_ROLLOUT_REGISTRY[("hf", "async")]``).

Built in every trainer worker. It finds the server like vLLM's ``ServerAdapter`` does
(``replica_rank = RANK // rollout_world_size``, only ``rollout_rank == 0`` talks to
``ray.get_actor("hf_server_{replica_rank}_0")``). ``update_weights`` *drains the weight generator on every rank* —
under FSDP2 each item is produced by ``DTensor.full_tensor()``, a collective, so a rank that stopped iterating would
hang the others — and rank 0 ships ``(name, cpu tensor)`` buckets of
``checkpoint_engine.update_weights_bucket_megabytes`` through Ray's object store. What the server does with them:
:mod:`visionr3.rollout.hf.server_weights`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any, Optional

import ray
import torch

from verl.workers.rollout.base import BaseRollout

from visionr3.rollout.hf.config import server_actor_name

logger = logging.getLogger(__name__)


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


__all__ = ["HFServerAdapter"]
