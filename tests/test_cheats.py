"""Builders written to cheat the harness, each caught with a clear ``incorrect`` message.

On the CPU: an output written only in part, a cached result (returned again, or left in place
while later launches do nothing), a kernel correct on its first launch only, and one that stops
computing after a few launches (caught by the check after timing).  The stream trick (work on a
stream of its own, which the timing events miss) needs a GPU: its verdict is tested here on
made-up probe times, and on a real side stream in the ``gpu`` test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import runner_fakes
from layerbench import registry, sweep
from layerbench.check import streams
from layerbench.check.streams import DeviceActivity, StreamProbe, check_stream, escape_verdict, stream_verdict
from layerbench.layers import ReLU
from layerbench.results import rundir as results
from layerbench.run import group
from layerbench.run.sweep_runner import RunOptions, run_sweep
from layerbench.testing import check_implementation

SPEC = ReLU(batch=2, channels=3, height=5, width=7)


def honest(spec: Any, dtype: Any, layout: str, t: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    return lambda: torch.clamp_min(t["x"], 0, out=out)


def partial_write(spec: Any, dtype: Any, layout: str, t: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    """Writes the first half of the output only."""
    x, flat = t["x"].reshape(-1), out.view(-1)
    half = flat.numel() // 2

    def launch() -> None:
        torch.clamp_min(x[:half], 0, out=flat[:half])
    return launch


def cached_tensor(spec: Any, dtype: Any, layout: str, t: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    """Computes once into a tensor of its own and returns that tensor on every launch."""
    cache: list[torch.Tensor] = []

    def launch() -> torch.Tensor:
        if not cache:
            cache.append(torch.clamp_min(t["x"], 0))
        return cache[0]
    return launch


def cached_in_place(spec: Any, dtype: Any, layout: str, t: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    """Computes into ``out`` once; later launches do nothing."""
    done: list[bool] = []

    def launch() -> None:
        if not done:
            torch.clamp_min(t["x"], 0, out=out)
            done.append(True)
    return launch


def first_call_only(spec: Any, dtype: Any, layout: str, t: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    """Correct on the first launch; later launches compute something else."""
    calls = [0]

    def launch() -> None:
        calls[0] += 1
        if calls[0] == 1:
            torch.clamp_min(t["x"], 0, out=out)
        else:
            out.copy_(t["x"].abs())
    return launch


def tires(spec: Any, dtype: Any, layout: str, t: dict[str, torch.Tensor], out: torch.Tensor) -> Any:
    """Correct for four launches (the checks see two), then does nothing."""
    calls = [0]

    def launch() -> None:
        calls[0] += 1
        if calls[0] <= 4:
            torch.clamp_min(t["x"], 0, out=out)
    return launch


CHEATS = {"cheat_partial": partial_write, "cheat_cached_tensor": cached_tensor,
          "cheat_cached_in_place": cached_in_place, "cheat_first_call_only": first_call_only,
          "cheat_tires": tires, "honest": honest}

# What the harness must say about each (``cheat_tires`` passes a two-launch check: the runner's
# check after the timed launches catches it).
EXPECTED = {
    "cheat_partial": "output only partly written: 105 of 210 elements still hold the NaN",
    "cheat_cached_tensor": "output not recomputed on launch 2 (same tensors, new input values): the input "
                           "changed but the output did not",
    "cheat_cached_in_place": "output not recomputed on launch 2 (same tensors, new input values): the input "
                             "changed and the launch wrote nothing",
    "cheat_first_call_only": "correct on the first launch only: wrong on launch 2",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_implementation_catches(name: str) -> None:
    result = check_implementation(CHEATS[name], SPEC, "fp32", "NCHW", "cpu", seed=3)
    assert not result.ok
    assert EXPECTED[name] in result.message, result.message


def test_honest_kernel_passes_every_relaunch() -> None:
    assert check_implementation(honest, SPEC, "fp32", "NCHW", "cpu", seed=3, runs=4).ok
    assert check_implementation(tires, SPEC, "fp32", "NCHW", "cpu", seed=3, runs=2).ok  # the runner catches it


SWEEP = """
experiment = "cheats"
layer = "relu"
implementations = {impls}
dtypes = ["fp32"]
[params]
batch = 2
channels = 3
height = 5
width = 7
[timing]
fixed_samples = 3
[energy]
enabled = false
"""


@pytest.fixture
def cheats(monkeypatch: pytest.MonkeyPatch) -> None:
    runner_fakes.install(monkeypatch)
    for name, build in CHEATS.items():
        registry.register("relu", name, backend="user", devices=("cpu",))(build)


def _run(tmp_path: Path, impls: list[str]) -> dict[str, dict[str, Any]]:
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.format(impls=json.dumps(impls)))
    run_dir = run_sweep(sweep.load_sweep(path), RunOptions(device="cpu", out=tmp_path / "run",
                                                           in_process=True, progress=False, argv=["t"]))
    return {r["impl"]: r for r in results.read_records(run_dir / results.RESULTS_FILE)}


def test_runner_records_each_cheat_as_incorrect(tmp_path: Path, cheats: None) -> None:
    recs = _run(tmp_path, list(CHEATS))
    assert recs["honest"]["status"] == "ok", recs["honest"]["message"]
    for name, text in EXPECTED.items():
        assert recs[name]["status"] == "incorrect", name
        assert text in recs[name]["message"], recs[name]["message"]
        assert "time_median_s" not in recs[name]  # never timed
    tired = recs["cheat_tires"]
    assert tired["status"] == "incorrect" and "time_median_s" in tired
    assert tired["message"].startswith("output not recomputed after the 3 timed samples"), tired["message"]


def test_runner_records_work_off_the_current_stream(tmp_path: Path, cheats: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream probe's verdict (a GPU measurement) makes the record incorrect with its reason."""
    monkeypatch.setattr(group, "check_stream", lambda kernel, device: "work escapes the current stream: ...")
    recs = _run(tmp_path, ["honest"])
    assert recs["honest"]["status"] == "incorrect"
    assert recs["honest"]["message"].startswith("work escapes the current stream")


def _trace(*side: tuple[int, float, float]) -> list[DeviceActivity]:
    """A spin on stream 7 (0-1000 us), the kernel's activities, a marker on stream 7 at 1100 us."""
    return [DeviceActivity("spin_kernel", 7, 0.0, 1000.0), *(DeviceActivity("relu", *a) for a in side),
            DeviceActivity("marker", 7, 1100.0, 1102.0)]


def test_stream_verdict_from_a_profile() -> None:
    assert stream_verdict(_trace((7, 1001.0, 1090.0))) is None  # on the current stream
    assert stream_verdict(_trace((13, 1001.0, 1090.0))) is None  # forked after the spin, joined
    waiting = stream_verdict(_trace((13, 1001.0, 1150.0)))  # ordered after the spin, never joined
    assert waiting is not None and waiting.startswith("work escapes the current stream: 1 launch(es) ran on "
                                                      "stream 13, not on the current stream 7")
    assert "still running when the next launch on the current stream began" in waiting
    racing = stream_verdict(_trace((13, 20.0, 25.0)))  # ran while the spin held the current stream
    assert racing is not None and "started before the current stream's earlier work had ended" in racing
    assert stream_verdict(_trace((13, 999.5, 1100.5))) is None  # within the clocks' rounding
    assert stream_verdict([]) is None


def _probes(*pairs: tuple[float, float]) -> list[StreamProbe]:
    return [StreamProbe(10, event, wall) for event, wall in pairs]


def test_stream_verdict() -> None:
    # On the current stream the events see nearly all of the synchronised wall time.
    assert escape_verdict(_probes((4.9e-3, 5.0e-3), (5.0e-3, 5.1e-3), (4.8e-3, 5.0e-3))) is None
    # Host-bound launches: the events still cover the enqueueing.
    assert escape_verdict(_probes((0.3e-3, 0.35e-3), (0.3e-3, 0.34e-3), (0.3e-3, 0.33e-3))) is None
    # Work on a stream of its own: the events see only the host's enqueueing.
    message = escape_verdict(_probes((0.05e-3, 5.0e-3), (0.04e-3, 5.2e-3), (0.06e-3, 5.1e-3)))
    assert message is not None and message.startswith("work escapes the current stream")
    assert "5 ms until the device was idle" in message and "0.05 ms between events" in message
    # One preempted probe cannot flag an honest kernel.
    assert escape_verdict(_probes((4.9e-3, 5.0e-3), (0.05e-3, 5.0e-3), (4.9e-3, 5.0e-3))) is None
    # A gap within the synchronisation's latency is no evidence.
    assert escape_verdict(_probes((0.1e-3, 0.5e-3), (0.1e-3, 0.5e-3), (0.1e-3, 0.5e-3))) is None
    assert check_stream(lambda: None, torch.device("cpu")) is None


@pytest.mark.parametrize("seconds, launches", [(1e-3, 1), (2e-5, 5), (1e-5, 10), (1e-7, streams.MAX_PROFILED_LAUNCHES)])
def test_a_stream_profile_holds_about_a_fixed_wall_time_of_launches(seconds: float, launches: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Short kernels are launched several times in a profile (their side work must outlast the
    marker's start), long ones once, never more than the cap."""
    clock = [0.0]

    def kernel() -> None:  # one launch and its synchronisation take ``seconds`` of wall time
        clock[0] += seconds

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(streams.time, "perf_counter", lambda: clock[0])
    assert streams.launches_filling(kernel, torch.device("cuda"), streams.PROFILED_WORK_S,
                                    streams.MAX_PROFILED_LAUNCHES) == launches


@pytest.mark.gpu
@pytest.mark.parametrize("size", [2**10, 2**20, 2**26])
def test_side_stream_is_caught_on_a_gpu(size: int) -> None:
    device = torch.device("cuda")
    x = torch.randn(size, device=device)
    out = torch.empty_like(x)
    side = torch.cuda.Stream(device)

    def on_current_stream() -> None:
        torch.clamp_min(x, 0, out=out)

    def on_side_stream() -> None:  # ordered after the current stream's work, never joined
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            torch.clamp_min(x, 0, out=out)

    def racing() -> None:  # not even ordered after the current stream's work
        with torch.cuda.stream(side):
            torch.clamp_min(x, 0, out=out)

    def joined() -> None:  # a fork that joins: the events cover it
        on_side_stream()
        torch.cuda.current_stream(device).wait_stream(side)

    for kernel in (on_current_stream, on_side_stream, racing, joined):
        kernel()
    torch.cuda.synchronize(device)
    assert check_stream(on_current_stream, device) is None
    assert check_stream(joined, device) is None
    for _ in range(3):  # a miss is a race against the marker's start: each check must win it
        for cheat in (on_side_stream, racing):
            message = check_stream(cheat, device)
            assert message is not None and "escapes the current stream" in message, cheat.__name__
