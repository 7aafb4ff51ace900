"""visionr3: reinforcement learning for vision-language models that think with images, on verl 0.9.1.

The package follows the data flow: ``data`` (dataset rows) -> ``agent`` (multi-turn rollout) -> ``tools`` (image
geometry and verl tool adapters) -> ``reward`` (rules, judges, self-reward) -> ``platform`` (what verl needs to run on
CPU). ``processing`` is the one place images become model inputs, on CPU and GPU alike. Importing this package does no
I/O and imports nothing heavy; each module pulls in torch/transformers/verl only when used.
"""

__version__ = "0.1.0"

from visionr3.platform import install_fork_guard as _install_fork_guard  # noqa: E402  (stdlib only; see its docstring)

_install_fork_guard()
