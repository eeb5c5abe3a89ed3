"""Fixtures of the adapters tests (the shared database fixtures live in tests/conftest.py)."""
