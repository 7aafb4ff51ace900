"""An HF-transformers rollout backend for verl 0.9.1: rollout name ``"hf"``, so verl's own trainer and agent loop
can generate on a CPU (or any device transformers runs on) without vLLM, SGLang or TensorRT-LLM.

Why it exists
-------------
verl 0.9.1 generates only through *rollout servers*: ``LLMServerManager`` builds one ``RolloutReplica`` per
``tp*dp*pp`` trainer ranks (``RolloutReplicaRegistry``: vllm, sglang, trtllm), the agent loop talks to the replicas'
server actors through ``LLMServerClient`` (``await server.generate.remote(...) -> TokenOutput``), and every
``ActorRolloutRefWorker.init_model`` builds a weight-sync *adapter* from ``_ROLLOUT_REGISTRY[(name, "async")]``
that pushes the trained weights into the server. None of the three shipped engines runs on our CPU machines, and
verl's old ``hf_rollout.HFRollout`` (sync ``generate_sequences``) is not wired into that design any more. This
package provides the three parts under the name ``"hf"``, one module each:

* :mod:`visionr3.rollout.hf.replica` — :class:`~visionr3.rollout.hf.replica.HFReplica` (verl ``RolloutReplica``):
  starts and places one server actor per replica.
* :mod:`visionr3.rollout.hf.server` — :class:`~visionr3.rollout.hf.server.HFServer`, that Ray actor: a transformers
  model behind verl's token-in/token-out server interface, with an OpenAI-compatible HTTP endpoint
  (:mod:`visionr3.rollout.hf.openai_http`), its sampling (:mod:`visionr3.rollout.hf.sampling`) and the receiving
  side of a weight sync (:mod:`visionr3.rollout.hf.server_weights`).
* :mod:`visionr3.rollout.hf.adapter` — :class:`~visionr3.rollout.hf.adapter.HFServerAdapter` (verl ``BaseRollout``),
  built in every trainer worker: pushes the trained weights into the server.

Beside them: :mod:`visionr3.rollout.hf.digests` (does a replica hold exactly the actor's weights? the trainer's
weight-sync check), :mod:`visionr3.rollout.hf.config` (the rollout name, the server actors' names, the
``engine_kwargs.hf`` options) and :mod:`visionr3.rollout.hf.registry` (registers ``"hf"`` with verl's registries).
This ``__init__`` imports nothing.

Trainer config: ``actor_rollout_ref.rollout.name=hf`` (``mode=async``, the default) and
``actor_rollout_ref.rollout.tensor_model_parallel_size=1`` (verl's default 2 asks for two trainer ranks per replica).

A local LLM judge on CPU (verl's GenRM, a generative reward model: an LLM that verl serves inside the job and whose
written verdict becomes the reward)::

    reward.reward_model.enable=True reward.reward_model.model_path=<judge checkpoint>
    reward.reward_model.rollout.name=hf reward.reward_model.rollout.tensor_model_parallel_size=1
    reward.reward_model.rollout.response_length=<judge token budget when a request names none>
    reward.custom_reward_function.path=<file or pkg:// module> reward.custom_reward_function.name=<async function>
    # its own pool (scores stream during rollout), else it shares the trainer's global_pool:
    reward.reward_model.enable_resource_pool=True reward.reward_model.n_gpus_per_node=1 reward.reward_model.nnodes=1

verl starts one judge replica per ``tensor_model_parallel_size`` devices of the pool (each a full model copy), so
on CPU keep the pool small or raise ``tensor_model_parallel_size`` to the pool's size for a single judge; a pool's
devices are logical Ray GPUs there (``ray_kwargs.ray_init.num_gpus``, see :mod:`visionr3.platform.cpu`).
"""
