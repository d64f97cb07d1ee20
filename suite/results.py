"""The results store: one SQLite file holding every table of `suite.schema`.

One run is saved in one transaction (its `runs` row with its `comm` and `rank_steps` rows), so a
crash mid-sweep loses at most the run in flight. The file uses WAL journaling so a report can
read it while a sweep writes. CSV / Parquet export writes one file per table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd

from suite import schema

EXPORT_FORMATS = ("csv", "parquet")
RUN_STATUSES = ("ok", "failed", "skipped")

# pandas >= 3 has a NaN-aware string dtype "str"; pandas 2 would turn None into "None" with it.
_TEXT_DTYPE: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object
# Nullable Int64 so a missing INTEGER stays missing instead of turning the column into floats.
_DTYPES: dict[str, Any] = {"TEXT": _TEXT_DTYPE, "INTEGER": "Int64", "REAL": "float64"}
# Seconds a second process waits for the write lock before sqlite gives up.
_LOCK_TIMEOUT_S = 60.0


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


class ResultStore:
    """SQLite store of runs and their per-rank traces (see `suite.schema` for the columns)."""

    def __init__(self, path: str | Path) -> None:
        """Open or create the store at `path`; parent directories are created."""
        self._path = Path(path).resolve()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN / COMMIT ourselves so one run is one transaction.
        self._conn = sqlite3.connect(str(self._path), timeout=_LOCK_TIMEOUT_S, isolation_level=None)
        # WAL lets readers (reports, a resumed sweep) open the file while a writer commits.
        self._conn.execute("PRAGMA journal_mode=WAL")
        existing = {
            r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        # Only take the write lock when something is missing: opening a complete store to read
        # it must not wait for a sweep's transaction in flight.
        if not set(schema.TABLES) <= existing:
            with self._transaction():
                for name, columns in schema.TABLES.items():
                    for sql in _create_sql(name, columns):
                        self._conn.execute(sql)
        self._add_new_columns(existing)

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

    def done_run_ids(self) -> set[str]:
        """run_ids stored with status 'ok' (the runs a resumed sweep skips)."""
        rows = self._conn.execute("SELECT run_id FROM runs WHERE status = 'ok'").fetchall()
        return {r[0] for r in rows}

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
        cur = self._conn.execute(
            f"SELECT {', '.join(c.name for c in columns)} FROM {name} ORDER BY rowid"
        )
        rows = cur.fetchall()
        # Built column by column so empty tables and all-NULL columns still get their dtype.
        return pd.DataFrame(
            {
                c.name: pd.Series([r[i] for r in rows], dtype=_DTYPES[c.sql_type])
                for i, c in enumerate(columns)
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
