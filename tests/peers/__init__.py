"""Test peers: real network servers that stand in for external services."""
