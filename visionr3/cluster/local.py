"""A multi-node Ray cluster on one machine: a head and worker nodes as separate ``ray start`` processes on 127.0.0.1.

    python -m visionr3.cluster.local up /tmp/vr3c --nodes 2      # prints the exports a client needs, then returns
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/vr3c/auth_token RAY_ADDRESS=127.0.0.1:<port>
    visionr3 train --config-name cpu_demo cluster=cpu_2nodes ...  # verl's trainer across the two nodes
    python -m visionr3.cluster.local down /tmp/vr3c               # stops every node and every process they started

What a cluster of several machines is to verl, with each node a separate raylet, object store and set of workers, so
FSDP runs over ranks on different nodes (gloo on CPU), placement groups span nodes, a node can be killed alone, and
``visionr3 submit`` reaches a real job API. Each node declares ``--num-gpus`` *logical* GPUs (the CPU platform's
resource, :mod:`visionr3.platform.cpu`). Token authentication is on, as ``ray start --head`` configures it by
default: the token is a file in the cluster's folder, readable by its owner only, and every node and client names it
through ``RAY_AUTH_TOKEN_PATH``. Ports are fresh free ones; the folder doubles as Ray's ``--temp-dir`` (keep it short:
Ray's socket paths must stay under 108 bytes). ``state.json`` there records the nodes' PIDs so ``down`` works from
another process.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from visionr3.platform import free_port

RAY = str(Path(sys.executable).with_name("ray"))
STATE = "state.json"


@dataclass
class LocalCluster:
    """``nodes`` Ray nodes on 127.0.0.1 under ``directory`` (see the module docstring). A context manager."""

    directory: Path
    nodes: int = 2
    gpus_per_node: int = 1
    cpus_per_node: int = 8
    dashboard: bool = True
    pids: list[int] = field(default_factory=list)
    popens: list[subprocess.Popen] = field(default_factory=list, repr=False)  # ours to reap (attach() has none)
    address: str = ""
    dashboard_url: str = ""

    def __post_init__(self):
        self.directory = Path(self.directory).resolve()

    @property
    def token_path(self) -> Path:
        return self.directory / "auth_token"

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a client (a trainer, ``visionr3 submit``) needs to reach this cluster."""
        return {**(os.environ if base is None else base), "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_path), "RAY_ADDRESS": self.address}

    def _node_env(self) -> dict[str, str]:
        return {
            **os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            MARKER: str(self.directory),
            # a job's entrypoint runs `python3 -m visionr3.cli ...` on the head: this interpreter's
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            # a loaded 2-core machine can take longer than Ray's default to register a node's agents
            "RAY_agent_register_timeout_ms": "600000",
        }

    def _start_node(self, index: int) -> subprocess.Popen:
        ports = {"--node-manager-port": free_port(), "--object-manager-port": free_port(),
                 "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port()}
        command = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus_per_node}",
                   f"--num-gpus={self.gpus_per_node}", f"--temp-dir={self.directory}", "--disable-usage-stats"]
        if index == 0:
            head_port, dashboard_port = free_port(), free_port()
            self.address = f"127.0.0.1:{head_port}"
            self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
            command += ["--head", f"--port={head_port}", f"--ray-client-server-port={free_port()}",
                        f"--include-dashboard={'true' if self.dashboard else 'false'}", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard_port}"]
        else:
            command += [f"--address={self.address}"]
        command += [f"{flag}={port}" for flag, port in ports.items()]
        log = open(self.directory / f"node{index}.log", "a")
        return subprocess.Popen(command, env=self._node_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def alive_nodes(self) -> int:
        """Nodes the head's GCS reports alive (a separate process: this one may be connected elsewhere)."""
        probe = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                 "print('ALIVE', sum(1 for n in ray.nodes() if n['Alive']))" % self.address)
        try:
            done = subprocess.run([sys.executable, "-c", probe], env=self.client_env(), capture_output=True, text=True,
                                  timeout=120)
        except subprocess.TimeoutExpired:
            return 0
        counts = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ALIVE ")]
        return int(counts[-1]) if done.returncode == 0 and counts else 0

    def start(self, timeout: float = 600) -> "LocalCluster":
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        self.pids = []
        for index in range(self.nodes):  # per node: a liveness bound for a loaded machine, not a timing assertion
            self._bring_up(index, time.monotonic() + timeout)
        return self

    def _bring_up(self, index: int, deadline: float, tries: int = 5) -> None:
        """Start node ``index`` and wait until the GCS counts it; a node whose ``ray start`` exits while starting is
        started again (``tries`` in all). On a loaded 2-core machine a raylet gives up when its dashboard agent (a
        Python process importing much of Ray) takes over Ray's fixed 15 s to report its ports ("Timed out waiting
        for file .../dashboard_agent_listen_port..."), and the node exits."""
        for attempt in range(1, tries + 1):
            process = self._start_node(index)
            self.pids[index:] = [process.pid]
            self.popens.append(process)
            self._save()
            while process.poll() is None and self.alive_nodes() < index + 1:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Ray node {index} under {self.directory} did not come up in time")
                time.sleep(3)  # each probe is a Python process connecting to the GCS: not free on 2 busy cores
            if process.poll() is None:
                return
            if attempt == tries:
                log = (self.directory / f"node{index}.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"Ray node {index} exited ({process.returncode}) while starting, {tries} times:\n{log}")

    def _save(self) -> None:
        (self.directory / STATE).write_text(json.dumps({"address": self.address, "dashboard": self.dashboard_url,
                                                        "pids": self.pids}))

    @classmethod
    def attach(cls, directory: Path) -> "LocalCluster":
        state = json.loads((Path(directory) / STATE).read_text())
        cluster = cls(directory, nodes=len(state["pids"]), pids=state["pids"], address=state["address"])
        cluster.dashboard_url = state["dashboard"]
        return cluster

    def raylet_pid(self, index: int) -> int | None:
        """The raylet of node ``index`` (a child of its ``ray start`` process)."""
        import psutil

        try:
            for child in psutil.Process(self.pids[index]).children(recursive=True):
                if "raylet" in " ".join(child.cmdline()[:1]):
                    return child.pid
        except psutil.NoSuchProcess:
            return None
        return None

    def processes(self) -> list[int]:
        """Every live process of this cluster: the nodes, everything they started (:data:`MARKER`, which finds a
        worker whose node's raylet is gone), and any process naming the folder."""
        import psutil

        found = set(marked_processes(str(self.directory)))
        ours = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}  # `... local down DIR` itself
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(str(self.directory) in part for part in process.info["cmdline"] or ()):
                    found.add(process.info["pid"])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for pid in self.pids:
            try:
                found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
                found.add(pid)
            except psutil.NoSuchProcess:
                continue
        return sorted(pid for pid in found - ours if _alive(pid))

    def stop(self, remove: bool = False) -> None:
        """SIGTERM to each ``ray start --block`` (it stops its node's processes), then SIGKILL to what is left."""
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(pid) for pid in self.pids):
            time.sleep(0.5)
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.popens:  # reap our `ray start` children, or they linger as zombies
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


MARKER = "VISIONR3_RAY_SESSION"
"""An environment variable a Ray session's first process carries (a ``ray start`` node here, a driver in the resume
drill): everything that session starts inherits it — raylet, GCS, agents, and the workers, whose command lines Ray
rewrites (``ray::WorkerDict``) and which outlive a killed raylet for seconds, reparented away from the node's tree."""


def marked_processes(value: str, name: str = MARKER) -> list[int]:
    """Live processes (zombies excluded) whose environment holds ``name=value``, this process excepted."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own unreaped child) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionr3.cluster.local", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the nodes and print the exports a client needs")
    up.add_argument("directory", type=Path)
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--gpus-per-node", type=int, default=1, help="logical GPUs (training processes) per node")
    up.add_argument("--cpus-per-node", type=int, default=8, help="logical CPUs per node (verl's actors reserve some)")
    down = sub.add_parser("down", help="stop every node and process of the cluster in DIRECTORY")
    down.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "up":
        cluster = LocalCluster(args.directory, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                               cpus_per_node=args.cpus_per_node).start()
        print(f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path} RAY_ADDRESS={cluster.address}")
        print(f"# job API (visionr3 submit --address): {cluster.dashboard_url}", file=sys.stderr)
        return 0
    if not (args.directory / STATE).is_file():
        print(f"no cluster started by `up` under {args.directory} ({STATE} is missing)", file=sys.stderr)
        return 2
    LocalCluster.attach(args.directory).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
