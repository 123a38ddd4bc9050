"""Configs that several sweep files of one ``layerbench run`` hold: measured once, copied after.

The thesis set repeats points across its files (AlexNet's conv2 at batch 128 is a point of the
layer study, the batch-size sweep and the training study): 1,392 rows, of which 1,104 distinct
configs and 309 of 411 energy rows.  A row whose ``config_hash`` (point, implementation,
measurement options, device; never the experiment) was recorded by an earlier file of the same
command is not measured again: its record is copied into the later file's run, with that point's
own identity and axes, and ``copied_from`` naming the experiment and session that measured it.
``layerbench run --remeasure`` measures every file's rows itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from layerbench.results.identity import config_hash
from layerbench.results.records import Record
from layerbench.sweep import Sweep

# A failed harness or a crashed worker is worth another try in the next file; every other status
# is what this config does on this GPU.
NOT_COPIED = ("error",)


class SharedConfigs:
    """The rows recorded so far by the files of one command, by ``config_hash``."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows of a run (the first record of a config is kept)."""
        for row in rows:
            if row.get("status") not in NOT_COPIED and row.get("config_hash"):
                self.rows.setdefault(str(row["config_hash"]), row)

    def get(self, fresh: Record) -> dict[str, Any] | None:
        """A recorded row of ``fresh``'s config, as a row of ``fresh``'s run, or None."""
        source = self.rows.get(fresh.config_hash)
        return None if source is None else copied_row(source, fresh)


def copied_row(source: dict[str, Any], fresh: Record) -> dict[str, Any]:
    """``source``'s measurements under ``fresh``'s identity (experiment, point index, name,
    session, axes), and where they were measured."""
    row = {k: v for k, v in source.items() if not k.startswith("axis_")}
    own = fresh.to_dict()
    for key in ("status", "message"):
        own.pop(key)
    row.update(own)
    row["copied_from"] = source.get("copied_from") or f"{source.get('experiment')} (session {source.get('session')})"
    return row


def repeated_rows(sweeps: Iterable[Sweep], device: str) -> tuple[int, int]:
    """(rows, energy rows) of ``sweeps`` whose config an earlier one of them holds: what a run of
    them all copies instead of measuring."""
    seen: set[str] = set()
    rows = energy = 0
    for s in sweeps:
        for p in s.points:
            for impl in p.implementations:
                h = config_hash(p, impl, s.measure, device)
                if h in seen:
                    rows += 1
                    energy += impl in p.energy_impls
                seen.add(h)
    return rows, energy
