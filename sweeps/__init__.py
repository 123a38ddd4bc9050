"""The sweep files that ship with layerbench: ``thesis/`` reproduces the thesis's experiments
(described in ``docs/thesis-experiments.md``), ``bench/`` is what ``layerbench bench`` runs,
``smoke.toml`` checks the pipeline in seconds.

They are installed with the package (package data), so a sweep can be named the same way in a
checkout and after ``pip install layerbench``: ``resolve`` turns ``sweeps/thesis/fc.toml`` or
``thesis/fc.toml`` into the shipped file when no such file exists relative to the current
directory.
"""

from __future__ import annotations

from pathlib import Path

SWEEP_DIR = Path(__file__).resolve().parent


def resolve(path: str | Path) -> Path:
    """The sweep file that ``path`` names.

    A path that exists (relative to the current directory, or absolute) is returned as given.
    Otherwise a relative path is looked up in the shipped sweeps, ``SWEEP_DIR``: first as it
    is (``thesis/fc.toml``), then without a leading ``sweeps/`` (``sweeps/thesis/fc.toml``).
    When neither exists the path comes back unchanged, so the caller's "no such file" error
    names what the user typed.
    """
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    candidates = [SWEEP_DIR / given]
    if given.parts and given.parts[0] == SWEEP_DIR.name:
        candidates.append(SWEEP_DIR.joinpath(*given.parts[1:]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return given
