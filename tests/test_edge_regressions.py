"""Inputs the fuzz tests (tests/test_fuzz_*.py) found to break an edge or the core, each once a crash: a
door or a shim that died (and every call it relayed with it), or an exception the switchboard had to
contain (and the request it failed)."""

from __future__ import annotations

import pytest

from mcpmux import jsonrpc
from mcpmux.router import door
from mcpmux.shim import backend


@pytest.mark.parametrize("line", [
    # Nesting a thousand deep, 2 KB: json.loads raised RecursionError.
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":' + b"[" * 1000 + b"]" * 1000 + b"}}",
    # An integer of more than 4300 digits: json.loads raised ValueError (int_max_str_digits).
    b'{"jsonrpc":"2.0","id":' + b"9" * 4301 + b',"method":"ping"}',
])
def test_a_line_json_cannot_read_is_a_parse_error_for_the_door_and_dropped_by_the_shim(line: bytes) -> None:
    with pytest.raises(jsonrpc.InvalidMessage) as refused:
        door.admit(line)
    assert refused.value.code == jsonrpc.PARSE_ERROR and refused.value.request_id is None
    assert backend._parse(line) is None
