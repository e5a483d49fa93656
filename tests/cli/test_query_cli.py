"""`moedesk query` is read-only for real: one test per statement class, each checking the
clear message, exit code 2 and that no file appeared anywhere (home or working folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.profiles import profile_to_dict, validate_data
from moedesk.store import connect_writer
from moedesk.store import runs as store_runs
from moedesk.store.query import QueryGuard, QueryInterrupted, run_guarded
from tests.conftest import REPO, wait_for

runner = CliRunner()
RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A home with two runs (one named like markup); the working folder is tmp_path, so a
    relative ATTACH target would land there."""
    home = tmp_path / "home"
    db = connect_writer(home / "moedesk.db")
    config = profile_to_dict(validate_data({"name": "t", "kind": "dense", "seed": 1}))
    store_runs.create_run(db.conn, config=config, profile_path="p.toml", home=home)
    store_runs.create_run(db.conn, config=config, profile_path="p.toml", home=home, name="[/]")
    db.close()
    monkeypatch.chdir(tmp_path)
    query(home, "SELECT 1")  # SQLite's own -wal/-shm sidecars exist from here on
    return home


def files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def query(home, sql, *extra):
    return runner.invoke(app, ["query", sql, "--home", str(home), *extra])


def refused(store, sql: str, message: str, *extra) -> None:
    root = store.parent
    before = files(root)
    result = query(store, sql, *extra)
    assert result.exit_code == 2, (sql, result.output)
    assert message in result.output, (sql, result.output)
    assert "Traceback" not in result.output
    assert files(root) == before, f"{sql!r} created {files(root) - before}"


@pytest.mark.slow
def test_writes_are_refused(store):
    for sql, what in (("DELETE FROM runs", "DELETE"), ("UPDATE runs SET name = 'x'", "UPDATE"),
                      ("INSERT INTO runs (name) VALUES ('x')", "INSERT"),
                      ("WITH a AS (SELECT 1) DELETE FROM runs", "DELETE"),
                      ("DROP TABLE metrics", "DROP TABLE"),
                      ("CREATE TEMP TABLE x (a)", "CREATE TEMP TABLE"),
                      ("CREATE INDEX i ON runs(kind)", "CREATE INDEX"),
                      ("ALTER TABLE runs ADD COLUMN z", "ALTER TABLE"), ("REINDEX", "REINDEX"),
                      ("ANALYZE", "ANALYZE")):
        refused(store, sql, f"moedesk query is read-only: {what} is refused")
    assert query(store, "SELECT count(*) FROM runs").output.splitlines()[-1].strip() == "2"


@pytest.mark.slow
def test_attach_and_detach_are_refused_and_create_no_file(store):
    refused(store, "ATTACH DATABASE './evil.db' AS evil", "ATTACH is refused")
    refused(store, f"ATTACH DATABASE '{store / 'evil.db'}' AS evil", "ATTACH is refused")
    refused(store, "DETACH DATABASE main", "DETACH is refused")


@pytest.mark.slow
def test_vacuum_and_vacuum_into_are_refused_and_create_no_file(store):
    refused(store, "VACUUM", "VACUUM is refused")
    refused(store, "VACUUM INTO './copy.db'", "VACUUM is refused")
    refused(store, "vacuum main into 'copy2.db'", "VACUUM is refused")


@pytest.mark.slow
def test_pragmas_that_set_something_are_refused(store):
    for sql, shown in (("PRAGMA writable_schema=ON", "PRAGMA writable_schema = ON"),
                       ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode = DELETE"),
                       ("PRAGMA query_only = 0", "PRAGMA query_only = 0"),
                       ("PRAGMA user_version = 7", "PRAGMA user_version = 7"),
                       ("PRAGMA wal_checkpoint", "PRAGMA wal_checkpoint"),
                       ("PRAGMA optimize", "PRAGMA optimize")):
        refused(store, sql, f"{shown} is refused: moedesk query only reads pragmas")
    # reading pragmas still work
    for sql, want in (("PRAGMA table_info(runs)", "config_json"), ("PRAGMA user_version", "0"),
                      ("PRAGMA journal_mode", "wal"),
                      ("SELECT name FROM pragma_table_info('alerts')", "cleared_step")):
        result = query(store, sql)
        assert result.exit_code == 0 and want in result.output, (sql, result.output)


def test_functions_that_touch_files_or_load_code_are_refused(store):
    refused(store, "SELECT load_extension('/tmp/x.so')", "load_extension() is refused")
    refused(store, "SELECT fts3_tokenizer('simple')", "fts3_tokenizer() is refused")


@pytest.mark.slow
def test_transactions_and_several_statements_are_refused(store):
    refused(store, "BEGIN", "BEGIN is refused")
    refused(store, "SAVEPOINT a", "SAVEPOINT is refused")
    refused(store, "SELECT 1; DELETE FROM runs", "one statement at a time")


@pytest.mark.slow
def test_huge_values_fail_at_once_instead_of_exhausting_memory(store):
    started = time.perf_counter()
    for sql in ("SELECT randomblob(1e9)", "SELECT zeroblob(200000000)",
                "SELECT length(hex(randomblob(20000000)))"):
        refused(store, sql, "exceeds moedesk query's limit of 16 MiB")
    assert time.perf_counter() - started < 10  # nothing was allocated and filled


@pytest.mark.slow
def test_a_query_over_the_heap_limit_is_a_clear_error(store):
    # SQLite's hard heap limit is process-wide and one-way: measure it in a process of its own
    code = f"""
import sys
from moedesk.store.query import run_query
from moedesk.store import StoreError
big = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000)"
       " SELECT x, hex(randomblob(64)) FROM c ORDER BY 2")
assert run_query({str(store)!r}, big, limit=1).rows  # fits in the default limit
try:
    run_query({str(store)!r}, big, limit=1, heap_limit=8 * 2**20)
except StoreError as exc:
    print(exc)
"""
    before = files(store.parent)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "needs more memory than moedesk query allows (8 MiB)" in result.stdout
    assert files(store.parent) == before  # the sort stayed in memory: no temp file


@pytest.mark.slow
def test_limit_out_of_range_is_a_clear_error(store):
    for value in ("0", "-3", "1000001"):
        refused(store, "SELECT 1", f"--limit: got {int(value)}; must be between 1 and 1,000,000",
                "--limit", value)
    assert query(store, "SELECT 1", "--limit", "1000000").exit_code == 0


def test_a_runaway_query_can_be_cancelled(store):
    from moedesk.store import connect_reader

    conn = connect_reader(store / "moedesk.db")
    guard = QueryGuard()
    threading.Timer(0.3, guard.cancel).start()
    started = time.perf_counter()
    with pytest.raises(QueryInterrupted, match="query interrupted"):
        run_guarded(conn, RUNAWAY, guard=guard)
    assert time.perf_counter() - started < 5
    with pytest.raises(QueryInterrupted, match="time limit"):
        run_guarded(conn, RUNAWAY, timeout_s=0.2)
    # the connection is usable afterwards, with no guard left on it
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()


@pytest.mark.slow
def test_ctrl_c_stops_a_runaway_query_from_the_terminal(store):
    proc = subprocess.Popen([sys.executable, "-m", "moedesk", "query", RUNAWAY, "--home",
                             str(store)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    def has_db_open() -> bool:  # the query is running once the store is open (Linux /proc)
        fds = Path(f"/proc/{proc.pid}/fd")
        try:
            return any(os.readlink(fd).endswith("moedesk.db") for fd in fds.iterdir())
        except OSError:
            return False

    wait_for(has_db_open, timeout=60, what="the query to start")
    time.sleep(0.5)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "query interrupted" in err and "Traceback" not in err


@pytest.mark.slow
def test_values_print_literally_never_as_markup(store):
    for sql, want in (("SELECT '[/b] oops' AS x", "[/b] oops"),
                      ("SELECT '[red]not red[/red]' AS x", "[red]not red[/red]"),
                      ("SELECT name FROM runs WHERE id = 2", "[/]")):
        result = query(store, sql)
        assert result.exit_code == 0, result.output
        assert want in result.output.splitlines()[2:], (sql, result.output)


def test_wide_results_become_records_at_80_columns_and_null_reads_null(store):
    result = runner.invoke(app, ["query", "SELECT * FROM runs", "--home", str(store)],
                           env={"COLUMNS": "80"}, terminal_width=80)
    lines = result.output.splitlines()
    assert result.exit_code == 0
    # piped (CliRunner is not a terminal): one full table row per run, every value whole
    assert len(lines) == 4 and '"name": "t"' in lines[2]
    from moedesk.cli.grid import table_lines

    rows = [(1, "a" * 200, None), (2, "b", 3.5)]
    # at a terminal long values are cut to 40 characters and marked, so this still fits
    fits = list(table_lines(["id", "config_json", "x"], rows, width=80))
    assert fits[2] == " 1  " + "a" * 39 + "…  NULL" and fits[3].endswith("3.5")
    # wider than the terminal: one record per row, nothing past 80 columns
    wide = [(1, "a" * 200, "b" * 50, None)]
    shown = list(table_lines(["id", "config_json", "error", "x"], wide, width=80))
    assert all(len(line) <= 80 for line in shown)
    assert shown[0].startswith("-[ row 1 ]") and "x           | NULL" in shown
    assert any(line.startswith("config_json | aaaa") and line.endswith("…") for line in shown)
    narrow = list(table_lines(["id", "x"], [(1, None), (2, 3.5)], width=80))
    assert narrow[0] == "id     x" and narrow[2] == " 1  NULL" and narrow[3] == " 2   3.5"
