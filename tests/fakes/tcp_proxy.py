"""A TCP proxy on 127.0.0.1 that can take its target away: a database outage, for tests.

    async with TcpProxy(target_host="127.0.0.1", target_port=5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        await proxy.outage(15.0)      # reset every connection, refuse new ones 15 s, heal
        proxy.cut(); ...; proxy.heal()  # the same, by hand
        proxy.connections             # connections accepted so far

What a client sees during an outage is what a failover or a broken network shows it: open
connections are reset (a real RST: SO_LINGER 0 before the abort, since `transport.abort()`
alone sends a FIN unless unread data happens to be buffered) and new ones get
ECONNREFUSED, because nothing listens on the port. The port stays the same afterwards:
while cut, a bound but not listening socket (SO_REUSEPORT) keeps any other program from
taking it, so `heal()` cannot fail with "address in use".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

CHUNK = 64 * 1024  # bytes read per pass; with drain() this bounds what is held per direction


def _reusable_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Both the listener and the placeholder that holds the port during a cut set it, so
    # that each can bind while the other still exists.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close with an RST rather than a FIN, as a crashed peer or a cut network would."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream twin."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    cut: bool = False

    def reset(self) -> None:
        self.cut = True
        _reset(self.client)
        _reset(self.upstream)


class TcpProxy:
    """Forwards 127.0.0.1:`port` to the target; `cut()`/`heal()`/`outage()` take it away."""

    def __init__(
        self, target_host: str = "127.0.0.1", target_port: int = 5432, *,
        host: str = "127.0.0.1", port: int = 0, connect_timeout: float = 5.0,
    ) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host = host
        self.connect_timeout = connect_timeout
        self.connections = 0
        self._port = port
        self._listener: socket.socket | None = None
        self._placeholder: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> TcpProxy:
        self._loop = asyncio.get_running_loop()
        self._listen()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True  # an outage() still sleeping must not listen again when it ends
        self._unlisten()
        for link in list(self._links):
            link.reset()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    @property
    def port(self) -> int:
        """Where clients connect (the same before and after an outage)."""
        return self._port

    @property
    def is_cut(self) -> bool:
        return self._placeholder is not None

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        return len(self._links)

    # -- faults ---------------------------------------------------------------------------
    def cut(self) -> None:
        """Reset every open connection and refuse new ones until `heal()`."""
        if self.is_cut:
            return
        self._placeholder = _reusable_socket(self.host, self._port)
        # Closing the listening socket also resets what waited in its accept queue.
        self._unlisten()
        for link in list(self._links):
            link.reset()

    def heal(self) -> None:
        """Listen again on the same port."""
        if not self.is_cut or self._closed:
            return
        self._listen()
        assert self._placeholder is not None
        self._placeholder.close()
        self._placeholder = None

    async def outage(self, seconds: float) -> None:
        """`cut()`, wait `seconds`, `heal()` (also when cancelled: never left cut)."""
        self.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.heal()

    # -- plumbing -------------------------------------------------------------------------
    # The listening socket is driven by hand (add_reader + accept) rather than by
    # asyncio.start_server, so that cut() and heal() take effect synchronously: after
    # heal() returns a client can connect, after cut() none can.
    def _listen(self) -> None:
        assert self._loop is not None, "use TcpProxy as an async context manager"
        sock = _reusable_socket(self.host, self._port)
        sock.listen(128)
        sock.setblocking(False)
        self._port = int(sock.getsockname()[1])
        self._listener = sock
        self._loop.add_reader(sock.fileno(), self._acceptable)

    def _unlisten(self) -> None:
        if self._listener is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        self._listener = None

    def _acceptable(self) -> None:
        assert self._loop is not None
        while self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except ConnectionAbortedError:  # the client gave up while queued: next one
                continue
            except OSError:  # nothing queued (EAGAIN), or e.g. out of descriptors: next time
                return
            self.connections += 1
            task = self._loop.create_task(self._serve(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=CHUNK)
        except OSError:
            conn.close()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._forward(link, reader)
        finally:
            self._links.discard(link)

    async def _forward(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                up_reader, link.upstream = await asyncio.open_connection(
                    self.target_host, self.target_port, limit=CHUNK)
        except (OSError, TimeoutError):
            _reset(link.client)  # the target is down: the client sees its connection reset
            return
        if link.cut:  # cut while the upstream connection was being opened
            link.reset()
            return
        upstream = link.upstream
        pipes = [asyncio.create_task(_pipe(client_reader, upstream)),
                 asyncio.create_task(_pipe(up_reader, link.client))]
        try:
            # A pipe ends at EOF (passed on as a half-close) or on an error; after an error
            # the other direction must not wait for a peer that is gone.
            done, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            if pending or any(not t.cancelled() and t.exception() for t in done):
                link.reset()
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for end in (link.client, upstream):
                if not end.transport.is_closing():
                    end.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side so that it sees the EOF too."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()  # back-pressure: stop reading while the other side is slow
    if writer.can_write_eof() and not writer.transport.is_closing():
        writer.write_eof()
