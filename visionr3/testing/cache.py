"""The on-disk cache of built fixtures (tiny checkpoints, the demo's warm-up): atomic, locked and verified.

A cached directory is trusted only if it proves it is complete and unchanged: the builder writes it into a private
staging directory with a manifest (the cache key and the sha256 of every file), and renames the whole directory into
place. A reader checks the manifest against the key it asked for and against the files on disk; a directory without
a manifest (written by an older builder, or half-copied), with another key, or with a file that differs is removed
and rebuilt, never used. Builders of the same entry, in threads or processes, take an exclusive ``flock`` on a lock
file beside it, so a second builder waits for the first and then reads its result instead of building again.

Why so careful: main once went red on fresh machines only, because a cached tiny model had been written while
another thread reseeded torch's global RNG; the developers' caches hid it. Deterministic builders (private
generators) remove the cause; the manifest makes sure a cache can never again stand in for a build it is not.

The root is ``$VISIONR3_CACHE`` (default ``~/.cache/visionr3``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST = ".visionr3-manifest.json"

# Directories verified by this process (path -> stat signature), so a session that asks for the same fixture a
# hundred times hashes its files once. A file changed since (size or mtime) is verified again.
_verified: dict[Path, tuple] = {}
_verified_lock = threading.Lock()


def cache_root() -> Path:
    return Path(os.environ.get("VISIONR3_CACHE", Path.home() / ".cache" / "visionr3"))


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _signature(directory: Path) -> tuple:
    return tuple((str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns) for p in _files(directory))


def write_manifest(directory: Path, key: str) -> None:
    files = {str(p.relative_to(directory)): sha256_file(p) for p in _files(directory)}
    with open(directory / MANIFEST, "w", encoding="utf-8") as f:
        json.dump({"key": key, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def verify(directory: Path, key: str) -> str | None:
    """None if ``directory`` is a complete build for ``key``; otherwise why it is not."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc})"
    if manifest.get("key") != key:
        return f"built for key {manifest.get('key')!r}, not {key!r}"
    expected = manifest.get("files") or {}
    present = {str(p.relative_to(directory)) for p in _files(directory)}
    if present != set(expected):
        return f"files differ from the manifest (missing {sorted(set(expected) - present)}, extra {sorted(present - set(expected))})"
    signature = _signature(directory)
    with _verified_lock:
        if _verified.get(directory) == signature:
            return None
    for name, digest in expected.items():
        if sha256_file(directory / name) != digest:
            return f"{name} does not match its recorded sha256"
    with _verified_lock:
        _verified[directory] = signature
    return None


def cached_build(target: Path, key: str, build: Callable[[Path], object]) -> tuple[Path, bool]:
    """``target``, built by ``build(staging_dir)`` unless a verified build for ``key`` is already there.

    Returns ``(target, built)``: ``built`` is False when the cache answered. Safe under concurrent builders in threads
    and processes (the lock), and against kills mid-build (the staging directory is never renamed into place
    incomplete; a stale one is ignored).
    """
    target = Path(target)
    if verify(target, key) is None:
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            problem = verify(target, key) if target.exists() else None
            if problem is None and target.exists():
                return target, False  # another builder finished while we waited
            if problem is not None:
                logger.warning("rebuilding the cached %s: %s", target, problem)
                shutil.rmtree(target)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                build(staging)
                write_manifest(staging, key)
                os.rename(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    problem = verify(target, key)
    if problem is not None:
        raise RuntimeError(f"the freshly built {target} does not verify: {problem}")
    return target, True
