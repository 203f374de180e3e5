"""`python -m mcp_gate`: the same as the `mcp-gate` command."""

from mcp_gate.cli import main

main()
