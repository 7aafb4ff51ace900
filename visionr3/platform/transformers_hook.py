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

from visionr3.platform import after_import


def _prepare(_transformers) -> None:
    from visionr3.processing import prepare_runtime

    prepare_runtime()


def install() -> None:
    """Arrange for ``prepare_runtime`` to run right after ``transformers`` is imported (now, if it already is)."""
    after_import("transformers", _prepare)


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
    path.write_text("import visionr3.platform.transformers_hook as _visionr3_hook; _visionr3_hook.install()\n", encoding="utf-8")
    return f"no usable torchvision: installed the CPU runtime hook {path}"
