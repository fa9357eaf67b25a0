"""Outcome types: which ones are transient, and that the type guard narrows both ways.

The ``assert_type`` lines are checked by mypy (``scripts/lint`` runs it on the tests): with a
one-way guard (``TypeGuard``) the ``else`` branch would still be every outcome and fail the check.
"""

from __future__ import annotations

from typing import assert_type, get_args

import pytest

from bot.outcomes import (
    Delivered,
    NotFound,
    NotRunning,
    Outcome,
    RateLimited,
    Refused,
    Rejected,
    Unauthorized,
    Unavailable,
    is_transient,
)

EXAMPLES: list[Outcome] = [
    Delivered(),
    NotRunning(detail="Session is suspended"),
    Rejected(),
    Unauthorized(),
    NotFound(),
    RateLimited(retry_after=1.0),
    Unavailable(reason="Devin answered HTTP 503"),
    Refused(reason="too long"),
]


def test_every_outcome_type_has_an_example() -> None:
    assert {type(o) for o in EXAMPLES} == set(get_args(Outcome))


@pytest.mark.parametrize("outcome", EXAMPLES, ids=lambda o: type(o).__name__)
def test_only_rate_limits_and_unavailability_are_transient(outcome: Outcome) -> None:
    if is_transient(outcome):
        assert_type(outcome, RateLimited | Unavailable)
    else:
        assert_type(outcome, Delivered | NotRunning | Rejected | Unauthorized | NotFound | Refused)
    assert is_transient(outcome) == (outcome.kind in ("rate_limited", "unavailable"))
