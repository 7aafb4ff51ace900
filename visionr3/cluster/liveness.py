"""A run whose Ray node died stops with an error instead of waiting for it forever.

verl's v1 trainer gets its batch from ``ReplayBuffer.sample``, a loop that polls TransferQueue until enough
trajectories are finished. When a node holding some of the run's workers dies during rollout, the agent-loop
requests routed to it never finish (or fail and are refilled onto the same dead servers), and the loop polls for ever:
the two-node drill's driver sat 900 s after the worker node's raylet was killed in generation (CI, 2026-12-07), while a
kill that landed in the update ended the run in 8 s (verl's ``ray.get`` on the dead worker raises). The trainer calls
:meth:`NodeWatch.check` on each poll (``VisionR3SyncTrainer._build_replay_buffer``); it looks, at most every
:data:`EVERY_S` seconds, at the nodes that hold the bundles of the run's placement groups, and raises :class:`NodeLost`
when one is dead. The run then fails as a kill in the update does, and the same command resumes from the last
checkpoint on a restored cluster (docs/cluster.md).

Only the placement groups' nodes count: an autoscaler may remove idle nodes that never held one of the run's workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

EVERY_S = 5.0
"""Seconds between two looks at the node table: one GCS call each; Ray itself takes ~15 s (five missed 3 s health
checks) to declare a node dead."""


class NodeLost(RuntimeError):
    """A node that held the run's workers is dead; the message names it and how to resume."""


def bundle_nodes(tables: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Node id -> placement group name, for every bundle of the given ``ray.util.placement_group_table`` entries."""
    nodes: dict[str, str] = {}
    for table in tables:
        for node in (table.get("bundles_to_node_id") or {}).values():
            if node:
                nodes.setdefault(node, table.get("name") or table.get("placement_group_id", "?"))
    return nodes


def lost_nodes(watched: Mapping[str, str], node_table: Sequence[Mapping[str, Any]]) -> list[str]:
    """Descriptions of the ``watched`` nodes that ``ray.nodes()``'s ``node_table`` reports dead (or no longer lists)."""
    rows = {row.get("NodeID"): row for row in node_table}
    lost = []
    for node, group in sorted(watched.items()):
        row = rows.get(node)
        if row is None or not row.get("Alive", False):
            address = (row or {}).get("NodeManagerAddress", "unknown address")
            reason = (row or {}).get("DeathReasonMessage") or ("not in the node table" if row is None else "dead")
            lost.append(f"node {node[:12]} at {address} (placement group {group}): {reason}")
    return lost


class NodeWatch:
    """Raises :class:`NodeLost` from :meth:`check` once a node holding one of ``placement_groups()``'s bundles is dead.

    ``placement_groups`` is called until it returns groups (the trainer creates them after its replay buffer); their
    nodes are recorded while every group is ``CREATED``, since Ray clears a dead node's bundles when it reschedules."""

    def __init__(self, placement_groups: Callable[[], Sequence[Any]], every_s: float = EVERY_S,
                 context: Callable[[], str] = lambda: ""):
        self.placement_groups, self.every_s, self.context = placement_groups, every_s, context
        self.watched: dict[str, str] = {}
        self.last = float("-inf")

    def check(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        import ray
        from ray.util import placement_group_table

        if not self.watched:
            tables = [placement_group_table(group) for group in self.placement_groups() or ()]
            if tables and all(table.get("state") == "CREATED" for table in tables):
                self.watched = bundle_nodes(tables)
            if not self.watched:
                return
        lost = lost_nodes(self.watched, ray.nodes())
        if lost:
            raise NodeLost(
                f"Ray lost a node that held this run's workers{self.context()}: " + "; ".join(lost)
                + ". verl cannot go on with fewer workers. Bring the node back (or start the job on a healthy "
                "cluster) and run the same command: it resumes from the last complete checkpoint.")
