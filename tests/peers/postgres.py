"""A throwaway PostgreSQL 15 cluster for scale-out tests (Debian's binaries).

initdb refuses root, so the cluster belongs to the `postgres` user; it listens on
127.0.0.1 only, with its socket inside the temp folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    """Whether the server binaries are installed (scripts/test installs them)."""
    return (BIN / "initdb").exists() and shutil.which("runuser") is not None


class PostgresServer:
    """initdb + pg_ctl start/stop on a free port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def url(self, db: str = "postgres") -> str:
        """A psycopg URL for database `db`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def _as_postgres(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        """Create and start the cluster."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        self.launch()

    def launch(self) -> None:
        """Start the (created) cluster's server: again after `stop`, on the same port."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c fsync=off"
        )
        self._as_postgres(
            str(BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        """Stop the cluster (fast shutdown)."""
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
