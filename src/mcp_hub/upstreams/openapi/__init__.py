"""The OpenAPI connector: REST APIs described by OpenAPI documents, served as MCP tools.

The gateway needs `OpenAPIUpstreamConfig` (one `openapi:` config entry), `OpenAPIUpstream` (the
upstream) and `inspect_document` (tools and skipped operations of a document, for the CLI).
"""

from mcp_hub.config.openapi import ConfigError, OpenAPIUpstreamConfig, OperationSelector
from mcp_hub.upstreams.openapi.convert import (
    ConvertedDocument,
    OperationBinding,
    SkippedOperation,
    convert_document,
    sanitize_tool_name,
)
from mcp_hub.upstreams.openapi.refs import DocumentError, RefError
from mcp_hub.upstreams.openapi.upstream import (
    OpenAPIUpstream,
    build_openapi_upstream,
    convert_source,
    inspect_document,
)

__all__ = [
    "ConfigError",
    "ConvertedDocument",
    "DocumentError",
    "OpenAPIUpstream",
    "OpenAPIUpstreamConfig",
    "OperationBinding",
    "OperationSelector",
    "RefError",
    "SkippedOperation",
    "build_openapi_upstream",
    "convert_document",
    "convert_source",
    "inspect_document",
    "sanitize_tool_name",
]
