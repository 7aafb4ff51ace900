"""The package installs, imports alongside verl, and keeps its import light."""

import subprocess
import sys
from pathlib import Path

import visionr3


def test_imports_with_verl():
    import verl

    assert verl.__version__ == "0.9.1"
    assert visionr3.__version__


def test_import_is_light():
    """Importing visionr3 must not pull in torch/transformers/verl (no heavy work or I/O at import time)."""
    code = "import sys, visionr3; print(sorted(m for m in ('torch', 'transformers', 'verl', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_console_script_installed():
    script = Path(sys.executable).with_name("visionr3")
    assert script.exists(), "the `visionr3` console script is missing from the virtualenv"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


def test_configs_ship_as_package():
    from visionr3.config import config_path

    template = config_path("chat_templates", "qwen2_5_vl_tool.jinja")
    assert template.read_text().count("<tool_call>") >= 1
    # The same directory users edit at the top of the repository.
    assert template.parent.parent.name == "configs"


def test_our_tests_do_not_shadow_verls_tests_package():
    """verl's wheel installs a top-level `tests` package; ours has no __init__.py and runs in importlib mode."""
    assert not (Path(__file__).parent / "__init__.py").exists()
