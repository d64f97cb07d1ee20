"""The results store: one SQLite file holding every table of `suite.store.schema`, and its directory.

One run is saved in one transaction (its `runs` row with its `comm` and `rank_steps` rows), so a
crash mid-sweep loses at most the run in flight. The file uses WAL journaling so a report can
read it while a sweep writes. CSV / Parquet export writes one file per table.

What keeps the store trustworthy when processes crash or meet:
- creation is atomic: the schema is built in a temporary file beside the store and linked into
  place, so a reader, or a crash, sees no file or a complete store, never a file without tables;
- one writer per results directory: `DirectoryLock` (flock on DIR/.lock; the kernel drops it
  when its process dies, so it is never stale) is held by a sweep and by `diffscale fidelity` /
  `project`; a second writer gets StoreBusyError naming the holder;
- a run's files are written to runs/.pending-<run_id> and moved to runs/<run_id> only after its
  row commits (`pending_run_dir`, `place_run_dir`); `recover_run_dirs` settles what a crash
  between the two left, so files on disk never disagree with the rows;
- readers open read-only (`read_only=True`: sqlite's mode=ro, no schema or column writes); a file
  that is not a usable store (empty, not SQLite, damaged, no `runs` table) raises StoreError
  with the path, what is wrong and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import pandas as pd

from suite.store import schema
from suite.store.directory import (  # noqa: F401 - re-exported: the store's errors and directory
    LOCK_FILE,
    PENDING_PREFIX,
    DirectoryLock,
    StoreBusyError,
    StoreError,
    StoreMissingError,
    pending_run_dir,
    place_run_dir,
)

EXPORT_FORMATS = ("csv", "parquet")
RUN_STATUSES = ("ok", "failed", "skipped")

# pandas >= 3 has a NaN-aware string dtype "str"; pandas 2 would turn None into "None" with it.
_TEXT_DTYPE: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object
# Nullable Int64 so a missing INTEGER stays missing instead of turning the column into floats.
_DTYPES: dict[str, Any] = {"TEXT": _TEXT_DTYPE, "INTEGER": "Int64", "REAL": "float64"}
# Seconds a second process waits for the write lock before sqlite gives up.
_LOCK_TIMEOUT_S = 60.0
_SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


@dataclass
class RunRecord:
    """Everything stored for one run; row dicts are keyed by `schema` column names."""

    run: dict[str, Any]
    comm: list[dict[str, Any]] = field(default_factory=list)
    rank_steps: list[dict[str, Any]] = field(default_factory=list)


class DuplicateRunError(RuntimeError):
    """The run_id is already stored with status 'ok'."""


def _sql_value(table: str, column: schema.Column, value: Any) -> Any:
    """Convert `value` to what sqlite stores; unsupported types are left for sqlite to reject."""
    if value is None:
        return None
    # numpy / 0-d torch scalars: sqlite3 cannot bind numpy.int64 and friends.
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()
    if isinstance(value, (dict, list, tuple)) and column.sql_type == "TEXT":
        return json.dumps(value)
    if isinstance(value, Path):
        return str(value)
    if column.sql_type == "INTEGER" and isinstance(value, float):
        if value != value:  # NaN: sqlite would store NULL anyway; say so explicitly
            return None
        if not value.is_integer():
            raise ValueError(
                f"{table}.{column.name} is an INTEGER column; got the non-integer {value!r}."
            )
        return int(value)
    return value


def _check_columns(table: str, keys: Iterable[str]) -> None:
    unknown = sorted(set(keys) - set(schema.column_names(table)))
    if unknown:
        raise ValueError(
            f"Unknown column(s) {unknown} for table '{table}'; "
            f"allowed: {schema.column_names(table)}."
        )


def _check_table(name: str) -> tuple[schema.Column, ...]:
    if name not in schema.TABLES:
        raise ValueError(f"Unknown table '{name}'; allowed: {sorted(schema.TABLES)}.")
    return schema.TABLES[name]


def _create_sql(name: str, columns: tuple[schema.Column, ...]) -> list[str]:
    defs = []
    for c in columns:
        pk = " PRIMARY KEY NOT NULL" if name == "runs" and c.name == "run_id" else ""
        defs.append(f"{c.name} {c.sql_type}{pk}")
    sql = [f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(defs)})"]
    if name != "runs":
        sql.append(f"CREATE INDEX IF NOT EXISTS {name}_run_id ON {name} (run_id)")
    return sql


# -- opening and creating the file ----------------------------------------------------------

_MOVE_AWAY = "move it away (a new sweep then starts a new store) or restore it from a backup"


def _check_file(path: Path) -> None:
    """StoreError unless `path` exists and starts like an SQLite database (read, never written)."""
    if not path.is_file():
        raise StoreMissingError(
            f"no results database at {path} (give the results directory of a run)."
        )
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if not head:
        raise StoreError(
            f"{path} is empty (0 bytes), not a results database: an older diffscale killed "
            "while creating its store leaves such a file. Delete it, or run the sweep again "
            "(`diffscale run` replaces an empty store)."
        )
    if head != _SQLITE_MAGIC:
        raise StoreError(
            f"{path} is not a results database: it does not start with the SQLite header "
            f"(damaged, or another kind of file); {_MOVE_AWAY}."
        )


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    """A connection that never creates the file (URI mode=ro / mode=rw)."""
    uri = f"file:{quote(str(path))}?mode={'ro' if read_only else 'rw'}"
    # isolation_level=None: we issue BEGIN / COMMIT ourselves so one run is one transaction.
    return sqlite3.connect(uri, uri=True, timeout=_LOCK_TIMEOUT_S, isolation_level=None)


def _is_busy(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.OperationalError) and any(w in str(e) for w in ("locked", "busy"))


def _validated_tables(conn: sqlite3.Connection, path: Path) -> dict[str, set[str]]:
    """{table: its columns} of a healthy diffscale store; StoreError otherwise. Reads only."""
    try:
        conn.execute("PRAGMA schema_version").fetchone()  # "file is not a database" here
        # quick_check reads every page (not the index-vs-table cross checks): a truncated or
        # damaged file is caught here, not halfway through a report.
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        tables = {n: {r[1] for r in conn.execute(f'PRAGMA table_info("{n}")')} for n in names}
    except sqlite3.DatabaseError as e:
        if _is_busy(e):
            raise
        # DatabaseError proper is SQLITE_CORRUPT / NOTADB; its subclasses are other failures.
        what = "a damaged SQLite database" if type(e) is sqlite3.DatabaseError else "unreadable"
        raise StoreError(f"{path} is {what} ({e}); {_MOVE_AWAY}.") from e
    if problems != ["ok"]:
        raise StoreError(
            f"{path} is a damaged SQLite database (integrity check: {'; '.join(problems)}); "
            f"{_MOVE_AWAY}."
        )
    if "runs" not in tables:
        found = ", ".join(sorted(tables)) or "none"
        raise StoreError(
            f"{path} is an SQLite database but not a diffscale results store (no 'runs' "
            f"table; its tables: {found}). Give the results directory of a diffscale run, or "
            "move this file away."
        )
    return tables


def _create_store(path: Path) -> None:
    """Create a complete, empty store at `path`, atomically: the schema is built in a temporary
    file in the same directory, switched to WAL, and then linked into place. A reader (or a
    crash at any point) sees either no file at `path` or a complete store; a store another
    process created meanwhile is kept (link never overwrites), so its rows cannot be lost."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.creating")
    _remove_sqlite_files(tmp)
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            conn.execute("BEGIN")
            for name, columns in schema.TABLES.items():
                for sql in _create_sql(name, columns):
                    conn.execute(sql)
            conn.execute("COMMIT")
            # WAL lets readers (reports, a resumed sweep) open the file while a writer commits;
            # the mode is stored in the file, so it is set before the file becomes visible.
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()  # checkpoints: the temporary file alone holds the whole store
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another opener created it first: use theirs
        except OSError as e:  # a file system without hard links: no-clobber is then best effort
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if not path.exists():
                os.replace(tmp, path)
    finally:
        _remove_sqlite_files(tmp)


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of creators on this host that were killed (their pid is gone)."""
    for tmp in path.parent.glob(f".{path.name}.{socket.gethostname()}.*.creating"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_sqlite_files(tmp)
        except PermissionError:
            pass  # alive, someone else's


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class ResultStore:
    """SQLite store of runs and their per-rank traces (see `suite.store.schema` for the columns)."""

    def __init__(
        self, path: str | Path, *, read_only: bool = False, replace_empty: bool = False
    ) -> None:
        """Open the store at `path`, creating it (and its parent directories) if there is none.

        `read_only`: open an existing store for reading only (sqlite mode=ro): nothing is created
        or migrated, nothing is ever written. `replace_empty`: a 0-byte file (left by an older
        diffscale killed while creating the store) is taken as no store and replaced, said on
        stderr; only for a sweep, under the directory lock. Anything at `path` that is not a
        usable store raises StoreError.
        """
        self._path = Path(path).resolve()
        self._read_only = read_only
        if not read_only:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if replace_empty and self._path.is_file() and self._path.stat().st_size == 0:
                print(
                    f"note: {self._path} is empty (0 bytes, left by a crash while an older "
                    "diffscale created it): taken as no store, a new one is created",
                    file=sys.stderr,
                )
                self._path.unlink()
            _remove_stale_temps(self._path)
            if not self._path.exists():
                _create_store(self._path)
        _check_file(self._path)
        # Checked on a read-only connection first: nothing is written into a file that turns
        # out not to be a healthy store (not even a journal-mode change or a checkpoint).
        check = _connect(self._path, read_only=True)
        try:
            self._columns = _validated_tables(check, self._path)
        finally:
            check.close()
        self._conn = _connect(self._path, read_only)
        if read_only:
            return
        self._conn.execute("PRAGMA journal_mode=WAL")  # stores created before WAL was the rule
        # Only take the write lock when something is missing: opening a complete store to read
        # it must not wait for a sweep's transaction in flight.
        if not set(schema.TABLES) <= set(self._columns):
            with self._transaction():
                for name, columns in schema.TABLES.items():
                    for sql in _create_sql(name, columns):
                        self._conn.execute(sql)
        self._add_new_columns(set(self._columns))
        self._columns = {name: set(schema.column_names(name)) for name in schema.TABLES}

    def _add_new_columns(self, existing: set[str]) -> None:
        """Columns the schema gained since an existing store was created: added empty, so
        older stores stay readable and resumable (their rows read NULL there)."""

        def missing(name: str) -> list[schema.Column]:
            have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({name})")}
            return [c for c in schema.TABLES[name] if c.name not in have]

        tables = sorted(set(schema.TABLES) & existing)
        if any(missing(name) for name in tables):  # read first: no write lock when complete
            with self._transaction():
                for name in tables:  # asked again under the lock: another opener may have won
                    for c in missing(name):
                        self._conn.execute(f"ALTER TABLE {name} ADD COLUMN {c.name} {c.sql_type}")

    @property
    def path(self) -> Path:
        """Absolute path of the SQLite file."""
        return self._path

    @property
    def root(self) -> Path:
        """Directory holding the store; runs' `output_dir` values are relative to it."""
        return self._path.parent

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (then re-raised)."""
        # IMMEDIATE takes the write lock up front: two writers queue (up to the lock timeout)
        # instead of deadlocking on a read-to-write lock upgrade.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @property
    def read_only(self) -> bool:
        """Opened with `read_only=True`: every write raises."""
        return self._read_only

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a query; a store found damaged only now raises StoreError too."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:
                raise  # OperationalError & co.: not damage (busy, a bad query)
            raise StoreError(
                f"{self._path} is a damaged SQLite database ({e}); {_MOVE_AWAY}."
            ) from e

    def done_run_ids(self) -> set[str]:
        """run_ids stored with status 'ok' (the runs a resumed sweep skips)."""
        return {r[0] for r in self._read("SELECT run_id FROM runs WHERE status = 'ok'")}

    def recover_run_dirs(self) -> list[str]:
        """Settle the run directories an interrupted writer left; one note per directory.

        runs/.pending-<run_id> of a run stored ok (a crash between its commit and the move) is
        moved into place; of any other run it is deleted (the run was not stored, or not ok).
        Call it holding the directory lock: a live writer's pending directory looks the same.
        """
        if self._read_only:
            raise StoreError(f"{self._path} is open read-only; run directories are not touched.")
        runs_dir = self.root / "runs"
        if not runs_dir.is_dir():
            return []
        ok = dict(self._read("SELECT run_id, output_dir FROM runs WHERE status = 'ok'"))
        notes = []
        for pending in sorted(runs_dir.glob(PENDING_PREFIX + "*")):
            run_id = pending.name[len(PENDING_PREFIX) :]
            if ok.get(run_id):
                place_run_dir(self.root, run_id, ok[run_id])
                notes.append(f"run {run_id}: stored ok, its files moved into {ok[run_id]}")
            else:
                shutil.rmtree(pending)
                notes.append(f"run {run_id}: not stored ok, its unfinished files removed")
        return notes

    def save(self, record: RunRecord) -> None:
        """Store one run with its comm and rank_steps rows, all or nothing.

        A run stored as 'failed' is replaced (its rows in every table are deleted first); a run
        stored as 'ok' raises DuplicateRunError and leaves the store unchanged.
        """
        run_id, rows = self._validated(record)
        with self._transaction():
            row = self._conn.execute(
                "SELECT status FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is not None and row[0] == "ok":
                raise DuplicateRunError(f"run {run_id} is already stored with status 'ok'.")
            # Every table keys on run_id, so fidelity / projection of the failed try go too.
            for name in schema.TABLES:
                self._conn.execute(f"DELETE FROM {name} WHERE run_id = ?", (run_id,))
            for name, table_rows in rows.items():
                self._insert(name, table_rows)

    def _validated(self, record: RunRecord) -> tuple[str, dict[str, list[dict[str, Any]]]]:
        rows = {"runs": [record.run], "comm": record.comm, "rank_steps": record.rank_steps}
        for name, table_rows in rows.items():
            for r in table_rows:
                _check_columns(name, r)
        run_id = record.run.get("run_id")
        if not run_id:
            raise ValueError("RunRecord.run needs a non-empty 'run_id'.")
        if record.run.get("status") not in RUN_STATUSES:
            raise ValueError(
                f"runs.status must be one of {list(RUN_STATUSES)}; "
                f"got {record.run.get('status')!r}."
            )
        for name in ("comm", "rank_steps"):
            # Rows may omit run_id (it is the record's); a different one is a caller bug.
            fixed = []
            for r in rows[name]:
                if r.get("run_id", run_id) != run_id:
                    raise ValueError(
                        f"{name} row has run_id {r['run_id']!r}, but the record is {run_id!r}."
                    )
                fixed.append({**r, "run_id": run_id})
            rows[name] = fixed
        return run_id, rows

    def _insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        columns = schema.TABLES[name]
        sql = (
            f"INSERT INTO {name} ({', '.join(c.name for c in columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        for i, r in enumerate(rows):
            values = [_sql_value(name, c, r.get(c.name)) for c in columns]
            try:
                self._conn.execute(sql, values)
            except (sqlite3.InterfaceError, sqlite3.ProgrammingError) as e:
                raise ValueError(f"{name} row {i} cannot be stored: {e}") from e

    def save_rows(
        self,
        table: str,
        rows: list[dict[str, Any]],
        replace_where: dict[str, Any] | None = None,
    ) -> None:
        """Insert `rows` into `table` after deleting rows matching `replace_where`; one transaction.

        `replace_where` maps columns to values (all must match, None matches NULL), e.g.
        {"run_id": run_id, "hardware": "h100-nvlink"} to replace one projection.
        """
        _check_table(table)
        for r in rows:
            _check_columns(table, r)
        if replace_where is not None:
            if not replace_where:
                raise ValueError("replace_where must name at least one column (or be None).")
            _check_columns(table, replace_where)
        with self._transaction():
            if replace_where:
                cond = " AND ".join(f"{k} IS ?" for k in replace_where)
                cols = {c.name: c for c in schema.TABLES[table]}
                values = [_sql_value(table, cols[k], v) for k, v in replace_where.items()]
                self._conn.execute(f"DELETE FROM {table} WHERE {cond}", values)
            self._insert(table, rows)

    def table(self, name: str) -> pd.DataFrame:
        """The whole table `name` in insertion order, columns in schema order, typed."""
        columns = _check_table(name)
        # A store opened read-only may predate a table or column: those read empty (NULL).
        have = [c.name for c in columns if c.name in self._columns.get(name, ())]
        rows = self._read(f"SELECT {', '.join(have)} FROM {name} ORDER BY rowid") if have else []
        at = {col: i for i, col in enumerate(have)}
        # Built column by column so empty tables and all-NULL columns still get their dtype.
        return pd.DataFrame(
            {
                c.name: pd.Series(
                    [r[at[c.name]] if c.name in at else None for r in rows],
                    dtype=_DTYPES[c.sql_type],
                )
                for c in columns
            }
        )

    def export(self, out_dir: str | Path, fmt: str = "csv") -> list[Path]:
        """Write every table (empty ones too) to `out_dir/<table>.<fmt>`; returns the paths."""
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"Export format {fmt!r} is not supported; allowed: {EXPORT_FORMATS}.")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in schema.TABLES:
            df = self.table(name)
            path = out / f"{name}.{fmt}"
            if fmt == "csv":
                df.to_csv(path, index=False)
            else:
                df.to_parquet(path, index=False)
            paths.append(path)
        return paths

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
