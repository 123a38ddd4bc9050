"""layerbench findings on fabricated thesis runs: each published finding, ours, and the verdict."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis_fakes import row, write_run
from layerbench.analysis.findings import check_findings, r_squared, thesis_findings
from layerbench.cli import main


def _exp(rows: list[dict], name: str) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["experiment"] = name
    return df


def alexnet(conv: float = 85, fc: float = 11, pool: float = 3) -> pd.DataFrame:
    rows = [row("cudnn", conv / 5, conv / 5 * 100, name=f"conv{i}", reference=True, index=i) for i in range(5)]
    rows += [row("cublas", fc / 3, fc / 3 * 100, layer="linear", name=f"fc{i}", reference=True, index=5 + i)
             for i in range(3)]
    rows += [row("cudnn", pool, pool * 100, layer="pool2d", name="pool1", reference=True, index=9),
             row("cudnn", 1, 100, layer="relu", name="relu1", reference=True, index=10),
             row("triton", 1000, 1e6, name="conv0", index=0)]  # not a reference: not counted
    return _exp(rows, "alexnet_layers")


def batch_size(power_rises: bool = True) -> pd.DataFrame:
    rows = []
    for b in (16, 32, 64, 96, 128):
        p = 80 + (b / 4 if power_rises else 0)
        t = b * 1e-3
        rows.append(row("cudnn", t, p * t, name="conv1", batch=b, reference=True, flops=b * 10**9,
                        gflops_per_w=10 + b / 10,
                        axes={"batch": b}, index=b))
    return _exp(rows, "batch_size")


def pool_method(ratio: float) -> pd.DataFrame:
    rows = []
    for name in ("55x55x64", "27x27x192"):
        rows.append(row("cudnn", 1e-4, 1e-2, layer="pool2d", name=name, method="max", reference=True, axes={"method": "max"}))
        rows.append(row("cudnn", 1e-4, 1e-2 * ratio, layer="pool2d", name=name, method="avg", reference=True, axes={"method": "avg"}))
    return _exp(rows, "pool_method")


def kernel_size(flat: bool) -> pd.DataFrame:
    rows = []
    for k, p in ((3, 200), (5, 260), (7, 300), (9, 305 if flat else 360), (11, 302 if flat else 420)):
        rows.append(row("cudnn", k * 1e-3, p * k * 1e-3, kernel_h=k, reference=True, axes={"kernel": k}))
    return _exp(rows, "conv_kernel_size")


def input_size() -> pd.DataFrame:
    rows = [row("cudnn", s * s * 1e-6, s * s * 3e-4, height=s, width=s, reference=True, axes={"size": s})
            for s in (13, 16, 27, 56, 128)]
    return _exp(rows, "conv_input_size")


def test_the_data_carries_the_table_numbers() -> None:
    data = thesis_findings()
    ids = {f["id"]: f for f in data["findings"]}
    assert ids["A2-conv-share"]["thesis"] == {"time_share": 0.85, "energy_share": 0.87}
    assert ids["A2-conv-share"]["tables"] == "5-1"
    assert ids["A6-avg-vs-max"]["thesis"] == {"ratio_min": 1.38, "ratio_max": 1.77}
    assert ids["A3-batch-power"]["thesis"]["power_w_at_128"] == 111.2
    assert all(f["tables"] for f in data["findings"])


def test_r_squared() -> None:
    assert r_squared([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert r_squared([1, 2, 3, 4], [1, 4, 1, 4]) < 0.3


def test_findings_hold_on_a_thesis_like_run() -> None:
    rows = {r["id"]: r for r in check_findings([alexnet(), batch_size(), pool_method(1.5), kernel_size(True),
                                                input_size()])}
    assert rows["A2-conv-share"]["verdict"] == "holds"
    assert "time 85 %, energy 85 % (of 10 layers)" in rows["A2-conv-share"]["ours"]  # 85 of 100; triton not counted
    assert rows["A2-fc-share"]["verdict"] == "holds" and rows["A2-pool-share"]["verdict"] == "holds"
    assert rows["A3-batch-linear"]["verdict"] == "holds"
    assert rows["A3-batch-power"]["verdict"] == "holds"
    assert rows["A6-avg-vs-max"]["verdict"] == "holds" and "1.50-1.50x" in rows["A6-avg-vs-max"]["ours"]
    assert rows["A4-kernel-power"]["verdict"] == "holds"
    assert rows["A4-input-area"]["verdict"] == "holds"
    assert rows["B-gflops-per-w-batch"]["verdict"] == "holds"
    assert rows["A5-fc-parameters"]["verdict"] == "not checked" and "no fc run" in rows["A5-fc-parameters"]["ours"]


def test_findings_that_no_longer_hold() -> None:
    rows = {r["id"]: r for r in check_findings([alexnet(conv=40, fc=55, pool=4), batch_size(power_rises=False),
                                                pool_method(0.94), kernel_size(False)])}
    assert rows["A2-conv-share"]["verdict"] == "does not hold"
    assert rows["A2-fc-share"]["verdict"] == "does not hold"
    assert rows["A6-avg-vs-max"]["verdict"] == "does not hold" and "0.94" in rows["A6-avg-vs-max"]["ours"]
    assert rows["A4-kernel-power"]["verdict"] == "does not hold"
    assert rows["A3-batch-power"]["verdict"] == "does not hold"


def test_kernel_power_says_when_the_board_was_at_its_power_limit() -> None:
    d = kernel_size(True)
    d["energy_telemetry_power_capped_s"] = [0.0, 0.0, 2.4, 2.3, 0.0]
    rows = {r["id"]: r for r in check_findings([d])}
    assert "2 of 3 from 7x7 at the board's power limit" in rows["A4-kernel-power"]["ours"]
    assert "power limit" not in {r["id"]: r for r in check_findings([kernel_size(True)])}["A4-kernel-power"]["ours"]


def test_findings_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_run(tmp_path / "alexnet", alexnet().to_dict("records"))
    p = write_run(tmp_path / "pool", pool_method(0.94).to_dict("records"))
    html = tmp_path / "findings.html"
    assert main(["findings", str(a), str(p), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "| convolution takes most of AlexNet's time and energy | 5-1 | time 85 %, energy 87 % |" in out
    assert "does not hold" in out and "not checked" in out
    assert "does not hold" in html.read_text()


def test_the_html_report_of_a_thesis_run_has_its_findings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = write_run(tmp_path / "pool", pool_method(0.94).to_dict("records"))
    assert main(["report", str(run), "--html"]) == 0
    text = Path(capsys.readouterr().out.split(" (")[0].strip()).read_text()
    assert "The studies&#x27; findings on this GPU" in text and "average pooling costs more energy" in text
    assert "convolution takes most" not in text  # only the findings this experiment checks
