"""The HTML report: self-contained (plotly inlined), rendered in a real headless browser without
console errors (skipped where no Chromium is installed); pareto and the report on a CPU smoke run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from analysis_fakes import row, write_run
from layerbench.analysis.cross_gpu import cross_gpu_table, run_header
from layerbench.cli import main
from sweeps import SWEEP_DIR

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _browser() -> str | None:
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


def render(path: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the console messages, from headless Chromium."""
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium)")
    profile = tmp_path / "profile"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, env=os.environ | {"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def external_resources(text: str) -> list[str]:
    """The src/href of the page's tags (the inlined script's text is not parsed as tags)."""
    found: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(f"{tag} {v}" for k, v in attrs if k in ("src", "href") and v)

    Tags().feed(text)
    return found


def _two_gpus(tmp_path: Path) -> tuple[Path, Path]:
    def rows(gpu: str, speed: float) -> list[dict]:
        return [row(impl, k * 1e-3 / speed, k * 0.2 / speed ** 0.5, gpu=gpu, reference=impl == "cudnn",
                    kernel_h=k, axes={"kernel": k}, index=i, j_per_gflop=k * 0.2 / speed ** 0.5)
                for i, k in enumerate((3, 5, 7)) for impl in ("triton", "cudnn")]
    return (write_run(tmp_path / "k20", rows("Tesla K20m", 1.0)),
            write_run(tmp_path / "titan", rows("TITAN X", 3.9)))


def test_cross_gpu_ratios_and_headers(tmp_path: Path) -> None:
    a, b = _two_gpus(tmp_path)
    df_a, df_b = pd.read_parquet(a / "results.parquet"), pd.read_parquet(b / "results.parquet")
    table = cross_gpu_table(df_a, df_b)
    assert len(table) == 6
    assert table["time_ratio"].tolist() == pytest.approx([1 / 3.9] * 6)
    assert table["j_per_gflop_ratio"].tolist() == pytest.approx([1 / 3.9 ** 0.5] * 6)
    head = run_header(df_b, "titan")
    assert head["GPU"] == "TITAN X" and head["power limit"] == "700 W" and head["SM clock (energy windows)"] == "1980 MHz"


def test_html_report_renders_in_a_browser(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _two_gpus(tmp_path)
    assert main(["report", str(a), "--html", "--against", str(b)]) == 0
    path = Path(capsys.readouterr().out.split(" (")[0].strip())
    text = path.read_text()
    assert external_resources(text) == []  # nothing to fetch: plotly's JS is inlined
    assert "Tesla K20m" in text and "TITAN X" in text and "Cross-run comparison" in text
    assert "Pareto fronts" in text and "Custom kernels against the references" in text
    dom, console = render(path, tmp_path)
    assert console == []
    assert len(re.findall(r'class="plot-container', dom)) >= 5
    assert "main-svg" in dom


def test_pareto_and_html_report_on_the_cpu_smoke_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "smoke"
    assert main(["run", str(SWEEP_DIR / "smoke.toml"), "--device", "cpu", "--out", str(run), "--no-progress",
                 "--worker", "inline"]) == 0
    capsys.readouterr()
    assert main(["pareto", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no device energy was measured" in out and "| conv (conv2d) |" in out
    assert main(["report", str(run), "--html"]) == 0
    path = Path(capsys.readouterr().out.split(" (")[0].strip())
    text = path.read_text()
    assert "conv" in text and "Pareto fronts" in text
    dom, console = render(path, tmp_path)
    assert console == [] and "main-svg" in dom


def test_against_needs_html(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _two_gpus(tmp_path)
    assert main(["report", str(a), "--against", str(b)]) == 2
    assert "--html" in capsys.readouterr().err
