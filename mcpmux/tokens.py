"""The bearer tokens of a stack's HTTP endpoint: named, stored hashed, revocable.

`tokens.json` in the stack's private directory (0600) maps each token's name to the SHA-256 of its secret
(a secret of 256 random bits needs no slow hash: there is nothing to guess). The secret is shown once, when
the token is made (`mcpmux-monitor tokens create NAME`). The endpoint reads the file again whenever it
changes, so a revoked token is refused from its next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from mcpmux import private_json

PREFIX = "mcpmux_"
FILE = "tokens.json"
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")


class TokenError(ValueError):
    """A token that cannot be made or revoked; the message says why."""


@dataclass(frozen=True)
class Token:
    name: str
    digest: str  # hex SHA-256 of the secret
    created: float  # time.time()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """The tokens in one file; `verify` re-reads it when it changed since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: dict[str, Token] = {}

    def tokens(self) -> list[Token]:
        self._refresh()
        return sorted(self._tokens.values(), key=lambda token: token.created)

    def verify(self, secret: str) -> str | None:
        """The name of the token whose secret this is, or None."""
        self._refresh()
        digest = _digest(secret)
        for token in self._tokens.values():
            if hmac.compare_digest(token.digest, digest):
                return token.name
        return None

    def create(self, name: str) -> str:
        """Make a token; its secret, which is stored nowhere, is returned once."""
        if not name or not set(name) <= NAME_CHARS or len(name) > 64:
            raise TokenError(f"{name!r}: a token's name is 1 to 64 letters, digits or -_.@")
        self._refresh()
        if name in self._tokens:
            raise TokenError(f"a token named {name!r} exists; revoke it first to replace it")
        secret = PREFIX + secrets.token_urlsafe(32)
        self._tokens[name] = Token(name, _digest(secret), time.time())
        self._write()
        return secret

    def revoke(self, name: str) -> None:
        self._refresh()
        if self._tokens.pop(name, None) is None:
            raise TokenError(f"no token named {name!r}")
        self._write()

    def _refresh(self) -> None:
        now = private_json.stamp(self.path)
        if now != self._stamp:
            self._tokens = _tokens(private_json.read(self.path)) if now is not None else {}
            self._stamp = now

    def _write(self) -> None:
        private_json.replace(self.path, {token.name: {"sha256": token.digest, "created": token.created}
                                         for token in self._tokens.values()})
        self._stamp = None


def _tokens(data: object) -> dict[str, Token]:
    """The file's tokens; an entry of the wrong shape is skipped (it can match no secret)."""
    tokens: dict[str, Token] = {}
    for name, entry in data.items() if isinstance(data, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            created = entry.get("created")
            tokens[name] = Token(name, entry["sha256"], created if isinstance(created, int | float) else 0.0)
    return tokens
