"""A run directory: run.json with its sessions, the append-only JSON-lines log, the lock, the
loader and the exports.

A run directory holds::

    run.json        what was run (sweep file and text, device, measurement options) and one entry
                    per session (start time, command line, measurement options, environment: GPU,
                    driver, versions, git commit)
    results.jsonl   one JSON record per (point, implementation), appended, flushed and fsynced
                    as soon as it is final, so a crash or Ctrl-C loses nothing
    results.parquet, results.csv   exports of the loaded table (records joined with their
                    session's environment as ``env_*`` columns)
    .lock           held (flock) by the run writing to the directory, with its pid

The format is stable: runs written by older versions load (their ``axes`` column is read as
``point_axes``; axis values written as text stay text).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from layerbench.layers import LAYERS
from layerbench.results.records import (
    DEFAULT_FAIL_ON,
    STATUSES,
    Record,
    StatusCounts,
    count_statuses,
    flatten,
    to_json_line,
)

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
PARQUET_FILE = "results.parquet"
CSV_FILE = "results.csv"
LOCK_FILE = ".lock"

# Columns renamed since older runs were written: old name -> new name.
RENAMED_COLUMNS = {"axes": "point_axes"}
# The layers' parameters: integer (or boolean) columns that must stay so in mixed-layer tables.
PARAM_COLUMNS = frozenset(f.name for cls in LAYERS.values() for f in dataclasses.fields(cls))

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"layerbench: {message}", file=sys.stderr)


def timestamp() -> str:
    """Local time with its UTC offset, as every record and run file writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDirLocked(ValueError):
    """Another live process is writing to this run directory."""


# ------------------------------------------------------------------------ the JSONL log


@dataclass(frozen=True)
class LogContents:
    """The complete records of a log, and the number of a torn last line (a crash mid-write)."""

    records: list[dict[str, Any]]
    torn_line: int | None = None


def torn_line_note(path: Path, line: int, repaired: bool) -> str:
    what = "removed it; that row runs again" if repaired else "it is left out"
    return (f"{path}: line {line} is incomplete (a run stopped in the middle of writing it); {what}")


def read_log(path: str | Path) -> LogContents:
    """All complete records of a JSON-lines log; a torn last line is counted, not read."""
    path = Path(path)
    records: list[dict[str, Any]] = []
    torn = None
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith("\n"):
                torn = number
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not a JSON record ({exc.msg})") from None
    return LogContents(records, torn)


class ResultLog:
    """Append-only JSON-lines file; every append is flushed and fsynced before returning.

    Opening it cuts a torn last line (a kill in the middle of a write) so the next record starts
    clean; ``repaired_line`` says which line that was (None: nothing to repair).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.repaired_line = self._repair()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _repair(self) -> int | None:
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        with open(self.path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
        return data.count(b"\n") + 1

    def append(self, record: Record | Mapping[str, Any]) -> None:
        if isinstance(record, Record):
            line = record.to_json()
        else:
            if record.get("status") not in STATUSES:
                raise ValueError(f"record status must be one of {', '.join(STATUSES)}, "
                                 f"got {record.get('status')!r}")
            line = to_json_line(record)
        self._fh.write(line + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResultLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- the table


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def renamed_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Older runs' column names as today's; a run resumed across the rename has both: merged."""
    for old, new in RENAMED_COLUMNS.items():
        if old in df.columns and new in df.columns:
            df[new] = df[new].where(df[new].notna(), df[old])
            df = df.drop(columns=old)
        elif old in df.columns:
            df = df.rename(columns={old: new})
    return df


def typed_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame whose layer parameters and axis columns keep their type.

    In a mixed-layer run a layer's parameters are missing from other layers' rows; pandas would
    make such integer columns float (and booleans object).  They become nullable ``Int64`` and
    ``boolean`` columns instead.  Columns of older runs are renamed (``axes`` -> ``point_axes``).
    """
    df = renamed_columns(pd.DataFrame.from_records(rows))
    for col in df.columns:
        if col not in PARAM_COLUMNS and not col.startswith("axis_"):
            continue
        values = [v for v in (r.get(col) for r in rows) if not _missing(v)]
        if not values or not df[col].isna().any():
            continue  # complete columns keep what pandas inferred (int64, bool, object)
        if all(_is_int(v) for v in values):
            df[col] = pd.array([None if _missing(r.get(col)) else r[col] for r in rows], dtype="Int64")
        elif all(isinstance(v, bool) for v in values):
            df[col] = pd.array([None if _missing(r.get(col)) else r[col] for r in rows], dtype="boolean")
    return df


def _scalar_column(series: pd.Series) -> pd.Series:
    """Lists and mixed-type object columns become JSON text (CSV, and Parquet's single type)."""
    if series.dtype != object:
        return series
    kinds = {type(v) for v in series if not _missing(v)}
    if len(kinds) <= 1 and not kinds & {list, dict}:
        return series
    return series.map(lambda v: None if _missing(v) else v if isinstance(v, str)
                      else json.dumps(v, default=str))


def _parquet_column(series: pd.Series) -> pd.Series:
    if series.dtype != object:
        return series
    kinds = {type(v) for v in series if not _missing(v)}
    flat = all(not isinstance(x, (list, dict)) for v in series if isinstance(v, list) for x in v)
    if kinds == {list} and flat:
        return series  # Parquet keeps flat lists (raw samples, window energies, kernel names)
    return _scalar_column(series)


# ------------------------------------------------------------------------- the directory


class RunDir:
    """One run directory (see the module docstring); ``say`` receives notes for the user."""

    def __init__(self, path: str | Path, say: Say = _stderr):
        self.path = Path(path)
        self.say = say
        self._lock_fh: Any = None
        self._noted: set[tuple[str, int]] = set()

    @property
    def log_path(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def run_path(self) -> Path:
        return self.path / RUN_FILE

    def has_run(self) -> bool:
        return self.run_path.exists()

    def has_records(self) -> bool:
        return self.log_path.exists() and self.log_path.stat().st_size > 0

    # ----------------------------------------------------------------- the lock

    def make(self) -> None:
        """Create the directory; a path that is a file or cannot be written is a usage error."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file, not a run directory; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the run directory {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write to the run directory {self.path}: permission denied")

    def lock(self) -> None:
        """Hold this directory for this process (until ``unlock`` or the process ends).

        An ``flock`` on ``.lock``: the kernel releases it when its holder dies, however it dies, so
        a lock file left by a dead run never blocks.  The file names the holder's pid.
        """
        self.make()
        fh = open(self.path / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunDirLocked(f"{self.path} is in use by another layerbench run (pid {holder}); "
                               "wait for it to end or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh

    def unlock(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()  # closing the file releases the flock
            self._lock_fh = None

    # ----------------------------------------------------------------- run.json

    def read_meta(self) -> dict[str, Any]:
        if not self.has_run():
            raise ValueError(f"{self.path} is not a layerbench run directory (no {RUN_FILE})")
        return json.loads(self.run_path.read_text())

    def write_meta(self, run: dict[str, Any]) -> None:
        """Replace run.json atomically, so a crash never leaves it half written."""
        tmp = self.run_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(run, indent=2, default=str, sort_keys=True))
        os.replace(tmp, self.run_path)

    def new_session(self, run: dict[str, Any], argv: list[str],
                    measure: dict[str, Any] | None = None) -> int:
        """Add a session (one invocation of ``run``, first or resumed) and return its index."""
        sessions = run.setdefault("sessions", [])
        entry: dict[str, Any] = {"index": len(sessions), "started": timestamp(), "argv": argv,
                                 "environment": None}
        if measure is not None:
            entry["measure"] = measure
        sessions.append(entry)
        self.write_meta(run)
        return len(sessions) - 1

    def record_environment(self, run: dict[str, Any], session: int, env: dict[str, Any]) -> None:
        run["sessions"][session]["environment"] = env
        self.write_meta(run)

    # ------------------------------------------------------------------ the log

    def open_log(self) -> ResultLog:
        """The log, opened for appending; a torn last line is cut and the user told so."""
        log = ResultLog(self.log_path)
        if log.repaired_line is not None:
            self._note(torn_line_note(self.log_path, log.repaired_line, repaired=True),
                       log.repaired_line)
        return log

    def _note(self, message: str, line: int) -> None:
        if (str(self.log_path), line) not in self._noted:
            self._noted.add((str(self.log_path), line))
            self.say(message)

    def records(self, log: Path | None = None) -> list[dict[str, Any]]:
        """The complete records; a torn last line is reported (once) and left out."""
        path = log or self.log_path
        if not path.exists():
            return []
        contents = read_log(path)
        if contents.torn_line is not None:
            self._note(torn_line_note(path, contents.torn_line, repaired=False), contents.torn_line)
        return contents.records

    def done_hashes(self) -> set[str]:
        """Config hashes already recorded with a final status (every status is final)."""
        return {r["config_hash"] for r in self.records() if r.get("status") in STATUSES}

    def status_counts(self, fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> StatusCounts:
        """Rows per status, and whether any has a failing status (the run's exit code)."""
        return count_statuses(self.records(), fail_on)

    # ------------------------------------------------------------ load / export

    def load_table(self, log: Path | None = None) -> pd.DataFrame:
        """The log as a table, one row per (point, implementation), with its session's
        environment as ``env_*`` columns; the run's Parquet export where there is no log."""
        path = log or self.log_path
        if not path.exists():
            if (self.path / PARQUET_FILE).exists():
                return read_parquet_table(self.path / PARQUET_FILE)
            raise ValueError(f"{self.path}: no {RESULTS_FILE} or {PARQUET_FILE} in this directory")
        df = typed_table(self.records(path))
        if df.empty or not self.has_run():
            return df
        env_rows = [{"session": s["index"]} | flatten("env", s.get("environment") or {})
                    for s in self.read_meta().get("sessions", [])]
        env = pd.DataFrame.from_records(env_rows)
        if len(env.columns) > 1 and "session" in df.columns:
            df = df.merge(env, on="session", how="left")
        return df

    def export(self) -> tuple[Path, Path]:
        """Write results.parquet and results.csv next to the log; return their paths."""
        if not self.log_path.exists():
            raise ValueError(f"{self.path}: no {RESULTS_FILE} to export")
        df = self.load_table()
        parquet, csv = self.path / PARQUET_FILE, self.path / CSV_FILE
        try:
            df.apply(_parquet_column).to_parquet(parquet, index=False)
            df.apply(_scalar_column).to_csv(csv, index=False)
        except PermissionError as exc:
            raise ValueError(f"cannot write the exports of {self.path}: {exc.strerror}") from None
        return parquet, csv


def read_parquet_table(path: Path) -> pd.DataFrame:
    return renamed_columns(pd.read_parquet(path))


def load_results(run: str | Path) -> pd.DataFrame:
    """The results of a run as a long table: one row per (point, implementation).

    ``run`` is a run directory (its JSON-lines log, or its Parquet file when there is no log) or a
    ``.jsonl`` / ``.parquet`` file.  Rows get their session's environment as ``env_*`` columns.
    """
    path = Path(run)
    if path.is_dir():
        return RunDir(path).load_table()
    if path.suffix == ".parquet":
        return read_parquet_table(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"{run}: expected a run directory, a .jsonl or a .parquet file")
    if not path.exists():
        raise ValueError(f"{run}: no such file")
    return RunDir(path.parent).load_table(log=path)


def export_results(run_dir: str | Path) -> tuple[Path, Path]:
    """Write results.parquet and results.csv of ``run_dir``; return their paths."""
    return RunDir(run_dir).export()


# ------------------------------------------------------------------------------- a log file


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSON-lines log (a torn last line is reported and left out)."""
    return RunDir(Path(path).parent).records(Path(path))
