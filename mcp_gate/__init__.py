"""mcp-gate: an MCP server that guards what AI agents do."""

__version__ = "0.1.0"

__all__ = ["__version__"]
