"""The app's history: benchmark results and fine-tuning runs in an embedded SQLite file.

Lives in the app's data folder (``SIS_DATA_DIR`` or ``<repo>/data``), next to the
models that fine-tuning writes (``models/``) and extracted uploads (``uploads/``).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, model TEXT NOT NULL, mode TEXT NOT NULL,
    device TEXT NOT NULL, batch INTEGER, height INTEGER, width INTEGER, amp INTEGER,
    median_ms REAL, p90_ms REAL, images_per_s REAL, peak_rss_mb REAL, cuda_mb REAL, host TEXT, result TEXT);
CREATE TABLE IF NOT EXISTS engines (
    host TEXT NOT NULL, weights TEXT NOT NULL, model TEXT NOT NULL, ts REAL NOT NULL, backends TEXT NOT NULL,
    PRIMARY KEY (host, weights));
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, ts_start REAL NOT NULL, ts_end REAL, model TEXT NOT NULL, init TEXT, data TEXT,
    status TEXT NOT NULL, steps INTEGER, val_miou REAL, out_dir TEXT, message TEXT, config TEXT, history TEXT);
"""


def data_dir() -> Path:
    d = Path(os.environ.get("SIS_DATA_DIR", Path(__file__).resolve().parent.parent / "data"))
    d.mkdir(parents=True, exist_ok=True)
    return d


_READY: set[Path] = set()  # database files whose schema this process has created or checked


def _connect() -> sqlite3.Connection:
    path = data_dir() / "sis.db"
    fresh = path not in _READY or not path.exists()
    con = sqlite3.connect(path, timeout=10)
    con.row_factory = sqlite3.Row
    if fresh:  # once per file and process: the schema script is a write transaction
        con.executescript(SCHEMA)
        _READY.add(path)
    return con


def stamp() -> tuple[str, int, int] | None:
    """The database file's (path, mtime in ns, change counter), or None before it exists: a cache of
    what was read from it is stale once this changes. SQLite bumps the counter in the file's header at
    every commit, in any process; reading it is a 28-byte file read, no SQLite."""
    path = data_dir() / "sis.db"
    try:
        with open(path, "rb") as f:
            header, mtime = f.read(28), os.fstat(f.fileno()).st_mtime_ns
    except FileNotFoundError:
        return None
    return str(path), mtime, int.from_bytes(header[24:28], "big")


def add_bench(res: dict) -> int:
    with _connect() as con:
        cur = con.execute(
            "INSERT INTO bench (ts, model, mode, device, batch, height, width, amp, median_ms, p90_ms, images_per_s,"
            " peak_rss_mb, cuda_mb, host, result) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (time.time(), res["model"], res["mode"], res["device"], res["batch"], res["size"][0], res["size"][1],
             int(res.get("amp", False)), res["median_ms"], res["p90_ms"], res["images_per_s"], res["peak_rss_mb"],
             res.get("cuda_max_allocated_mb"), json.dumps(res.get("host", {})), json.dumps(res)))
        return cur.lastrowid


def list_bench(limit: int = 200) -> list[dict]:
    with _connect() as con:
        rows = con.execute("SELECT id, ts, model, mode, device, batch, height, width, amp, median_ms, p90_ms,"
                           " images_per_s, peak_rss_mb, cuda_mb FROM bench ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]


def put_engines(host: str, weights: str, model: str, backends: dict) -> None:
    """This host's latest engine comparison for one model's weights (replaces the previous one)."""
    with _connect() as con:
        con.execute("INSERT OR REPLACE INTO engines (host, weights, model, ts, backends) VALUES (?,?,?,?,?)",
                    (host, weights, model, time.time(), json.dumps(backends)))


def get_engines(host: str, weights: str) -> dict | None:
    """{"ts", "backends"} of the latest comparison ``put_engines`` stored, or None."""
    if not (data_dir() / "sis.db").exists():  # nothing kept yet; a read creates no database
        return None
    with _connect() as con:
        row = con.execute("SELECT ts, backends FROM engines WHERE host = ? AND weights = ?", (host, weights)).fetchone()
    return None if row is None else {"ts": row["ts"], "backends": json.loads(row["backends"])}


def upsert_run(run_id: str, **fields) -> None:
    for k in ("config", "history"):
        if k in fields and not isinstance(fields[k], str):
            fields[k] = json.dumps(fields[k])
    with _connect() as con:
        exists = con.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
        if exists:
            if fields:
                con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                            (*fields.values(), run_id))
        else:
            fields.setdefault("ts_start", time.time())
            cols = ["id", *fields]
            con.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        (run_id, *fields.values()))


def list_runs(limit: int = 100) -> list[dict]:
    with _connect() as con:
        rows = con.execute("SELECT id, ts_start, ts_end, model, init, data, status, steps, val_miou, out_dir, message"
                           " FROM runs ORDER BY ts_start DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]


def move_run_out(old: str, new: str) -> int:
    """The runs that wrote ``old`` now name ``new``, where their model folder was renamed to."""
    with _connect() as con:
        return con.execute("UPDATE runs SET out_dir = ? WHERE out_dir = ?", (str(new), str(old))).rowcount


def mark_interrupted_runs(before: float) -> int:
    """Runs still 'running' that started before ``before`` (this server's start) did not finish: say so."""
    with _connect() as con:
        return con.execute("UPDATE runs SET status = 'interrupted', message = 'the server stopped during the run'"
                           " WHERE status IN ('running', 'starting') AND ts_start < ?", (before,)).rowcount
