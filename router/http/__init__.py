"""The stack's Streamable HTTP endpoint (`mcpmux-router --serve-http`): MCP sessions of remote clients as
sessions of the pool."""
