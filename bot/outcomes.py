"""Typed outcomes of one provider send-message call.

A provider client never raises for an answer the provider is expected to give: it returns one of
these. Exceptions are for bugs. The relay service decides from the type alone whether to retry
(:func:`is_transient`) or to finish (everything else), and ``bot.render`` turns each one into what the
thread shows. Code that switches over outcomes handles every type and ends with ``assert_never``, so
that a new outcome type is a type error wherever it is not handled yet.

Room for what is coming: ``Delivered.provider_message_id`` carries the provider's id of the message
(Agen's session event id) so that agent replies mirrored back into the thread can be matched to the
message that caused them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from typing_extensions import TypeIs


@dataclass(frozen=True, slots=True)
class Delivered:
    """The provider took the message."""

    kind: ClassVar[str] = "delivered"
    provider_message_id: str | None = None
    status: str | None = None  # Agen: completed, queued, processing, canceled


@dataclass(frozen=True, slots=True)
class NotRunning:
    """The session exists but is not running (Devin: 200 with ``{"detail": ...}``).

    ``detail`` is the provider's own words and is shown to the user unchanged.
    """

    kind: ClassVar[str] = "not_running"
    detail: str


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One item of a 422 ``detail`` list: where (``loc``) and what (``msg``)."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = ""

    @property
    def where(self) -> str:
        """``body.message`` style location, as the provider gave it."""
        return ".".join(str(part) for part in self.loc) or "request"


@dataclass(frozen=True, slots=True)
class Rejected:
    """The provider refused the request as invalid (422, or another 4xx with a reason)."""

    kind: ClassVar[str] = "rejected"
    errors: tuple[ValidationIssue, ...] = ()
    status: int = 422


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """401/403: the API key configured for this provider was refused."""

    kind: ClassVar[str] = "unauthorized"
    status: int = 401


@dataclass(frozen=True, slots=True)
class NotFound:
    """404: the provider does not know this session."""

    kind: ClassVar[str] = "not_found"


@dataclass(frozen=True, slots=True)
class RateLimited:
    """429: try again later; ``retry_after`` in seconds when the provider said."""

    kind: ClassVar[str] = "rate_limited"
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """5xx, timeout or connection failure. ``reason`` is plain words, never an exception dump."""

    kind: ClassVar[str] = "unavailable"
    reason: str = "the provider did not answer"


@dataclass(frozen=True, slots=True)
class Refused:
    """Refused by agent-relay itself before any call (too long, empty, undeliverable)."""

    kind: ClassVar[str] = "refused"
    reason: str = ""


Outcome = Delivered | NotRunning | Rejected | Unauthorized | NotFound | RateLimited | Unavailable | Refused

#: Outcomes that a later attempt may turn into a delivery.
Transient = RateLimited | Unavailable


def is_transient(outcome: Outcome) -> TypeIs[Transient]:
    """True for :data:`Transient` outcomes; narrows to ``Transient`` when true, to the rest when false."""
    return isinstance(outcome, RateLimited | Unavailable)


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The retry budget ran out; ``last`` is the transient outcome of the final attempt."""

    kind: ClassVar[str] = "gave_up"
    last: Transient
    attempts: int = 0
