"""Observability: logging now; tracing, cost and metrics as later features land."""
