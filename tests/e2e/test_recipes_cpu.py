"""Every recipe's CPU variant, one step of verl's real trainer on a tiny Qwen2.5-VL (`visionr3 train --recipe <name>
--config-name cpu`): the recipe's own agent loop, tool, reward formula, judge settings, shaping and advantages, with
the CPU preset (HF rollout, fp32 FSDP2, one logical GPU) on top. tests/e2e/conftest.py starts the runs, two at a
time, with the demo.

Each run starts from a policy warmed up in its recipe's own format (tests/e2e/conftest.py ``WARMUP``,
visionr3/demo/warmup.py), so the step exercises the recipe's mechanism, and each test asserts that it did — from the
step's metrics and from verl's rollout dump, which carries what the trainer's batch held:

- zoom: hermes ``image_zoom_in_tool`` calls, every answer judged (the loopback judge, ``use: always``);
- VisionThink: the low-resolution first view, a ``resize_image`` call that brings the full image back, and the
  apply-ratio shaping rewriting the scores verl trained on;
- VLM-R3: bare inline boxes, the crop inserted into the same assistant turn, the gated region reward;
- Vision-SR1: a description, so the text-only second pass runs, and the visual reward it earns.

The VLM-R3 and VisionThink steps also run against a judge that times out, answers 429 and 500 (tests/e2e/conftest.py
``JUDGE_FAULTS``; VLM-R3's recovers every other judgement, VisionThink's is down for the step), with an API key in
their environment: the failed judgements are rule-scored (VLM-R3) or excluded from their groups (VisionThink), and the
key reaches the judge and no file the run wrote.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from visionr3.agent.parsers import MALFORMED_CALL
from visionr3.config import RECIPES

# reward components each recipe's formula reports (visionr3/reward/formulas.py), logged per step by visionr3_sync
COMPONENTS = {
    "zoom": ("accuracy", "format", "tool"),
    "visionthink": ("accuracy", "format"),
    "vlm_r3": ("accuracy", "format", "region", "length"),
    "vision_sr1": ("accuracy", "format", "visual"),
}
TRAJECTORIES = 4  # 2 prompts x n=2 (tests/e2e/conftest.py)


@pytest.fixture(scope="module")
def finished(e2e_runs):
    """``finished(recipe)``: (the step's metrics, the step's dumped rows, the run directory) of a recipe's CPU run."""

    def read(recipe: str) -> tuple[dict, list[dict], Path]:
        run = e2e_runs[f"recipe:{recipe}"]
        run.check()
        lines = (run.directory / "metrics.jsonl").read_text().splitlines()
        (step,) = [row["data"] for row in map(json.loads, filter(str.strip, lines)) if "actor/pg_loss" in row["data"]]
        rows = [json.loads(line) for line in (run.directory / "rollouts" / "1.jsonl").read_text().splitlines()]
        assert len(rows) == TRAJECTORIES
        return step, rows, run.directory

    return read


def prompt_groups(rows: list[dict]) -> dict[str, list[int]]:
    """The dumped rows' indices per prompt group (a row's ``uid``: its group's uuid and two ``_<n>`` suffixes)."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["uid"].rsplit("_", 2)[0], []).append(i)
    return groups


def agent_loop(name: str) -> dict:
    from visionr3.config import config_path

    (entry,) = [e for e in OmegaConf.to_container(OmegaConf.load(config_path("agent_loop.yaml"))) if e["name"] == name]
    return entry


@pytest.mark.parametrize("recipe", RECIPES)
def test_cpu_variant_runs_one_step_on_synced_weights(recipe, finished):
    step, rows, _ = finished(recipe)
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "training/num_turns/mean",
                *(f"visionr3/reward/{name}/mean" for name in COMPONENTS[recipe])):
        assert key in step, key
    # the replica held the actor's weights before the step and after its update (visionr3.train.trainer's check)
    assert step["visionr3/weight_sync/initial_match"] == 1.0 and step["visionr3/weight_sync/match"] == 1.0
    assert step["visionr3/weight_sync/initial_replica_digest"] != step["visionr3/weight_sync/replica_digest"]
    for row in rows:  # the dumped score is what verl trained on; every component was logged per trajectory
        assert all(isinstance(row[name], float) for name in COMPONENTS[recipe])


def test_zoom_calls_the_crop_tool_and_every_answer_is_judged(finished, judge):
    """Relies on the CPU demo's warmed-up policy, which calls the crop tool (it may write a bad box: an error turn) and
    then answers (31 of the CI demo's 32 trajectories)."""
    from visionr3.reward.formulas import get_formula
    from visionr3.reward.types import RewardInput

    step, rows, _ = finished("zoom")
    assert step["visionr3/tool_call_rate"] > 0, "the warmed-up policy did not call image_zoom_in_tool"
    # every call named the crop tool, or was unparseable (the parser's error call: an error turn, by design)
    assert all(call["name"] in ("image_zoom_in_tool", MALFORMED_CALL) for row in rows for call in row["tool_call_log"])
    assert any(call["name"] == "image_zoom_in_tool" for row in rows for call in row["tool_call_log"])
    formula = get_formula("deepeyes")  # the recipe's: its answer is what the judge is asked about
    predictions = [(formula.prediction(RewardInput(response=row["output"], ground_truth="")) or "").strip() for row in rows]
    answered = [(row, prediction) for row, prediction in zip(rows, predictions) if prediction]
    assert answered, "the warmed-up policy never answered"
    assert step["visionr3/reward/judge_failed/mean"] == 0.0
    assert all(row["judged"] == 1.0 for row, _ in answered)  # use: always — every answer went to the judge
    # ... the (loopback) one: the client asks once per distinct question and answer (its cache answers repeats)
    assert judge.requests >= len({(row["input"], prediction) for row, prediction in answered})


def judge_fault_run(recipe: str, on_failure: str, finished, faulty_judges) -> tuple[dict, list[dict]]:
    """A run of tests/e2e/conftest.py's ``JUDGE_FAULTS``: its step and rows, after checking that its recipe sets
    ``on_failure``, that its judge really failed in all three ways inside the step and that a judgement of the trained
    batch failed for good (the fault plan's first request does)."""
    from visionr3.config import recipe_dir

    assert OmegaConf.load(recipe_dir(recipe) / "config.yaml").visionr3.reward.judge.on_failure == on_failure
    step, rows, _ = finished(recipe)  # the run exited 0: no step crashed
    server = faulty_judges[recipe]
    assert all(server.faults[kind] > 0 for kind in ("timeout", "rate_limit", "server_error")), server.stats()
    failed = [row for row in rows if row["judge_failed"] == 1.0]
    assert failed, "no judgement failed after its retries: the fault plan did not reach the step"
    assert step["visionr3/reward/judge_failed/mean"] == pytest.approx(np.mean([row["judge_failed"] for row in rows]))
    return step, rows


def test_vlm_r3_rule_scores_the_answers_its_failing_judge_could_not_grade(finished, faulty_judges):
    """``on_failure: rule``: a judgement that failed after its retries is counted and graded by the formula's rules;
    the others were answered after their faults (the fault plan fails every other request)."""
    from visionr3.reward.formulas import get_formula
    from visionr3.reward.types import RewardInput

    _, rows = judge_fault_run("vlm_r3", "rule", finished, faulty_judges)
    assert any(row["judged"] == 1.0 and row["judge_failed"] == 0.0 for row in rows), "no judgement recovered"
    formula = get_formula("vlm_r3")
    for row in (row for row in rows if row["judge_failed"] == 1.0):
        assert row["excluded"] == 0.0 and row["judged"] == 1.0
        ruled = formula.grade(RewardInput(response=row["output"], ground_truth=str(row["gts"])))
        assert row["accuracy"] == float(ruled.correct), row


def grpo_advantages(rows: list[dict], valid: list[bool]) -> list[float]:
    """GRPO's outcome advantage per row over the ``valid`` rows of its group (verl's formula: score minus the group's
    mean, over its std + 1e-6); 0 for the others and for a group with fewer than two valid rows."""
    out = [0.0] * len(rows)
    for members in prompt_groups(rows).values():
        kept = [i for i in members if valid[i]]
        if len(kept) >= 2:
            scores = np.array([rows[i]["score"] for i in kept])
            for i, score in zip(kept, scores):
                out[i] = (score - scores.mean()) / (scores.std(ddof=1) + 1e-6)
    return out


def test_visionthink_excludes_failed_judgements_from_their_groups(finished, faulty_judges):
    """``on_failure: exclude``: a sample whose judgement failed is counted, trains with advantage 0 and is left out of
    its group's mean and std (a group left with one valid sample has nothing to compare: all 0). The oracle is GRPO's
    formula over the valid samples, from the dumped scores; ``advantage`` is what the actor trained on. The judge is
    down for this step (conftest's plan), so every sample is excluded; DAPO kept only groups whose scores differ, so
    plain GRPO would have trained on nonzero advantages: the zeros are the exclusion's."""
    step, rows = judge_fault_run("visionthink", "exclude", finished, faulty_judges)
    excluded = [row for row in rows if row["excluded"] == 1.0]
    assert excluded and all(row["judge_failed"] == 1.0 for row in excluded)
    assert all(row["excluded"] == row["judge_failed"] for row in rows)
    assert step["visionr3/excluded_samples"] == len(excluded)
    assert any(abs(a) > 0.5 for a in grpo_advantages(rows, [True] * len(rows))), "no group's scores differ"
    expected = grpo_advantages(rows, [row["excluded"] == 0.0 for row in rows])
    assert [row["advantage"] for row in rows] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("recipe", ["vlm_r3", "visionthink"])  # the runs with a key (conftest's JUDGE_FAULTS)
def test_the_api_key_reached_the_judge_and_nothing_the_run_wrote(recipe, finished, faulty_judges, api_key):
    """The key was exported for the run (``OPENAI_API_KEY``, the judge's ``api_key_env``): the judge received it, and
    no file the run wrote holds it — Hydra's ``.hydra/``, the log, the metrics, the rollout dump, the checkpoint and
    its configs — nor any log of a Ray session on this machine."""
    import tempfile

    from visionr3.testing.two_nodes_drill import files_holding

    _, _, directory = finished(recipe)
    assert faulty_judges[recipe].last_authorization == f"Bearer {api_key}"
    written = [path for path in directory.rglob("*") if path.is_file()]
    names = {path.name for path in written}
    assert {"config.yaml", "overrides.yaml", "run.log", "metrics.jsonl", "1.jsonl"} <= names, sorted(names)
    if recipe == "vlm_r3":  # its step is saved (the frozen-tower test reads it)
        assert any(path.parent.name == "huggingface" for path in written)  # the saved step's model configs
    sessions = [logs for logs in Path(tempfile.gettempdir(), "ray").glob("session_*/logs") if not logs.parent.is_symlink()]
    scanned = files_holding(api_key, directory, *sessions)  # the two-node drill's scan
    assert scanned["files"] >= len(written) and scanned["found"] == [], scanned


def test_zoom_rollout_dump_renders_in_the_viewer(finished, tmp_path):
    """`trainer.rollout_data_dir` on the zoom run: verl's dump plus visionr3's columns, then `visionr3 view` on it."""
    from visionr3.eval.view import build_report

    _, rows, directory = finished("zoom")
    dump = directory / "rollouts" / "1.jsonl"
    for row in rows:
        for key in ("input", "output", "gts", "score", "step", "uid"):  # verl's own
            assert key in row, key
        for key in ("accuracy", "format", "tool", "tool_calls", "crop_boxes", "assistant_turns", "tool_call_log",
                    "image", "image_size", "batch_images", "reward_score", "row_index"):
            assert key in row, key
        assert (dump.parent / row["image"]).is_file() and row["image_size"] == [448, 448]
        assert len(row["tool_call_log"]) == row["tool_calls"]
    stats = build_report([dump.parent], tmp_path / "rollouts.html")
    assert stats.shown == len(rows) and stats.total == len(rows)
    html = (tmp_path / "rollouts.html").read_text()
    assert html.count('data-kind="rollout"') == len(rows)
    assert 'viewBox="0 0 448 448"' in html  # the question image in its source frame, where boxes are drawn


def apply_ratio_penalty(rows: list[dict], theta: float, penalty: float) -> list[float]:
    """VisionThink's Eq. 5 (paper variant), written out here as the oracle: per prompt, r = share of the correct
    rollouts that answered without resizing (undefined, no penalty, when none is correct); direct answers lose
    ``penalty`` when r < theta, resized ones when r >= theta."""
    groups = prompt_groups(rows)
    out = [0.0] * len(rows)
    for members in groups.values():
        correct = [i for i in members if rows[i]["accuracy"] > 0.5]
        if not correct:
            continue
        r = sum(rows[i]["tool_calls"] == 0 for i in correct) / len(correct)
        for i in members:
            direct = rows[i]["tool_calls"] == 0
            out[i] = penalty if (direct and r < theta) or (not direct and r >= theta) else 0.0
    return out


def test_visionthink_resizes_from_the_low_resolution_view_and_shapes_the_scores(finished, batch_image_oracle):
    """Relies on the VisionThink warm-up: it asks ``resize_image`` for the full image (31 of 32 sampled first turns),
    then answers."""
    from visionr3.config import recipe_dir

    step, rows, directory = finished("visionthink")
    assert step["visionr3/tool_call_rate"] > 0, "the warmed-up policy did not call resize_image"
    resized = [row for row in rows if row["valid_tool_calls"] > 0]
    assert resized, "the warmed-up policy called resize_image, but never validly"
    assert all(call["name"] == "resize_image" for row in rows for call in row["tool_call_log"])
    # verl's batch: the first view at 1/2 per side (112 px: 8x8 patches), the resized image at full size (224 px)
    factor = float(agent_loop("visionr3_visionthink")["low_res_factor"])
    for row in rows:
        batch_image_oracle.check(row, directory / "rows.parquet", "resize.yaml", low_res_factor=factor)
    assert all(row["batch_images"][0]["grid_thw"] == [1, 8, 8] for row in rows)
    assert all(row["batch_images"][1]["grid_thw"] == [1, 16, 16] for row in resized)
    # apply-ratio shaping (visionr3_sync, before verl's advantages): the dumped score, which is the rm_scores verl
    # trained on, is the reward function's score minus the Eq. 5 penalty recomputed here from the dumped rows
    shaping = OmegaConf.load(recipe_dir("visionthink") / "config.yaml").visionr3.shaping.apply_ratio
    assert shaping.enable and shaping.variant == "paper"
    penalties = apply_ratio_penalty(rows, shaping.theta, shaping.penalty)
    assert [row["score"] for row in rows] == pytest.approx([row["reward_score"] - p for row, p in zip(rows, penalties)])
    assert step["visionr3/shaping/apply_ratio_penalty/mean"] == pytest.approx(np.mean(penalties))
    assert step["visionr3/shaping/penalised_rate"] == pytest.approx(np.mean([p > 0 for p in penalties]))
    assert "visionr3/shaping/direct_answer_ratio/mean" in step
    # the recipe's DAPO filtering (verl's, with the cap visionr3 honours): every group trained on has reward variance
    groups = {uid: [rows[i]["reward_score"] for i in members] for uid, members in prompt_groups(rows).items()}
    assert len(groups) == 2 and all(len(set(scores)) > 1 for scores in groups.values()), groups


def test_vlm_r3_writes_inline_boxes_and_gets_the_crop_in_the_same_turn(finished, batch_image_oracle):
    """Relies on the VLM-R3 warm-up: it writes a bare ``{"bbox_2d": [...]}`` around the square's quadrant (31 of 32
    sampled boxes were valid), then answers after the inserted crop."""
    step, rows, directory = finished("vlm_r3")
    assert step["visionr3/tool_call_rate"] > 0, "the warmed-up policy did not write an inline box"
    cropped = [row for row in rows if row["valid_tool_calls"] > 0]
    assert cropped, "the warmed-up policy wrote inline boxes, but no valid one"
    assert step["visionr3/tool_images/mean"] > 0
    for row in rows:
        batch_image_oracle.check(row, directory / "rows.parquet", "crop_zoom.yaml")
    for row in cropped:  # the box closes a generated segment; the crop is context (mask 0) inside the same turn
        assert re.search(r'\{"bbox_2d": \[[^\]]*\]', row["assistant_turns"][0]), row["assistant_turns"]
        assert len(row["assistant_turns"]) >= 2 and "<tool_response>" not in row["output"]
    # the region reward: 0.5 for a valid region call, paid only with a correct answer (VLM-R3's gate)
    for row in rows:
        assert row["region"] in (0.0, 0.5)
        if row["region"]:
            assert row["accuracy"] == 1.0 and row["tool_calls"] > 0, row
        elif row["accuracy"] == 1.0 and row["tool_call_log"] and all(call["valid"] for call in row["tool_call_log"]):
            pytest.fail(f"a correct answer after valid region calls earned no region reward: {row}")
    assert step["visionr3/reward/region/mean"] == pytest.approx(np.mean([row["region"] for row in rows]))


def test_vlm_r3_freezes_the_vision_tower(finished):
    """``actor.freeze_vision_tower: true`` (the recipe, as VLM-R3 froze encoder and merger): after the step, every
    ``visual.*`` tensor of the saved actor equals the starting policy's bit for bit, while the language model moved."""
    import torch
    from safetensors.torch import load_file

    _, _, directory = finished("vlm_r3")
    policy = Path((directory / "policy.txt").read_text())
    start = {}
    for path in policy.glob("*.safetensors"):
        start.update(load_file(path))
    saved = torch.load(directory / "checkpoints" / "global_step_1" / "actor" / "model_world_size_1_rank_0.pt",
                       weights_only=False)
    local = {name: (tensor.to_local() if hasattr(tensor, "to_local") else tensor) for name, tensor in saved.items()}

    def by_suffix(tensors: dict, mark: str) -> dict:  # transformers 5 names ("model.visual.") vs saved ("visual.")
        return {name[name.index(mark):]: tensor for name, tensor in tensors.items() if mark in name}

    visual_start, visual_saved = by_suffix(start, "visual."), by_suffix(local, "visual.")
    assert visual_saved and visual_saved.keys() == visual_start.keys()
    changed = [name for name in visual_saved if not torch.equal(visual_saved[name], visual_start[name].to(visual_saved[name].dtype))]
    assert not changed, f"frozen vision parameters changed: {changed[:5]}"
    layers_start, layers_saved = by_suffix(start, "layers."), by_suffix(local, "layers.")
    moved = [name for name in layers_saved if not torch.equal(layers_saved[name], layers_start[name].to(layers_saved[name].dtype))]
    assert moved, "the language model did not change either"


def boxed(text: str | None) -> str | None:
    found = re.findall(r"\\boxed\{([^{}]*)\}", text or "")
    return found[-1].strip().strip(".").lower() if found else None


def test_vision_sr1_describes_answers_from_the_description_and_earns_the_visual_reward(finished):
    """Relies on the Vision-SR1 warm-up: it writes ``<description>…</description> <think>…</think> \\boxed{…}`` and
    answers the text-only second pass in the same format."""
    step, rows, _ = finished("vision_sr1")
    rates = {s: step[f"visionr3/self_reward/{s}_rate"] for s in
             ("answered", "no_description", "empty_description", "leaky_description", "failed")}
    assert sum(rates.values()) == pytest.approx(1.0)  # every trajectory got exactly one second-pass status
    assert rates["answered"] > 0, f"the warmed-up policy wrote no usable description: {rates}"
    assert step["visionr3/self_answer_tokens/mean"] > 0  # the second pass really generated, through the rollout server
    for row in rows:
        if row["self_reward_status"] != "answered":  # no second pass, no visual reward
            assert row["self_answer"] is None and row["visual"] == 0.0
        else:  # the visual reward is the description-only answer's correctness
            assert row["self_answer"] and row["visual"] in (0.0, 1.0)
            if row["visual"] == 1.0:
                assert boxed(row["self_answer"]) == row["gts"].lower(), row["self_answer"]
    assert step["visionr3/reward/visual/mean"] == pytest.approx(np.mean([row["visual"] for row in rows]))
    assert step["visionr3/reward/visual/mean"] <= rates["answered"] + 1e-9
