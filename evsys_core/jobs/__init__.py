"""Jobs: training runs and score runs started as detached processes, followed and stopped
through their run directories. `engine.Engine` is the one implementation; `cli` gives it the
`evsys launch | status | wait | cancel | logs` commands and the MCP server gives it tools."""
