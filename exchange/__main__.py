"""``python -m exchange`` runs the onceonly CLI."""

from exchange.cli import main

main()
