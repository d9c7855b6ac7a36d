"""supervisord's XML-RPC interface, over the stack's private unix socket.

Calls block: the core makes them from worker threads (router/core/background.py), each thread with its own proxy.
"""

from __future__ import annotations

import json
import threading
import xmlrpc.client
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from mcpmux.stack import StackPaths

SHIM_GROUP = "shim"

# supervisord's fault codes (supervisor/xmlrpc.py Faults)
BAD_NAME = 10
SPAWN_ERROR = 50
ALREADY_STARTED = 60
NOT_RUNNING = 70


def shim_slot(index: int) -> str:
    return f"{SHIM_GROUP}:{SHIM_GROUP}_{index:02d}"


class Supervisor:
    def __init__(self, paths: StackPaths) -> None:
        credentials = json.loads(paths.credentials.read_text())
        self._username = credentials["username"]
        self._password = credentials["password"]
        self._socket_url = f"unix://{paths.supervisor_sock}"
        self._local = threading.local()

    def proxy(self) -> Any:
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            transport = SupervisorTransport(self._username, self._password, self._socket_url)
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            self._local.proxy = proxy
        return proxy

    def state(self) -> str:
        return str(self.proxy().supervisor.getState()["statename"])

    def start_sync(self, name: str) -> bool:
        """Start a process without waiting for it; False if it was running already."""
        try:
            self.proxy().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == ALREADY_STARTED:
                return False
            raise
        return True

    def stop_sync(self, name: str) -> bool:
        try:
            self.proxy().supervisor.stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == NOT_RUNNING:
                return False
            raise
        return True

    def processes(self) -> list[dict[str, Any]]:
        return list(self.proxy().supervisor.getAllProcessInfo())

    def log_tail(self, name: str, length: int = 2000) -> str:
        """The end of a process's log (stderr goes there too): why it would not start."""
        try:
            text, _, _ = self.proxy().supervisor.tailProcessStdoutLog(name, 0, length)
        except (OSError, xmlrpc.client.Fault):
            return ""
        return str(text)

    def shutdown_sync(self) -> None:
        self.proxy().supervisor.shutdown()
