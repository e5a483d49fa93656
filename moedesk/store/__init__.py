"""The SQLite run store: schema, migrations, the writer paths and the read-only reader.

Every SQL statement of moedesk lives in this package. Writers: `connect_writer`
(+ `runs`, `ingest`); readers: `Reader` over a `mode=ro` connection (`open_reader(home)`).
"""

from moedesk.store.db import StoreError, connect_reader, connect_writer, transaction
from moedesk.store.reads import Reader, RunInfo, effective_status, open_reader, process_alive

__all__ = ["StoreError", "connect_reader", "connect_writer", "transaction", "Reader", "RunInfo",
           "effective_status", "open_reader", "process_alive"]
