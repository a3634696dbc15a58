"""The storage tests use the PostgreSQL fixtures of tests/conftest.py."""
