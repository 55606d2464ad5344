"""Upstreams: the servers and APIs the gateway stands in front of."""
