"""Write or check requirements.lock: the exact set of distributions in the project's CPU virtualenv.

    .venv/bin/python tools/venv_lock.py check requirements.lock   # `make venv`: exit 1 and a diff if the venv differs
    .venv-lock/bin/python tools/venv_lock.py write requirements.lock   # `make lock`: freeze a fresh resolve

Names are compared in their canonical form and torch's local label (``+cpu``) is dropped, so a lock written by pip
and a venv installed by uv (or the reverse) compare equal, and ``torch==2.13.0`` in the lock admits the machine's
CPU build. Left out: the installers themselves (pip, setuptools, wheel), the project (editable), and torchcodec,
which verl-core pulls and `make venv` removes again on CPU machines (its pin stays in constraints.txt).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

IGNORED = {"pip", "setuptools", "wheel", "visionr3", "torchcodec"}
HEADER = (
    "# The full resolved set of the CPU venv, written by `make lock` (tools/venv_lock.py) from constraints.txt and\n"
    "# pyproject.toml: do not edit by hand. `make venv` installs with it as constraints and checks the result.\n"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    found = {canonical(d.metadata["Name"]): d.version.split("+")[0] for d in importlib.metadata.distributions()}
    return {name: version for name, version in sorted(found.items()) if name not in IGNORED}


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version.strip()
    return {name: version for name, version in pins.items() if name not in IGNORED}


def main(argv: list[str]) -> int:
    command, path = argv[0], Path(argv[1])
    if command == "write":
        pins = installed()
        path.write_text(HEADER + "".join(f"{name}=={version}\n" for name, version in pins.items()))
        print(f"wrote {path}: {len(pins)} packages")
        return 0
    lock, have = read_lock(path), installed()
    diff = [f"  {name}: lock {lock.get(name, '-')}, installed {have.get(name, '-')}"
            for name in sorted(set(lock) | set(have)) if lock.get(name) != have.get(name)]
    if diff:
        print(f"the virtualenv differs from {path}:\n" + "\n".join(diff), file=sys.stderr)
        return 1
    print(f"virtualenv matches {path} ({len(lock)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
