"""Background tasks with an owner: a task that dies is logged, counted and restarted.

A bare ``asyncio.create_task`` whose result nobody reads dies silently. Every
long-running loop of a meshscope service runs under a ``Supervisor`` instead:
when it raises, the supervisor logs the traceback, counts the restart (a
callback feeds the service's metrics), waits with backoff and starts it again.
``problems()`` names the tasks that crashed recently or are not running, which
is what ``/healthz`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from meshcore.backoff import backoff_s

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class TaskState:
    name: str
    restarts: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    running: bool = False
    finished: bool = False


class Supervisor:
    def __init__(
        self,
        on_restart: Callable[[str], None] | None = None,
        base_s: float = 0.1,
        max_s: float = 10.0,
        recent_s: float = 30.0,
    ):
        self.on_restart = on_restart
        self.base_s = base_s
        self.max_s = max_s
        self.recent_s = recent_s
        self.tasks: dict[str, TaskState] = {}
        self._handles: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, factory: TaskFactory, restart: bool = True) -> None:
        """Run ``factory()`` as task ``name``; restart it whenever it raises (or ends, with ``restart``)."""
        if name in self._handles and not self._handles[name].done():
            raise RuntimeError(f"task {name} is already running")
        state = self.tasks.setdefault(name, TaskState(name))
        self._handles[name] = asyncio.create_task(self._keep(state, factory, restart), name=name)

    async def _keep(self, state: TaskState, factory: TaskFactory, restart: bool) -> None:
        failures = 0
        while True:
            state.running = True
            started = time.monotonic()
            try:
                await factory()
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception as exc:
                state.running = False
                state.restarts += 1
                state.last_error = f"{type(exc).__name__}: {exc}"[:500]
                state.last_error_at = time.time()
                if time.monotonic() - started > self.recent_s:
                    failures = 0
                delay = backoff_s(failures, self.base_s, self.max_s, random.random())
                failures += 1
                log.error(
                    "background task crashed; restarting",
                    exc_info=True,
                    extra={"task": state.name, "restarts": state.restarts, "retry_in_s": round(delay, 3)},
                )
                if self.on_restart is not None:
                    self.on_restart(state.name)
                await asyncio.sleep(delay)
                continue
            state.running = False
            if not restart:
                state.finished = True
                return
            state.restarts += 1
            log.warning("background task ended; restarting", extra={"task": state.name})
            if self.on_restart is not None:
                self.on_restart(state.name)
            await asyncio.sleep(self.base_s)

    async def cancel(self, name: str) -> None:
        task = self._handles.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.pop(name, None)

    async def join(self, name: str, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for task ``name`` to end by itself; whether it did."""
        task = self._handles.get(name)
        if task is None:
            return True
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        return bool(done)

    async def stop(self, cancel_wait_s: float = 1.0) -> None:
        """Cancel every task and wait for them; again for one that swallowed the cancellation.

        (redis-py can swallow a cancellation that lands inside a command, and its loop then goes on.)
        """
        handles = list(self._handles.values())
        while pending := [task for task in handles if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=cancel_wait_s)
        await asyncio.gather(*handles, return_exceptions=True)
        self._handles.clear()

    def problems(self, now: float | None = None) -> list[str]:
        """Tasks that crashed within ``recent_s`` or are not running, as sentences for /healthz."""
        now = time.time() if now is None else now
        out = []
        for state in self.tasks.values():
            if state.last_error_at and now - state.last_error_at < self.recent_s:
                out.append(f"task {state.name} crashed {now - state.last_error_at:.0f} s ago: {state.last_error}")
            elif not state.running and not state.finished:
                out.append(f"task {state.name} is not running")
        return out
