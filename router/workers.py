"""``meshscope relay --workers N``: N relay processes serve one region behind one port.

Pre-fork, as gunicorn does: this parent binds the listening socket once and
starts N ``python -m meshscope relay`` workers that inherit it
(``MESHSCOPE_RELAY_LISTEN_FD``); whichever worker accepts a connection first
serves it. Not SO_REUSEPORT: there each worker has an accept queue of its own,
chosen by a hash of the client's address, and the connections waiting in the
queue of a worker that dies are reset; with one shared queue the surviving
workers take them. Port 0 works without a second step (the parent's bind
picks it, and every worker serves that socket), and a restarted worker serves
the same socket at once.

Worker ``k`` is named ``<relay name>-w<k>`` (its commit counter, flow writer
and dedup keys are its own); worker 0 holds the region's outbound links
(``router.siblings`` says what the workers share and how).

The parent supervises: a worker that exits is logged with its exit status,
counted, and started again (after a pause that grows while it keeps dying
quickly); the new process learns how often its place was restarted
(``MESHSCOPE_RELAY_WORKER_RESTARTS``) and reports it in ``/healthz``. SIGTERM
or SIGINT is passed to every worker, each drains as one relay does
(``router.serve``), and the parent exits when all have; a second signal is
passed on too (the workers skip their wait). A worker whose parent is gone
stops itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from meshcore.server import bind
from router import config as rc
from router.config import RelayConfig

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESTART_PAUSE_S = (0.2, 10.0)  # first pause, longest pause
STEADY_S = 30.0  # a worker that ran this long is restarted after the first pause again
BACKLOG = 2048


class WorkerPool:
    def __init__(self, config: RelayConfig):
        self.config = config
        self.sock = bind(config.host, config.port)
        self.sock.listen(BACKLOG)
        self.sock.set_inheritable(True)
        self.port: int = self.sock.getsockname()[1]
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = [0] * config.workers
        self.stopping = False

    def env(self, index: int) -> dict[str, str]:
        c = self.config
        env = dict(os.environ)
        env.update(
            {
                rc.MESHSCOPE_REGION: c.region.id,
                rc.MESHSCOPE_RELAY_NAME: f"{c.relay_name}-w{index}",
                rc.MESHSCOPE_RELAY_WORKERS: str(c.workers),
                rc.MESHSCOPE_RELAY_WORKER: str(index),
                rc.MESHSCOPE_RELAY_LISTEN_FD: str(self.sock.fileno()),
                rc.MESHSCOPE_PEERS: ",".join(c.peers),
                "MESHSCOPE_RELAY_WORKER_RESTARTS": str(self.restarts[index]),
            }
        )
        return env

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; start it again whenever it exits, until the pool stops."""
        pause = RESTART_PAUSE_S[0]
        while not self.stopping:
            started = time.monotonic()
            # a session of its own: a signal for the parent's process group (a terminal's Ctrl-C, a service
            # manager stopping the group) reaches the worker once, passed on by the parent, not twice
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meshscope",
                "relay",
                env=self.env(index),
                pass_fds=(self.sock.fileno(),),
                start_new_session=True,
            )
            self.procs[index] = proc
            log.info("relay worker started", extra={"worker": index, "pid": proc.pid})
            code = await proc.wait()
            if self.stopping:
                log.info("relay worker stopped", extra={"worker": index, "pid": proc.pid, "exit": code})
                return
            self.restarts[index] += 1
            pause = RESTART_PAUSE_S[0] if time.monotonic() - started >= STEADY_S else pause
            log.error(
                "relay worker exited; starting it again",
                extra={
                    "worker": index,
                    "pid": proc.pid,
                    "exit": code,
                    "restarts": self.restarts[index],
                    "restart_in_s": pause,
                },
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_PAUSE_S[1])

    def signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def run(self) -> None:
        """Serve until signalled, then stop every worker (each drains) and return."""
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, signalled.set)
        log.info(
            "relay workers starting",
            extra={"workers": self.config.workers, "host": self.config.host, "port": self.port},
        )
        keepers = [asyncio.create_task(self._keep(i)) for i in range(self.config.workers)]
        try:
            await signalled.wait()
            signalled.clear()
            self.stopping = True
            log.info("stop requested: draining every relay worker")
            self.signal_all(signal.SIGTERM)
            again: asyncio.Future[Any] = asyncio.create_task(signalled.wait())
            done: asyncio.Future[Any] = asyncio.gather(*keepers)
            await asyncio.wait({again, done}, return_when=asyncio.FIRST_COMPLETED)
            if again.done():
                self.signal_all(signal.SIGTERM)  # the workers skip their wait
            again.cancel()
            await done
        finally:
            self.stopping = True
            self.signal_all(signal.SIGKILL)
            for task in keepers:
                task.cancel()
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            self.sock.close()


async def serve_workers(config: RelayConfig) -> None:
    """Bind the region's port and run ``config.workers`` relay processes on it until signalled."""
    await WorkerPool(config).run()


async def watch_parent(parent_pid: int) -> None:
    """In a worker: stop this process (as SIGTERM would) once the parent that started it is gone."""
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent_pid:
            log.error("the relay workers' parent is gone; this worker stops")
            os.kill(os.getpid(), signal.SIGTERM)
            return
