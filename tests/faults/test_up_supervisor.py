"""``meshscope up``'s supervisor against a real Valkey: slow to answer, slow to load, failing to start, gone.

The stack is ``meshscope.up.Stack`` as ``up`` runs it, its watch loop in a
thread; Valkey is the embedded one on a free port in a temporary directory.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from meshscope.up import Stack, UpOptions
from tests.conftest import free_port, scaled

pytestmark = pytest.mark.faults

REGIONS = ("aws:us-east-1",)
NAME = "valkey aws:us-east-1"  # the region's store, as the supervisor names it


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(UpOptions(regions=REGIONS, data_dir=str(tmp_path / "demo"), redis_port=free_port()))
    yield stack
    stack.stop()


def start_store(stack: Stack) -> str:
    """The one region's Valkey, started and waited for as ``up`` does it."""
    return stack.start_stores()[REGIONS[0]]


def watch(stack: Stack) -> threading.Thread:
    thread = threading.Thread(target=stack.watch, daemon=True)
    thread.start()
    return thread


def valkey_pid(url: str) -> int:
    with redis.Redis.from_url(url, socket_timeout=scaled(5)) as client:
        return int(client.info("server")["process_id"])


def wait_for(check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {scaled(timeout_s)} s")


def test_a_valkey_that_answers_slowly_for_two_seconds_is_left_alone(stack: Stack) -> None:
    url = start_store(stack)
    watch(stack)
    pid = valkey_pid(url)
    os.kill(pid, signal.SIGSTOP)  # as an AOF rewrite's fork can stall it on a busy host
    time.sleep(2)
    os.kill(pid, signal.SIGCONT)
    time.sleep(2)
    assert valkey_pid(url) == pid
    assert stack.restarts.get(NAME, 0) == 0


def test_a_valkey_slow_to_load_is_waited_for_with_progress_and_its_data_kept(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = 20_000
    # each key takes 200 µs to load (about 4 s in all), and the server answers LOADING meanwhile
    stack.valkey_config.update({"key-load-delay": "200", "loading-process-events-interval-bytes": "1024"})
    url = start_store(stack)
    with redis.Redis.from_url(url) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"k{i}", "v" * 20)
        pipe.execute()
        client.bgrewriteaof()  # into the append-only file's snapshot, which is what loads slowly
        wait_for(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0, 30)
    watch(stack)
    os.kill(valkey_pid(url), signal.SIGKILL)
    said: list[str] = []

    def told(text: str) -> bool:
        said.append(capsys.readouterr().out)
        return text in "".join(said)

    wait_for(lambda: told(f"{NAME} is ready"), 60)
    out = "".join(said)
    assert f"{NAME} exited" in out and f"{NAME} is loading" in out and "% loaded" in out, out
    assert stack.restarts == {NAME: 1}  # started once, then waited for: never stopped while it loaded
    with redis.Redis.from_url(url) as client:
        assert client.dbsize() == keys
    # a new `up` on the same data directory waits for the load too, however long it takes
    stack.stop()
    again = Stack(UpOptions(regions=REGIONS, data_dir=str(stack.data), redis_port=stack.ports[NAME]))
    again.valkey_config.update(stack.valkey_config)
    try:
        started = time.monotonic()
        url = start_store(again)
        assert time.monotonic() - started > 2
        assert "loading its data" in capsys.readouterr().out
        with redis.Redis.from_url(url) as client:
            assert client.dbsize() == keys
    finally:
        again.stop()


def test_the_supervisor_outlives_a_valkey_that_cannot_start_and_stop_tolerates_it_gone(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    url = start_store(stack)
    watch(stack)
    manifest = next((stack.data / "valkey").glob("*/appendonlydir/*.manifest"))
    kept = manifest.read_bytes()
    manifest.write_bytes(b"not a manifest\n")  # every start fails until it is repaired
    pid = valkey_pid(url)
    os.kill(pid, signal.SIGKILL)
    said: list[str] = []

    def told(text: str) -> bool:
        said.append(capsys.readouterr().out)
        return text in "".join(said)

    wait_for(lambda: told(f"{NAME} keeps exiting"), 30)
    manifest.write_bytes(kept)
    wait_for(lambda: valkey_pid(url) != pid, 60)  # still supervised: it came back once it could
    wait_for(lambda: told(f"{NAME} is ready"), 10)
    os.kill(valkey_pid(url), signal.SIGKILL)  # gone when up stops
    started = time.monotonic()
    stack.stop()
    assert time.monotonic() - started < scaled(15)
