"""Registers the ``"hf"`` rollout with verl: importing this module registers it in both of verl's registries
(:func:`register`, idempotent) — the replica (``RolloutReplicaRegistry``, used by the TaskRunner/driver) and the
weight-sync adapter (``_ROLLOUT_REGISTRY``, used by every trainer worker). So it has to be imported in all those
processes, i.e. through the visionr3 verl plug-in (:data:`visionr3.plugin.DEFERRED_IMPORTS`, once verl imports
``verl.workers.rollout``).

Both entries are lazy, as verl's own are (a loader function, a class path): this module imports none of the
backend's modules, so the plug-in's hook never re-enters one of them half imported.
"""

from __future__ import annotations

import threading

from verl.workers.rollout.base import _ROLLOUT_REGISTRY
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

from visionr3.rollout.hf.config import ROLLOUT_NAME

ADAPTER_FQN = f"{__package__}.adapter.HFServerAdapter"
"""Where verl's ``get_rollout_class`` imports the adapter from, in every trainer worker."""

_register_lock = threading.Lock()


def register() -> None:
    """Register ``"hf"`` with verl's replica registry and rollout-adapter registry (idempotent, per process)."""
    with _register_lock:
        RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica_class)
        _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ADAPTER_FQN


def _load_replica_class() -> type[RolloutReplica]:
    from visionr3.rollout.hf.replica import HFReplica

    return HFReplica


register()

__all__ = ["ADAPTER_FQN", "register"]
