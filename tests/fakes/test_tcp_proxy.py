"""The TCP proxy: bytes both ways with half-close, and outages (RST, then refused, then healed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import _PG_SKIP
from tests.fakes.tcp_proxy import TcpProxy

EOF_MARK = b"<eof seen>"


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """Echoes what it reads; at the client's EOF it says so and closes: a half-close probe."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write(EOF_MARK)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=5)


async def test_bytes_pass_both_ways_and_a_half_close_reaches_the_other_side() -> None:
    async with echo_server() as target, TcpProxy("127.0.0.1", target) as proxy:
        assert proxy.port not in (0, target)
        reader, writer = await connect(proxy.port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        # Far more than any socket buffer: only flows if both directions keep draining.
        payload = os.urandom(8 * 1024 * 1024)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()  # the client is done talking but still listening

        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.read(-1), 20)  # until the server's EOF
        await sender
        writer.close()
        assert echoed == payload + EOF_MARK
        assert proxy.connections == 1
        for _ in range(50):
            if proxy.open_connections == 0:
                break
            await asyncio.sleep(0.02)
        assert proxy.open_connections == 0


async def test_cut_resets_open_connections_refuses_new_ones_and_heal_reopens_the_port() -> None:
    async with echo_server() as target, TcpProxy("127.0.0.1", target) as proxy:
        port = proxy.port
        reader, writer = await connect(port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"

        proxy.cut()
        assert proxy.is_cut
        # An RST, not a FIN: a clean EOF would read as b"" instead.
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await connect(port)

        proxy.heal()
        assert proxy.port == port and not proxy.is_cut
        reader, writer = await connect(port)
        writer.write(b"pong")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
        writer.close()
        assert proxy.connections == 2  # the refused attempt was never accepted


async def test_outage_refuses_for_its_duration_then_heals_by_itself() -> None:
    async with echo_server() as target, TcpProxy("127.0.0.1", target) as proxy:
        outage = asyncio.create_task(proxy.outage(1.0))
        await asyncio.sleep(0)  # let it begin
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionRefusedError):
            await connect(proxy.port)
        await asyncio.wait_for(outage, 5)
        assert asyncio.get_running_loop().time() - started >= 0.9
        reader, writer = await connect(proxy.port)
        writer.write(b"back")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"back"
        writer.close()


async def test_a_target_that_is_down_resets_the_client() -> None:
    async with echo_server() as target:
        pass  # the port is free again: nothing listens there
    async with TcpProxy("127.0.0.1", target, connect_timeout=2) as proxy:
        reader, writer = await connect(proxy.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 5)
        writer.close()


# -- through to a real PostgreSQL -----------------------------------------------------------

@pytest.fixture
def pg_url(postgres_url: str | None) -> str:
    if postgres_url is None:
        pytest.skip(_PG_SKIP[0] if _PG_SKIP else "PostgreSQL not available")
    return postgres_url


async def test_a_postgresql_outage_through_the_proxy(pg_url: str) -> None:
    import asyncpg

    url = make_url(pg_url)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:

        async def connect_pg() -> asyncpg.Connection:
            return await asyncpg.connect(host="127.0.0.1", port=proxy.port, timeout=5,
                                         user=url.username or "postgres",
                                         password=url.password, database=url.database)

        connection = await connect_pg()
        try:
            assert await connection.fetchval("SELECT 40 + 2") == 42
            outage = asyncio.create_task(proxy.outage(1.5))
            await asyncio.sleep(0)
            with pytest.raises((ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)):
                await connection.fetchval("SELECT 1")
            with pytest.raises(ConnectionRefusedError):
                await connect_pg()
            await asyncio.wait_for(outage, 5)
        finally:
            connection.terminate()

        healed = await connect_pg()
        try:
            assert await healed.fetchval("SELECT 'healed'") == "healed"
        finally:
            await healed.close()
        assert proxy.connections == 2
