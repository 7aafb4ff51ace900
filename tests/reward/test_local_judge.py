"""verl's GenRM path with a local judge served by the hf rollout: ``reward.reward_model.rollout.name=hf`` on CPU.

What runs is verl 0.9.1's own code: ``RewardLoopManager`` (composed ``ppo_trainer`` config) builds a
``RewardModelManager``, which starts :class:`~visionr3.rollout.hf.replica.HFReplica` judges with
``is_reward_model=True`` and puts verl's naive FastAPI router in front of their ``server_address``; a
``RewardLoopWorker`` Ray actor runs the custom reward function (``tests/reward/local_judge_fn.py``), which POSTs an
OpenAI chat request to ``http://{reward_router_address}/v1/chat/completions`` with the ``openai`` SDK. The three ways
verl places the judge are covered, each set up the way verl's callers do it:

* ``colocated`` — the trainer default: the judge in the trainer's ``global_pool`` (``HFReplica.init_colocated``);
* ``own_pool`` — ``reward.reward_model.enable_resource_pool=True``: a ``reward_pool`` of its own (``init_colocated``
  too; verl then also hands the reward workers to the agent loop for streaming scoring);
* ``standalone`` — no pool at all (``rm_resource_pool=None``, as the fully-async trainer does; ``init_standalone``).

The pools are built as ``TrainerBase._init_resource_pool_mgr`` builds them (``ResourcePoolManager`` with the same
spec and mapping), on the session's Ray with logical GPUs. The judge (``tiny_model_dir("qwen3")``) has random weights,
so its verdicts mean nothing: the test proves the request's round trip, comparing the reply recorded in the reward
extra info with what the judge server answers to the same request sent to it directly.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("openai")

# Ray workers cannot import this module by name (pytest's importlib mode): ship _placement_group_id by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

JUDGE_FN = Path(__file__).with_name("local_judge_fn.py")
PROMPT_LENGTH, RESPONSE_LENGTH = 8, 16
RESPONSES = ["The answer is 42.", "The answer is 7."]
GROUND_TRUTH = "42"


def load_judge_fn():
    spec = importlib.util.spec_from_file_location("local_judge_fn", JUDGE_FN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def genrm_overrides(judge_dir: Path) -> list[str]:
    """The overrides a user passes for a local hf judge on CPU (besides the placement, see MODES)."""
    return [
        "reward.reward_model.enable=True",
        f"reward.reward_model.model_path={judge_dir}",
        "reward.reward_model.rollout.name=hf",
        "reward.reward_model.rollout.tensor_model_parallel_size=1",  # verl's default 2 = two devices per judge
        "reward.reward_model.rollout.prompt_length=512",
        "reward.reward_model.rollout.response_length=32",  # the judge's token budget when a request names none
        f"reward.custom_reward_function.path={JUDGE_FN}",
        "reward.custom_reward_function.name=compute_score",
    ]


MODES = {
    "colocated": ["trainer.n_gpus_per_node=1", "trainer.nnodes=1"],
    "own_pool": [
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "reward.reward_model.enable_resource_pool=True",
        "reward.reward_model.n_gpus_per_node=1",
        "reward.reward_model.nnodes=1",
    ],
    "standalone": ["reward.reward_model.n_gpus_per_node=1", "reward.reward_model.nnodes=1"],
}


def reward_resource_pool(config, mode: str):
    """``(ResourcePoolManager, the reward model's pool)`` as ``TrainerBase._init_resource_pool_mgr`` lays them out;
    ``(None, None)`` for standalone."""
    from verl.single_controller.ray import ResourcePoolManager
    from verl.trainer.ppo.utils import Role

    if mode == "standalone":
        return None, None
    spec = {"global_pool": [config.trainer.n_gpus_per_node] * config.trainer.nnodes}
    rm = config.reward.reward_model
    if rm.enable_resource_pool:
        spec["reward_pool"] = [rm.n_gpus_per_node] * rm.nnodes
    mapping = {Role.RewardModel: "reward_pool" if rm.enable_resource_pool else "global_pool"}
    manager = ResourcePoolManager(resource_pool_spec=spec, mapping=mapping)
    manager.create_resource_pool()
    return manager, manager.get_resource_pool(Role.RewardModel)


def rollout_batch(tokenizer):
    """Two finished rollouts, left-padded prompts and right-padded responses, as the trainer hands them over."""
    from verl.protocol import DataProto

    pad = tokenizer.pad_token_id
    prompt = tokenizer.encode("What is six times seven?", add_special_tokens=False)[-PROMPT_LENGTH:]
    rows = []
    for text in RESPONSES:
        response = tokenizer.encode(text, add_special_tokens=False)
        rows.append(
            (
                [pad] * (PROMPT_LENGTH - len(prompt)) + prompt,
                response + [pad] * (RESPONSE_LENGTH - len(response)),
                [0] * (PROMPT_LENGTH - len(prompt)) + [1] * (len(prompt) + len(response))
                + [0] * (RESPONSE_LENGTH - len(response)),
            )
        )
    prompts, responses, attention_mask = (torch.tensor([row[i] for row in rows]) for i in range(3))
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "attention_mask": attention_mask},
        non_tensors={
            "data_source": np.array(["visionr3/judge-test"] * len(rows), dtype=object),
            "reward_model": np.array([{"ground_truth": GROUND_TRUTH}] * len(rows), dtype=object),
            "extra_info": np.array([{} for _ in rows], dtype=object),
        },
    )


@pytest.fixture(scope="module")
def model_dirs():
    from visionr3.testing.tiny_model import tiny_model_dir

    return {"policy": tiny_model_dir("qwen2_5_vl"), "judge": tiny_model_dir("qwen3")}


@pytest.mark.parametrize(
    "mode",
    [
        "colocated",
        "own_pool",
        # init_standalone is also proven by tests/rollout/test_hf_openai_server.py; here it only adds verl's world
        # size from reward.reward_model.{n_gpus_per_node,nnodes} — not worth ~30 s in the default run.
        pytest.param("standalone", marks=pytest.mark.slow),
    ],
)
def test_custom_reward_function_reaches_the_local_judge_through_verls_router(ray_cluster, model_dirs, mode):
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop import RewardLoopManager
    from verl.workers.rollout.replica import RolloutMode

    import visionr3.rollout.hf.registry  # noqa: F401  (registers "hf"; the visionr3 plug-in does it in a real run)
    from visionr3.testing.agent_harness import compose_verl_config

    config = compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dirs['policy']}",
            "reward.num_workers=1",
            *genrm_overrides(model_dirs["judge"]),
            *MODES[mode],
        ]
    )
    children_before = set(multiprocessing.active_children())
    pool_manager, pool = reward_resource_pool(config, mode)
    manager = None
    try:
        manager = RewardLoopManager(config, rm_resource_pool=pool)
        (replica,) = manager.reward_model_manager.rollout_replicas
        (server,) = replica.servers
        server_address = replica.server_address
        assert manager.reward_router_address != server_address  # the function only knows the router

        # placement: where verl asked for it
        if mode == "standalone":
            assert replica.rollout_mode == RolloutMode.STANDALONE and replica.resource_pool is None
        else:
            assert replica.rollout_mode == RolloutMode.COLOCATED and replica.workers == []  # no CheckpointEngineWorker
            placement_group_id = ray.get(server.__ray_call__.remote(_placement_group_id))
            assert placement_group_id == pool.get_placement_groups()[0].id.hex()
        streaming = mode == "own_pool"  # verl scores during rollout only when the judge has its own pool
        assert (manager.reward_loop_worker_handles is not None) == streaming

        policy_tokenizer = AutoTokenizer.from_pretrained(model_dirs["policy"])
        data = rollout_batch(policy_tokenizer)
        out = manager.compute_rm_score(data)

        rm_scores = out.batch["rm_scores"]
        assert rm_scores.shape == (len(RESPONSES), RESPONSE_LENGTH)
        last = data.batch["attention_mask"][:, PROMPT_LENGTH:].sum(-1) - 1
        scores = torch.tensor([float(s) for s in out.non_tensor_batch["score"]])
        assert torch.equal(rm_scores[torch.arange(len(RESPONSES)), last], scores)
        assert rm_scores.abs().sum() == scores.abs().sum()  # nothing but the score at the last response token

        # the replies recorded in the extra info are the judge server's, for exactly these requests
        judge_fn = load_judge_fn()
        assert list(out.non_tensor_batch["judge_model"]) == [str(model_dirs["judge"])] * len(RESPONSES)
        assert all(int(n) >= 1 for n in out.non_tensor_batch["judge_completion_tokens"])
        for reply, response in zip(out.non_tensor_batch["judge_reply"], RESPONSES):
            direct = httpx.post(
                f"http://{server_address}/v1/chat/completions",
                json={
                    "messages": judge_fn.judge_messages(response, GROUND_TRUTH),
                    **judge_fn.JUDGE_SAMPLING,
                    **judge_fn.JUDGE_EXTRA_BODY,
                },
                timeout=60,
            ).json()
            assert reply == direct["choices"][0]["message"]["content"]
    finally:
        _shut_down(manager, pool_manager, children_before)


def _placement_group_id(actor_self) -> str | None:
    """Runs inside the judge server actor (``__ray_call__``)."""
    import ray

    return ray.get_runtime_context().get_placement_group_id()


def _shut_down(manager, pool_manager, children_before) -> None:
    """Free what verl started for this test: actor names (``reward_loop_worker_0``, ``hf_server_reward_0_0``) and
    logical GPUs must be available to the next mode, and verl never stops its router process."""
    if manager is not None:
        for worker in manager.reward_loop_workers:
            ray.kill(worker)
        for replica in manager.reward_model_manager.rollout_replicas:
            for server in replica.servers:
                ray.kill(server)
    if pool_manager is not None:
        for pool in pool_manager.resource_pool_dict.values():
            for placement_group in pool.pgs or []:
                ray.util.remove_placement_group(placement_group)
    for child in set(multiprocessing.active_children()) - children_before:  # verl's router (multiprocessing.Process)
        child.terminate()
        child.join(timeout=10)
