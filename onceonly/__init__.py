"""The composition root (top floor; nothing imports it).

``onceonly.cli`` is the command line, ``onceonly.wiring`` chooses the implementation behind each
kernel port and builds each component (central server, node), ``onceonly.federation`` provisions
and serves the reference instance on one machine, and ``onceonly.demo`` runs it as the demo.
"""

__all__: list[str] = []
