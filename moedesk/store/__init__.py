"""The SQLite run store: schema, migrations, the writer paths and the read-only reader.

Every SQL statement of moedesk lives in this package. Writers: `connect_writer`
(+ `runs`, `ingest`); readers: `Reader` over a `mode=ro` connection (`open_reader(home)`).
"""

from moedesk.store.db import (
    StoreDamaged,
    StoreError,
    StoreMissing,
    connect_reader,
    connect_writer,
    transaction,
)
from moedesk.store.liveness import effective_status, process_alive
from moedesk.store.reads import Reader, RunInfo, open_reader

__all__ = ["StoreError", "StoreMissing", "StoreDamaged", "connect_reader", "connect_writer",
           "transaction", "Reader", "RunInfo", "effective_status", "open_reader",
           "process_alive"]
