"""Storage: the database behind the journal and the session index.

`Store` is the interface; `SQLiteStore` the embedded implementation. Every SQL
statement of NEXUS lives in the implementation module, so a PostgreSQL store can
sit behind the same interface.
"""

from nexus.storage.base import EventRow, SessionQuery, SessionRow, Store, open_store

__all__ = ["EventRow", "SessionQuery", "SessionRow", "Store", "open_store"]
