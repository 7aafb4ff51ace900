"""README's Layout tree against the code: every file and folder it names exists, and every module of the package is
named — so the tree a newcomer reads is the tree that is there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^( *)(\S.*?)(?:\s{2,}|$)")


def layout_paths() -> list[Path]:
    """The paths README's Layout tree names, built from its indentation (two spaces a level)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    parents: list[Path] = []
    paths = []
    for line in block.splitlines()[1:]:
        match = NAME.match(line)
        if not match or len(match.group(1)) >= 20:  # blank, or a description's continuation line
            continue
        level = len(match.group(1)) // 2
        parents = parents[:level]
        base = parents[-1] if parents else ROOT
        names = [name.strip() for name in match.group(2).split(",")]
        for name in names:
            paths.append(base / name)
        if len(names) == 1 and names[0].endswith("/"):
            parents.append(base / names[0])
    return paths


def test_every_path_in_the_layout_exists():
    paths = layout_paths()
    assert len(paths) > 60
    missing = [str(path.relative_to(ROOT)) for path in paths if not path.exists()]
    assert not missing, f"README's Layout names paths that do not exist: {missing}"


def test_every_module_of_the_package_is_in_the_layout():
    named = {path.resolve() for path in layout_paths()}
    modules = [path for path in (ROOT / "visionr3").rglob("*.py") if path.name != "__init__.py"]
    unnamed = sorted(str(path.relative_to(ROOT)) for path in modules if path.resolve() not in named)
    assert not unnamed, f"modules missing from README's Layout: {unnamed}"
