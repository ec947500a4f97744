"""Forked worker processes for tests, and the pipes they talk over (one JSON object per line, every wait bounded).

``forked(count, work)`` forks ``count`` children of the test process, each running ``work(index, channel)`` and
leaving by ``os._exit`` (never returning into pytest); a failure in a child is sent as ``{"error": traceback}``
and raised as an ``AssertionError`` by the test's next :meth:`Channel.receive`. Children are reaped (killed past a
deadline) when the context exits.
"""

from __future__ import annotations

import json
import os
import select
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["Channel", "forked", "reap"]

WAIT = 15.0  # seconds a receive or a reap may take by default


@dataclass
class Channel:
    """One worker's two pipe ends, as seen from one side."""

    read_fd: int
    write_fd: int

    def send(self, **message: Any) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.write_fd, data) :]

    def receive(self, timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        while not chunks or not chunks[-1].endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.read_fd], [], [], remaining)[0]:
                raise AssertionError(f"no message within {timeout}s (got {b''.join(chunks)[-200:]!r})")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise AssertionError(f"the other side closed its pipe (got {b''.join(chunks)[-200:]!r})")
            chunks.append(chunk)
        message: dict[str, Any] = json.loads(b"".join(chunks))
        if "error" in message:
            raise AssertionError(f"a worker failed:\n{message['error']}")
        return message


@contextmanager
def forked(
    count: int, work: Callable[[int, Channel], None], *, reap_within: float = WAIT
) -> Iterator[list[tuple[int, Channel]]]:
    """Fork ``count`` workers running ``work(index, channel)``; yields (pid, channel) per worker; reaps them."""
    workers: list[tuple[int, Channel]] = []
    try:
        for index in range(count):
            to_worker_r, to_worker_w = os.pipe()
            from_worker_r, from_worker_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: never return into pytest
                code = 0
                try:
                    os.close(to_worker_w)
                    os.close(from_worker_r)
                    channel = Channel(to_worker_r, from_worker_w)
                    try:
                        work(index, channel)
                    except BaseException:
                        channel.send(error=traceback.format_exc())
                        code = 1
                finally:
                    os._exit(code)
            os.close(to_worker_r)
            os.close(from_worker_w)
            workers.append((pid, Channel(from_worker_r, to_worker_w)))
        yield workers
    finally:
        for pid, channel in workers:
            for fd in (channel.read_fd, channel.write_fd):
                os.close(fd)
            reap(pid, reap_within)


def reap(pid: int, within: float = WAIT) -> None:
    """Wait for child ``pid`` to exit, killing it after ``within`` seconds: a hung child must neither hang the test
    nor outlive it (it would hold the test run's output pipes open)."""
    deadline = time.monotonic() + within
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return
        time.sleep(0.01)
