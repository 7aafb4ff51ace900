"""A real ``vllm serve`` of a local checkpoint, as a subprocess on 127.0.0.1, for tests of HTTP clients.

    with VLLMServer(tiny_model_dir("qwen2_5_vl", size="small")) as server:
        client = OpenAI(base_url=server.base_url, api_key="EMPTY")

Why a subprocess and not vLLM in the test process: ``vllm serve`` is what a user points ``visionr3 eval --backend
openai`` and the API judge at, and its engine spawns processes of its own. The server runs in a new session
(``start_new_session``), so :meth:`VLLMServer.stop` signals the whole process group — the API server and the
engine-core process it spawned — SIGTERM first, SIGKILL after ``stop_timeout``, and leaves no orphan.

On a machine without CUDA it passes the settings vLLM's CPU build needs (NOTE.md, "vLLM on CPU"): ``--dtype
float32`` (the tiny checkpoints' dtype, so greedy runs compare with the hf backend), ``--enforce-eager`` (no
compile warm-up: minutes on 2 cores), ``--max-model-len 4096`` and ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB of KV cache;
vLLM's CPU default takes a share of the machine's memory). Its attention needs ``head_dim >= 32``: serve the
``size="small"`` tiny models. Start-up on 2 cores takes minutes: see docs/vllm-on-cpu.md for the measured times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
"""Environment defaults for vLLM's CPU build (a caller's own values win)."""


class VLLMServerError(RuntimeError):
    """``vllm serve`` exited or did not become healthy in time; the message ends with its log's tail."""


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def serve_args(model_dir: str | os.PathLike, *, port: int, served_model: str | None, max_model_len: int,
               max_images: int, cpu: bool, extra: Sequence[str] = ()) -> list[str]:
    """The ``vllm serve`` command line (without the executable)."""
    args = ["serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len),
            "--seed", "0", "--disable-log-stats"]
    if served_model:
        args += ["--served-model-name", served_model]
    if max_images:
        args += ["--limit-mm-per-prompt", json.dumps({"image": int(max_images)})]
    if cpu:
        args += ["--dtype", "float32", "--enforce-eager"]
    return args + list(extra)


class VLLMServer:
    """``vllm serve model_dir`` on a free loopback port; :attr:`base_url` is its ``/v1`` root once started.

    ``max_images``: ``--limit-mm-per-prompt`` (default 4 for a checkpoint with a ``vision_config``, else none). ``extra``: more ``vllm serve`` arguments.
    ``start_timeout``: seconds to wait for ``/health``. The log goes to ``log_path`` (a temporary file by default)."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        served_model: str | None = None,
        max_model_len: int = 4096,
        max_images: int | None = None,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 600.0,
        stop_timeout: float = 30.0,
        log_path: str | os.PathLike | None = None,
    ) -> None:
        from visionr3.platform import free_port

        self.model_dir = str(model_dir)
        self.served_model = served_model or self.model_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        cpu = not on_cuda()
        if max_images is None:
            config = json.loads((Path(model_dir) / "config.json").read_text())
            max_images = 4 if "vision_config" in config else 0
        self.args = serve_args(model_dir, port=self.port, served_model=served_model, max_model_len=max_model_len,
                               max_images=max_images, cpu=cpu, extra=extra)
        self.env = {**(CPU_ENV if cpu else {}), **os.environ, **(env or {})}
        self.start_timeout = float(start_timeout)
        self.stop_timeout = float(stop_timeout)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    # -- lifecycle --

    def start(self) -> "VLLMServer":
        executable = Path(sys.executable).with_name("vllm")
        command = [str(executable)] if executable.exists() else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([*command, *self.args], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        try:
            self._wait_healthy(started)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        return self

    def _wait_healthy(self, started: float) -> None:
        assert self.process is not None
        deadline = started + self.start_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise VLLMServerError(f"`vllm {' '.join(self.args)}` exited with {code} before it was healthy"
                                      f"{self.log_tail()}")
            if self.healthy():
                return
            if time.perf_counter() > deadline:
                raise VLLMServerError(f"`vllm {' '.join(self.args)}` was not healthy after {self.start_timeout:.0f} s"
                                      f"{self.log_tail()}")
            time.sleep(1.0)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``stop_timeout``; returns once the group is gone."""
        process, self.process = self.process, None
        if process is None:
            return
        group = process.pid  # start_new_session: the server leads its own group
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and group_members(group):
                process.poll()  # reap the leader: a zombie leader keeps the group's id alive
                time.sleep(0.2)
            if not group_members(group):
                break
        process.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return f"\n--- {self.log_path} (last {chars} characters) ---\n{text[-chars:]}"

    def pids(self) -> list[int]:
        """The live processes of the server's group (the API server and the engine it spawned)."""
        return group_members(self.process.pid) if self.process else []

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def group_members(group: int) -> list[int]:
    """PIDs whose process group is ``group`` (from /proc; zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def rss_mb(pids: Sequence[int]) -> float:
    """Resident memory of ``pids`` together, in MiB (from /proc; processes gone meanwhile count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


__all__ = ["CPU_ENV", "VLLMServer", "VLLMServerError", "group_members", "rss_mb", "serve_args"]
