"""The providers' HTTP transport: httpx's client API, aiohttp's connection handling underneath.

Why: the benchmark (``docs/benchmarks.md``) measured httpx's own transport (httpcore over anyio) at
about 1.3 ms of CPU per loopback request with one request in flight and over 3 ms with 32, a third
of the bot's cost per relayed message; aiohttp's client, which Bolt already brings, made the same
request for about 0.2 ms. The providers keep httpx's API (requests, responses, ``MockTransport`` in
tests, its exceptions); only the bytes go through aiohttp.

Why not the ``httpx-aiohttp`` package: it maps every ``aiohttp.ClientConnectionError`` to
``httpx.ConnectTimeout``, so a provider that hung up mid-answer would be reported as "did not answer
in time". Here each aiohttp failure becomes the httpx exception that says what happened:

- ``ConnectionTimeoutError`` -> ``ConnectTimeout``;
- ``ServerTimeoutError`` and ``TimeoutError`` -> ``ReadTimeout``;
- ``ClientConnectorError`` (refused, DNS, TLS handshake) -> ``ConnectError``;
- ``ServerDisconnectedError``, ``ClientOSError`` (the connection broke) -> ``ReadError``;
- ``ClientPayloadError``, ``ClientResponseError`` (a garbled answer) -> ``RemoteProtocolError``;
- any other ``aiohttp.ClientError`` -> ``NetworkError``.

Like httpx's default transport it honours ``HTTP(S)_PROXY``/``NO_PROXY`` and ``SSL_CERT_FILE`` from
the environment, verifies TLS with httpx's default trust roots, and keeps connections alive between
requests. The URL goes out exactly as httpx encoded it (no dot-segment removal, no requoting). It
keeps no cookies (httpx's client keeps its own). The aiohttp session is opened on the
first request, inside the running event loop, and closed with the client.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
import yarl

CHUNK = 64 * 1024


@contextlib.contextmanager
def _as_httpx(request: httpx.Request) -> Iterator[None]:
    """aiohttp's exceptions raised inside, as the httpx exception that says what happened."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise httpx.ReadError(str(exc) or "the server closed the connection", request=request) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.NetworkError(str(exc) or type(exc).__name__, request=request) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx(self._request):
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` sending through one ``aiohttp.ClientSession``."""

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 15.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl = httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}  # (scheme, host) -> proxy URL

    def _proxy(self, url: httpx.URL) -> str | None:
        """The proxy for ``url`` from ``HTTP(S)_PROXY`` (else ``ALL_PROXY``) and ``NO_PROXY``, read
        once per host. A proxy that is not an HTTP proxy (``socks5://``) is not used.

        Not aiohttp's ``trust_env``: that hands every request to a worker thread (it looks for a
        netrc file each time), which cost more than the request itself.
        """
        key = (url.scheme, url.host)
        if key not in self._proxies:
            proxies = urllib.request.getproxies_environment()
            bypass = bool(proxies.get("no")) and bool(urllib.request.proxy_bypass(url.host))
            proxy = proxies.get(url.scheme) or proxies.get("all")
            if proxy is not None and not proxy.startswith(("http://", "https://")):
                proxy = None  # aiohttp speaks to HTTP proxies only (httpx needs an extra for SOCKS too)
            self._proxies[key] = None if bypass else proxy
        return self._proxies[key]

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_expiry, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # httpx decodes by Content-Encoding
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        with _as_httpx(request):
            response = await session.request(
                request.method,
                # As httpx encoded it: a plain string would be re-normalised, turning an encoded
                # session id such as %2E%2E into a dot segment that climbs the path.
                yarl.URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                compress=False,
                proxy=self._proxy(request.url),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
