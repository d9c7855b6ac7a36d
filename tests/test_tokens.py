"""The HTTP endpoint's bearer tokens (mcpmux/tokens.py): made once, kept hashed, revoked at once."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mcpmux.tokens import PREFIX, TokenError, TokenStore


def test_a_token_is_shown_once_and_kept_only_hashed_in_a_private_file(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    secret = store.create("alice")

    assert secret.startswith(PREFIX) and len(secret) > 40
    assert secret not in store.path.read_text()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.verify(secret) == "alice"
    assert store.verify(secret + "x") is None
    assert [token.name for token in store.tokens()] == ["alice"]


def test_a_revoked_token_is_refused_by_every_reader_of_the_file(tmp_path: Path) -> None:
    maker, endpoint = TokenStore(tmp_path / "tokens.json"), TokenStore(tmp_path / "tokens.json")
    alice, bob = maker.create("alice"), maker.create("bob")
    assert (endpoint.verify(alice), endpoint.verify(bob)) == ("alice", "bob")

    maker.revoke("alice")

    assert (endpoint.verify(alice), endpoint.verify(bob)) == (None, "bob")


@pytest.mark.parametrize("name", ["", "two words", "x" * 65, "semi;colon"])
def test_a_token_name_must_be_printable_in_a_log(tmp_path: Path, name: str) -> None:
    with pytest.raises(TokenError):
        TokenStore(tmp_path / "tokens.json").create(name)


def test_names_are_unique_and_only_known_names_are_revoked(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    store.create("alice")

    with pytest.raises(TokenError, match="exists"):
        store.create("alice")
    with pytest.raises(TokenError, match="no token named"):
        store.revoke("carol")


@pytest.mark.parametrize("text", ["not json", "[]", '{"alice": "plain"}', '{"alice": {"sha256": 7}}'])
def test_a_damaged_file_lets_nobody_in(tmp_path: Path, text: str) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    secret = store.create("alice")
    store.path.write_text(text)

    assert store.verify(secret) is None
    assert store.verify("") is None
