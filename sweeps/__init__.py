"""The sweep files that ship with layerbench: ``thesis/`` reproduces the thesis's experiments,
``bench/`` is what ``layerbench bench`` runs, ``smoke.toml`` checks the pipeline in seconds."""

from pathlib import Path

SWEEP_DIR = Path(__file__).resolve().parent
