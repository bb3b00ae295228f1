"""A Ray cluster of several "boards" on this one machine, for tests and benchmarks.

Every node is started through :func:`~edgekit.fleet.cluster.join_plan` (what ``edgekit fleet
join`` runs) with ``--block`` in a process group of its own, on loopback, under a temporary
directory of its own. Teardown is scoped to this cluster: it kills the process trees of the
nodes it started (``ray stop`` would stop every Ray on the machine, other users' included)
and then anything still naming its temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cluster import BoardFacts, FleetError, detect_board, join_plan

# run as `python -c` in a child (its own driver, so the test process never joins Ray): the exit
# status says whether `want` nodes came up before the deadline
_WAIT_SCRIPT = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
def alive(): return sum(1 for n in ray.nodes() if n["Alive"])
while alive() < want and time.monotonic() < deadline:
    time.sleep(0.2)
raise SystemExit(0 if alive() >= want else 1)
"""


STARTED = "Ray runtime started."  # what `ray start` prints once its node runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalNode:
    name: str
    profile: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tree(self) -> list[Any]:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        return procs


class LocalCluster:
    """``with LocalCluster([("head", "pa"), ("a2", "pa"), ("b1", "pb")]) as c: c.address``
    (drivers connect with ``c.env`` in their environment).

    The first entry is the head. Each node: ``--num-cpus`` CPUs, a small object store."""

    def __init__(self, boards: list[tuple[str, str]], *, num_cpus: int = 1, object_store_mib: int = 100,
                 root: Path | None = None) -> None:
        self.boards = boards
        self.num_cpus, self.object_store = num_cpus, object_store_mib * 2**20
        # short: Ray's Unix sockets live under it (a path limit of 107 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="ekf-", dir=root or "/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[LocalNode] = []
        self._facts: BoardFacts | None = None
        # a token of its own (Ray's token authentication, as a real fleet should run it), so
        # nothing depends on what ~/.ray holds; drivers of this cluster need ``env`` too
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    def _start(self, name: str, profile: str, head: str | None) -> LocalNode:
        from dataclasses import replace

        base = self._facts or detect_board(profile="x")
        self._facts = base
        plan = join_plan(head, port=self.port, num_cpus=self.num_cpus, object_store_memory=self.object_store,
                         temp_dir=str(self.root / "ray"), block=True, board=replace(base, name=name, profile=profile))
        log = self.root / f"{name}.log"
        env = {**os.environ, **plan.env, **self.env}
        with open(log, "wb") as f:
            proc = subprocess.Popen(plan.command, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = LocalNode(name, profile, proc, log)
        self.nodes.append(node)
        return node

    def start(self, timeout_s: float = 120.0, attempts: int = 2) -> LocalCluster:
        """Nodes one after another, each once its ``ray start`` says it runs; a node that
        fails to come up (Ray gives a raylet 30 s to register, too little on a loaded
        2-core host) is started again."""
        try:
            for i, (name, profile) in enumerate(self.boards):
                for attempt in range(attempts):
                    node = self._start(name, profile, None if i == 0 else self.address)
                    if self._started(node, timeout_s):
                        break
                    _kill(node.tree())
                    self.nodes.remove(node)
                    if attempt == attempts - 1:
                        raise FleetError(f"node {name} did not start: {node.log.read_text(errors='replace')[-600:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def _started(self, node: LocalNode, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if STARTED in node.log.read_text(errors="replace"):
                return True
            if node.proc.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def wait_for(self, alive: int, timeout_s: float = 90.0) -> None:
        r = subprocess.run([sys.executable, "-c", _WAIT_SCRIPT, self.address, str(alive), str(timeout_s)],
                           capture_output=True, text=True, timeout=timeout_s + 30, env={**os.environ, **self.env})
        if r.returncode != 0:
            logs = " | ".join(n.log.read_text(errors="replace")[-300:] for n in self.nodes)
            raise FleetError(f"{alive} nodes did not come up within {timeout_s:.0f} s: {r.stderr[-400:]} {logs}")

    def node(self, name: str) -> LocalNode:
        return next(n for n in self.nodes if n.name == name)

    def kill(self, name: str) -> None:
        """SIGKILL one node's whole process tree (a board losing power)."""
        _kill(self.node(name).tree())

    def stop(self) -> None:
        import psutil

        for n in reversed(self.nodes):
            _kill(n.tree())
            if n.proc.returncode is None:  # not reaped yet: its pid (the group's id) cannot be reused
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(n.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                n.proc.wait(timeout=10)
        marker = str(self.root)
        left = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if marker in " ".join(p.info["cmdline"] or []):
                    left.append(p)
        _kill(left)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill(procs: list[Any]) -> None:
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)
