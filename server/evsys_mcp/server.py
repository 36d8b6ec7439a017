"""evsys-mcp entry point (the server itself is built in its own issue)."""

import sys


def main() -> int:
    print("evsys-mcp: not built yet", file=sys.stderr)
    return 1
