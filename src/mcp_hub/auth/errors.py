"""Errors the auth package raises. Their messages are safe to show: they never contain a secret."""

from __future__ import annotations


class AuthError(Exception):
    """Base class; `description` is what a client may be told."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class InvalidToken(AuthError):
    """The presented credential was refused (bad signature, expired, wrong audience, revoked...)."""


class AuthServerUnavailable(AuthError):
    """The authorization server could not be asked (down, timing out, answering garbage)."""


class UpstreamCredentialError(AuthError):
    """No credential could be produced for an upstream (missing header, exchange refused...)."""


class CredentialConfigError(AuthError):
    """A credential source named in the config cannot be read (unset env var, missing file)."""
