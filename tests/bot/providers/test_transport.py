"""The providers' aiohttp transport against real loopback servers: what is sent, what comes back,
and which httpx exception each kind of failure becomes (the words users read depend on it)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from aiohttp import web

from bot.providers.transport import AiohttpTransport

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def http_server(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_server(
    on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A TCP server that answers with whatever bytes ``on_connect`` writes (or none); on exit it
    waits for every connection's handler to finish, so no socket outlives the test."""
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await on_connect(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers), timeout=5)
        await server.wait_closed()


@asynccontextmanager
async def client(base_url: str, read_timeout: float = 5.0) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=base_url, transport=AiohttpTransport(), timeout=httpx.Timeout(read_timeout)
    ) as http:
        yield http


async def test_request_and_answer_pass_through() -> None:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, dict(request.headers), await request.read()))
        return web.json_response({"detail": "queued"}, status=202, headers={"X-Request-Id": "r-1"})

    async with http_server(handler) as url, client(url) as http:
        response = await http.post(
            "/v1/sessions/s%2F1/message?x=1", json={"message": "héllo"}, headers={"Authorization": "Bearer k"}
        )
    assert response.status_code == 202
    assert response.json() == {"detail": "queued"}
    assert response.headers["x-request-id"] == "r-1"
    assert response.reason_phrase == "Accepted"
    [(method, path, headers, body)] = seen
    assert (method, path) == ("POST", "/v1/sessions/s%2F1/message?x=1")
    assert headers["Authorization"] == "Bearer k"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"message": "héllo"}


async def test_the_path_goes_out_exactly_as_encoded() -> None:
    paths: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.Response(text="ok")

    async with http_server(handler) as url, client(url) as http:
        for path in ("/v1/sessions/%2E%2E/message", "/v1/sessions/../x", "/a/%2e/b%2Fc", "/q?x=%20&y=%2F"):
            await http.get(path)
    # httpx itself normalises a literal "../" (as a browser would); encoded dots and slashes stay.
    assert paths == ["/v1/sessions/%2E%2E/message", "/v1/x", "/a/%2e/b%2Fc", "/q?x=%20&y=%2F"]


async def test_a_compressed_answer_is_decoded_once() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"ok": true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async with http_server(handler) as url, client(url) as http:
        response = await http.get("/")
    assert response.json() == {"ok": True}


async def test_connections_are_kept_alive() -> None:
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    async with http_server(handler) as url, client(url) as http:
        for _ in range(5):
            assert (await http.get("/")).text == "ok"
    assert len(peers) == 1


async def test_refused_connection_is_a_connect_error() -> None:
    async with raw_server(lambda r, w: asyncio.sleep(0)) as url:
        pass  # closed: nothing listens on that port any more
    async with client(url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")


async def test_a_server_hanging_up_is_a_read_error_not_a_timeout() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with raw_server(hang_up) as url, client(url) as http:
        with pytest.raises(httpx.TransportError) as caught:
            await http.get("/")
    assert isinstance(caught.value, httpx.ReadError | httpx.RemoteProtocolError)
    assert not isinstance(caught.value, httpx.TimeoutException)


async def test_a_body_cut_short_is_a_protocol_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await writer.drain()

    async with raw_server(cut) as url, client(url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/")


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes

    async with raw_server(silent) as url, client(url, read_timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/")


async def test_proxy_from_the_environment_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    proxied: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        proxied.append(str(request.url))  # a proxy gets the absolute URL in the request line
        return web.Response(text="via proxy")

    async def origin(request: web.Request) -> web.Response:
        return web.Response(text="direct")

    async with http_server(proxy) as proxy_url, http_server(origin) as origin_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        for name in ("http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        async with client("http://agent.example.test") as http:
            assert (await http.get("/v1/x")).text == "via proxy"
        assert proxied == ["http://agent.example.test/v1/x"]

        monkeypatch.delenv("HTTP_PROXY")
        monkeypatch.setenv("ALL_PROXY", proxy_url)
        async with client("http://other.example.test") as http:
            assert (await http.get("/y")).text == "via proxy"
        monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1")  # not an HTTP proxy: not used
        async with client(origin_url) as http:
            assert (await http.get("/")).text == "direct"

        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with client(origin_url) as http:
            assert (await http.get("/")).text == "direct"
    assert proxied == ["http://agent.example.test/v1/x", "http://other.example.test/y"]


async def test_closing_closes_the_session() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    transport = AiohttpTransport()
    async with http_server(handler) as url:
        async with httpx.AsyncClient(base_url=url, transport=transport) as http:
            await http.get("/")
            session = transport._session
            assert session is not None
            assert not session.closed
        assert session.closed
        assert transport._session is None
