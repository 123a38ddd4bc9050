"""A run's results: the append-only JSON-lines log, run.json, the loader and the exports.

A run directory holds::

    run.json        what was run (sweep file and text, device) and one entry per session
                    (start time, command line, environment: GPU, driver, versions, git commit)
    results.jsonl   one JSON record per (point, implementation), appended, flushed and fsynced
                    as soon as it is final, so a crash or Ctrl-C loses nothing
    results.parquet, results.csv   exports of the loaded table (records joined with their
                    session's environment as ``env_*`` columns)
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from layerbench.sweep import Measure, Point, axis_label

STATUSES = ("ok", "incorrect", "oom", "unsupported", "unavailable", "invalid", "error")
RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
PARQUET_FILE = "results.parquet"
CSV_FILE = "results.csv"


# ----------------------------------------------------------------------------- records


def base_record(point: Point, impl: str, measure: Measure, device: str, experiment: str,
                session: int) -> dict[str, Any]:
    """The config part of a record: what was asked for, before anything ran."""
    rec: dict[str, Any] = {
        "experiment": experiment,
        "point_index": point.index,
        "name": point.label,
        "layer": point.layer,
        "impl": impl,
        "dtype": point.dtype,
        "layout": point.layout,
        "device": device,
        "config_hash": point.config_hash(impl, measure, device),
        "point_hash": point.point_hash(measure, device),
        "session": session,
        "axes": json.dumps(point.axes, sort_keys=True),
        "measure": json.dumps(measure.to_dict(), sort_keys=True),
        "energy_requested": impl in point.energy_impls,
        "status": None,
        "message": "",
    }
    for name, value in point.axes.items():
        rec[f"axis_{name}"] = axis_label(value)
    params = point.config(impl, measure, device)["params"]
    rec.update(params)
    if point.spec is not None:
        rec.update(spec_figures(point))
    return rec


def spec_figures(point: Point) -> dict[str, Any]:
    """FLOPs, minimum bytes and the thesis's workload figures where the spec defines them."""
    from layerbench.dtypes import get_dtype

    spec = point.spec
    assert spec is not None
    out: dict[str, Any] = {"flops": spec.flops, "min_bytes": spec.min_bytes(get_dtype(point.dtype).itemsize),
                           "parameters": spec.parameters}
    for attr in ("thesis_parameters", "thesis_input_size", "thesis_connections"):
        if hasattr(spec, attr):
            out[attr] = getattr(spec, attr)
    return out


def flatten(prefix: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts become ``prefix_key_sub`` columns; lists stay lists (JSONL/Parquet)."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}_{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(key, v))
        else:
            out[key] = v
    return out


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, enums, paths: written as plain values.
    for attr in ("tolist", "item"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    return str(obj)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null (and keep them out of Parquet's way)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


# ------------------------------------------------------------------------ the JSONL log


class ResultLog:
    """Append-only JSON-lines file; every append is flushed and fsynced before returning."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._repair()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _repair(self) -> None:
        """Cut a torn last line (a kill in the middle of a write) so the next record starts clean."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict[str, Any]) -> None:
        if record.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {', '.join(STATUSES)}, got {record.get('status')!r}")
        line = json.dumps({k: _clean(v) for k, v in record.items()}, default=_json_default,
                          allow_nan=False)
        self._fh.write(line + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResultLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL log (a torn last line is ignored)."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            records.append(json.loads(line))
    return records


def done_hashes(path: str | Path) -> set[str]:
    """Config hashes already recorded with a final status (every status is final)."""
    if not Path(path).exists():
        return set()
    return {r["config_hash"] for r in read_records(path) if r.get("status") in STATUSES}


# ------------------------------------------------------------------------------ run.json


def read_run(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise ValueError(f"{run_dir} is not a layerbench run directory (no {RUN_FILE})")
    return json.loads(path.read_text())


def write_run(run_dir: str | Path, run: dict[str, Any]) -> None:
    """Replace run.json atomically, so a crash never leaves it half written."""
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(run, indent=2, default=_json_default, sort_keys=True))
    os.replace(tmp, path)


def timestamp() -> str:
    """Local time with its UTC offset, as every record and run file writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def start_session(run_dir: str | Path, run: dict[str, Any], argv: list[str]) -> int:
    """Add a session (one invocation of ``run``, first or resumed) and return its index."""
    sessions = run.setdefault("sessions", [])
    sessions.append({"index": len(sessions), "started": timestamp(),
                     "argv": argv, "environment": None})
    write_run(run_dir, run)
    return len(sessions) - 1


def set_environment(run_dir: str | Path, run: dict[str, Any], session: int, env: dict[str, Any]) -> None:
    run["sessions"][session]["environment"] = env
    write_run(run_dir, run)


# ------------------------------------------------------------------------- load / export


def load_results(run: str | Path) -> pd.DataFrame:
    """The results of a run as a long table: one row per (point, implementation).

    ``run`` is a run directory (its JSONL log, or its Parquet file when there is no log) or a
    ``.jsonl`` / ``.parquet`` file.  Rows get their session's environment as ``env_*`` columns.
    """
    path = Path(run)
    run_dir = path if path.is_dir() else path.parent
    if path.is_dir():
        if (path / RESULTS_FILE).exists():
            path = path / RESULTS_FILE
        elif (path / PARQUET_FILE).exists():
            path = path / PARQUET_FILE
        else:
            raise ValueError(f"{run}: no {RESULTS_FILE} or {PARQUET_FILE} in this directory")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"{run}: expected a run directory, a .jsonl or a .parquet file")
    df = pd.DataFrame.from_records(read_records(path))
    if df.empty or not (run_dir / RUN_FILE).exists():
        return df
    env_rows = []
    for s in read_run(run_dir).get("sessions", []):
        env_rows.append({"session": s["index"]} | flatten("env", s.get("environment") or {}))
    env = pd.DataFrame.from_records(env_rows)
    if len(env.columns) > 1 and "session" in df.columns:
        df = df.merge(env, on="session", how="left")
    return df


def _scalar_column(series: pd.Series) -> pd.Series:
    """Lists and mixed-type object columns become JSON text (CSV, and Parquet's single type)."""
    if series.dtype != object:
        return series
    kinds = {type(v) for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if len(kinds) <= 1 and not kinds & {list, dict}:
        return series
    return series.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                      else v if isinstance(v, str) else json.dumps(v, default=_json_default))


def _parquet_column(series: pd.Series) -> pd.Series:
    if series.dtype != object:
        return series
    kinds = {type(v) for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))}
    flat = all(not isinstance(x, (list, dict)) for v in series if isinstance(v, list) for x in v)
    if kinds == {list} and flat:
        return series  # Parquet keeps flat lists (raw samples, window energies, kernel names)
    return _scalar_column(series)


def export_results(run_dir: str | Path) -> tuple[Path, Path]:
    """Write results.parquet and results.csv next to the log; return their paths."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS_FILE).exists():
        raise ValueError(f"{run_dir}: no {RESULTS_FILE} to export")
    df = load_results(run_dir)
    parquet, csv = run_dir / PARQUET_FILE, run_dir / CSV_FILE
    df.apply(_parquet_column).to_parquet(parquet, index=False)
    df.apply(_scalar_column).to_csv(csv, index=False)
    return parquet, csv


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Records per status."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts
