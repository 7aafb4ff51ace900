"""README's demo command runs and says what it did."""

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_and_writes_summary(tmp_path, tiny_model_dirs):
    script = Path(sys.executable).with_name("visionr3")
    result = subprocess.run(
        [str(script), "demo", "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "demo done" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["image_pad_tokens"] > 0 and summary["assistant_tokens"] > 0
    assert len(summary["losses"]) == 2 and all(loss > 0 for loss in summary["losses"])
