"""The instance shim: one per instance, started by supervisord; wraps one MCP server process."""
