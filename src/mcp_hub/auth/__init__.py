"""Token verification, identity mapping and upstream credentials.

Entry point for the app: `GatewayAuth` (see `gateway_auth.py`); the ASGI scope keys it fills are
`CONSUMER_KEY` and `ACCESS_TOKEN_KEY` (see `gate.py`).
"""
