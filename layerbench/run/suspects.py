"""Candidates of a build (a path into a library, a kernel variant) that crashed a worker, hung it
or left its CUDA context unusable: named in the record, and left out of the rest of the run.

A build announces each candidate it tries (``layerbench.builders.attempting``: an ``attempt``
message); ``AttemptWatch`` follows them through one group.  When the group ends badly, ``culprit``
names the candidate that was running (a crash or a timeout) or whose error poisoned the context;
``Suspects`` keeps it for the run, and later builds leave it out (their details say
``skipped: ...``).  Only a candidate is left out, never an implementation: a build that has no
other way still runs on the next point.  A kernel variant new to a GPU then costs one point, not
every point of the run.
"""

from __future__ import annotations

import threading


class AttemptWatch:
    """The candidates of one group's builds, from their ``(event, path)`` announcements."""

    def __init__(self) -> None:
        self.running: list[str] = []  # nested: the innermost last
        self.raised: str | None = None  # the innermost candidate the latest error left through

    def see(self, event: str, path: str) -> None:
        if event == "trying":
            self.running.append(path)
            self.raised = None  # an earlier error was handled: the build went on
            return
        if path in self.running:
            del self.running[self.running.index(path):]
        inside = self.raised is not None and (self.raised == path or self.raised.startswith(path + " > "))
        if event == "failed":
            if not inside:
                self.raised = path
        elif inside:  # the error was caught within this candidate, which then returned
            self.raised = None

    def phase(self) -> None:
        """A new phase of the group began: the builds' candidates are behind it."""
        self.running, self.raised = [], None

    def culprit(self, outcome: str) -> str | None:
        """The candidate to blame for ``outcome`` ("poisoned": the one whose error it was; a crash or
        a timeout: the one running), or None where none was."""
        if outcome == "poisoned":
            return self.raised
        return self.running[-1] if self.running else None


class Suspects:
    """The run's candidates to leave out: path -> why (shared by the workers of several GPUs)."""

    def __init__(self) -> None:
        self._why: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, path: str, why: str) -> None:
        with self._lock:
            self._why.setdefault(path, why)

    def blame(self, watch: AttemptWatch, outcome: str, detail: str, where: str) -> str | None:
        """Keep the candidate ``watch`` blames for ``outcome`` ("crashed", "timeout", "poisoned";
        ``detail``: its message) on the group ``where``; returns it, or None where none is to blame."""
        culprit = watch.culprit(outcome)
        if culprit is not None:
            what = {"poisoned": "left the CUDA context unusable", "timeout": "hung"}.get(outcome, "crashed the worker")
            first_line = detail.splitlines()[0][:200] if detail else outcome
            self.add(culprit, f"{what} on {where} earlier in this run ({first_line})")
        return culprit

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._why)
