"""The published servers from npm that the tests run, as `make node` installs them into tests/node.

A test that needs one is marked `@needs(SERVER)`: without Node.js or the package it is skipped, saying why.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NODE = shutil.which("node")
MODULES = Path(__file__).resolve().parent / "node" / "node_modules" / "@modelcontextprotocol"
EVERYTHING = MODULES / "server-everything/dist/index.js"
FILESYSTEM = MODULES / "server-filesystem/dist/index.js"
THINKING = MODULES / "server-sequential-thinking/dist/index.js"


def needs(script: Path) -> pytest.MarkDecorator:
    package = script.parent.parent.name
    return pytest.mark.skipif(NODE is None or not script.exists(),
                              reason=f"needs Node.js and `make node` ({package} from npm)")
