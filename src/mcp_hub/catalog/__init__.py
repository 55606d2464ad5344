"""Exposed names, collisions, per-route views of the merged catalog, and the one resolver."""
