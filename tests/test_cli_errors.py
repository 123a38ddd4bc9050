"""The command refuses mistakes up front, shows failures in its exit code and never ends in a traceback.

Every test runs the real entry point in a subprocess (``python -m layerbench``), as a user would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from layerbench.cli import build_parser
from layerbench.measure.energy import EnergyMeter
from layerbench.results import rundir as results

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "sweeps" / "smoke.toml"
README = (ROOT / "README.md").read_text()

RELU = """experiment = "tiny"
layer = "relu"
implementations = ["torch"]
[params]
batch = 1
channels = 2
size = 3
[timing]
fixed_samples = 2
warmup = 0
[energy]
enabled = false
"""

# A user's kernels in the working directory: one wrong, one that fails.
USER_KERNELS = '''
def wrong(spec, dtype, layout, tensors, out):
    def launch():
        out.fill_(7)
    return launch


def broken(spec, dtype, layout, tensors, out):
    def launch():
        raise RuntimeError("boom")
    return launch


def right(spec, dtype, layout, tensors, out):
    import torch

    def launch():
        torch.clamp_min(tensors["x"], 0, out=out)
    return launch
'''


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [full.get("PYTHONPATH")])])
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "layerbench", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2 with one line on stderr that names ``words``, and no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("layerbench: error: "), err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "relu.toml").write_text(RELU)
    (d / "userkern.py").write_text(USER_KERNELS)
    return d


@pytest.fixture(scope="module")
def finished_run(work: Path) -> Path:
    """A run with one correct (torch) and one incorrect (the user's) record."""
    proc = cli("run", "relu.toml", "--device", "cpu", "--out", "done", "--no-progress",
               "--impl", "userkern:wrong", "--fail-on", "none", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "done"


def _read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write: chmod 555, or (as root, who may write anyway) sysfs."""
    if os.geteuid() == 0:
        return Path("/sys/layerbench-test")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "sub"


# --------------------------------------------------------- 4. unknown --only name


def test_only_with_an_unknown_name_is_refused_and_claims_no_files(work: Path) -> None:
    proc = cli("run", str(SMOKE), "--device", "cpu", "--only", "tritn", "--out", "typo", cwd=work)
    one_line_error(proc, "--only tritn", "torch, triton")
    assert not (work / "typo").exists() and ".parquet" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_where_with_an_unknown_name_is_refused_and_claims_no_files(work: Path, device: str) -> None:
    # With no GPU visible, --device cuda still names the typo first: it is the mistake to fix.
    proc = cli("run", str(SMOKE), "--device", device, "--where", "dtyp == 'fp32'", "--out", "typo", cwd=work,
               env={"CUDA_VISIBLE_DEVICES": ""})
    one_line_error(proc, "--where for", "unknown name 'dtyp'")
    assert not (work / "typo").exists()


def test_a_filter_that_keeps_no_row_is_refused_and_claims_no_files(work: Path) -> None:
    proc = cli("run", str(SMOKE), "--device", "cpu", "--where", "dtype == 'fp64'", "--out", "empty", cwd=work)
    one_line_error(proc, "nothing to run: ", "smoke.toml: none of its rows pass its where, --where and --only")
    assert not (work / "empty").exists()


@pytest.mark.parametrize("command", ["plan", "run"])
def test_an_energy_filter_that_keeps_no_row_is_refused(work: Path, command: str) -> None:
    text = RELU.replace("enabled = false", "where = \"impl == 'triton'\"")
    (work / "e.toml").write_text(text)
    proc = cli(command, "e.toml", *(("--device", "cpu") if command == "run" else ()), cwd=work)
    one_line_error(proc, "energy.where: admits none of the sweep's 1 row, so no energy would be measured")


# ------------------------------------------------ 5. unknown or unloadable implementations


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("impl,words", [
    (None, ("implementations", "'tirton'", "known: ", "triton")),   # a typo in the sweep file
    (":build", ("--impl :build", "package.module:function")),
    ("conv2d=", ("--impl 'conv2d='", "no implementation name")),
    ("", ("--impl ''", "no implementation name")),
    ("nosuchmodule:build", ("--impl nosuchmodule:build", "cannot import nosuchmodule")),
])
def test_unknown_or_unloadable_implementations_are_refused(work: Path, command: str, impl: str | None,
                                                           words: tuple[str, ...]) -> None:
    if impl is None:
        (work / "typo.toml").write_text(RELU.replace('["torch"]', '["torch", "tirton"]'))
        args = [command, "typo.toml"]
    else:
        args = [command, "relu.toml", "--impl", impl]
    proc = cli(*args, "--device", "cpu", "--out" if command == "run" else "--quick",
               *(["never"] if command == "run" else []), cwd=work)
    one_line_error(proc, *words)
    assert not (work / "never").exists()


def test_a_user_module_in_the_working_directory_imports(work: Path, tmp_path: Path) -> None:
    # As the installed console script runs: a script elsewhere (its own directory first on sys.path,
    # not the working directory), calling layerbench.entry:main.
    script = tmp_path / "bin" / "layerbench"
    script.parent.mkdir()
    script.write_text("import sys\nfrom layerbench.entry import main\nsys.exit(main())\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, str(script), "run", "relu.toml", "--device", "cpu", "--impl",
                           "userkern:right", "--only", "userkern:right", "--out", "user", "--no-progress"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = results.read_records(work / "user" / results.RESULTS_FILE)
    assert [(r["impl"], r["status"]) for r in recs] == [("userkern:right", "ok")]
    assert "current directory" in README  # and the README says how --impl finds modules


# ---------------------------------------------------------- 6. wrong parameter types


@pytest.mark.parametrize("value,shown", [('"one"', "a string 'one'"), ("1.5", "a number 1.5"),
                                         ("true", "a boolean true")])
def test_wrong_parameter_types_are_a_file_error(work: Path, value: str, shown: str) -> None:
    (work / "types.toml").write_text(RELU.replace("batch = 1", f"batch = {value}"))
    proc = cli("plan", "types.toml", cwd=work)
    one_line_error(proc, "types.toml", "params.batch: must be an integer", shown)


# ----------------------------------------------------------------------- 7. compare


def test_compare_refuses_unknown_baseline_and_negative_threshold(finished_run: Path) -> None:
    one_line_error(cli("compare", str(finished_run), "--baseline", "nosuch"), "nosuch",
                   "its implementations: torch, userkern:wrong")
    proc = cli("compare", str(finished_run), "--threshold", "-1")
    assert proc.returncode == 2 and "--threshold: must be a number >= 0, got -1" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ 8. CPU choices


def test_bench_does_not_offer_the_cpu_and_list_filters_by_device() -> None:
    proc = cli("bench", "--device", "cpu")
    assert proc.returncode == 2 and "invalid choice: 'cpu'" in proc.stderr and "Traceback" not in proc.stderr
    helptext = cli("bench", "--help").stdout
    assert "cuda only" in helptext and "{cuda,cpu}" not in helptext
    out = cli("list", "impls", "--device", "cpu").stdout
    rows = [line.split()[:2] for line in out.splitlines()[2:] if line.startswith("  ")]
    assert rows and all(name in ("torch", "triton") for _, name in rows), out
    assert {"cudnn", "cublas", "cupy"} <= {name for _, name in
                                          (line.split()[:2] for line in cli("list", "impls").stdout.splitlines()[2:])}


# ------------------------------------------------------------------ 9. Python version


def test_requires_python_matches_the_standard_library_used() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # tomllib: 3.11 and later
    assert sys.version_info >= (3, 11)


# ------------------------------------------------------------- 10. failures in the exit code


def test_run_exit_code_follows_fail_on(work: Path) -> None:
    proc = cli("run", "relu.toml", "--device", "cpu", "--impl", "userkern:wrong", "--impl", "userkern:broken",
               "--out", "failing", "--no-progress", cwd=work)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 incorrect" in proc.stderr and "1 error" in proc.stderr and "--fail-on" in proc.stderr
    statuses = sorted(r["status"] for r in results.read_records(work / "failing" / results.RESULTS_FILE))
    assert statuses == ["error", "incorrect", "ok"]
    # Only the statuses named count; "none" always exits 0 once the run completes.
    for fail_on, code in (("error", 1), ("oom", 0), ("none", 0)):
        again = cli("run", "relu.toml", "--device", "cpu", "--impl", "userkern:wrong", "--impl",
                    "userkern:broken", "--out", "failing", "--resume", "--no-progress", "--fail-on", fail_on,
                    cwd=work)
        assert again.returncode == code, (fail_on, again.stderr[-2000:])
    bad = cli("run", "relu.toml", "--device", "cpu", "--fail-on", "wrong", cwd=work)
    assert bad.returncode == 2 and "--fail-on" in bad.stderr and "incorrect" in bad.stderr
    assert "--fail-on STATUSES" in cli("run", "--help").stdout


# --------------------------------------------------------- 12. one line instead of a traceback


def test_out_naming_a_file_is_refused(work: Path) -> None:
    (work / "afile").write_text("x")
    one_line_error(cli("run", "relu.toml", "--device", "cpu", "--out", "afile", cwd=work),
                   "--out afile", "is a file, not a directory")


def test_read_only_outputs_are_one_line_errors(work: Path, finished_run: Path, tmp_path: Path) -> None:
    ro = _read_only_dir(tmp_path)
    one_line_error(cli("run", "relu.toml", "--device", "cpu", "--out", str(ro), cwd=work), str(ro))
    one_line_error(cli("report", str(finished_run), "--out", str(ro)), str(ro))
    one_line_error(cli("compare", str(finished_run), "--csv", str(ro / "cmp.csv")), str(ro))
    (work / "afile").write_text("x")
    one_line_error(cli("report", str(finished_run), "--out", str(work / "afile")), "is a file")
    # export into a run directory whose table cannot be written (a directory stands in its place)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (results.RESULTS_FILE, results.RUN_FILE):
        (copy / name).write_bytes((finished_run / name).read_bytes())
    if os.geteuid() == 0:
        (copy / results.PARQUET_FILE).mkdir()
    else:
        copy.chmod(0o555)
    try:
        one_line_error(cli("export", str(copy)), str(copy))
    finally:
        copy.chmod(0o755)


def test_compare_on_a_run_without_records(work: Path) -> None:
    empty = work / "empty"
    empty.mkdir()
    (empty / results.RESULTS_FILE).write_text("")
    one_line_error(cli("compare", str(empty)), "no records")


def test_list_into_a_closed_pipe_is_quiet() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(f"{sys.executable} -m layerbench list | head -1", shell=True, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "layers:" and proc.stderr == "", proc.stderr


# -------------------------------------------------------------- 13. what a CLI user expects


def test_version_several_plan_files_and_debug_after_the_command(work: Path) -> None:
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("layerbench ")
    (work / "relu2.toml").write_text(RELU.replace('"tiny"', '"tiny2"').replace("(", ""))
    proc = cli("plan", "relu.toml", "relu2.toml", "--debug", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "relu.toml" in proc.stdout and "relu2.toml" in proc.stdout


def test_every_option_and_positional_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.dest}" for name, p in [("layerbench", parser), *sub.choices.items()]
               for a in p._actions if not isinstance(a, argparse._SubParsersAction)
               and (a.help is None or a.help == argparse.SUPPRESS)]
    assert not missing
    assert all(choice.help for choice in sub._choices_actions)


def test_readme_lists_every_command_and_the_cpu_torch_step_first() -> None:
    use = README.split("## Use", 1)[1].split("\n## ", 1)[0]
    for command in ("info", "plan", "run", "list", "compare", "report", "export", "bench", "validate-energy"):
        assert f"layerbench {command}" in use, command
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert install.index("pip install torch==2.13.0") < install.index("pip install -e")


# ------------------------------------------------------------------------------ 14. info


def test_info_without_a_gpu_says_so_and_has_table_headers() -> None:
    proc = cli("info", env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("GPU: none visible to torch")
    assert '"device": "cpu"' in proc.stdout and '"device": "cuda"' not in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.strip().startswith("layer "))
    assert header.split()[:4] == ["layer", "name", "backend", "devices"]


# ----------------------------------------------------------------------- 15. plan wording


def test_plan_shows_the_invalid_setting_and_singular_counts(work: Path) -> None:
    (work / "one.toml").write_text(RELU.replace('layer = "relu"', 'layer = "relu"\ninvalid = "skip"'))
    proc = cli("plan", "one.toml", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "1 point, 1 result row;" in proc.stdout and 'invalid = "skip"' in proc.stdout
    proc = cli("plan", "relu.toml", cwd=work)
    assert 'invalid = "record"' in proc.stdout


def test_plan_says_when_energy_will_not_be_measured(work: Path) -> None:
    """A sweep that asks for energy on a machine without a meter: plan says so and counts no energy time."""
    if EnergyMeter(torch.device("cpu")).available:
        pytest.skip("RAPL is readable here: energy would be measured")
    (work / "energy.toml").write_text(RELU.replace("enabled = false", "enabled = true"))
    proc = cli("plan", "energy.toml", "--device", "cpu", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "note: energy will not be measured on cpu here: RAPL unavailable" in proc.stdout
    assert "+ energy 0 s" in proc.stdout


# ------------------------------------------- unsupported rows shown by plan, before anything runs


def test_plan_shows_unsupported_rows_with_the_reason() -> None:
    # cuDNN has no FC layer: --impl cudnn goes to the smoke file's conv, pool and relu points only.
    proc = cli("plan", str(SMOKE), "--device", "cpu", "--impl", "cudnn", env={"COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "8 points, 22 result rows (6 unsupported here" in proc.stdout
    assert proc.stdout.count("unsupported: cudnn runs on cuda only, not cpu") == 6


def test_point_timeout_ignored_in_process_says_so(work: Path) -> None:
    proc = cli("run", "relu.toml", "--device", "cpu", "--point-timeout", "5", "--out", "timeout", "--no-progress",
               cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--point-timeout 5 s cannot be enforced when points run in this process" in proc.stderr
