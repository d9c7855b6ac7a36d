"""The core: one process per stack, a supervisord program. It dispatches every session's requests over the
pool of instances (router/core/switchboard.py, sans-I/O) and runs the loop around it (router/core/loop.py)."""
