"""Every recipe's CPU variant, one step of verl's real trainer on a tiny Qwen2.5-VL (`visionr3 train --recipe <name>
--config-name cpu`): the recipe's own agent loop, tool, reward formula, judge settings, shaping and advantages, with
the CPU preset (HF rollout, fp32 FSDP2, one logical GPU) on top. tests/e2e/conftest.py starts the runs, two at a time, with the demo.

The judged recipes talk to a loopback OpenAI-compatible server (the stand-in for a remote judge API). The zoom run
starts from the demo's warmed-up policy (cached), which calls the crop
tool and answers, so its judge really is asked; the others start from the random tiny model, whose responses all run
to the length limit (equal lengths: the case visionr3.verl_fixes repairs in verl's update_actor).
"""

import json

import pytest

from visionr3.recipes import RECIPES

# reward components each recipe's formula reports (visionr3/reward/formulas.py), logged per step by visionr3_sync
COMPONENTS = {
    "zoom": ("accuracy", "format", "tool"),
    "visionthink": ("accuracy", "format"),
    "vlm_r3": ("accuracy", "format", "region", "length"),
    "vision_sr1": ("accuracy", "format", "visual"),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_cpu_variant_runs_one_step(recipe, e2e_runs, judge):
    run = e2e_runs[f"recipe:{recipe}"]
    run.check()
    metrics = run.directory / "metrics.jsonl"
    steps = [json.loads(line)["data"] for line in metrics.read_text().splitlines() if line.strip()]
    (step,) = [row for row in steps if "actor/pg_loss" in row]
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "training/num_turns/mean",
                *(f"visionr3/reward/{name}/mean" for name in COMPONENTS[recipe])):
        assert key in step, key
    if recipe == "vision_sr1":  # the second pass ran or was refused for every trajectory, then decoupled advantages
        rates = [step[f"visionr3/self_reward/{s}_rate"] for s in
                 ("answered", "no_description", "empty_description", "leaky_description", "failed")]
        assert abs(sum(rates) - 1.0) < 1e-6
    if recipe == "zoom":  # the warmed-up policy zooms and answers; every answer goes to the judge (use: always)
        assert step["visionr3/tool_call_rate"] > 0
        assert step["visionr3/reward/judge_failed/mean"] == 0.0
        assert judge.requests > 0


def test_zoom_rollout_dump_has_visionr3_columns_and_renders_in_the_viewer(e2e_runs, tmp_path):
    """`trainer.rollout_data_dir` on the zoom run: verl's dump plus visionr3's columns, then `visionr3 view` on it."""
    from visionr3.eval.view import build_report

    run = e2e_runs["recipe:zoom"]
    run.check()
    dump = run.directory / "rollouts" / "1.jsonl"
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 4  # 2 prompts x n=2
    for row in rows:
        for key in ("input", "output", "gts", "score", "step", "uid"):  # verl's own
            assert key in row, key
        for key in ("accuracy", "format", "tool", "tool_calls", "crop_boxes", "assistant_turns", "tool_call_log", "image", "image_size"):
            assert key in row, key
        assert (dump.parent / row["image"]).is_file() and row["image_size"] == [448, 448]
        assert len(row["tool_call_log"]) == row["tool_calls"]
        assert all(call["name"] for call in row["tool_call_log"])
    stats = build_report([dump.parent], tmp_path / "rollouts.html")
    assert stats.shown == 4 and stats.total == 4
    html = (tmp_path / "rollouts.html").read_text()
    assert html.count('data-kind="rollout"') == 4
    assert 'viewBox="0 0 448 448"' in html  # the question image in its source frame, where boxes are drawn
