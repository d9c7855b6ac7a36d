"""mcpmux's wheel, built as a user's installer would build it: for the install tests and the benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(scratch: Path) -> Path:
    """Build the wheel in `scratch/dist` from a copy of the sources (setuptools' build/ in the checkout can
    hold files deleted since) and return its path."""
    source = scratch / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "node", "*.egg-info", "__pycache__", ".*_cache", "results"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(scratch / "dist"),
                    str(source)], check=True, capture_output=True, cwd=scratch)
    return next((scratch / "dist").glob("mcpmux-*.whl"))
