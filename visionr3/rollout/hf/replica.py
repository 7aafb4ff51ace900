"""The rollout replica of the ``"hf"`` backend: :class:`HFReplica` (``RolloutReplicaRegistry.register("hf", ...)``).

It creates one :class:`~visionr3.rollout.hf.server.HFServer` Ray actor per replica, named
``hf_server_{replica_rank}_0{suffix}`` (vLLM's scheme: ``vllm_server_{replica_rank}_{node_rank}``;
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
(:func:`~visionr3.rollout.hf.openai_http.openai_app`). verl's agent loop does not use it (it is token-in/token-out
through the actor handle); verl's GenRM path does: ``RewardModelManager`` puts its naive router in front of the
replicas' addresses and the custom reward function POSTs chat requests to
``http://{reward_router_address}/v1/chat/completions``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from verl.workers.rollout.replica import RolloutMode, RolloutReplica

from visionr3.rollout.hf.config import _engine_options, server_actor_name
from visionr3.rollout.hf.server import HFServer

logger = logging.getLogger(__name__)


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


__all__ = ["HFReplica"]
