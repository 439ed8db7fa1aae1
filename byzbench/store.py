"""The results database: one SQLite file per results directory.

``cells`` holds one row per cell (id, axis values, resolved config as JSON, status, error,
timing and summary metrics); ``rounds`` one row per cell and round (accuracy, loss, ASR,
detection counts, timings). A cell and its rounds are written in one transaction, so a
cell is either wholly there or not at all; an interrupted run keeps every finished cell.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from byzbench import __version__
from byzbench.atomic import AtomicWriteError, write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

    from byzbench.config import Cell, Grid
    from byzbench.engine.simulation import CellResult

DB_NAME = "results.db"
LOCK_NAME = ".byzbench.lock"          # held (flock) by the run writing the directory
OWNER_NAME = ".byzbench.lock.owner"   # who holds it: pid, host, start time, command
# columns without which a database is not byzbench's (older ones gain the others)
REQUIRED_COLUMNS = {"cells": ("cell_id", "grid", "axes", "config", "status"),
                    "rounds": ("cell_id", "round")}
FINISHED = ("done", "skipped")

SUMMARY_COLUMNS: dict[str, str] = {
    "accuracy": "REAL", "loss": "REAL", "asr": "REAL", "best_accuracy": "REAL",
    "tp": "INTEGER", "fp": "INTEGER", "fn": "INTEGER", "tn": "INTEGER",
    "detection_rate": "REAL", "fpr": "REAL", "precision": "REAL", "f1": "REAL",
    "agg_ms": "REAL", "sign_ms": "REAL", "verify_ms": "REAL",
    "diverged": "INTEGER", "diverged_round": "INTEGER",
    "n": "INTEGER", "d": "INTEGER", "f": "INTEGER", "clients": "INTEGER",
    # backdoor durability (byzbench.metrics.durability); NULL where no backdoor ran
    "last_active_round": "INTEGER", "asr_end": "REAL", "asr_after_10": "REAL",
    "asr_after_20": "REAL", "asr_recovery_rounds": "INTEGER", "asr_horizon": "INTEGER",
    # differential privacy (byzbench.privacy.dp); NULL where the cell has none
    "epsilon": "REAL", "delta": "REAL", "sigma": "REAL", "dp_mode": "TEXT",
}
ROUND_COLUMNS: dict[str, str] = {
    "n": "INTEGER", "malicious": "INTEGER", "accuracy": "REAL", "loss": "REAL", "asr": "REAL",
    "tp": "INTEGER", "fp": "INTEGER", "fn": "INTEGER", "tn": "INTEGER",
    "agg_ms": "REAL", "sign_ms": "REAL", "verify_ms": "REAL", "finite": "INTEGER",
    "secagg_ms": "REAL",  # secure aggregation: masking + unmasking, all the round's sums
    "diagnostics": "TEXT",  # the verdict's diagnostics as JSON, when small
    "epsilon": "REAL",      # cumulative ε at δ of a DP cell after this round
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    grid TEXT NOT NULL,
    attack TEXT, defense TEXT, malicious_fraction REAL, seed INTEGER,
    axes TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'skipped', 'failed')),
    error TEXT, traceback TEXT,
    started REAL, finished REAL, wall_s REAL,
    {", ".join(f"{k} {t}" for k, t in SUMMARY_COLUMNS.items())},
    metrics TEXT,
    byzbench_version TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    {", ".join(f"{k} {t}" for k, t in ROUND_COLUMNS.items())},
    PRIMARY KEY (cell_id, round)
);
"""


class StoreError(RuntimeError):
    """A results directory that cannot be used (missing, not a byzbench database)."""


def _clean(value: Any) -> Any:
    """SQLite-friendly scalars: NaN/Inf become NULL, bools ints."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _db_problem(path: Path, exc: sqlite3.Error) -> StoreError:
    """One line for a database that cannot be used."""
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return StoreError(f"{path}: not a byzbench results database ({text}); move it away "
                          "or choose another results directory (-o DIR)")
    if "readonly" in text or "unable to open" in text or "read-only" in text:
        return StoreError(f"cannot write {path}: {text} (is its directory writable?)")
    return StoreError(f"{path}: cannot use the results database: {text}")


class DirectoryLock:
    """Exclusive use of a results directory by one run (``filelock``; released by the OS
    if the process dies). Its holder's pid, host, start time and command are written to
    ``.byzbench.lock.owner`` beside it, so a second run says who holds it."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock: Any = None

    def owner(self) -> str:
        try:
            info = json.loads((self.directory / OWNER_NAME).read_text())
            return (f"pid {info['pid']} on {info['host']} since {info['since']}: "
                    f"{info['command']}")
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def __enter__(self) -> DirectoryLock:
        from filelock import FileLock, Timeout

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create results directory {self.directory}: "
                             f"{exc.strerror}") from None
        lock = FileLock(str(self.directory / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise StoreError(f"{self.directory} is in use by another byzbench run "
                             f"({self.owner()}); wait for it to finish, or write to another "
                             "results directory (-o DIR)") from None
        except OSError as exc:
            raise StoreError(f"cannot write to results directory {self.directory}: "
                             f"{exc.strerror or exc}") from None
        self._lock = lock
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(os.path.basename(a) if i == 0 else a
                                    for i, a in enumerate(sys.argv))}
        try:
            write_text_atomic(self.directory / OWNER_NAME, json.dumps(info))
        except AtomicWriteError as exc:
            lock.release()
            raise StoreError(f"cannot write to results directory {self.directory}: "
                             f"{exc.reason}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            try:
                (self.directory / OWNER_NAME).unlink(missing_ok=True)
            except OSError:
                pass
            self._lock.release()
            self._lock = None


class ResultsStore:
    """A results database; create it with :meth:`create` or open one with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, timeout=30)
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._check_schema()  # before anything writes: another program's file stays as is
            self.conn.execute("PRAGMA journal_mode = WAL")
        except (sqlite3.Error, StoreError):
            self.conn.close()
            raise

    @classmethod
    def create(cls, results_dir: str | Path) -> ResultsStore:
        directory = Path(results_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create results directory {directory}: {exc.strerror}"
                             ) from None
        path = directory / DB_NAME
        try:
            store = cls(path)
        except sqlite3.Error as exc:
            raise _db_problem(path, exc) from None
        try:
            with store.conn:
                store.conn.executescript(_SCHEMA)
                store._add_missing_columns()
        except sqlite3.Error as exc:
            store.close()
            raise _db_problem(path, exc) from None
        except StoreError:
            store.close()
            raise
        return store

    def _columns(self, table: str) -> set[str]:
        """The column names of ``table`` (empty when it does not exist)."""
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}

    def _check_schema(self) -> None:
        """Raise StoreError if tables byzbench uses exist without their key columns (another
        program's database); missing tables are fine (created), so are missing columns
        outside :data:`REQUIRED_COLUMNS` (added)."""
        for table, needed in REQUIRED_COLUMNS.items():
            have = self._columns(table)
            lacking = [c for c in needed if c not in have]
            if have and lacking:
                raise StoreError(f"{self.path}: not a byzbench results database (table "
                                 f"'{table}' lacks {', '.join(lacking)}); move it away or "
                                 "choose another results directory (-o DIR)")

    def _add_missing_columns(self) -> None:
        """A database written by an older byzbench gains the columns added since (NULL in
        its earlier rows), so resuming it keeps every result."""
        for table, columns in (("cells", SUMMARY_COLUMNS), ("rounds", ROUND_COLUMNS)):
            have = self._columns(table)
            for name, sql_type in columns.items():
                if name not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")

    @classmethod
    def open(cls, results_dir: str | Path) -> ResultsStore:
        directory = Path(results_dir)
        path = directory / DB_NAME if directory.is_dir() else directory
        if not path.exists():
            raise StoreError(f"no results database in {directory} (expected {directory / DB_NAME};"
                             f" run 'byzbench run GRID' first)")
        try:
            store = cls(path)
        except sqlite3.Error as exc:
            raise _db_problem(path, exc) from None
        try:
            tables = {r[0] for r in store.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"cells", "rounds"} <= tables:
                raise StoreError(f"{path} is not a byzbench results database")
        except sqlite3.Error as exc:
            store.close()
            raise _db_problem(path, exc) from None
        except StoreError:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def register_grid(self, grid: Grid) -> None:
        meta = {"grid": grid.name, "description": grid.description, "source": grid.source,
                f"axes:{grid.name}": json.dumps(grid.axes, default=_json_default),
                f"cells:{grid.name}": json.dumps([c.id for c in grid.cells])}
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())

    def record(self, grid_name: str, cell: Cell, result: CellResult,
               started: float | None = None, traceback: str | None = None) -> None:
        """Store a cell and its rounds in one transaction (replacing an earlier attempt)."""
        finished = time.time()
        summary = {k: _clean(result.summary.get(k)) for k in SUMMARY_COLUMNS}
        axes = cell.axes
        row = {
            "cell_id": cell.id, "grid": grid_name,
            "attack": str(axes.get("attack")), "defense": str(axes.get("defense")),
            "malicious_fraction": cell.config.malicious_fraction, "seed": cell.config.seed,
            "axes": json.dumps(axes, default=_json_default),
            "config": json.dumps(cell.config.model_dump(mode="json"), sort_keys=True),
            "status": result.status, "error": result.error, "traceback": traceback,
            "started": started if started is not None else finished - result.wall_s,
            "finished": finished, "wall_s": result.wall_s, **summary,
            "metrics": json.dumps(result.summary, default=_json_default),
            "byzbench_version": __version__,
        }
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        round_keys = ["round", *ROUND_COLUMNS]
        try:
            with self.conn:  # one transaction: a cell is stored whole or not at all
                self.conn.execute("DELETE FROM rounds WHERE cell_id = ?", (cell.id,))
                self.conn.execute(f"INSERT OR REPLACE INTO cells ({columns}) VALUES ({marks})",
                                  [_clean(v) for v in row.values()])
                self.conn.executemany(
                    f"INSERT INTO rounds (cell_id, {', '.join(round_keys)}) "
                    f"VALUES (?, {', '.join('?' for _ in round_keys)})",
                    [[cell.id, *(_clean(r.get(k)) for k in round_keys)]
                     for r in result.rounds])
        except sqlite3.Error as exc:  # a full disk, a directory made read-only meanwhile
            raise StoreError(f"cannot store cell {cell.id} in {self.path}: {exc}; the cells "
                             "stored before it are kept, run the same command again once "
                             "there is room") from None

    # -- reading ---------------------------------------------------------------------------

    def statuses(self, cell_ids: Iterable[str] | None = None) -> dict[str, str]:
        rows = self.conn.execute("SELECT cell_id, status FROM cells").fetchall()
        wanted = set(cell_ids) if cell_ids is not None else None
        return {r["cell_id"]: r["status"] for r in rows
                if wanted is None or r["cell_id"] in wanted}

    def finished_ids(self) -> set[str]:
        return {cid for cid, status in self.statuses().items() if status in FINISHED}

    def meta(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self.conn.execute("SELECT key, value FROM meta")}

    def grid_order(self) -> dict[str, int]:
        """cell id → its place in the grids' own order: the cells of each registered grid as
        its file expands them, grids in the order they were first registered. Readers sort
        by it, so what they compute never depends on the order in which cells finished
        (which varies with the worker count and the machine's load)."""
        rows = self.conn.execute("SELECT value FROM meta WHERE key LIKE 'cells:%' "
                                 "ORDER BY rowid").fetchall()
        order: dict[str, int] = {}
        for row in rows:
            for cell_id in json.loads(row["value"]):
                order.setdefault(cell_id, len(order))
        return order

    def _in_grid_order(self, ids: Sequence[str]) -> list[int]:
        """Positions that sort ``ids`` (given in storage order) into :meth:`grid_order`;
        cells of no registered grid follow, in storage order."""
        order = self.grid_order()
        return sorted(range(len(ids)), key=lambda i: (order.get(ids[i], len(order)), i))

    def cell_rows(self) -> list[Mapping[str, Any]]:
        """Every stored cell, in :meth:`grid_order`."""
        rows = [dict(r) for r in self.conn.execute("SELECT * FROM cells ORDER BY rowid")]
        return [rows[i] for i in self._in_grid_order([r["cell_id"] for r in rows])]

    def cells_frame(self) -> pd.DataFrame:
        """One row per cell, in :meth:`grid_order`; ``axes`` and ``config`` parsed; extra
        axes as columns."""
        import pandas as pd

        frame = pd.read_sql_query("SELECT * FROM cells ORDER BY rowid", self.conn)
        if frame.empty:
            return frame
        frame = frame.iloc[self._in_grid_order(list(frame["cell_id"]))].reset_index(drop=True)
        frame["axes"] = frame["axes"].map(json.loads)
        frame["config"] = frame["config"].map(json.loads)
        extra = sorted({k for axes in frame["axes"] for k in axes} - set(frame.columns))
        for key in extra:
            frame[key] = frame["axes"].map(lambda a, k=key: a.get(k))
        frame["diverged"] = frame["diverged"].astype("boolean")
        return frame

    def rounds_frame(self) -> pd.DataFrame:
        """One row per cell and round (cells in :meth:`grid_order`, rounds in order), with
        the cell's main axes joined in."""
        import pandas as pd

        frame = pd.read_sql_query(
            "SELECT r.*, c.grid, c.attack, c.defense, c.malicious_fraction, c.seed "
            "FROM rounds r JOIN cells c USING (cell_id) ORDER BY c.rowid, r.round", self.conn)
        if frame.empty:
            return frame
        ids = list(dict.fromkeys(frame["cell_id"]))          # storage order, once each
        rank = {ids[i]: place for place, i in enumerate(self._in_grid_order(ids))}
        position = frame["cell_id"].map(rank)
        return frame.iloc[position.argsort(kind="stable").to_numpy()].reset_index(drop=True)
