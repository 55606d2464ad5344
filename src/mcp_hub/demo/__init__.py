"""The embedded default: a demo MCP server shipped in the package, served when no config is given."""
