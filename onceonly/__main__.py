"""``python -m onceonly`` runs the onceonly CLI."""

from onceonly.cli import main

main()
