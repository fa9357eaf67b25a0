"""A fake agent provider: a real aiohttp server on loopback serving one send-message route.

Every request is validated against the provider's OpenAPI file (:mod:`tests.fakes.specs`). A request
that breaks the spec is answered 422 (FastAPI-style body) or 404/405 and recorded in
:attr:`FakeProvider.violations`, which end-to-end tests assert stays empty. A spec-valid request with
the wrong key is answered 401 ``{"detail": "Invalid API key"}`` (not a violation). Everything else is
answered from a script of :class:`Answer` values, and every body the fake sends is itself checked
against the spec, so the fake cannot drift from it.

The fake also serves the provider's read-session endpoint (the ``*-read.yaml`` specs) from a
scripted :class:`FakeSession` per session id: the agent's messages and the session's state appear
when a test says so (:meth:`FakeSession.say`, :meth:`FakeSession.ask`, :meth:`FakeSession.finish`
...), every message the fake took through send-message appears as a user message (with Agen's
``client_id``), and every body served is checked against the read spec. Reads are answered from
their own script (:meth:`FakeProvider.script_reads`), so that 429s and outages can be played.

Usage::

    async with FakeProvider("devin", api_key="apk_test") as devin:
        devin.script(Answer.status(503), Answer.delivered())
        ...  # point the bot at devin.url
        assert devin.messages("sess-1") == ["hello", "hello"]
        assert devin.violations == []
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web

from tests.fakes import eventually
from tests.fakes.specs import PROVIDER_OPERATIONS, PROVIDER_READ_OPERATIONS, ProviderName, SpecValidator

AnswerKind = Literal["delivered", "not_running", "rejected", "status", "slow", "hang", "drop", "trickle"]

_DEFAULT_REJECTION: list[dict[str, Any]] = [
    {"loc": ["body", "message"], "msg": "Field required", "type": "missing"}
]


@dataclass(frozen=True, slots=True)
class Answer:
    """How the fake answers one accepted request. Build with the factory classmethods."""

    kind: AnswerKind
    code: int = 200
    body: object = None
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    then: Answer | None = None
    size: int = 0  # trickle: bytes in the body
    taken: bool = False  # the provider took the message although the answer does not say so

    @classmethod
    def delivered(cls) -> Answer:
        """200 with the provider's success body (Devin ``null``, Feather ``{}``, Agen a SessionEvent)."""
        return cls("delivered")

    @classmethod
    def not_running(cls, detail: str = "Session is suspended") -> Answer:
        """Devin only: 200 ``{"detail": detail}``, the message was not taken."""
        return cls("not_running", body={"detail": detail})

    @classmethod
    def rejected(cls, errors: list[dict[str, Any]] | None = None) -> Answer:
        """422 ``{"detail": errors}`` (FastAPI validation error items: loc, msg, type)."""
        return cls("rejected", code=422, body={"detail": list(errors or _DEFAULT_REJECTION)})

    @classmethod
    def status(cls, code: int, body: object = None, headers: Mapping[str, str] | None = None) -> Answer:
        """Any status. ``body`` None means ``{"detail": <reason phrase>}`` for codes >= 400 and JSON
        ``null`` otherwise; ``bytes`` are sent raw (set Content-Type in ``headers``); anything else is
        sent as JSON. For 429 pass e.g. ``headers={"Retry-After": "1"}``."""
        if body is None and code >= 400:
            body = {"detail": _phrase(code)}
        return cls("status", code=code, body=body, headers=dict(headers or {}))

    @classmethod
    def slow(cls, seconds: float, then: Answer | None = None) -> Answer:
        """Wait ``seconds`` (cut short when the server stops), then answer ``then`` (default delivered)."""
        return cls("slow", seconds=seconds, then=then or cls.delivered())

    @classmethod
    def hang(cls) -> Answer:
        """Never answer; the connection is dropped when the server stops."""
        return cls("hang")

    @classmethod
    def drop(cls, *, taken: bool = False) -> Answer:
        """Close the connection without sending a response. ``taken``: the provider had taken the
        message (it shows in the session's transcript), as when a connection drops after the work."""
        return cls("drop", taken=taken)

    @classmethod
    def trickle(cls, interval: float = 0.5, size: int = 24, then: Answer | None = None) -> Answer:
        """Send the status line and headers at once, then the body of ``then`` (default delivered; its
        JSON padded with leading spaces to ``size`` bytes, still the same JSON) one byte every
        ``interval`` seconds: about ``size * interval`` seconds in all, each read well inside a
        per-read timeout. Cut short when the client goes away or the server stops; the request's
        :attr:`ReceivedRequest.ended_at` says when, :attr:`ReceivedRequest.bytes_sent` how far it got,
        and ``status`` is set only once the whole body was sent."""
        return cls("trickle", seconds=interval, size=size, then=then or cls.delivered())


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return f"HTTP {code}"


@dataclass(slots=True)
class ReceivedRequest:
    """One request the fake received. ``headers`` keys are lower-cased."""

    method: str
    path: str  # percent-decoded, without query
    raw_path: str  # as sent on the request line (percent-encoded, with query if any)
    session_id: str | None  # decoded; None when the path matched no route
    headers: dict[str, str]
    json: Any  # decoded body, None if absent or not JSON
    text: str | None  # the message field (Devin/Agen ``message``, Feather ``content``)
    client_id: str | None  # Agen's ``client_id``; None elsewhere
    received_at: float  # time.monotonic()
    valid: bool = False  # spec-valid
    authorized: bool = False  # spec-valid and carrying the right key
    answer: Answer | None = None  # the answer chosen for it (after auth)
    status: int | None = None  # the status sent; None if not (yet) answered, hung or dropped
    ended_at: float | None = None  # trickle: time.monotonic() when the answer ended (whole or cut)
    bytes_sent: int = 0  # trickle: body bytes written
    event_id: str | None = None  # the session item the message became, when the fake took it


class FakeProvider:
    """One provider's send-message endpoint on ``http://127.0.0.1:<port>``."""

    def __init__(self, name: ProviderName, api_key: str) -> None:
        if name not in PROVIDER_OPERATIONS:
            raise ValueError(f"unknown provider {name!r}")
        self.name: ProviderName = name
        self.api_key = api_key
        self.operation = PROVIDER_OPERATIONS[name]
        self.validator = SpecValidator.for_provider(name)
        params = re.findall(r"\{([^{}/]+)\}", self.operation.path_template)
        assert len(params) == 1, f"expected one path parameter in {self.operation.path_template}"
        self._session_param: str = params[0]
        self.requests: list[ReceivedRequest] = []
        self.violations: list[str] = []
        self.fake_errors: list[str] = []  # bodies the fake itself would have sent against the spec
        self.default: Answer = Answer.delivered()
        self.answers_by_session: dict[str, Answer] = {}
        self._script: deque[Answer] = deque()
        self._session_scripts: dict[str, deque[Answer]] = {}
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._port: int | None = None
        self.sessions: dict[str, FakeSession] = {}
        #: True: a read of a session the fake was never told of (by :meth:`session`, or a message
        #: sent to it) is answered 404 ``{"detail": "Not Found"}``, as a provider answers an id that
        #: does not exist. False (the default): such a session exists, empty.
        self.only_known_sessions = False
        self.reads: list[ReceivedRequest] = []  # read-session requests, in order
        self._read_script: deque[Answer] = deque()
        self._read_scripts: dict[str, deque[Answer]] = {}
        self.read_validator: SpecValidator | None = (
            SpecValidator.for_reading(name) if name in PROVIDER_READ_OPERATIONS else None
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        if self._port is None:
            raise RuntimeError(f"fake {self.name} is not started")
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError(f"fake {self.name} already started")
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host_port = runner.addresses[0]
            self._port = int(host_port[1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving. Hung and slow answers are cut short (their connections dropped).

        Raises AssertionError if the fake was ever asked to send a body its spec forbids.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            self._stopping.set()
            await runner.cleanup()
        if self.fake_errors:
            raise AssertionError(f"fake {self.name} would have violated its spec: {self.fake_errors}")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- scripting -----------------------------------------------------------------------------

    def script(self, *answers: Answer, session_id: str | None = None) -> None:
        """Queue answers, consumed one per accepted request (FIFO).

        With ``session_id`` the answers are only used for that session. Choice order per request:
        that session's queue, then ``answers_by_session[session_id]``, then the shared queue, then
        :attr:`default`.
        """
        for answer in answers:
            self._check_answer(answer)
        if session_id is None:
            self._script.extend(answers)
        else:
            self._session_scripts.setdefault(session_id, deque()).extend(answers)

    def set_default(self, answer: Answer) -> None:
        self._check_answer(answer)
        self.default = answer

    def pending_answers(self) -> int:
        """How many scripted answers have not been used yet."""
        return len(self._script) + sum(len(q) for q in self._session_scripts.values())

    def _next_answer(self, session_id: str) -> Answer:
        queue = self._session_scripts.get(session_id)
        if queue:
            return queue.popleft()
        if session_id in self.answers_by_session:
            return self.answers_by_session[session_id]
        if self._script:
            return self._script.popleft()
        return self.default

    def _check_answer(self, answer: Answer) -> None:
        """Refuse, up front, answers the provider's spec says it cannot give."""
        if answer.kind == "not_running" and self.name != "devin":
            raise ValueError("Answer.not_running() is Devin-only (200 {'detail': ...})")
        if answer.kind == "slow":
            assert answer.then is not None
            self._check_answer(answer.then)
        elif answer.kind == "trickle":
            then = answer.then
            assert then is not None
            if then.kind not in ("delivered", "not_running", "rejected", "status") or isinstance(
                then.body, bytes
            ):
                raise ValueError(
                    "Answer.trickle() sends a JSON answer: delivered, not_running, rejected, status"
                )
            self._check_answer(then)
        elif answer.kind in ("not_running", "rejected", "status") and not isinstance(answer.body, bytes):
            problems = self._response_problems(answer.code, answer.body)
            if problems:
                raise AssertionError(f"{self.name} spec forbids answering {answer}: {problems}")

    def _response_problems(self, status: int, body: object) -> list[str]:
        # `default` (agen.yaml) describes success bodies only; error bodies are checked against
        # explicitly declared codes.
        return self.validator.validate_response(status, body, use_default=200 <= status < 300)

    # -- sessions (read-session) ---------------------------------------------------------------

    def session(self, session_id: str) -> FakeSession:
        """The scripted session ``session_id`` (created empty, working, on first use)."""
        if session_id not in self.sessions:
            self.sessions[session_id] = FakeSession(self.name, session_id)
        return self.sessions[session_id]

    def script_reads(self, *answers: Answer, session_id: str | None = None) -> None:
        """Queue answers to read-session requests, one per request (per session first, then shared,
        then the session's transcript). ``Answer.delivered()`` serves the transcript; ``status``,
        ``slow``, ``hang`` and ``drop`` work as for sends (error bodies as the fake sends them)."""
        for answer in answers:
            if answer.kind not in ("delivered", "status", "slow", "hang", "drop"):
                raise ValueError(f"a read cannot be answered {answer.kind}")
        if session_id is None:
            self._read_script.extend(answers)
        else:
            self._read_scripts.setdefault(session_id, deque()).extend(answers)

    def reads_of(self, session_id: str) -> list[ReceivedRequest]:
        return [r for r in self.reads if r.session_id == session_id and r.authorized]

    async def _handle_read(
        self,
        request: web.Request,
        raw_path: str,
        headers: dict[str, str],
        body: bytes,
        params: dict[str, str],
    ) -> web.StreamResponse:
        validator = self.read_validator
        assert validator is not None
        op = PROVIDER_READ_OPERATIONS[self.name]
        session_id = params.get(re.findall(r"\{([^{}/]+)\}", op.path_template)[0])
        record = ReceivedRequest(
            method=request.method,
            path=request.path,
            raw_path=raw_path,
            session_id=session_id,
            headers=headers,
            json=None,
            text=None,
            client_id=None,
            received_at=time.monotonic(),
        )
        self.reads.append(record)
        problems = validator.check(request.method, raw_path, headers, body)
        if problems:
            self.violations.append(f"{request.method} {raw_path}: " + "; ".join(map(str, problems)))
            return self._json(record, 422, {"detail": [p.as_fastapi() for p in problems]})
        record.valid = True
        if validator.credentials(headers) != self.api_key:
            return self._json(record, 401, {"detail": "Invalid API key"})
        record.authorized = True
        assert session_id is not None
        if self.only_known_sessions and session_id not in self.sessions:
            return self._json(record, 404, {"detail": "Not Found"})
        queue = self._read_scripts.get(session_id)
        answer = queue.popleft() if queue else (self._read_script.popleft() if self._read_script else None)
        record.answer = answer or Answer.delivered()
        return await self._answer_read(request, record, record.answer)

    async def _waited(self, seconds: float) -> bool:
        """Wait ``seconds`` (a slow answer); False when the fake is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    async def _answer_read(
        self, request: web.Request, record: ReceivedRequest, answer: Answer
    ) -> web.StreamResponse:
        if answer.kind == "slow":
            if not await self._waited(answer.seconds):
                return self._drop(request)
            assert answer.then is not None
            return await self._answer_read(request, record, answer.then)
        if answer.kind != "delivered":
            return await self._answer(request, record, answer)
        assert record.session_id is not None
        session = self.session(record.session_id)
        checked, served = session.body()
        assert self.read_validator is not None
        problems = self.read_validator.validate_response(200, checked)
        if problems:
            self.fake_errors.append(f"read {record.session_id}: {problems}")
            return self._json(record, 500, {"detail": "fake would violate its read spec"})
        record.status = 200
        session.served += 1
        return web.Response(status=200, body=json.dumps(served).encode(), content_type="application/json")

    # -- queries -------------------------------------------------------------------------------

    def messages(self, session_id: str | None = None) -> list[str]:
        """Texts of the spec-valid, authorized requests (whatever they were answered), in order."""
        return [
            r.text
            for r in self.requests
            if r.authorized and r.text is not None and (session_id is None or r.session_id == session_id)
        ]

    def delivered_messages(self, session_id: str | None = None) -> list[str]:
        """Texts the fake actually answered as delivered, in order."""
        return [
            r.text
            for r in self.requests
            if r.status is not None
            and r.answer is not None
            and _final(r.answer).kind == "delivered"
            and r.text is not None
            and (session_id is None or r.session_id == session_id)
        ]

    def assert_no_violations(self) -> None:
        assert not self.violations, f"requests to fake {self.name} broke its spec: {self.violations}"

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await eventually(
            predicate,
            timeout,
            message=lambda: f"fake {self.name} received {self._summary()}",
        )

    def _summary(self) -> list[tuple[str | None, str | None, int | None]]:
        return [(r.session_id, r.text, r.status) for r in self.requests]

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:  # noqa: ASYNC109
        await self.wait_for(lambda: len(self.requests) >= count, timeout)
        return self.requests

    # -- serving -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_path = request.raw_path
        headers = {k.lower(): v for k, v in request.headers.items()}
        params = self.validator.match(raw_path)
        document: Any = None
        with contextlib.suppress(ValueError):
            document = json.loads(body) if body else None
        fields: Mapping[str, Any] = document if isinstance(document, dict) else {}
        text = fields.get(self.operation.text_field)
        client_id = fields.get("client_id") if self.name == "agen" else None
        read_params = self.read_validator.match(raw_path) if self.read_validator is not None else None
        if params is None and read_params is not None and request.method.upper() == "GET":
            return await self._handle_read(request, raw_path, headers, body, read_params)
        record = ReceivedRequest(
            method=request.method,
            path=request.path,
            raw_path=raw_path,
            session_id=params.get(self._session_param) if params else None,
            headers=headers,
            json=document,
            text=text if isinstance(text, str) else None,
            client_id=client_id if isinstance(client_id, str) else None,
            received_at=time.monotonic(),
        )
        self.requests.append(record)
        where = f"{request.method} {raw_path}"
        if params is None:
            self.violations.append(f"{where}: no such route in {self.validator.spec_file.name}")
            return self._json(record, 404, {"detail": "Not Found"})
        if request.method.upper() != self.validator.method:
            self.violations.append(f"{where}: method not allowed (spec: {self.validator.method})")
            return self._json(record, 405, {"detail": "Method Not Allowed"})
        problems = self.validator.check(request.method, raw_path, headers, body)
        if problems:
            self.violations.append(f"{where}: " + "; ".join(map(str, problems)))
            return self._json(record, 422, {"detail": [p.as_fastapi() for p in problems]})
        record.valid = True
        if self.validator.credentials(headers) != self.api_key:
            return self._json(record, 401, {"detail": "Invalid API key"})
        record.authorized = True
        assert record.session_id is not None
        answer = self._next_answer(record.session_id)
        record.answer = answer
        if record.text is not None and (answer.taken or _final(answer).kind == "delivered"):
            record.event_id = self.session(record.session_id).took(record.text, record.client_id)
        return await self._answer(request, record, answer)

    async def _answer(
        self, request: web.Request, record: ReceivedRequest, answer: Answer
    ) -> web.StreamResponse:
        if answer.kind == "slow":
            if not await self._waited(answer.seconds):
                return self._drop(request)
            assert answer.then is not None
            return await self._answer(request, record, answer.then)
        if answer.kind == "hang":
            await self._stopping.wait()
            return self._drop(request)
        if answer.kind == "drop":
            return self._drop(request)
        if answer.kind == "trickle":
            return await self._trickle(request, record, answer)
        if answer.kind == "delivered":
            return self._json(record, 200, self._delivered_body(record))
        if answer.kind == "not_running" and self.name != "devin":
            self.fake_errors.append("Answer.not_running() is Devin-only")
            return self._json(record, 500, {"detail": "fake misuse: not_running is Devin-only"})
        if isinstance(answer.body, bytes):
            record.status = answer.code
            return web.Response(status=answer.code, body=answer.body, headers=dict(answer.headers))
        return self._json(record, answer.code, answer.body, answer.headers)

    async def _trickle(
        self, request: web.Request, record: ReceivedRequest, answer: Answer
    ) -> web.StreamResponse:
        then = answer.then
        assert then is not None
        if then.kind == "delivered":
            status, body = 200, self._delivered_body(record)
        else:
            status, body = then.code, then.body
        problems = self._response_problems(status, body)
        if problems:
            self.fake_errors.append(f"trickle {status} {body!r}: {problems}")
            return self._json(record, 500, {"detail": f"fake {self.name} would violate its spec: {problems}"})
        payload = json.dumps(body).encode()
        payload = b" " * max(0, answer.size - len(payload)) + payload
        headers = {"Content-Type": "application/json", **dict(then.headers)}
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(payload)
        try:
            await response.prepare(request)
            for i in range(len(payload)):
                waited = await self._waited(answer.seconds)
                transport = request.transport
                if not waited or transport is None or transport.is_closing():
                    return self._drop(request)
                await response.write(payload[i : i + 1])
                record.bytes_sent += 1
            await response.write_eof()
        except ConnectionResetError:  # the client went away between two checks
            return response
        finally:
            record.ended_at = time.monotonic()
        record.status = status
        return response

    def _delivered_body(self, record: ReceivedRequest) -> object:
        if self.name == "devin":
            return None
        if self.name == "feather":
            return {}
        now = _now()
        return {
            "id": record.event_id or str(uuid.uuid4()),
            "session_id": record.session_id,
            "type": "user_message",
            "payload": {"type": "user_message", "message": record.text},
            "status": "completed",
            "client_id": record.client_id,
            "session_goal_id": None,
            "session_task_id": None,
            "created_at": now,
            "updated_at": now,
        }

    def _json(
        self,
        record: ReceivedRequest,
        status: int,
        body: object,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        problems = self._response_problems(status, body)
        if problems:
            self.fake_errors.append(f"{status} {body!r}: {problems}")
            status, body = 500, {"detail": f"fake {self.name} would violate its spec: {problems}"}
        record.status = status
        out = dict(headers or {})
        if not any(k.lower() == "content-type" for k in out):
            out["Content-Type"] = "application/json"
        return web.Response(status=status, body=json.dumps(body).encode(), headers=out)

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection without a response."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError  # nothing more to write; aiohttp ends the handler quietly


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _final(answer: Answer) -> Answer:
    while answer.kind in ("slow", "trickle") and answer.then is not None:
        answer = answer.then
    return answer


class FakeSession:
    """One session as the provider would show it, scripted by a test.

    Items are kept in the provider's own JSON shape, in order. ``state`` is the provider's word
    (Devin ``status_enum``, Feather ``status``); Agen has none (its state comes from its events).
    ``on_message`` is called with the text of every message the fake takes, so a test can make the
    agent answer.
    """

    def __init__(self, provider: ProviderName, session_id: str) -> None:
        self.provider = provider
        self.session_id = session_id
        self.items: list[dict[str, Any]] = []
        self.off_spec: set[int] = set()  # ids of items the spec does not allow (served, not checked)
        self.state: str | None = {"devin": "working", "feather": "active"}.get(provider)
        self.title: str | None = None
        self.pr_url: str | None = None
        self.cost_usd: float | None = None
        self.on_message: Callable[[str], None] | None = None
        self.served = 0  # transcripts served
        self._seq = 0
        self._created = _now()

    # -- what happens in the session ------------------------------------------------------------

    def say(self, text: str, *, done: bool = True) -> str:
        """The agent says ``text``; returns the item's key. Agen: ``done=False`` leaves the event
        ``processing`` (finish it with :meth:`complete`)."""
        if self.provider == "devin":
            return self._add({"type": "devin_message", "message": text, "origin": None})
        if self.provider == "feather":
            return self._add({"role": "assistant", "content": [{"type": "text", "text": text}]})
        return self._add(
            {
                "type": "agent_message",
                "payload": {"message": text},
                "status": "completed" if done else "processing",
            }
        )

    def ask(self, text: str) -> str:
        """The agent asks a person: Agen ``agent_ask_user``; Devin says it and is ``blocked``;
        Feather says it and waits."""
        if self.provider == "agen":
            return self._add({"type": "agent_ask_user", "payload": {"message": text}, "status": "completed"})
        key = self.say(text)
        self.state = "blocked" if self.provider == "devin" else "waiting"
        return key

    def user(self, text: str, *, origin: str | None = "web", author: str | None = None) -> str:
        """Someone sends ``text`` to the session from elsewhere (the provider's web app)."""
        if self.provider == "devin":
            return self._add({"type": "user_message", "message": text, "origin": origin, "username": author})
        if self.provider == "feather":
            return self._add({"role": "user", "content": [{"type": "text", "text": text}]})
        return self._add(
            {
                "type": "user_message",
                "payload": {"type": "user_message", "message": text},
                "status": "completed",
            }
        )

    def took(self, text: str, client_id: str | None) -> str:
        """A message the fake took through send-message: it shows as a user message (ours)."""
        if self.provider == "agen":
            key = self._add(
                {
                    "type": "user_message",
                    "payload": {"type": "user_message", "message": text},
                    "status": "completed",
                    "client_id": client_id,
                }
            )
        else:
            key = self.user(text, origin="api")
        if self.state in ("blocked", "waiting", "finished", "completed"):
            self.state = "working" if self.provider == "devin" else "active"
        if self.on_message is not None:
            self.on_message(text)
        return key

    def complete(self, key: str, text: str | None = None) -> None:
        """Agen: the event ``key`` is completed (with new text, if given)."""
        for item in self.items:
            if self._key(item) == key:
                item["status"] = "completed"
                item["updated_at"] = _now()
                if text is not None:
                    item["payload"] = {**item["payload"], "message": text}

    def finish(self, *, pr_url: str | None = None) -> None:
        """The session finished (Devin ``finished``, Feather ``completed``, Agen ``session_finished``)."""
        self.pr_url = pr_url or self.pr_url
        if self.provider == "agen":
            self._add({"type": "session_finished", "payload": {}, "status": "completed"})
        else:
            self.state = "finished" if self.provider == "devin" else "completed"

    def set_state(self, word: str) -> None:
        """Devin ``status_enum`` / Feather ``status``, as the provider spells it."""
        self.state = word

    def odd(self, item: dict[str, Any], *, off_spec: bool = False) -> None:
        """An item as given (unknown type, fields missing or extra). ``off_spec``: the spec does not
        allow it (it is served but not checked against the spec)."""
        self.items.append(item)
        if off_spec:
            self.off_spec.add(id(item))

    # -- serving --------------------------------------------------------------------------------

    def _key(self, item: dict[str, Any]) -> Any:
        return item.get("event_id") if self.provider == "devin" else item.get("id")

    def _add(self, fields: dict[str, Any]) -> str:
        self._seq += 1
        now = _now()
        if self.provider == "devin":
            item: dict[str, Any] = {
                "event_id": f"evt-{self._seq:04d}-{uuid.uuid4().hex[:6]}",
                "timestamp": now,
            }
        elif self.provider == "feather":
            item = {"id": str(uuid.uuid4()), "seq": self._seq, "created_at": now}
        else:
            item = {
                "id": f"ev_{self._seq:04d}_{uuid.uuid4().hex[:6]}",
                "session_id": self.session_id,
                "client_id": None,
                "session_goal_id": None,
                "session_task_id": None,
                "created_at": now,
                "updated_at": now,
            }
        item.update(fields)
        self.items.append(item)
        return str(self._key(item))

    def body(self) -> tuple[Any, Any]:
        """The read answer without the off-spec items (to check) and with them (to serve)."""
        checked = [item for item in self.items if id(item) not in self.off_spec]
        return self._render(checked), self._render(self.items)

    def _render(self, items: list[dict[str, Any]]) -> Any:
        now = _now()
        if self.provider == "devin":
            return {
                "session_id": self.session_id,
                "status": "running" if self.state not in ("finished", "expired") else "stopped",
                "status_enum": self.state,
                "title": self.title,
                "created_at": self._created,
                "updated_at": now,
                "pull_request": {"url": self.pr_url} if self.pr_url else None,
                "tags": [],
                "messages": items,
            }
        if self.provider == "feather":
            return {
                "id": self.session_id,
                "title": self.title,
                "status": self.state or "active",
                "created_at": self._created,
                "updated_at": now,
                "usage": None
                if self.cost_usd is None
                else {"input_tokens": 10, "output_tokens": 20, "cost_usd": self.cost_usd},
                "messages": items,
            }
        return items
