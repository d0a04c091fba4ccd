"""The results store: every evaluation record goes to its run's JSON file and to a SQLite database.

One table, one row per record: a few indexed columns to select on (protocol, checkpoint name,
dataset, trial) and the full record as JSON. Writes are one ``INSERT`` in one ``BEGIN IMMEDIATE``
transaction on a WAL database with a busy timeout, so several processes (trials) can publish into
the same file at once, and a writer killed at any point leaves either the whole record or none.
Publishing the same record twice (same ``id``) stores it once.

Query it with any SQLite client, e.g.
``sqlite3 results.db "select name, protocol, json_extract(record, '$.metrics.top1') from records"``.
"""
from __future__ import annotations

import fnmatch
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from simsiam_eval.atomic import atomic_write_json
from simsiam_eval.errors import UserError
from simsiam_eval.fault_points import fault_point
from simsiam_eval.results.records import RECORD_KEYS, checkpoint_name, record_dataset

DEFAULT_DB_NAME = "results.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id       TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    name     TEXT NOT NULL,
    sha256   TEXT,
    dataset  TEXT NOT NULL,
    trial    INTEGER,
    seed     INTEGER,
    started  TEXT,
    tags     TEXT NOT NULL,
    record   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_protocol ON records (protocol, name, dataset);
"""


def resolve_db_path(results: str | os.PathLike | None, output_dir: str | os.PathLike | None) -> Path | None:
    """``--results DB`` if given, else ``results.db`` in the output dir (None when neither is known)."""
    if results:
        return Path(results)
    return Path(output_dir) / DEFAULT_DB_NAME if output_dir else None


def add_results_argument(parser) -> None:
    """The ``--results DB`` flag every recording command shares."""
    parser.add_argument("--results", metavar="DB", default=None,
                        help=f"SQLite results database to append the record to (default: "
                             f"{DEFAULT_DB_NAME} in the output folder); share one across runs")


def connect(db_path: str | os.PathLike) -> sqlite3.Connection:
    """Open (creating if needed) a results database in WAL mode with a busy timeout."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        conn.execute("PRAGMA synchronous = NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            _retry_locked(lambda: _create_schema(conn))
        elif version != SCHEMA_VERSION:
            raise UserError(f"{db_path}: results database schema version {version}, this simsiam-eval "
                            f"reads version {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{db_path}: not a usable results database ({exc})") from None
    return conn


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _retry_locked(action, attempts: int = 50):
    """Run ``action``, retrying while another process holds a lock SQLite does not wait for."""
    for attempt in range(attempts):
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def validate_record(record: dict) -> None:
    """A record must have every key of the shared shape and numeric metrics."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"record lacks keys {missing}")
    if not isinstance(record["metrics"], dict) or not all(
            isinstance(v, (int, float)) for v in record["metrics"].values()):
        raise ValueError(f"record metrics must be a dict of numbers, got {record['metrics']!r}")


def publish_record(record: dict, json_path: str | os.PathLike | None = None,
                   db_path: str | os.PathLike | None = None) -> None:
    """Write ``record`` atomically to ``json_path`` and append it to the database at ``db_path``.

    A record without an ``id`` gets one (in place), so its JSON file and database row name each
    other; appending a record whose ``id`` is already stored is a no-op. A record equal to the one
    ``json_path`` already holds but for times (a command re-run after being killed once its record was
    stored) takes that record's ``id``: it is stored once. A record without ``data.name`` gets the
    short dataset name tables use (``shapes``, ``cifar10``...).
    """
    validate_record(record)
    record.setdefault("tags", [])
    if not record["data"].get("name"):
        record["data"]["name"] = record_dataset(record)
    if "id" not in record and json_path is not None:
        previous = _stored_json(json_path)
        if previous is not None and _without_times(previous) == _without_times(record):
            record["id"] = previous["id"]
    record.setdefault("id", uuid.uuid4().hex)
    if json_path is not None:
        atomic_write_json(record, json_path)
        fault_point("record-stored")
    if db_path is not None:
        append_record(record, db_path)


def _stored_json(path: str | os.PathLike) -> dict | None:
    try:
        stored = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and "id" in stored else None


def _without_times(record: dict) -> dict:
    """A record without what differs between two runs of one evaluation: id, times, revision, resume point."""
    kept = {k: v for k, v in record.items() if k not in ("id", "started", "seconds", "git")}
    settings = kept.get("settings")
    if isinstance(settings, dict):
        kept["settings"] = {k: v for k, v in settings.items() if k not in ("timings", "resumed_from_epoch")}
    return json.loads(json.dumps(kept, default=str))


def append_record(record: dict, db_path: str | os.PathLike) -> None:
    """One INSERT in one immediate transaction (see the module docstring)."""
    row = (record["id"], record["protocol"], checkpoint_name(record), record["checkpoint"].get("sha256"),
           record_dataset(record), record.get("trial"), record.get("seed"), record.get("started"),
           json.dumps(list(record.get("tags") or [])), json.dumps(record, default=str))
    conn = connect(db_path)
    try:
        def insert():
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO records (id, protocol, name, sha256, dataset, trial, seed, "
                    "started, tags, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                fault_point("record-commit")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        _retry_locked(insert)
    finally:
        conn.close()


def _matches(value: Any, pattern: str | Iterable[str] | None) -> bool:
    """Glob match (``*``, ``?``) against one pattern or any of several; None matches everything."""
    if pattern is None:
        return True
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return any(fnmatch.fnmatchcase(str(value), p) for p in patterns)


def select_records(records: Iterable[dict], protocol=None, checkpoint=None, dataset=None,
                   tag=None) -> list[dict]:
    """Records matching every filter given; each filter is a glob or a list of globs.

    ``checkpoint`` matches the checkpoint's name, path, sha256 (prefix) or any tag.
    """
    def checkpoint_ok(rec: dict) -> bool:
        if checkpoint is None:
            return True
        ck = rec["checkpoint"]
        sha = ck.get("sha256") or ""
        candidates = [checkpoint_name(rec), ck.get("path") or "", *rec.get("tags", [])]
        patterns = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
        return any(_matches(c, patterns) for c in candidates) or any(
            sha and len(p) >= 6 and sha.startswith(p) for p in patterns)

    return [rec for rec in records
            if _matches(rec["protocol"], protocol) and _matches(record_dataset(rec), dataset)
            and checkpoint_ok(rec) and (tag is None or any(_matches(t, tag) for t in rec.get("tags", [])))]


def read_records(db_path: str | os.PathLike) -> list[dict]:
    """Every record in the database, oldest first."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise UserError(f"results database not found: {db_path}")
    conn = connect(db_path)
    try:
        rows = conn.execute("SELECT record FROM records ORDER BY rowid").fetchall()
    finally:
        conn.close()
    return [json.loads(r[0]) for r in rows]


def read_json_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Records from run JSON files (one record, or a list of records, per file)."""
    out = []
    for path in paths:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a readable record file ({exc})") from None
        for rec in loaded if isinstance(loaded, list) else [loaded]:
            try:
                validate_record(rec)
            except ValueError as exc:
                raise UserError(f"{path}: {exc}") from None
            out.append(rec)
    return out


def records_frame(records: Iterable[dict]):
    """Records flattened into a DataFrame: ``name``, ``dataset``, ``protocol``, ``trial``, ``seed``,
    ``tags``, the metrics as ``metrics.<key>`` and every other nested field as ``a.b`` columns."""
    import pandas as pd

    records = list(records)
    frame = pd.json_normalize(records, sep=".") if records else pd.DataFrame()
    frame.insert(0, "name", [checkpoint_name(r) for r in records])
    frame.insert(1, "dataset", [record_dataset(r) for r in records])
    if "tags" not in frame:
        frame["tags"] = [[] for _ in records]
    return frame


def load_records(db_path: str | os.PathLike, as_frame: bool = True, **filters):
    """Records from the database, filtered as :func:`select_records`; a DataFrame or a list of dicts."""
    records = select_records(read_records(db_path), **filters)
    return records_frame(records) if as_frame else records
