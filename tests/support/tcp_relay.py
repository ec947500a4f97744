"""A real TCP relay in front of a Redis server that can hold back what the server sends to subscribers.

Connections pass through byte for byte. A connection becomes a *subscriber* once its client sends ``SUBSCRIBE``
or ``SSUBSCRIBE``; while :meth:`TcpRelay.hold_subscribers` is in effect, bytes from the server to subscribers are
buffered (request connections flow as usual) and delivered in order on :meth:`TcpRelay.release`. That is how a
test makes "the invalidation message has not reached this instance yet" last as long as it needs, deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["TcpRelay"]

_SUBSCRIBE = (b"SUBSCRIBE", b"SSUBSCRIBE", b"subscribe", b"ssubscribe")


class TcpRelay:
    """``async with TcpRelay(host, port) as relay:`` listens on ``relay.port`` (loopback) and relays to the server."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding = False
        self._released = asyncio.Event()
        self._released.set()
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        await self._server.wait_closed()

    def hold_subscribers(self) -> None:
        """From now on, keep what the server sends to subscriber connections until :meth:`release`."""
        self._holding = True
        self._released.clear()

    def release(self) -> None:
        self._holding = False
        self._released.set()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self._target)
        subscriber = asyncio.Event()

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                if any(word in data for word in _SUBSCRIBE):
                    subscriber.set()
                server_writer.write(data)
                await server_writer.drain()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                if subscriber.is_set() and self._holding:
                    await self._released.wait()
                client_writer.write(data)
                await client_writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_writer, server_writer):
                writer.close()
