"""HTTP client settings shared by every OpenAPI upstream of the process."""

from __future__ import annotations

import functools
import ssl


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One default TLS context for all clients: loading the CA bundle costs ~100 ms of CPU each time."""
    return ssl.create_default_context()
