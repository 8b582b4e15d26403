"""A TCP relay on 127.0.0.1 in front of the test PostgreSQL that can pass, hang or refuse: the database
faults of the usage and billing tests.

* ``pass``: bytes flow both ways;
* ``hang``: a network blackhole. Connections are accepted and read, but nothing is forwarded either way
  and nothing is answered; the server's sessions behind the relay stay open, as over a dead link;
* ``refuse``: new connections are refused, open ones are closed.

:meth:`PostgresRelay.hang_on` arms a hang that starts when a client sends a given statement (``COMMIT``):
the statements before it reach the server, that one and all after do not. Going back to ``pass`` closes the
connections that hung (a firewall that lost their state), both towards the client and the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal
from urllib.parse import urlsplit

Mode = Literal["pass", "hang", "refuse"]


class PostgresRelay:
    """A relay to the PostgreSQL of ``url``; :attr:`url` is the same database through the relay."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._source_url = parts
        self.port = 0
        self.mode: Mode = "pass"
        self._trigger: bytes | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._hung: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        netloc = self._source_url.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return self._source_url._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host).geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._close_listener()
        self._close(self._writers)

    def hang(self) -> None:
        self.mode = "hang"

    def hang_on(self, statement: bytes) -> None:
        """Hang from the moment a client sends ``statement`` (that message is not forwarded)."""
        self._trigger = statement

    async def refuse(self) -> None:
        self.mode = "refuse"
        self._trigger = None
        await self._close_listener()
        self._close(self._writers)

    async def restore(self) -> None:
        """Back to ``pass``: the connections that hung are closed, new ones are relayed."""
        self.mode = "pass"
        self._trigger = None
        self._close(self._hung)
        if self._server is None:
            await self.start()  # the same port again

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _close(self, writers: set[asyncio.StreamWriter]) -> None:
        for writer in list(writers):
            writer.close()
        writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        if self.mode == "hang":
            await self._swallow(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pair = {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_client: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    if from_client and self._trigger is not None and self._trigger in data:
                        self.mode = "hang"
                    if self.mode == "hang":
                        self._hung |= pair
                        continue  # read and dropped: nothing reaches the other side
                    sink.write(data)
                    await sink.drain()
            if not pair & self._hung:  # over a dead link, one side's close never reaches the other
                sink.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        self._close(set(pair))  # both sides have ended by now
        self._writers -= pair
        self._hung -= pair

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection opened during a hang: read, never answered, closed when the relay restores."""
        self._writers.add(writer)
        self._hung.add(writer)
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(65536):
                pass
        writer.close()
        self._writers.discard(writer)
        self._hung.discard(writer)
