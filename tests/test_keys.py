"""The CURVE keys of the hosts link (mcpmux/keys.py): the core's pair made once, hosts allowed by name, a host's
secret only in its own key file, revocation seen by every reader of the file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mcpmux.keys import HostKey, KeysError, KeyStore


def test_a_host_key_file_holds_its_pair_and_the_cores_key_and_the_store_only_its_public_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("east")
    key.write(tmp_path / "east.key")

    assert HostKey.read(tmp_path / "east.key") == key
    assert key.core == store.core().public and key.host == "east"
    assert key.secret not in store.path.read_text()
    assert key.public in store.path.read_text()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "east.key").stat().st_mode) == 0o600
    assert store.host_of(key.public) == "east"


def test_the_cores_pair_is_made_once_and_kept(tmp_path: Path) -> None:
    first = KeyStore(tmp_path / "keys.json").core()
    assert KeyStore(tmp_path / "keys.json").core() == first
    assert len(first.public) == len(first.secret) == 40 and first.public != first.secret


def test_a_revoked_host_is_unknown_to_every_reader_of_the_file(tmp_path: Path) -> None:
    maker, core = KeyStore(tmp_path / "keys.json"), KeyStore(tmp_path / "keys.json")
    east, west = maker.create("east"), maker.create("west")
    assert (core.host_of(east.public), core.host_of(west.public)) == ("east", "west")

    maker.revoke("east")

    assert (core.host_of(east.public), core.host_of(west.public)) == (None, "west")
    with pytest.raises(KeysError, match="no host named"):
        maker.revoke("east")


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "two words", "semi;colon"])
def test_a_host_name_cannot_pose_as_another_hosts_routing_id(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeysError):
        KeyStore(tmp_path / "keys.json").create(name)


def test_a_key_file_is_never_overwritten_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.create("east").write(tmp_path / "east.key")
    with pytest.raises(FileExistsError):
        store.create("west").write(tmp_path / "east.key")
    (tmp_path / "bad.key").write_text(json.dumps({"host": "x", "public": "short", "secret": "s", "core": "c"}))
    with pytest.raises(KeysError, match="not a host key file"):
        HostKey.read(tmp_path / "bad.key")


@pytest.mark.parametrize("text", ["not json", "[]", '{"hosts": {"east": "plain"}}', '{"hosts": {"e": {"public": 7}}}'])
def test_a_damaged_file_allows_nobody(tmp_path: Path, text: str) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("east")
    store.path.write_text(text)

    assert store.host_of(key.public) is None


def test_a_key_file_mounted_as_a_symbolic_link_is_read(tmp_path: Path) -> None:
    """A Kubernetes secret's files are symbolic links (pool.key -> ..data/pool.key)."""
    key = KeyStore(tmp_path / "keys.json").create("pool")
    (tmp_path / "..data").mkdir()
    key.write(tmp_path / "..data" / "pool.key")
    (tmp_path / "pool.key").symlink_to(tmp_path / "..data" / "pool.key")

    assert HostKey.read(tmp_path / "pool.key") == key
