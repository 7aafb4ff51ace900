"""README's and docs/'s shell commands, as tests run them (tests/test_readme_commands.py).

Every fenced ``bash``/``sh``/``console`` block in README.md and docs/*.md carries a marker in the line before it, an
HTML comment that GitHub does not render::

    <!-- readme-test: run -->                              every command runs as written
    <!-- readme-test: compose -->                          every command is composed, not run (below)
    <!-- readme-test: e2e tests/e2e/test_cpu_demo.py -->   a heavy command an existing (e2e) test runs
    <!-- readme-test: skip: needs a CUDA node -->          not run here, for the reason written
    <!-- readme-test: skip: CUDA wheels; run; skip: ... --> one mode per command, in order, separated by "; "

A command is a logical line: comments stripped, ``\\`` continuations joined, blank lines dropped; a line that pipes
``visionr3 job ... | visionr3 job ...`` is one command (bash runs it as written). ``...`` (README's "your other
overrides") is dropped, and ``<placeholder>`` becomes a path in the command's temporary folder.

*Compose* runs the command as written through bash, with a folder first on PATH whose ``visionr3`` and ``python``
record their argument vectors instead of working (``python`` records only ``python -m verl.trainer.main_ppo``; every
other ``python`` is the venv's). :func:`compose` then replays each record in one process: Hydra commands (``visionr3
train``/``sft``, verl's ``main_ppo``) with ``--cfg job`` added, which prints the config and trains nothing; every other
``visionr3`` subcommand through its argparse parser only (flags, choices and arity checked, nothing done). So a
script such as ``recipes/zoom/run.sh`` is composed with the exact command line it would run. One process for all of
them because importing verl's trainer takes ~12 s; each composition after the first takes well under a second.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGUAGES = {"bash", "sh", "console", "shell"}
HYDRA_MODULES = {"verl.trainer.main_ppo"}


@dataclass(frozen=True)
class Command:
    file: str  # relative to the repository root
    line: int  # 1-based line of the command's first line
    text: str  # one logical line, as bash gets it (comment stripped, continuations joined)
    mode: str  # "run", "compose", "e2e", "skip"
    detail: str = ""  # the e2e test's path, or the skip's reason

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@dataclass(frozen=True)
class Block:
    file: str
    line: int  # the opening fence's line
    marker: str | None
    commands: tuple[tuple[int, str], ...]


def _strip_comment(line: str) -> str:
    """``line`` without its trailing ``# comment`` (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def logical_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    commands, current, start = [], "", first_line
    for offset, raw in enumerate(body.splitlines()):
        line = _strip_comment(raw)
        if not current:
            start = first_line + offset
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current = (current + line.strip()).strip()
        if current:
            commands.append((start, " ".join(current.split())))
        current = ""
    return commands


def blocks(root: Path) -> list[Block]:
    """Every shell block of README.md and docs/*.md, with the marker of the line before it (None: none)."""
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            fence = FENCE.match(lines[i])
            if not fence:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if fence.group(1) in SHELL_LANGUAGES:
                marker = MARKER.match(lines[i - 1].strip()) if i else None
                found.append(Block(
                    str(path.relative_to(root)), i + 1, marker.group(1) if marker else None,
                    tuple(logical_lines("\n".join(lines[i + 1:end]), i + 2)),
                ))
            i = end + 1
    return found


def commands(block: Block) -> list[Command]:
    """The block's commands with their modes; raises ValueError naming the block when its marker is missing or wrong."""
    if block.marker is None:
        raise ValueError(f"{block.file}:{block.line}: a shell block without a `<!-- readme-test: ... -->` marker")
    modes = [m.strip() for m in block.marker.split(";")] if ";" in block.marker else [block.marker]
    modes = [m for m in modes if m]
    if len(modes) == 1:
        modes *= len(block.commands)
    if len(modes) != len(block.commands):
        raise ValueError(f"{block.file}:{block.line}: {len(modes)} modes in the marker for {len(block.commands)} commands")
    result = []
    for (line, text), mode in zip(block.commands, modes):
        kind, _, detail = mode.partition(":") if mode.startswith("skip") else mode.partition(" ")
        if kind not in ("run", "compose", "e2e", "skip") or (kind in ("e2e", "skip") and not detail.strip()):
            raise ValueError(f"{block.file}:{block.line}: bad mode {mode!r} (run | compose | e2e <test> | skip: <why>)")
        result.append(Command(block.file, line, text, kind, detail.strip()))
    return result


def as_written(text: str, scratch: Path) -> str:
    """The command bash runs: ``...`` dropped, each ``<placeholder>`` replaced by a path in ``scratch``."""
    text = re.sub(r"(?<!\S)\.\.\.(?!\S)", "", text)
    text = re.sub(r"<([^<>]+)>", lambda m: shlex.quote(str(scratch / re.sub(r"\W+", "_", m.group(1)))), text)
    return " ".join(text.split())


RECORDER = """#!/usr/bin/env bash
# readme-commands recorder: writes its argument vector, NUL-separated, instead of running {name}
{guard}
# numbered in call order; the pid keeps apart commands that start at once (a pipeline's)
n=$(ls "$READMECMD_RECORDS" | wc -l)
printf '%s\\0' {name} "$@" > "$READMECMD_RECORDS/$(printf %04d "$n").$$"
"""


def write_recorders(folder: Path, real_python: str) -> None:
    """``visionr3`` and ``python`` that record (see the module docstring); ``python`` passes other uses through."""
    folder.mkdir(parents=True, exist_ok=True)
    guards = {
        "visionr3": "",
        "python": 'if [ "$1" != -m ] || [ "$2" != verl.trainer.main_ppo ]; then exec ' + shlex.quote(real_python) + ' "$@"; fi',
    }
    for name, guard in guards.items():
        path = folder / name
        path.write_text(RECORDER.format(name=name, guard=guard))
        path.chmod(0o755)
    (folder / "python3").symlink_to(folder / "python")


def read_records(folder: Path) -> list[list[str]]:
    return [p.read_bytes().decode().split("\0")[:-1] for p in sorted(folder.iterdir())]


def compose_one(argv: list[str]) -> tuple[int, str]:
    """(exit status, what it printed) of composing one recorded command line; see the module docstring."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if argv[0] == "python":
                if argv[1:2] != ["-m"] or argv[2] not in HYDRA_MODULES:
                    raise ValueError(f"cannot compose {argv}")
                saved, sys.argv = sys.argv, [argv[2], *argv[3:], "--cfg", "job"]
                try:
                    runpy.run_module(argv[2], run_name="__main__")
                finally:
                    sys.argv = saved
                status = 0
            elif argv[1:2] and argv[1] in ("train", "sft"):
                from visionr3.cli import main

                status = main([*argv[1:], "--cfg", "job"])
            else:
                from visionr3.cli import SUBCOMMANDS, build_parser

                build_parser(only=argv[1] if argv[1:2] and argv[1] in SUBCOMMANDS else None).parse_args(argv[1:])
                status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except Exception as error:  # noqa: BLE001 - reported with the command that raised it
        print(f"{type(error).__name__}: {error}", file=out)
        status = 1
    return status or 0, out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """``python -m visionr3.testing.readme_commands RECORDS.json RESULT.json``: compose each ``[cwd, argv]``."""
    import os

    records_path, result_path = argv or sys.argv[1:]
    results = []
    for cwd, recorded in json.loads(Path(records_path).read_text()):
        os.chdir(cwd)
        status, output = compose_one(recorded)
        results.append({"argv": recorded, "status": status, "output": output[-4000:], "printed": len(output)})
    Path(result_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
