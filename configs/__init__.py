"""visionr3's Hydra configs, tool and agent-loop YAMLs and chat templates.

This directory lives at the top of the repository so users can read and edit it, and is installed as the package
``visionr3.configs`` (see pyproject.toml) so ``pkg://visionr3.configs`` and :func:`config_path` work from any install.
"""

from importlib.resources import files
from pathlib import Path


def config_path(*parts: str) -> Path:
    """Absolute path of a file under configs/, e.g. ``config_path("chat_templates", "qwen2_5_vl_tool.jinja")``."""
    path = Path(str(files(__name__).joinpath(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"visionr3 config file not found: {path}")
    return path
