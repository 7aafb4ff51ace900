"""Run :func:`visionr3.processing.prepare_runtime` in every Python process of a CPU-only virtualenv.

Why: on a machine where torchvision cannot load, *no* Qwen-VL processor can be built by stock transformers — not by
our code, not by verl's workers, not by a user's ``AutoProcessor.from_pretrained(dir)`` in a plain script — until
``prepare_runtime`` has installed its images-only video-processor stand-ins (see :mod:`visionr3.processing`). Asking
every entry point to remember that call is how the silent "processor is None, model treated as text-only" failure
happens, so ``make venv`` on a CPU-only machine writes a one-line ``visionr3_cpu_runtime.pth`` into the virtualenv's
site-packages that calls :func:`install`. It only registers an import hook: nothing is imported until the process
itself imports ``transformers``, and then ``prepare_runtime`` runs once, right after transformers has loaded.

GPU installs never get the ``.pth`` file (and ``prepare_runtime`` is a no-op where torchvision works anyway).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

_TARGET = "transformers"


class _PrepareAfterExec(importlib.abc.Loader):
    """Wraps transformers' own loader; calls ``prepare_runtime`` once the package body has executed."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first, so importlib.resources & co. see transformers exactly as without the hook.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        from visionr3.processing import prepare_runtime

        prepare_runtime()


class _TransformersImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)  # one-shot: find the real spec with the remaining finders
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PrepareAfterExec(spec.loader)
        return spec


def install() -> None:
    """Arrange for ``prepare_runtime`` to run right after ``transformers`` is imported (now, if it already is)."""
    if _TARGET in sys.modules:
        from visionr3.processing import prepare_runtime

        prepare_runtime()
        return
    if not any(isinstance(finder, _TransformersImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportHook())


PTH_NAME = "visionr3_cpu_runtime.pth"


def write_pth_file() -> str:
    """Write the ``.pth`` file into this interpreter's site-packages if torchvision cannot load here.

    Returns what was done, for the installer's log. Removes a stale file where torchvision now works.
    """
    import sysconfig
    from pathlib import Path

    from visionr3.processing import torchvision_usable

    path = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    if torchvision_usable():
        path.unlink(missing_ok=True)
        return f"torchvision loads here: no CPU runtime hook needed ({path} absent)"
    path.write_text("import visionr3.transformers_hook as _visionr3_hook; _visionr3_hook.install()\n", encoding="utf-8")
    return f"no usable torchvision: installed the CPU runtime hook {path}"
