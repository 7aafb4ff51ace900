"""The fingerprint behind the vLLM weight-sync check (visionr3/rollout/vllm_weights.py): it must agree across vLLM's
fusions and reshapes of the same weights, and disagree with an engine one optimiser step behind. The check itself runs
against a real vLLM engine in tests/e2e/test_vllm_rollout.py."""

import torch

from visionr3.rollout.vllm_weights import fingerprints_agree, weight_fingerprint


def _actor(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.empty(shape).normal_(0, 0.02, generator=g)
        for name, shape in {
            "model.embed_tokens.weight": (1000, 128),
            "model.layers.0.self_attn.q_proj.weight": (128, 128),
            "model.layers.0.self_attn.k_proj.weight": (128, 128),
            "model.layers.0.self_attn.v_proj.weight": (128, 128),
            "model.layers.0.mlp.gate_proj.weight": (256, 128),
            "model.layers.0.mlp.up_proj.weight": (256, 128),
            "visual.patch_embed.proj.weight": (128, 3, 2, 14, 14),
        }.items()
    } | {"model.norm.weight": torch.ones(128), "lm_head.weight": None}


def _as_vllm(actor: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """What vLLM holds for the same weights: fused q/k/v and gate/up, a flattened patch embedding, the tied head once."""
    layer = "language_model.model.layers.0"
    return [
        ("language_model.model.embed_tokens.weight", actor["model.embed_tokens.weight"]),
        (f"{layer}.self_attn.qkv_proj.weight", torch.cat([actor[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv"])),
        (f"{layer}.mlp.gate_up_proj.weight", torch.cat([actor["model.layers.0.mlp.gate_proj.weight"], actor["model.layers.0.mlp.up_proj.weight"]])),
        ("visual.patch_embed.proj.weight", actor["visual.patch_embed.proj.weight"].reshape(128, -1)),
        ("language_model.model.norm.weight", actor["model.norm.weight"]),
        ("language_model.model.rotary_emb.inv_freq", torch.arange(4)),  # not floating: never counted
    ]


def test_the_same_weights_agree_across_fusion_reshape_and_a_tied_head():
    actor = _actor()
    actor["lm_head.weight"] = actor["model.embed_tokens.weight"]  # tied: the actor's state names it twice
    mine = weight_fingerprint(actor.items(), skip=["lm_head.weight"])
    assert fingerprints_agree(mine, weight_fingerprint(_as_vllm(actor)))
    assert not fingerprints_agree(weight_fingerprint(actor.items()), weight_fingerprint(_as_vllm(actor)))  # head twice


def test_an_engine_one_optimiser_step_behind_is_caught():
    """One Adam-like step (every weight moves by ~lr) of lr 1e-5 — ten times smaller than the CPU presets' — is
    caught; a single weight moved by 1e-4 too."""
    before = {k: v for k, v in _actor().items() if v is not None}
    after = {k: v - 1e-5 * torch.sign(torch.randn(v.shape, generator=torch.Generator().manual_seed(1))) for k, v in before.items()}
    assert not fingerprints_agree(weight_fingerprint(after.items()), weight_fingerprint(_as_vllm(before | {"lm_head.weight": None})))
    one = dict(before)
    one["model.layers.0.mlp.up_proj.weight"] = one["model.layers.0.mlp.up_proj.weight"].clone()
    one["model.layers.0.mlp.up_proj.weight"][3, 7] += 1e-4
    assert not fingerprints_agree(weight_fingerprint(one.items()), weight_fingerprint(before.items()))
    assert not fingerprints_agree(weight_fingerprint(list(before.items())[1:]), weight_fingerprint(before.items()))  # a missing tensor
