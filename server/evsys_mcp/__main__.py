"""`python -m evsys_mcp` — the same as the `evsys-mcp` console script."""

import sys

from evsys_mcp.server import main

sys.exit(main())
