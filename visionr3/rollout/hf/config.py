"""What the hf rollout's parts read from verl's config and share: the rollout name, the server actors' names, and the
engine options.

Engine options (``actor_rollout_ref.rollout.engine_kwargs.hf``, all optional): ``device`` (``"auto"``: CUDA when
available, else CPU), ``dtype`` (default: ``rollout.dtype`` on an accelerator, ``float32`` on CPU — the CPU actor
trains in fp32, and a bf16 rollout would make rollout and actor log-probs disagree), ``attn_implementation``
(``"sdpa"``), ``num_cpus`` (Ray CPUs the server reserves, ``0``), ``num_threads`` (``torch.set_num_threads`` in the
server), ``allow_partial_weight_update`` (``False``: a sync that leaves some server weight unsent is an error),
``max_batch_size`` (:data:`DEFAULT_MAX_BATCH_SIZE`: requests that wait together run in one ``generate`` call; ``1``:
one at a time) and ``batch_wait_ms`` (:data:`DEFAULT_BATCH_WAIT_MS`: how long a batch may wait for requests that have
arrived but are still preparing their image inputs). On CPU
``num_threads`` defaults to every core the process may use (Ray would otherwise pin a ``num_cpus=0`` actor to one
thread); set it to ``cores // replicas per node`` when several replicas generate at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLLOUT_NAME = "hf"
"""``actor_rollout_ref.rollout.name`` of this backend."""
SERVER_NAME_PREFIX = f"{ROLLOUT_NAME}_"
"""Server actors are named ``{prefix}server_{replica_rank}_{node_rank}{suffix}``, like vLLM's ``vllm_server_...``."""

DEFAULT_MAX_BATCH_SIZE = 8
"""``engine_kwargs.hf.max_batch_size``: see :meth:`visionr3.rollout.hf.server.HFServer._generate_waiting`."""
DEFAULT_BATCH_WAIT_MS = 200.0
"""``engine_kwargs.hf.batch_wait_ms``: see :meth:`visionr3.rollout.hf.server.HFServer._gather_batch`."""


def server_actor_name(replica_rank: int, node_rank: int = 0, *, role: str = "", name_suffix: str = "") -> str:
    """Ray actor name of a replica's server (``role``: ``""``, ``"reward"`` or ``"teacher"``), as vLLM names them."""
    role_part = f"{role}_" if role else ""
    return f"{SERVER_NAME_PREFIX}server_{role_part}{replica_rank}_{node_rank}{name_suffix}"


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


__all__ = ["ROLLOUT_NAME", "SERVER_NAME_PREFIX", "server_actor_name"]
