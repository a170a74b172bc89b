"""A TCP proxy on loopback that breaks the network between edge and cloud on command.

The client's failure handling (deadlines, the circuit breaker, reconnects,
resyncs) can only be trusted if it is exercised by real sockets failing the
way networks fail, not by a fake server that fails politely. This proxy sits
between a real ``CloudSession`` and a real ``citer-cloud`` and, at any moment:

- ``delay(s)``: adds ``s`` seconds to each direction (a congested or long link);
- ``black_hole()``: keeps connections open but forwards nothing (a route that
  silently drops packets); ``black_hole(requests=False)`` drops only the replies,
  so the server does work the client never hears of;
- ``reset()``: sends RST on both sides of every open connection (a middlebox or
  NAT that lost its state); new connections pass;
- ``cut()``: closes every open connection and resets every new one until
  ``restore()`` (a dead route or a host that is gone);
- ``restore()``: passes traffic unchanged again.

Held bytes are not dropped: a black hole stops reading, so TCP's own buffers
fill and the sender stalls, and whatever is held is delivered in order on
``restore()``, which is what TCP does once a lost route comes back. A
connection the upstream refuses is reset towards the client, the nearest a
proxy gets to "connection refused".
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 65536
#: A proxied connection's two ends: towards the client, towards the server.
_Link = tuple[asyncio.StreamWriter, asyncio.StreamWriter]


class Direction(Enum):
    REQUESTS = "client to server"
    REPLIES = "server to client"


class FaultProxy:
    """``with FaultProxy(server_port) as proxy: connect to proxy.address; proxy.cut(); ...; proxy.restore()``.

    Every control method returns once the fault is in force (it runs on the
    proxy's event loop and is awaited), so a caller can inject a fault between
    two tokens and know that the next request meets it.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", delay_s: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.port: int | None = None
        self._delay_s = delay_s
        self._cut = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-proxy")
        self._server: asyncio.base_events.Server | None = None
        self._links: dict[asyncio.Future[list[None]], _Link] = {}  # each connection's pumps and its two ends
        self._handlers: set[asyncio.Task[None]] = set()
        self._flowing = {direction: asyncio.Event() for direction in Direction}
        for event in self._flowing.values():
            event.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections currently linked to the server (tests check a fault really closed them)."""
        return len(self._links)

    def start(self) -> FaultProxy:
        self._thread.start()

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._run(start)
        return self

    # -- faults -----------------------------------------------------------------------------------------------

    def delay(self, one_way_s: float) -> None:
        """Forward every byte that arrives from now on ``one_way_s`` later, in each direction (order kept)."""

        async def apply() -> None:
            self._delay_s = one_way_s

        self._run(apply)
        log.info("proxy %s: delaying each direction by %.0f ms", self.address, one_way_s * 1000)

    def black_hole(self, requests: bool = True, replies: bool = True) -> None:
        """Forward nothing in the chosen directions, keeping every connection open; ``restore`` delivers it."""

        async def apply() -> None:
            for direction, hold in ((Direction.REQUESTS, requests), (Direction.REPLIES, replies)):
                if hold:
                    self._flowing[direction].clear()

        self._run(apply)
        log.info("proxy %s: black hole (requests %s, replies %s)", self.address, requests, replies)

    def reset(self) -> None:
        """Abort every open connection with RST on both sides; new connections pass as before."""

        async def apply() -> None:
            for link in self._links.values():
                _abort_link(link)
            await self._cancel_links()

        self._run(apply)
        log.info("proxy %s: reset every connection", self.address)

    def cut(self) -> None:
        """Close every open connection and reset each new one until ``restore``: the route is gone."""

        async def apply() -> None:
            self._cut = True
            for client, server in self._links.values():
                client.close()
                server.close()
            await self._cancel_links()

        self._run(apply)
        log.info("proxy %s: cut", self.address)

    def restore(self) -> None:
        """Pass traffic again without delay; bytes a black hole held are delivered first, in order."""

        async def apply() -> None:
            self._cut = False
            self._delay_s = 0.0
            for event in self._flowing.values():
                event.set()

        self._run(apply)
        log.info("proxy %s: restored", self.address)

    # -- forwarding ---------------------------------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        if self._cut:
            _abort(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_writer)  # the server is down: the client sees a reset, as from a closed port
            return
        link = (client_writer, server_writer)
        if self._cut:  # cut while connecting
            _abort_link(link)
            return
        # The pumps run as their own future so that a cut or a reset cancels them, never this handler:
        # asyncio's stream server reports a cancelled handler task as an error.
        pumps = asyncio.gather(
            self._pump(client_reader, server_writer, Direction.REQUESTS, link),
            self._pump(server_reader, client_writer, Direction.REPLIES, link),
        )
        self._links[pumps] = link
        try:
            await pumps
        except asyncio.CancelledError:
            pass
        finally:
            self._links.pop(pumps, None)
            client_writer.close()
            server_writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction, link: _Link
    ) -> None:
        """Copy one direction; each chunk waits for the direction to flow, then for the delay in force.

        A reset or a failed write on either side resets both: the proxy must not turn a dead peer into a
        connection that merely goes quiet, or it would fake a black hole where the network sent a reset.
        """
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            try:
                while True:
                    due, chunk = await queue.get()
                    if (wait := due - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                    if not chunk:
                        if writer.can_write_eof():
                            writer.write_eof()  # half-close: the peer may still answer what it got
                        return
                    writer.write(chunk)
                    await writer.drain()
            except OSError:  # reset, broken pipe, or the socket already gone
                _abort_link(link)

        delivery = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(_CHUNK):
                await self._flowing[direction].wait()  # a black hole holds the chunk and stops reading
                queue.put_nowait((time.monotonic() + self._delay_s, chunk))
            await self._flowing[direction].wait()  # an end of stream is news too: hold it like data
            queue.put_nowait((time.monotonic() + self._delay_s, b""))
            await delivery
        except OSError:
            _abort_link(link)
        finally:
            delivery.cancel()

    async def _cancel_links(self) -> None:
        """Stop every connection's pumps and wait until their handlers have closed both ends."""
        for pumps in list(self._links):
            pumps.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def _run(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a coroutine function on the proxy's loop and wait for it: faults are in force on return."""
        asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    def stop(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            await self._cancel_links()  # a shutdown, not a fault: each handler closes its two ends (FIN)

        if self._thread.is_alive():
            self._run(stop)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER with a zero timeout makes close() discard and reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def _abort_link(link: _Link) -> None:
    for writer in link:
        _abort(writer)
