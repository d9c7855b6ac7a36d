"""Where a new instance starts (router/core/placement.py): on the host with the fewest, so one host's loss
takes few; among equals the roomiest, then the core's own host."""

from __future__ import annotations

from collections import Counter

from mcpmux.router.core.placement import choose_slot


def test_a_new_instance_goes_to_the_host_with_the_fewest() -> None:
    free = {"": ["shim:shim_01"], "east": ["east/shim:shim_01"], "west": ["west/shim:shim_00", "west/shim:shim_01"]}
    assert choose_slot(free, Counter({"": 1, "east": 1})) == "west/shim:shim_00"


def test_among_equals_the_roomiest_then_the_cores_own_host() -> None:
    free = {"": ["shim:shim_00"], "east": ["east/shim:shim_00", "east/shim:shim_01"]}
    assert choose_slot(free, Counter()) == "east/shim:shim_00"
    assert choose_slot({"": ["shim:shim_00"], "east": ["east/shim:shim_00"]}, Counter()) == "shim:shim_00"


def test_no_free_slot_anywhere_starts_nothing() -> None:
    assert choose_slot({"": [], "east": []}, Counter({"east": 2})) is None
