"""visionr3.cluster.liveness: which dead node ends a run — the rules, the watch on a real placement group, and (slow)
the watch on two real Ray nodes when one is killed. tests/e2e/test_two_nodes.py's drill kills a node under the
trainer itself."""

from pathlib import Path

import pytest

from visionr3.cluster.liveness import NodeWatch, bundle_nodes, lost_nodes

HEAD, WORKER, SPARE = "a" * 56, "b" * 56, "c" * 56


def node(node_id, alive, reason=""):
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "10.0.0.%d" % (1 + "abc".index(node_id[0])),
            "DeathReasonMessage": reason}


def test_only_a_dead_node_that_held_a_bundle_counts():
    watched = bundle_nodes([{"name": "global_pool_0", "bundles_to_node_id": {0: HEAD, 1: WORKER}}])
    assert watched == {HEAD: "global_pool_0", WORKER: "global_pool_0"}
    assert lost_nodes(watched, [node(HEAD, True), node(WORKER, True), node(SPARE, False)]) == []
    lost = lost_nodes(watched, [node(HEAD, True), node(WORKER, False, "health check failed"), node(SPARE, True)])
    assert lost == [f"node {WORKER[:12]} at 10.0.0.2 (placement group global_pool_0): health check failed"]
    assert lost_nodes(watched, [node(HEAD, True)]) == [
        f"node {WORKER[:12]} at unknown address (placement group global_pool_0): not in the node table"]


def test_watch_on_real_placement_groups(ray_cluster):
    """On the session's Ray: the watch waits for the trainer's groups, records their node from the real table (the
    keys it reads exist in this Ray) and passes while it lives. The raise is the two-node drill's, on a really killed
    node."""
    ray = ray_cluster
    from ray.util.placement_group import placement_group, remove_placement_group

    groups: list = []
    watch = NodeWatch(lambda: groups, every_s=0)
    watch.check()
    assert watch.watched == {}
    group = placement_group([{"CPU": 0.01}], name="liveness_test")
    ray.get(group.ready(), timeout=60)
    groups.append(group)
    try:
        watch.check()
        assert watch.watched == {ray.get_runtime_context().get_node_id(): "liveness_test"}
        watch.check()  # the live node passes
    finally:
        remove_placement_group(group)


WATCHER = """
import sys, time, ray
from ray.util.placement_group import placement_group
from visionr3.cluster.liveness import NodeLost, NodeWatch
ray.init(logging_level="ERROR", log_to_driver=False)
group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD", name="trainer_like")
ray.get(group.ready(), timeout=120)
watch = NodeWatch(lambda: [group], every_s=0, context=lambda: " (step 3, rollout)")
watch.check()
print("READY", len(watch.watched), flush=True)
deadline = time.monotonic() + 180
while time.monotonic() < deadline:
    try:
        watch.check()
    except NodeLost as lost:
        print("LOST", lost, flush=True)
        sys.exit(0)
    time.sleep(1)
sys.exit(1)
"""


@pytest.mark.slow
def test_a_killed_node_is_named_by_the_watch(tmp_path):
    """On two real Ray nodes (:class:`visionr3.cluster.local.LocalCluster`), a placement group spread over both, as
    verl's trainer spreads its ranks: once the worker node's raylet is SIGKILLed, the watch raises within Ray's
    health-check time, naming that node (the two-node drill's kill does not always land in rollout, NOTE.md)."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from visionr3.cluster.local import LocalCluster

    directory = Path(f"/tmp/vr3-lv-{os.getpid()}")  # short: Ray's socket paths must stay under 108 bytes
    with LocalCluster(directory, nodes=2, gpus_per_node=0, cpus_per_node=2) as cluster:
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER], env=cluster.client_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in watcher.stdout:  # Ray may log before the watcher's first line
            seen.append(line)
            if line.startswith("READY"):
                break
        assert seen and seen[-1].startswith("READY 2"), "".join(seen)[-3000:]  # one bundle on each node
        os.kill(cluster.raylet_pid(1), signal.SIGKILL)
        output = watcher.communicate(timeout=240)[0]
        assert watcher.returncode == 0, output[-3000:]
        assert "LOST Ray lost a node that held this run's workers (step 3, rollout): node " in output, output[-3000:]
        assert "(placement group trainer_like)" in output and "run the same command" in output
    shutil.rmtree(directory, ignore_errors=True)
