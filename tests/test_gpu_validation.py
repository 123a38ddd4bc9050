"""validate-gpus: the comparison of a one-GPU run with an N-GPU run, on fabricated records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layerbench import cli
from layerbench.analysis.gpu_validation import time_agrees, validate_gpu_runs, with_neighbours


def _rec(key: str, status: str = "ok", t: float = 1e-4, iqr: float = 1e-6, j: float | None = 0.01,
         gpu: int = 0, busy: list[int] | None = None) -> dict[str, Any]:
    return {"config_hash": key, "layer": "conv2d", "impl": "triton", "dtype": "fp32", "status": status,
            "time_median_s": t, "time_iqr_s": iqr, "energy_j_per_launch": j, "gpu_index": gpu,
            "busy_gpus": busy if busy is not None else [gpu]}


def test_identical_runs_pass() -> None:
    one = [_rec("a"), _rec("b", status="incorrect")]
    many = [_rec("a", gpu=2, busy=[0, 1, 2]), _rec("b", status="incorrect", gpu=1, busy=[1, 2])]
    result = validate_gpu_runs(one, many)
    assert result.passed
    assert result.compared == {"keys": 2, "status": 2, "time": 1, "energy": 1}


def test_missing_and_extra_keys_and_a_status_change_fail() -> None:
    result = validate_gpu_runs([_rec("a"), _rec("b")], [_rec("a", status="error"), _rec("c")])
    bad = {(f.check, f.key) for f in result.failures}
    assert bad == {("keys", "b"), ("keys", "c"), ("status", "a")}


def test_energy_with_neighbours_within_three_percent() -> None:
    one = [_rec("a", j=0.0100), _rec("b", j=0.0100)]
    many = [_rec("a", j=0.0102, gpu=1, busy=[0, 1]), _rec("b", j=0.0104, gpu=1, busy=[0, 1])]
    result = validate_gpu_runs(one, many)
    assert [(f.check, f.key) for f in result.failures] == [("energy", "b")]
    # measured alone on the N-GPU run too: nothing to compare for energy
    alone = validate_gpu_runs(one, [_rec("a", j=0.02, gpu=1, busy=[1]), _rec("b", gpu=3)])
    assert alone.passed and "energy" not in alone.compared


def test_time_within_noise() -> None:
    assert time_agrees(1e-4, 1.04e-4, 1e-7, 1e-7)[0]  # within 5 %
    assert not time_agrees(1e-4, 1.10e-4, 1e-7, 1e-7)[0]
    assert time_agrees(1e-4, 1.10e-4, 6e-6, 1e-7)[0]  # a noisy record allows 2 IQRs
    result = validate_gpu_runs([_rec("a", t=1e-4)], [_rec("a", t=2e-4)])
    assert [f.check for f in result.failures] == ["time"]


def test_with_neighbours() -> None:
    assert with_neighbours({"gpu_index": 1, "busy_gpus": [0, 1]})
    assert not with_neighbours({"gpu_index": 1, "busy_gpus": [1]})
    assert not with_neighbours({})
    assert with_neighbours({"busy_gpus": ["h1:0", "h2:0"]})
    # A Ray run names GPUs host:index: alone on its GPU is not "with neighbours".
    assert not with_neighbours({"host": "h1", "gpu_index": 0, "busy_gpus": ["h1:0"]})
    assert with_neighbours({"host": "h1", "gpu_index": 0, "busy_gpus": ["h1:0", "h2:0"]})


def test_command(tmp_path: Path, capsys: Any) -> None:
    for name, rows in (("one", [_rec("a")]), ("many", [_rec("a", j=0.02, gpu=1, busy=[0, 1])])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["validate-gpus", str(tmp_path / "one"), str(tmp_path / "one")]) == 0
    assert cli.main(["validate-gpus", str(tmp_path / "one"), str(tmp_path / "many")]) == 1
    assert "energy  FAIL (1 of 1)" in capsys.readouterr().out
    assert cli.main(["validate-gpus", str(tmp_path / "one"), str(tmp_path / "nothing")]) == 2
