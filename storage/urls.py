"""Database URLs: their scheme, and a form safe to show (no password)."""

from __future__ import annotations

import re

# Two characters at least, so that a Windows drive letter ("C:\\relay.db") is not taken for a scheme.
SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):(?P<rest>.*)$", re.DOTALL)


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced by ``***@``, safe to show in a message."""
    match = SCHEME.match(url)
    head, rest = (match["scheme"] + ":", match["rest"]) if match else ("", url)
    if "@" in rest:
        slashes = "//" if rest.startswith("//") else ""
        rest = f"{slashes}***@{rest.rsplit('@', 1)[1]}"
    return head + rest
