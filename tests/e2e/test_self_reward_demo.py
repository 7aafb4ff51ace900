"""Vision-SR1 on verl's real trainer on CPU: ``visionr3 demo --recipe vision_sr1`` (1 GRPO step, 2 prompts x 4).

Real HF rollout replica, ``visionr3_vision_sr1`` agent loop (with its text-only second pass through the same server),
``vision_sr1`` reward, decoupled answer/visual advantages in trainer mode ``visionr3_sync``, checkpoint and merge.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The default run covers the same trainer path (visionr3_vision_sr1, self-reward pass, decoupled advantages) through
# the vision_sr1 recipe's CPU variant (tests/e2e/test_recipes_cpu.py); this one adds the demo command around it.
pytestmark = pytest.mark.slow


def test_self_reward_demo_logs_the_visual_reward(tmp_path):
    script = Path(sys.executable).with_name("visionr3")
    result = subprocess.run(
        [str(script), "demo", "--recipe", "vision_sr1", "--output-dir", str(tmp_path), "--steps", "1", "--n", "4"],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recipe"] == "vision_sr1" and summary["steps"] == 1
    rows = [json.loads(line)["data"] for line in Path(summary["metrics_file"]).read_text().splitlines()]
    (row,) = [row for row in rows if "actor/pg_loss" in row]
    for key in ("visionr3/reward/visual/mean", "visionr3/reward/accuracy/mean", "visionr3/reward/format/mean",
                "visionr3/self_reward/answered_rate", "visionr3/self_reward/no_description_rate",
                "visionr3/excluded_samples", "actor/pg_loss"):
        assert key in row, key
    # every trajectory got exactly one second-pass status
    rates = [row[f"visionr3/self_reward/{s}_rate"] for s in ("answered", "no_description", "empty_description", "leaky_description", "failed")]
    assert abs(sum(rates) - 1.0) < 1e-6
    assert 0.0 <= row["visionr3/reward/visual/mean"] <= row["visionr3/self_reward/answered_rate"] + 1e-9
