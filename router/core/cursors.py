"""Pagination cursors are made by one instance: wrap them with its slot so the next page goes back there."""

from __future__ import annotations

import base64
import json

PREFIX = "mcpmux:"


def wrap(slot: str, cursor: str) -> str:
    token = base64.urlsafe_b64encode(json.dumps([slot, cursor]).encode()).decode()
    return PREFIX + token


def unwrap(cursor: str) -> tuple[str, str] | None:
    """The slot and the instance's own cursor, or None if this is not a cursor mcpmux made."""
    if not cursor.startswith(PREFIX):
        return None
    try:
        slot, inner = json.loads(base64.urlsafe_b64decode(cursor[len(PREFIX):].encode()))
    except (ValueError, TypeError):
        return None
    if not isinstance(slot, str) or not isinstance(inner, str):
        return None
    return slot, inner
