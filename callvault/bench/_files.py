"""A file of rows the database server can read: the input of the raw server-side COPY baselines."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg import sql

from callvault.db import Conn
from callvault.ingest.validate import COLUMNS

COLS = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))


@contextmanager
def rows_file(conn: Conn, source: sql.Identifier) -> Iterator[Path]:
    """Export ``source``'s rows (time-ordered, COPY text format) to a temporary file the server can
    read (the server may run as another OS user); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="callvault-bench-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the server process (another OS user) reads the file
        path = Path(tmp) / "rows.copy"
        query = sql.SQL("COPY (SELECT {} FROM {} ORDER BY started_at) TO STDOUT").format(COLS, source)
        with path.open("wb") as fh, conn.cursor().copy(query) as cp:
            for chunk in cp:
                fh.write(chunk)
        conn.commit()
        path.chmod(0o644)
        yield path
