"""The dashboard (placeholder until its pages land)."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages and static files."""
