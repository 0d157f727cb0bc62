"""Bearer tokens: loaded once at start, checked by every face in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path


class NoTokens(ValueError):
    """Authentication was asked for but no usable token was given: refuse to start."""


def load_tokens(inline: str | None, file: Path | None) -> frozenset[str]:
    """Tokens from a comma-separated string and/or a file (one per line).

    Tokens are taken literally (a `#` inside or at the start of an inline token is part of
    it); in the file, a line whose first non-blank character is `#` is a comment.

    Raises:
        NoTokens: `inline` or `file` was given but holds no token: authentication was
            requested, so running without it would fail open.
    """
    tokens = {t.strip() for t in (inline or "").split(",") if t.strip()}
    if file is not None:
        for line in file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.add(line)
    if not tokens and (inline is not None or file is not None):
        given = " and ".join(
            name
            for name, value in (("--auth-tokens", inline), ("--auth-tokens-file", file))
            if value is not None
        )
        raise NoTokens(
            f"{given} given but holds no token: refusing to start without authentication "
            f"(give at least one non-empty token, or leave both unset to run without auth)"
        )
    return frozenset(tokens)


def authorization_valid(header: str | None, tokens: Sequence[bytes]) -> bool:
    """Whether an `authorization` value is `Bearer <one of tokens>`."""
    if header is None:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode()
    # Compare with every token, in constant time, so timing reveals nothing.
    return any([hmac.compare_digest(given, t) for t in tokens])
