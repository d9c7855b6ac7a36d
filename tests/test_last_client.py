"""What a stack keeps of its latest client for its next start: the handshake, and nothing of the client's own."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from mcpmux.router.core import last_client
from mcpmux.router.core.contexts import ClientContext

PARAMS = {"protocolVersion": "2025-11-25", "capabilities": {"roots": {"listChanged": True}, "sampling": {}},
          "clientInfo": {"name": "claude-code", "version": "2.1.197"}}


def test_the_handshake_is_kept_without_the_clients_directory_roots_or_variables(tmp_path: Path) -> None:
    context = ClientContext.of(PARAMS, "/home/me/project", {"API_KEY": "sk-secret"})
    context = context.with_roots([{"uri": "file:///home/me/project"}])
    path = tmp_path / "last-client.json"

    last_client.save(path, context)
    text = path.read_text()
    loaded = last_client.load(path)

    assert loaded == ClientContext.of(PARAMS)
    assert loaded is not None and loaded.supports("sampling")
    assert "sk-secret" not in text and "API_KEY" not in text and "/home/me" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_stateless_era_is_kept_as_such(tmp_path: Path) -> None:
    path = tmp_path / "last-client.json"
    last_client.save(path, ClientContext.stateless("/somewhere", {"TOKEN": "t"}))

    assert last_client.load(path) == ClientContext.stateless()


def test_a_missing_or_unreadable_file_is_no_hint(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"capabilities": 3}))

    assert last_client.load(tmp_path / "absent.json") is None
    assert last_client.load(garbage) is None
    assert last_client.load(wrong) is None
