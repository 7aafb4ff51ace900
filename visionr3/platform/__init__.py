"""What verl needs to run where it was not built to run — a machine without an accelerator.

- :mod:`visionr3.platform.cpu` — ``PlatformCPU`` for verl's ``PlatformRegistry`` (device ``"cpu"``, backend gloo,
  logical Ray ``"GPU"``s) and every CPU workaround verl 0.9.1 needs, each documented where it lives. Nothing in it acts
  unless the CPU platform is selected (``VERL_PLATFORM=cpu``, or auto-detected on a host with no accelerator at all).
- The HF-transformers rollout (``rollout.name=hf``) lives in :mod:`visionr3.rollout.hf`.
- :func:`after_import` (here) — a one-shot post-import hook, used to register things with verl's registries only when
  (and as soon as) verl itself imports the module holding the registry, so the plug-in stays cheap.
- :func:`install_fork_guard` (here, installed when ``visionr3`` is imported) — a forked child runs torch on one
  thread, as torch's DataLoader workers do.
- :func:`free_port` (here) — a free loopback port, for the ``MASTER_PORT`` of a gloo world on one host (and the
  ports of a test's Ray head).

This ``__init__`` imports only the standard library; :mod:`visionr3.plugin` wires the package into verl in every
process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from types import ModuleType

__all__ = ["after_import", "free_port", "install_fork_guard"]

_hooks_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it; another process may take it before it is used)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _RunAfterExec(importlib.abc.Loader):
    """Wraps a module's own loader; runs the callbacks once the module body has executed."""

    def __init__(self, loader: importlib.abc.Loader, callbacks: list[Callable[[ModuleType], None]]) -> None:
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first, so the module looks exactly as it would without the hook.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        for callback in self._callbacks:
            callback(module)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder for a single module name; removes itself the first time that module is looked up."""

    def __init__(self, fullname: str) -> None:
        self.fullname = fullname
        self.callbacks: list[Callable[[ModuleType], None]] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.fullname:
            return None
        with _hooks_lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)  # one-shot: resolve the real spec with the remaining finders
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RunAfterExec(spec.loader, self.callbacks)
        return spec


def after_import(fullname: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` right after ``fullname`` has been imported — now, if it already is.

    Costs nothing until the module is imported (one ``str`` comparison per import), and imports nothing itself.
    Several callbacks for one module run in registration order. For a package, "imported" means its ``__init__`` has
    finished. (A module that is already in ``sys.modules`` counts as imported even if its import is still running;
    the plug-in arms its hooks while ``verl/__init__`` runs, before any verl subpackage can be mid-import.)
    """
    module = sys.modules.get(fullname)
    if module is not None:
        callback(module)
        return
    with _hooks_lock:
        for finder in sys.meta_path:
            if isinstance(finder, _AfterImportFinder) and finder.fullname == fullname:
                finder.callbacks.append(callback)
                return
        finder = _AfterImportFinder(fullname)
        finder.callbacks.append(callback)
        sys.meta_path.insert(0, finder)


def _torch_single_threaded_in_child() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


_fork_guard_installed = False


def install_fork_guard() -> None:
    """Make every child forked from this process run torch's intra-op work on one thread. Idempotent.

    Why: torch's CUDA build (the venv's, on CPU machines too) uses GNU OpenMP, which is not fork-safe: a process that
    ran a parallel torch op and then forks leaves the child's thread pool dead, and the child's first parallel op
    hangs forever. ``datasets``' ``filter(num_proc=...)`` forks even for one worker, and verl's prompt-length filter
    runs the Qwen-VL image processor there — torchvision's (torch ops) where torchvision loads — so building a dataset
    hung after any torch work in the same process. torch's own DataLoader sets one thread in its workers for the same
    reason. Only ``fork`` is affected: spawned processes (Ray workers, vLLM's engine core) start clean and choose
    their own thread counts. Nothing is imported here; the handler acts only if the child has torch loaded.
    """
    global _fork_guard_installed
    if not _fork_guard_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_torch_single_threaded_in_child)
        _fork_guard_installed = True
