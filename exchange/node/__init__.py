"""Composition root and HTTP faces of the node and of the central server."""

__all__: list[str] = []
