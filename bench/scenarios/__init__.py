"""The scenarios; each module registers its own with ``@scenario``, in the order they are loaded here."""

from __future__ import annotations

import importlib

MODULES = ("overhead", "scaling", "ceiling", "failover", "memory", "published", "coldstart", "dedicated", "fairness",
           "loadstep", "projects", "sampling", "http", "hosts")


def load() -> None:
    for module in MODULES:
        importlib.import_module(f"bench.scenarios.{module}")
