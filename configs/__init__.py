"""visionr3's Hydra configs, tool and agent-loop YAMLs and chat templates: YAML only.

This directory lives at the top of the repository so users can read and edit it, and is installed as the package
``visionr3.configs`` (see pyproject.toml) so ``pkg://visionr3.configs`` works from any install. The code that finds and
composes these files is :mod:`visionr3.config`.
"""
