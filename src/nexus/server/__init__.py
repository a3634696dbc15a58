"""The HTTP server: REST API, live events (SSE) and the dashboard, with the
session workers running in the same process."""
