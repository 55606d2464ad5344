"""Typed models of every config section, loading, `${ENV}` and includes. Imports nothing else of mcp_hub."""

from mcp_hub.config.admin import AdminConfig, AdminKey
from mcp_hub.config.auth import AuthConfig
from mcp_hub.config.env import interpolate
from mcp_hub.config.errors import TRANSPORTS, ConfigError, format_validation_error
from mcp_hub.config.loading import load_config, parse_config
from mcp_hub.config.models import (
    NAME_PATTERN,
    GatewayConfig,
    ListenConfig,
    ServerRoute,
    SseUpstreamConfig,
    StdioUpstreamConfig,
    StreamableHttpUpstreamConfig,
    UpstreamConfig,
)
from mcp_hub.config.openapi import OpenAPIUpstreamConfig
from mcp_hub.config.policy import PolicyConfig

__all__ = [
    "NAME_PATTERN", "TRANSPORTS", "AdminConfig", "AdminKey", "AuthConfig", "ConfigError", "GatewayConfig",
    "ListenConfig", "OpenAPIUpstreamConfig", "PolicyConfig", "ServerRoute", "SseUpstreamConfig",
    "StdioUpstreamConfig", "StreamableHttpUpstreamConfig", "UpstreamConfig", "format_validation_error",
    "interpolate", "load_config", "parse_config",
]
