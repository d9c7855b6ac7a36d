"""The sdist, built as a packager would build it (apart from the install tests' group: it needs no wheel)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from tests.wheel import copy_sources


def test_the_sdist_ships_the_package_and_no_part_of_the_suite(tmp_path: Path) -> None:
    source = copy_sources(tmp_path)
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (sdist,) = (tmp_path / "dist").glob("mcpmux-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]

    assert "mcpmux/templates/stack.conf.in" in names and "mcpmux/router/core/switchboard.py" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/"))], "a suite without its conftest"
