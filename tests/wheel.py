"""mcpmux's wheel, built as a user's installer would build it: for the install tests and the benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def copy_sources(scratch: Path) -> Path:
    """A copy of the sources to build from (setuptools' build/ in the checkout can hold files deleted since)."""
    source = scratch / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "node", "gateways", "*.egg-info", "__pycache__", ".*_cache", "results"))
    return source


def build_wheel(scratch: Path) -> Path:
    """Build the wheel in `scratch/dist` from a copy of the sources and return its path."""
    source = copy_sources(scratch)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(scratch / "dist"),
                    str(source)], check=True, capture_output=True, cwd=scratch)
    return next((scratch / "dist").glob("mcpmux-*.whl"))
