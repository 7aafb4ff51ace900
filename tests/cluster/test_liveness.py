"""visionr3.cluster.liveness: which dead node ends a run. The kill itself is tests/e2e/test_two_nodes.py's drill (the
worker node's raylet killed during a resumed run's step)."""

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
