"""A Ray cluster of separate nodes on this machine, whose worker nodes do not see chosen folders of its disk.

    with LocalCluster(tmp, hidden=[data_folder], workers=1, cpus=2) as cluster:
        subprocess.run([..., "eval", model, data, "--ray-address", cluster.address], env=cluster.env())

The head node (`ray start --head --num-cpus 0`) runs no tasks; each worker node is `ray start --address ...` inside
its own mount namespace (`unshare -m`) with an empty tmpfs mounted over every hidden folder, as a cluster machine
without the driver's disk. All nodes listen on 127.0.0.1. Token authentication is off (`RAY_AUTH_MODE=disabled`)
unless `token` is given, which the head then requires of every client.

Each node runs `ray start --block` in a session of its own: `stop` ends exactly that session's processes (by process
id, never `ray stop`, which ends every Ray process on the machine), and a node also ends when the process that
started it dies. Needs Linux, root (or user namespaces) and `unshare`. Production code never imports this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

READY_LINE = "Ray runtime started"
START_TIMEOUT = 90.0
STOP_GRACE = 3.0


def free_port() -> int:
    """A TCP port nobody listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_command() -> list[str]:
    """The `ray` CLI of this Python environment."""
    script = Path(sys.executable).with_name("ray")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


class ClusterError(RuntimeError):
    """A node did not start; the message carries the end of its output."""


class LocalCluster:
    """A head node without CPUs and `workers` worker nodes of `cpus` CPUs each, none of which sees `hidden`."""

    def __init__(
        self,
        root: Path,
        *,
        workers: int = 1,
        cpus: int = 2,
        hidden: list[Path] = (),
        token: str | None = None,
        port: int | None = None,
    ):
        self.root = Path(root)
        self.workers, self.cpus, self.hidden, self.token = workers, cpus, [Path(p) for p in hidden], token
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.logs: list[list[str]] = []
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------------------------------ environment

    def env(self, token: str | None = None) -> dict[str, str]:
        """The environment of a process that joins the cluster (`token` instead of the cluster's own, if given)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
        env.pop("RAY_ADDRESS", None)
        if self.token is None and token is None:
            env["RAY_AUTH_MODE"] = "disabled"
        else:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token or self.token)
        return env

    # ------------------------------------------------------------------------------------------ life cycle

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start the head, then the worker nodes; returns when every node said it runs."""
        began = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        head = [
            *ray_command(),
            "start",
            "--head",
            "--port",
            str(self.port),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "0",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            str(self._temp_dir("head")),
            "--block",
        ]
        self._wait_ready(self._launch(head))
        pending = [self._launch(self._worker_command(index)) for index in range(self.workers)]
        for node in pending:
            self._wait_ready(node)
        self.startup_seconds = time.perf_counter() - began

    def _temp_dir(self, name: str) -> Path:
        # Ray's socket paths must stay short (AF_UNIX, 107 bytes): a short folder under /tmp, not pytest's
        folder = Path(f"/tmp/rc{self.port}") / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _worker_command(self, index: int) -> list[str]:
        mounts = "".join(f"mount -t tmpfs tmpfs {_quoted(folder)} && " for folder in self.hidden)
        start = [
            *ray_command(),
            "start",
            "--address",
            self.address,
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(self.cpus),
            "--disable-usage-stats",
            "--temp-dir",
            str(self._temp_dir(f"worker{index}")),
            "--block",
        ]
        script = f"mount --make-rprivate / && {mounts}exec {' '.join(map(_quoted, start))}"
        return ["unshare", "-m", "sh", "-c", script]

    def _launch(self, command: list[str]) -> subprocess.Popen:
        node = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**self.env(), "TMPDIR": str(self._temp_dir("files"))},  # the nodes' own temporary files
            cwd=self.root,
            start_new_session=True,  # Ctrl-C in the terminal reaches the test, which then stops the nodes
            preexec_fn=_terminate_with_parent,
        )
        self.nodes.append(node)
        self.logs.append([])
        return node

    def _wait_ready(self, node: subprocess.Popen) -> None:
        """Read the node's output until it says it runs (then keep draining it in a thread)."""
        log = self.logs[self.nodes.index(node)]
        deadline = time.monotonic() + START_TIMEOUT
        for line in node.stdout:
            log.append(line.rstrip())
            if READY_LINE in line:
                threading.Thread(target=_drain, args=(node, log), daemon=True).start()
                return
            if time.monotonic() > deadline:
                break
        tail = "\n".join(log[-15:])
        raise ClusterError(f"a Ray node did not start (exit code {node.poll()}):\n{tail}")

    def stop(self) -> None:
        """End every process of every node: each node runs in a session of its own (the `ray start --block` process
        and all it started), so SIGTERM to that session's processes, then SIGKILL to whatever is left after a grace
        period."""
        sessions = {node.pid for node in self.nodes}
        _signal_sessions(sessions, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while _session_members(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_sessions(sessions, signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=5)
        self.nodes.clear()
        shutil.rmtree(f"/tmp/rc{self.port}", ignore_errors=True)


def _session_members(sessions: set[int]) -> list[int]:
    """The live (not zombie) processes whose session is one of `sessions`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session in sessions and state != "Z":
            members.append(int(entry.name))
    return members


def _signal_sessions(sessions: set[int], signum: int) -> None:
    for pid in _session_members(sessions):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the starting process dies (`ray start --block` then ends its node)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _drain(node: subprocess.Popen, log: list[str]) -> None:
    for line in node.stdout:
        log.append(line.rstrip())


def _quoted(value: str | Path) -> str:
    import shlex

    return shlex.quote(str(value))
