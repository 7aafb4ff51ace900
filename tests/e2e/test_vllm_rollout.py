"""verl's own vLLM rollout, executed: `visionr3 demo --rollout vllm --steps 2 --n 4` on vLLM's CPU build.

The production path of every GPU user — verl's ``vLLMReplica`` and ``vLLMHttpServer``, its agent loop feeding tool
turns and images into vLLM's multimodal input, its bucketed weight sync after every update — run on the ``small``
offline Qwen2.5-VL (head_dim 64, which vLLM's CPU attention needs) with ``cluster/cpu_vllm.yaml``: the demo (crop
tool) and VisionThink's step (resize tool), whose judge vLLM serves too. tests/e2e/conftest.py runs each alone, after
the HF runs (a vLLM server and a trainer together take ~10 GB).

What the checks read is what the trainer and the engine held: verl's rollout dump with the batch's image digests, the
log-prob comparison verl makes between vLLM's tokens and the actor's recomputation, the weight fingerprints of the
engine that visionr3's check reads after every sync (visionr3/rollout/vllm_weights.py), and the saved checkpoint.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from visionr3.rollout.vllm_weights import fingerprints_agree, weight_fingerprint


@pytest.fixture(scope="module")
def demo(e2e_runs):
    run = e2e_runs["demo:vllm"]
    run.check()
    summary = json.loads((run.directory / "summary.json").read_text())
    rows = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines() if line.strip()]
    return summary, [row["data"] for row in rows if "actor/pg_loss" in row["data"]]


def test_the_demo_ran_on_verls_vllm_rollout(demo):
    summary, steps = demo
    assert summary["rollout"] == "vllm" and summary["steps"] == 2 and len(steps) == 2
    assert max(summary["tool_call_rate"]) > 0, "the warmed-up small policy did not call the crop tool"
    log = (Path(summary["metrics_file"]).parent / "train.log").read_text(errors="replace")
    assert "vLLMHttpServer" in log and "HFServer" not in log  # verl's server generated, not our replica


def test_tool_turns_went_back_to_vllm_and_the_batch_holds_what_it_saw(demo, rollout_dump, batch_image_oracle):
    """Multi-turn on vLLM: the warmed-up small policy calls the crop tool and the tool's turn goes back into the engine
    for the next assistant turn. Its boxes are not valid yet (the small warm-up writes well-formed calls with
    inverted boxes: the error turns come back as text), so each trajectory's batch holds its prompt image and the crop
    of each valid call, if any — re-made here from the row's source. Tool *images* into vLLM are proven by the
    VisionThink run below (and by tests/eval/test_vllm_cpu.py's inline image)."""
    summary, _ = demo
    rows = rollout_dump(Path(summary["rollout_dir"]))
    assert len(rows) == 2 * 8
    assert any(row["tool_calls"] > 0 and len(row["assistant_turns"]) > 1 for row in rows)
    for row in rows:
        assert len(row["batch_images"]) == row["num_images"] == 1 + row["valid_tool_calls"]
        batch_image_oracle.check(row, Path(summary["train_files"]), "crop_zoom.yaml")


def test_vllm_generated_with_the_actors_weights_after_every_update(demo):
    """The engine's weights equal the actor's after the first sync and after each update (fingerprints: element count,
    sum and sum of squares, to ~1e-16 relative, where one update moves them by ~1e-6), and every update changed them."""
    _, steps = demo
    first, second = steps
    assert first["visionr3/weight_sync/initial_match"] == 1.0
    assert all(row["visionr3/weight_sync/match"] == 1.0 and row["visionr3/weight_sync/sumsq_rel_diff"] < 1e-9 for row in steps)
    engines = [first["visionr3/weight_sync/initial_engine_sumsq"], first["visionr3/weight_sync/engine_sumsq"],
               second["visionr3/weight_sync/engine_sumsq"]]
    assert len(set(engines)) == 3, f"a weight sync did not change the engine's weights: {engines}"
    # vLLM's log-probs against the actor's recomputation: the same bound as the HF replica's (tests/e2e/test_cpu_demo.py);
    # both paths show the same mean (~0.01 here, ~0.003 there) and max (~0.15) on multi-turn trajectories (NOTE.md)
    assert all(row["training/rollout_probs_diff_mean"] < 0.02 for row in steps)


def test_the_engine_held_the_saved_checkpoint(demo):
    """The fingerprint of the last FSDP checkpoint is the one the engine reported after the last sync."""
    summary, steps = demo
    state = torch.load(Path(summary["checkpoint_dir"]) / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    shard = {name: tensor.to_local() if hasattr(tensor, "to_local") else tensor for name, tensor in state.items()}
    tied = [name for name in shard if name.endswith("lm_head.weight")]
    saved = weight_fingerprint(shard.items(), skip=tied)  # the small model ties lm_head to the embedding
    engine = {key: steps[-1][f"visionr3/weight_sync/engine_{key}"] for key in ("numel", "sum", "sumsq")}
    assert fingerprints_agree(saved, engine), (saved, engine)


def test_a_training_step_scored_by_the_local_judge_served_by_vllm(e2e_runs, rollout_dump):
    """VisionThink's step with ``judge=local_qwen3_cpu``: verl's generative reward model — a small Qwen3 served by
    vLLM inside the job, on its own pool — reached through verl's reward router by visionr3's judge client. The
    judge's weights are random, so its verdicts mean nothing (``max_retries=0``: one attempt each; with the recipe's
    ``on_failure: exclude`` a failed one is excluded): what is checked is the path. vLLM served it (a second
    ``vLLMHttpServer`` beside the rollout's), trajectories were sent to it, every reply came back (a failure, if any,
    is "unparseable" — the reply's text, generated by vLLM, had no verdict — never a timeout or a connection error),
    and the step trained."""
    run = e2e_runs["visionthink:vllm"]
    run.check()
    log = run.log.read_text(errors="replace")
    servers = set(re.findall(r"\(vLLMHttpServer pid=(\d+)", log))  # Ray prefixes each actor's lines with its pid
    assert len(servers) >= 2, f"the judge was not served by a vLLM server of its own: {servers}"
    lines = (run.directory / "metrics.jsonl").read_text().splitlines()
    (step,) = [row["data"] for row in map(json.loads, filter(str.strip, lines)) if "actor/pg_loss" in row["data"]]
    rows = rollout_dump(run.directory / "rollouts")
    judged = [row for row in rows if row["judged"] == 1.0]  # sent to the judge: its verdict, or the rule fallback
    assert judged, "no trajectory was sent to the judge"
    assert all(row["judged"] == 1.0 for row in rows if row["judge_failed"] == 1.0)
    kinds = re.findall(r"judge failed for a sample \(\d+ failures so far\): (\w+):", log)
    assert set(kinds) <= {"unparseable"}, kinds  # every reply came back; a random judge writes no verdict
    assert "actor/pg_loss" in step


def test_visionthink_on_vllm_gets_the_full_resolution_image_back_into_the_engine(e2e_runs, rollout_dump, batch_image_oracle):
    """VisionThink's step with ``cluster=cpu_vllm``: the low-resolution first view, a ``resize_image`` call, and the
    full-resolution image the tool returns — in vLLM's multimodal input for the next turn (vLLM refuses a prompt
    whose image placeholders and images disagree, so a trajectory with two images was served with both) and in the
    trainer's batch, re-made here from the row's source. Relies on the small VisionThink warm-up."""
    from omegaconf import OmegaConf

    from visionr3.config import config_path

    run = e2e_runs["visionthink:vllm"]
    run.check()
    assert "vLLMHttpServer" in run.log.read_text(errors="replace")
    lines = (run.directory / "metrics.jsonl").read_text().splitlines()
    (step,) = [row["data"] for row in map(json.loads, filter(str.strip, lines)) if "actor/pg_loss" in row["data"]]
    assert step["visionr3/weight_sync/initial_match"] == 1.0 and step["visionr3/weight_sync/match"] == 1.0
    rows = rollout_dump(run.directory / "rollouts")
    resized = [row for row in rows if row["valid_tool_calls"] > 0]
    assert resized, "the warmed-up small policy never called resize_image validly"
    (entry,) = [e for e in OmegaConf.to_container(OmegaConf.load(config_path("agent_loop.yaml"))) if e["name"] == "visionr3_visionthink"]
    for row in rows:
        batch_image_oracle.check(row, run.directory / "rows.parquet", "resize.yaml", low_res_factor=float(entry["low_res_factor"]))
    assert all(row["batch_images"][0]["grid_thw"] == [1, 8, 8] for row in rows)
    assert all(row["num_images"] == 2 and row["batch_images"][1]["grid_thw"] == [1, 16, 16] for row in resized)
