"""evsys-mcp: the MCP server through which a coding agent drives evsys."""
