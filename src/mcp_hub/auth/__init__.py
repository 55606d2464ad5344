"""Token verification, identity mapping and upstream credentials."""
