"""The node ("security server") kernel: identifiers, signed envelopes, the HTTP protocol between
nodes and from departmental systems to their node, the central registry, keys, replay protection
and the CLI. Defines the ports (``exchange.ports``) that the other packages implement."""

__all__: list[str] = []
