"""The HF-transformers rollout backend (``visionr3.rollout.hf``) against verl 0.9.1's real machinery.

The session's shared Ray (``ray_cluster``, ``tests/conftest.py``) and one *hybrid* replica serve the module, built
the way verl's trainer builds it: ``LLMServerManager.create(config, worker_group=...)`` with ``rollout.name=hf`` →
``HFReplica.init_hybrid`` → ``launch_servers``. The worker group is a stand-in (:class:`FakeTrainerWorker`, one Ray
actor with ``RANK=0``) for verl's ``ActorRolloutRefWorker``: its ``update_weights`` does what verl's does in
``naive`` mode — resume weights, push ``(name, tensor)`` pairs through the rollout adapter built by
``get_rollout_class("hf", "async")``, resume the KV cache — with a plain (non-FSDP) model, because an FSDP actor on
CPU needs the whole trainer/platform stack (the CPU platform's job, not this module's); the adapter code path past
the generator is the same.

Generation is checked through the server actor directly, through verl's ``LLMServerClient`` (load balancer
included), and through verl's real ``AgentLoopWorker`` with an image prompt. The tiny checkpoint is random, so
its text is gibberish: tests compare token ids between calls, with a local copy of the model, or against what the
server produced without the option under test.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")

PROMPT_LENGTH = 256
RESPONSE_LENGTH = 24

# Ray pickles classes by reference to their module, and Ray workers cannot import this test module (pytest's
# importlib mode gives it a name only this process knows): ship FakeTrainerWorker by value instead.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
PERTURBED = "model.language_model.layers.0.mlp.down_proj.weight"


# ---------------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _pool_slot(pool_slot):
    """One of the e2e pool's slots while this module's Ray workers live (a trainer worker and HF replicas, GBs): beside
    two e2e trainers they took the machine to 1.1 GB free, and Ray's memory monitor killed them (CI on 649fb7f, 17
    tests)."""
    yield


@pytest.fixture(scope="module")
def model_dir():
    from visionr3.testing.tiny_model import tiny_model_dir

    return tiny_model_dir("qwen2_5_vl")


@pytest.fixture(scope="module")
def config(model_dir):
    from visionr3.testing.agent_harness import compose_verl_config

    return compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dir}",
            "actor_rollout_ref.rollout.name=hf",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "actor_rollout_ref.rollout.n_gpus_per_node=1",
            "actor_rollout_ref.rollout.nnodes=1",
            "actor_rollout_ref.rollout.calculate_log_probs=True",
            f"data.max_prompt_length={PROMPT_LENGTH}",
            f"data.max_response_length={RESPONSE_LENGTH}",
        ]
    )


@pytest.fixture(scope="module")
def rollout_config(config):
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(config.actor_rollout_ref.rollout)


@pytest.fixture(scope="module")
def processor(model_dir):
    from visionr3.processing import load_processor

    return load_processor(model_dir)


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


@pytest.fixture(scope="module")
def local_model(model_dir):
    """The checkpoint in this process: the reference for log-probs and for the weights the server must hold."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


class FakeTrainerWorker:
    """Stands in for verl's ``ActorRolloutRefWorker`` (rank 0 of a 1-rank trainer): same rollout-adapter calls."""

    def __init__(self, model_dir: str, rollout_config, model_config: dict):
        from omegaconf import OmegaConf
        from transformers import AutoModelForImageTextToText

        import visionr3.rollout.hf.registry  # noqa: F401  (the visionr3 plug-in does this in real workers)
        from verl.workers.rollout.base import get_rollout_class

        rollout_cls = get_rollout_class(rollout_config.name, rollout_config.mode)  # as init_model does
        self.rollout = rollout_cls(config=rollout_config, model_config=OmegaConf.create(model_config), device_mesh=None)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()

    def adapter_info(self) -> dict:
        r = self.rollout
        return {"class": type(r).__name__, "replica_rank": r.replica_rank, "rollout_rank": r.rollout_rank,
                "leader": r.is_leader_rank, "server_name": r.server_name}

    def perturb(self, name: str, delta: float) -> None:
        with torch.no_grad():
            self.model.state_dict()[name].add_(delta)

    def reload(self, model_dir: str) -> None:
        from transformers import AutoModelForImageTextToText

        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()

    def digests(self) -> dict:
        from visionr3.rollout.hf.digests import tensor_digest

        return {k: tensor_digest(v) for k, v in self.model.state_dict().items()}

    def sync_digests(self, dtype=None) -> dict:
        """What the trainer's weight-sync check digests on the actor (``visionr3.train.trainer.actor_weight_digests`` runs
        the same function over verl's ``get_per_tensor_param``): the weights as the sync sends them."""
        from visionr3.rollout.hf.digests import named_tensor_digests

        return named_tensor_digests(self.model.state_dict().items(), dtype)

    async def update_weights(self, global_steps: int) -> dict:
        """``ActorRolloutRefWorker.update_weights(mode="naive")`` without FSDP: resume → push → resume kv_cache."""
        await self.rollout.resume(tags=["weights"])
        per_tensor_param = ((name, param) for name, param in self.model.state_dict().items())
        stats = await self.rollout.update_weights(
            per_tensor_param, peft_config=None, base_sync_done=True, global_steps=global_steps
        )
        await self.rollout.resume(tags=["kv_cache"])
        return stats


@pytest.fixture(scope="module")
def trainer_worker(ray_cluster, model_dir, config, rollout_config):
    from omegaconf import OmegaConf

    worker = (
        ray.remote(FakeTrainerWorker)
        .options(num_cpus=0, runtime_env={"env_vars": {"RANK": "0", "RAY_LOCAL_WORLD_SIZE": "1"}})
        .remote(str(model_dir), rollout_config, OmegaConf.to_container(config.actor_rollout_ref.model, resolve=True))
    )
    yield worker
    ray.kill(worker)


@pytest.fixture(scope="module")
def manager(ray_cluster, config, trainer_worker):
    """verl's own server manager in hybrid mode (what the v1 trainer does), with the fake one-worker group."""
    import visionr3.rollout.hf.registry  # noqa: F401
    from verl.workers.rollout.llm_server import LLMServerManager

    worker_group = SimpleNamespace(workers=[trainer_worker], world_size=1)
    manager = LLMServerManager.create(config=config, worker_group=worker_group)
    yield manager
    for replica in manager.get_replicas():
        for server in replica.servers:
            ray.kill(server)
    ray.kill(manager.global_load_balancer)


@pytest.fixture(scope="module")
def replica(manager):
    (replica,) = manager.get_replicas()
    return replica


@pytest.fixture(scope="module")
def server(replica):
    return replica.server_handle


def red_image(size=(100, 80)):
    return Image.new("RGB", size, (200, 30, 30))


def chat_prompt_ids(processor, text, images=()):
    """Prompt ids as verl's agent loop builds them: chat template, then the processor expands the image pads."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    encoded = processor(text=[rendered], images=list(images) or None, return_tensors="pt")
    return encoded["input_ids"][0].tolist()


def generate(server, prompt_ids, image_data=None, **sampling):
    return ray.get(
        server.generate.remote(
            prompt_ids=prompt_ids,
            sampling_params=sampling,
            request_id=f"t-{time.monotonic_ns()}",
            image_data=image_data,
        )
    )


# ---------------------------------------------------------------------------------------------------------------------
# registration and launch
# ---------------------------------------------------------------------------------------------------------------------


def test_hf_is_registered_with_verl():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    from visionr3.rollout.hf.adapter import HFServerAdapter
    from visionr3.rollout.hf.replica import HFReplica

    assert get_rollout_replica_class("hf") is HFReplica
    assert get_rollout_class("hf", "async") is HFServerAdapter


def test_hybrid_replica_is_launched_like_verls_trainer_does(manager, replica, server, trainer_worker):
    from verl.workers.rollout.replica import RolloutMode

    assert replica.rollout_mode == RolloutMode.HYBRID
    assert replica.workers == [trainer_worker] and replica.servers == [server]
    host, port = replica.server_address.rsplit(":", 1)
    assert host and int(port) > 0
    assert manager.get_addresses() == [replica.server_address]
    assert ray.get_actor("hf_server_0_0")._actor_id == server._actor_id
    info = ray.get(server.get_info.remote())
    assert info["model_class"] == "Qwen2_5_VLForConditionalGeneration"
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["rollout_mode"] == "hybrid"
    assert info["num_threads"] == len(os.sched_getaffinity(0))  # not the 1 thread Ray gives a num_cpus=0 actor
    # the adapter inside the trainer worker points at that server
    assert ray.get(trainer_worker.adapter_info.remote()) == {
        "class": "HFServerAdapter", "replica_rank": 0, "rollout_rank": 0, "leader": True, "server_name": "hf_server_0_0"
    }


def test_standalone_replica(ray_cluster, config, processor):
    from verl.workers.rollout.replica import RolloutMode

    from visionr3.rollout.hf.replica import HFReplica

    replica = HFReplica(
        replica_rank=0, config=config.actor_rollout_ref.rollout, model_config=config.actor_rollout_ref.model,
        gpus_per_node=1, name_suffix="standalone",
    )
    asyncio.run(replica.init_standalone())
    try:
        assert replica.rollout_mode == RolloutMode.STANDALONE and replica.workers == []
        assert ray.get_actor("hf_server_0_0_standalone")._actor_id == replica.server_handle._actor_id
        out = generate(replica.server_handle, chat_prompt_ids(processor, "hi"), max_tokens=3, temperature=0)
        assert len(out.token_ids) == 3 and out.stop_reason == "completed"
    finally:
        ray.kill(replica.server_handle)


# ---------------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------------


def test_text_only_generation(server, processor):
    prompt = chat_prompt_ids(processor, "Say something.")
    out = generate(server, prompt, temperature=1.0, top_p=0.9, top_k=50, max_tokens=8, logprobs=True, seed=1)
    assert 1 <= len(out.token_ids) <= 8
    assert out.stop_reason == "completed" and out.num_preempted == 0
    assert out.extra_fields["global_steps"] == ray.get(server.get_info.remote())["global_steps"]
    assert len(out.log_probs) == len(out.token_ids) and all(math.isfinite(x) and x <= 0 for x in out.log_probs)
    assert generate(server, prompt, temperature=1.0, max_tokens=8).log_probs is None  # not asked for


def test_image_generation(server, processor):
    image = red_image()
    prompt = chat_prompt_ids(processor, "What colour is this?", [image])
    out = generate(server, prompt, image_data=[image], temperature=0, max_tokens=6, logprobs=True)
    assert len(out.token_ids) == 6 and len(out.log_probs) == 6
    assert all(math.isfinite(x) for x in out.log_probs)
    # two images, mm_processor_kwargs honoured: a smaller max_pixels changes the pad count the server expects
    small = {"max_pixels": 28 * 28 * 4, "min_pixels": 28 * 28 * 4}
    second = red_image((64, 64))
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    ids = processor(text=[rendered], images=[image, second], return_tensors="pt", **small)["input_ids"][0].tolist()
    out = ray.get(server.generate.remote(prompt_ids=ids, sampling_params={"max_tokens": 2}, request_id="mm",
                                         image_data=[image, second], mm_processor_kwargs=small))
    assert len(out.token_ids) == 2
    with pytest.raises(ValueError, match="image_pad"):
        ray.get(server.generate.remote(prompt_ids=ids, sampling_params={"max_tokens": 2}, request_id="mm2",
                                       image_data=[image, second]))


def test_image_placeholder_mismatch_is_refused(server, processor, tokenizer):
    image = red_image()
    prompt = chat_prompt_ids(processor, "What colour?", [image])
    pad = processor.image_token_id
    one_pad_fewer = list(prompt)
    one_pad_fewer.remove(pad)
    with pytest.raises(ValueError, match="do not match"):
        generate(server, one_pad_fewer, image_data=[image], max_tokens=2)
    with pytest.raises(ValueError, match="no image_data"):
        generate(server, prompt, max_tokens=2)


def test_max_tokens_follows_vllms_rule(server, tokenizer):
    # ignore_eos: the random model must not end early, so the budget alone decides the length
    short = tokenizer.encode("hello there", add_special_tokens=False)
    assert len(generate(server, short, temperature=0, ignore_eos=True).token_ids) == RESPONSE_LENGTH
    long_prompt = (short * 200)[: PROMPT_LENGTH + 10]  # a multi-turn context past prompt_length
    assert len(generate(server, long_prompt, temperature=0, ignore_eos=True).token_ids) == RESPONSE_LENGTH - 10
    assert len(generate(server, short, temperature=0, ignore_eos=True, max_tokens=5).token_ids) == 5
    assert len(generate(server, short, temperature=0, ignore_eos=True, max_new_tokens=4).token_ids) == 4
    assert len(generate(server, short, temperature=0, ignore_eos=True, max_tokens=0).token_ids) == 1  # clamped


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(server, processor):
    image = red_image()
    prompt = chat_prompt_ids(processor, "Describe.", [image])
    a = generate(server, prompt, image_data=[image], temperature=0, max_tokens=10, logprobs=True)
    b = generate(server, prompt, image_data=[image], temperature=0, max_tokens=10, logprobs=True)
    c = generate(server, prompt, image_data=[image], temperature=1.0, do_sample=False, max_tokens=10)
    assert a.token_ids == b.token_ids == c.token_ids and a.log_probs == b.log_probs

    s1 = generate(server, prompt, image_data=[image], temperature=1.0, max_tokens=10, seed=123, logprobs=True)
    generate(server, prompt, image_data=[image], temperature=1.0, max_tokens=10)  # moves the global generator
    s2 = generate(server, prompt, image_data=[image], temperature=1.0, max_tokens=10, seed=123, logprobs=True)
    s3 = generate(server, prompt, image_data=[image], temperature=1.0, max_tokens=10, seed=124)
    assert s1.token_ids == s2.token_ids and s1.log_probs == s2.log_probs
    assert s3.token_ids != s1.token_ids  # near-uniform random model: 10 equal draws would be a miracle


def test_stop_strings_and_stop_token_ids(server, tokenizer):
    prompt = tokenizer.encode("Once upon a time", add_special_tokens=False)
    params = dict(temperature=1.0, max_tokens=16, seed=7, ignore_eos=True)
    full = generate(server, prompt, **params).token_ids
    assert len(full) == 16

    def text(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)

    # a stop string taken from the middle of the continuation: generation ends at the token completing it
    whole = text(full)
    middle = len(text(full[:8]))
    stop = whole[middle - 2 : middle + 1]
    assert stop
    expected = next(j for j in range(1, 17) if stop in text(full[:j]))
    out = generate(server, prompt, stop=[stop, "\x00never"], include_stop_str_in_output=False, **params)
    assert out.token_ids == full[:expected] and expected < 16
    assert generate(server, prompt, stop=stop, include_stop_str_in_output=True, **params).token_ids == full[:expected]

    # a stop token id: returned as the last token
    k = next(i for i in range(2, 16) if full[i] not in full[:i])
    assert generate(server, prompt, stop_token_ids=[full[k]], **params).token_ids == full[: k + 1]


def test_logprobs_match_a_full_forward_pass(server, processor, local_model):
    """raw_logprobs == log_softmax(logits); processed (default) == the temperature-scaled distribution sampled from
    (with the server's ban on vision placeholders and out-of-vocabulary rows) — i.e. what verl's actor recomputes."""
    image = red_image()
    prompt = chat_prompt_ids(processor, "Logprobs?", [image])
    temperature = 0.7
    common = dict(image_data=[image], temperature=temperature, max_tokens=8, seed=5, logprobs=True, ignore_eos=True)
    processed = generate(server, prompt, **common)
    raw = generate(server, prompt, logprobs_mode="raw_logprobs", **common)
    assert processed.token_ids == raw.token_ids

    ids = torch.tensor([prompt + processed.token_ids])
    pixel = processor.image_processor(images=[image], return_tensors="pt")
    mm_types = torch.tensor(processor.create_mm_token_type_ids(ids.tolist()))
    local_model.model.rope_deltas = None
    with torch.no_grad():
        logits = local_model(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel["pixel_values"],
            image_grid_thw=pixel["image_grid_thw"], mm_token_type_ids=mm_types,
        ).logits[0, len(prompt) - 1 : -1].float()
    chosen = torch.tensor(processed.token_ids)[:, None]
    expected_raw = torch.log_softmax(logits, -1).gather(-1, chosen)[:, 0]
    assert torch.allclose(torch.tensor(raw.log_probs), expected_raw, atol=1e-4)

    banned = torch.zeros(logits.shape[-1], dtype=torch.bool)
    banned[len(processor.tokenizer) :] = True
    banned[[processor.image_token_id, processor.video_token_id]] = True
    scaled = logits.masked_fill(banned, float("-inf")) / temperature
    expected_processed = torch.log_softmax(scaled, -1).gather(-1, chosen)[:, 0]
    assert torch.allclose(torch.tensor(processed.log_probs), expected_processed, atol=1e-4)


def test_abort_returns_partial_tokens_and_parks_new_requests(replica, server, tokenizer):
    prompt = tokenizer.encode("Keep going", add_special_tokens=False)
    long_ref = server.generate.remote(
        prompt_ids=prompt, sampling_params={"max_tokens": 4000, "ignore_eos": True, "temperature": 0},
        request_id="long",
    )
    time.sleep(1.0)
    result = asyncio.run(replica.abort_all_requests())
    assert result["request_ids"] == ["long"] and result["aborted_count"] == 1
    partial = ray.get(long_ref, timeout=30)
    assert partial.stop_reason == "aborted" and 0 < len(partial.token_ids) < 4000

    parked = server.generate.remote(prompt_ids=prompt, sampling_params={"max_tokens": 2}, request_id="parked")
    ready, _ = ray.wait([parked], timeout=0.5)
    assert not ready, "requests wait while generation is paused"
    asyncio.run(replica.resume_generation())
    assert len(ray.get(parked, timeout=30).token_ids) == 2

    # one request aborted by id: it stops, the server stays open
    single = server.generate.remote(
        prompt_ids=prompt, sampling_params={"max_tokens": 4000, "ignore_eos": True}, request_id="single"
    )
    time.sleep(0.5)
    assert asyncio.run(replica.abort_request("single"))["aborted"] is True
    assert ray.get(single, timeout=30).stop_reason == "aborted"
    assert asyncio.run(replica.abort_request("gone"))["aborted"] is False

    # a replica leaving rotation (reject_request=True) fails late requests at once instead of parking them
    asyncio.run(replica.abort_all_requests(reject_request=True))
    rejected = ray.get(server.generate.remote(prompt_ids=prompt, sampling_params={}, request_id="late"), timeout=30)
    assert rejected.stop_reason == "aborted" and rejected.token_ids == []
    asyncio.run(replica.resume_generation())
    assert len(generate(server, prompt, max_tokens=1).token_ids) == 1


def test_control_methods_are_harmless_on_cpu(replica, server, tokenizer):
    for call in (replica.sleep, replica.wake_up, replica.clear_kv_cache, replica.release_kv_cache,
                 replica.resume_kv_cache, replica.start_profile, replica.stop_profile):
        asyncio.run(call())
    assert ray.get(server.get_info.remote())["asleep"] is False  # nothing is offloaded on CPU
    assert len(generate(server, tokenizer.encode("hi"), max_tokens=2).token_ids) == 2


# ---------------------------------------------------------------------------------------------------------------------
# verl's client and agent loop against the replica
# ---------------------------------------------------------------------------------------------------------------------


def test_llm_server_client_path(manager, processor):
    client = manager.get_client()
    image = red_image()
    prompt = chat_prompt_ids(processor, "Client?", [image])
    out = asyncio.run(
        client.generate(
            "session-1", prompt_ids=prompt, sampling_params={"temperature": 1.0, "logprobs": True, "max_tokens": 5},
            image_data=[image], mm_processor_output=None,
        )
    )
    assert len(out.token_ids) == 5 and len(out.log_probs) == 5
    steps = out.extra_fields["global_steps"]
    assert out.extra_fields["min_global_steps"] == out.extra_fields["max_global_steps"] == steps


def test_hybrid_replica_also_serves_openai_chat_over_http(replica, server, processor):
    """A VL policy server renders text chats with its processor's template; tokens equal ``generate``'s."""
    import httpx

    response = httpx.post(
        f"http://{replica.server_address}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, "ignore_eos": True},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    prompt = chat_prompt_ids(processor, "hi")
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 4, "total_tokens": len(prompt) + 4}
    token_ids = generate(server, prompt, max_tokens=4, temperature=0, ignore_eos=True).token_ids
    assert body["choices"][0]["message"]["content"] == processor.tokenizer.decode(token_ids, skip_special_tokens=True)
    assert body["choices"][0]["finish_reason"] == "length"


def test_agent_loop_worker_with_image(config, manager):
    """verl's real AgentLoopWorker + single_turn_agent, talking to the replica through LLMServerClient."""
    from visionr3.testing.agent_harness import dataset_row, run_agent_loop_worker

    rows = [
        dataset_row("What colour is it?", [red_image()], agent_name="single_turn_agent", index=i) for i in range(2)
    ]
    out = run_agent_loop_worker(config, manager.get_client(), rows)
    assert out.batch["responses"].shape == (2, RESPONSE_LENGTH)
    mask = out.batch["response_mask"].bool()
    assert (mask.sum(-1) > 0).all()
    logprobs = out.batch["rollout_log_probs"]
    assert torch.isfinite(logprobs[mask]).all() and (logprobs[mask] <= 0).all()
    assert out.non_tensor_batch["multi_modal_inputs"][0]["image_grid_thw"].shape == (1, 3)


# ---------------------------------------------------------------------------------------------------------------------
# weight sync
# ---------------------------------------------------------------------------------------------------------------------


def test_weight_update_through_the_adapter_in_a_trainer_worker(server, trainer_worker, model_dir, tokenizer):
    from visionr3.rollout.hf.digests import tensor_digest

    prompt = tokenizer.encode("Weights", add_special_tokens=False)
    original = ray.get(server.get_state_dict_digest.remote())
    before = generate(server, prompt, temperature=0, max_tokens=4, logprobs=True)
    try:
        ray.get(trainer_worker.perturb.remote(PERTURBED, 0.5))
        actor = ray.get(trainer_worker.digests.remote())
        assert actor[PERTURBED] != original[PERTURBED]
        stats = ray.get(trainer_worker.update_weights.remote(global_steps=3))
        assert stats["sent"] == len(actor)
        assert ray.get(server.get_state_dict_digest.remote()) == actor
        after = generate(server, prompt, temperature=0, max_tokens=4, logprobs=True)
        assert after.extra_fields["global_steps"] == 3
        assert after.log_probs != before.log_probs  # generation runs on the new weights
        changed = ray.get(server.get_param.remote(PERTURBED))
        assert tensor_digest(changed) == actor[PERTURBED]
    finally:
        ray.get(trainer_worker.reload.remote(str(model_dir)))
        ray.get(trainer_worker.update_weights.remote(global_steps=0))
    assert ray.get(server.get_state_dict_digest.remote()) == original
    assert generate(server, prompt, temperature=0, max_tokens=4, logprobs=True).log_probs == before.log_probs


def test_weight_sync_check_reports_a_stale_replica(server, trainer_worker, model_dir):
    """The trainer's check after every sync (``visionr3/weight_sync/match``): the actor's weights against what the
    replica holds. An update the replica never received is a mismatch naming the tensor; the sync repairs it."""
    from visionr3.rollout.hf.digests import replica_weight_report

    dtype = ray.get(server.get_info.remote())["dtype"]
    synced = replica_weight_report(ray.get(trainer_worker.sync_digests.remote(dtype)), [server])
    assert synced["match"] and synced["mismatched"] == []
    assert synced["replica_digests"] == [synced["actor_digest"]]
    try:
        ray.get(trainer_worker.perturb.remote(PERTURBED, 0.25))  # an optimizer step the replica did not get
        stale = replica_weight_report(ray.get(trainer_worker.sync_digests.remote(dtype)), [server])
        assert not stale["match"] and stale["mismatched"] == [PERTURBED]
        assert stale["replica_digests"] == synced["replica_digests"] != [stale["actor_digest"]]
        ray.get(trainer_worker.update_weights.remote(global_steps=1))
        fresh = replica_weight_report(ray.get(trainer_worker.sync_digests.remote(dtype)), [server])
        assert fresh["match"] and fresh["replica_digests"] == [stale["actor_digest"]]
        # a name the replica cannot place is a mismatch too, never silently skipped
        extra = replica_weight_report({**ray.get(trainer_worker.sync_digests.remote(dtype)), "model.extra.weight": "0"}, [server])
        assert extra["mismatched"] == ["model.extra.weight"]
    finally:
        ray.get(trainer_worker.reload.remote(str(model_dir)))
        ray.get(trainer_worker.update_weights.remote(global_steps=0))
    assert replica_weight_report(ray.get(trainer_worker.sync_digests.remote(dtype)), [server]) == synced


def _counting(items, consumed):
    for item in items:
        consumed.append(item[0])
        yield item


def test_adapter_refuses_unknown_and_missing_weights(server, config, rollout_config, local_model, monkeypatch):
    """The adapter in this process (RANK unset → rank 0): a bad sync raises with the names, loads nothing of the bad
    bucket, and still drains the generator (other ranks would be inside FSDP collectives)."""
    from visionr3.rollout.hf.adapter import HFServerAdapter

    monkeypatch.delenv("RANK", raising=False)
    adapter = HFServerAdapter(config=rollout_config, model_config=config.actor_rollout_ref.model, device_mesh=None)
    original = ray.get(server.get_state_dict_digest.remote())
    state = local_model.state_dict()

    named = [("model.not_a_layer.weight", torch.zeros(2))] + [(k, v + 1.0) for k, v in state.items()]
    consumed = []
    with pytest.raises(ValueError, match="not_a_layer"):
        asyncio.run(adapter.update_weights(_counting(named, consumed)))
    assert len(consumed) == len(named)
    assert ray.get(server.get_state_dict_digest.remote()) == original  # the bad bucket was not loaded

    partial = [(k, v) for k, v in state.items() if k != "model.language_model.norm.weight"]
    with pytest.raises(ValueError, match="model.language_model.norm.weight"):
        asyncio.run(adapter.update_weights(iter(partial)))

    with pytest.raises(RuntimeError, match="size mismatch"):
        asyncio.run(adapter.update_weights(iter([("lm_head.weight", torch.zeros(3, 3))])))

    # legacy checkpoint names (transformers 4 / verl's convert_weight_keys on old models) are renamed, tied
    # weights count once, and an async generator works too
    async def legacy():
        for k, v in state.items():
            if k == "lm_head.weight":
                continue  # tied to the embedding
            yield k.replace("model.language_model.", "model.").replace("model.visual.", "visual."), v

    stats = asyncio.run(adapter.update_weights(legacy(), global_steps=0))
    assert stats["sent"] == len(state) - 1
    assert ray.get(server.get_state_dict_digest.remote()) == original


def test_non_leader_rank_drains_without_sending(server, config, monkeypatch):
    from omegaconf import OmegaConf

    from verl.utils.config import omega_conf_to_dataclass

    from visionr3.rollout.hf.adapter import HFServerAdapter

    rollout = copy.deepcopy(OmegaConf.to_container(config.actor_rollout_ref.rollout, resolve=True))
    rollout["tensor_model_parallel_size"] = 2
    monkeypatch.setenv("RANK", "1")
    adapter = HFServerAdapter(
        config=omega_conf_to_dataclass(OmegaConf.create(rollout)), model_config=config.actor_rollout_ref.model,
        device_mesh=None,
    )
    assert adapter.rollout_rank == 1 and not adapter.is_leader_rank
    original = ray.get(server.get_state_dict_digest.remote())
    consumed = []
    stats = asyncio.run(adapter.update_weights(_counting([("bogus", torch.zeros(1))] * 3, consumed)))
    assert consumed == ["bogus"] * 3 and stats["sent"] == 0
    assert ray.get(server.get_state_dict_digest.remote()) == original


# ---------------------------------------------------------------------------------------------------------------------
# the other architecture, in-process (HFServer is a plain class; Ray only wraps it)
# ---------------------------------------------------------------------------------------------------------------------


def test_qwen3_vl_in_process(rollout_config):
    """Qwen3-VL (deepstack, 16-pixel patches): image generation and raw log-probs equal a full forward pass."""
    from transformers import AutoModelForImageTextToText

    from visionr3.rollout.hf.server import HFServer
    from visionr3.testing.tiny_model import tiny_model_dir

    qwen3 = tiny_model_dir("qwen3_vl")
    server = HFServer(rollout_config, str(qwen3))
    processor = server.processor
    image = red_image()
    prompt = chat_prompt_ids(processor, "What colour?", [image])
    out = asyncio.run(
        server.generate(
            prompt, {"temperature": 0.8, "seed": 1, "logprobs": True, "max_tokens": 6, "logprobs_mode": "raw_logprobs"},
            "q3", image_data=[image],
        )
    )
    assert len(out.token_ids) == len(out.log_probs) == 6

    model = AutoModelForImageTextToText.from_pretrained(qwen3, dtype=torch.float32).eval()
    ids = torch.tensor([prompt + out.token_ids])
    pixel = processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixel["pixel_values"],
            image_grid_thw=pixel["image_grid_thw"],
            mm_token_type_ids=torch.tensor(processor.create_mm_token_type_ids(ids.tolist())),
        ).logits[0, len(prompt) - 1 : -1].float()
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4)
