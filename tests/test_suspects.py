"""A build candidate (a path, a kernel variant) that crashed a worker, hung it or poisoned its CUDA
context is named and left out of the rest of the run; the implementation itself is not."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest
import torch

from layerbench import sweep
from layerbench.builders import Built, attempts, fastest_of, fastest_path
from layerbench.dtypes import get_dtype
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d
from layerbench.results import rundir as results
from layerbench.run.group import candidate_of
from layerbench.run.suspects import AttemptWatch
from layerbench.run.sweep_runner import RunOptions, run_sweep


def _watch(*events: tuple[str, str]) -> AttemptWatch:
    watch = AttemptWatch()
    for event, path in events:
        watch.see(event, path)
    return watch


def test_a_crash_or_a_hang_blames_the_innermost_candidate_running() -> None:
    watch = _watch(("trying", "conv2d cupy > fft"), ("tried", "conv2d cupy > fft"), ("trying", "conv2d cupy > tma"),
                   ("trying", "conv2d cupy > tma > im2col_128"))
    assert watch.culprit("crashed") == watch.culprit("timeout") == "conv2d cupy > tma > im2col_128"
    watch.see("tried", "conv2d cupy > tma > im2col_128")
    assert watch.culprit("crashed") == "conv2d cupy > tma"
    watch.phase()  # the build is over: a crash in the check phase is the implementation's own
    assert watch.culprit("crashed") is None


def test_a_poisoned_context_blames_the_candidate_its_error_came_from() -> None:
    watch = _watch(("trying", "s > tma"), ("trying", "s > tma > v1"), ("failed", "s > tma > v1"),
                   ("failed", "s > tma"))
    assert watch.culprit("poisoned") == "s > tma > v1"
    # an error handled inside a candidate that then returned, or before the next one: nobody's fault
    handled = _watch(("trying", "s > tma"), ("trying", "s > tma > v1"), ("failed", "s > tma > v1"),
                     ("tried", "s > tma"))
    assert handled.culprit("poisoned") is None
    next_one = _watch(("trying", "s > a"), ("failed", "s > a"), ("trying", "s > b"), ("tried", "s > b"))
    assert next_one.culprit("poisoned") is None


class Paths:
    """Candidates by name: times in ms, None for one that refuses, "raise" for one that fails."""

    def __init__(self, times: dict[str, float | str | None]) -> None:
        self.times = times
        self.kernels = {name: Built(lambda: None, {"tile": name}) for name in times}
        self.built: list[str] = []

    def build(self, name: str) -> Callable[[], Built]:
        def build_it() -> Built:
            self.built.append(name)
            if self.times[name] is None:
                raise Unsupported(f"{name} refuses")
            if self.times[name] == "raise":
                raise RuntimeError(f"{name} failed")
            return self.kernels[name]
        return build_it

    def time(self, kernel: object) -> float:
        return next(float(self.times[n]) for n, k in self.kernels.items() if k.launch is kernel)  # type: ignore[arg-type]


def test_builds_announce_their_candidates_and_leave_out_the_avoided() -> None:
    events: list[tuple[str, str]] = []
    paths = Paths({"tiled": 2.0, "tma": 1.0, "stream_k": 0.5, "broken": "raise"})
    avoid = {"linear triton > stream_k": "crashed the worker on fc6 earlier in this run"}
    with attempts("linear triton", lambda e, p: events.append((e, p)), avoid):
        chosen = fastest_path(("tiled", paths.build("tiled")),
                              [(n, paths.build(n)) for n in ("tma", "stream_k", "broken")], paths.time)
    assert chosen.details["path"] == "tma"
    assert chosen.details["stream_k"] == "skipped: crashed the worker on fc6 earlier in this run"
    assert "stream_k" not in paths.built
    assert ("trying", "linear triton > tma") in events and ("tried", "linear triton > tma") in events
    assert ("failed", "linear triton > broken") in events
    assert all(not p.endswith("stream_k") for _, p in events)

    other = Paths({"direct": 3.0, "fft": 1.0})
    with attempts("conv2d cupy", None, {"conv2d cupy > fft": "hung on L2 earlier in this run"}):
        kept = fastest_of("direct", other.kernels["direct"], [("fft", other.build("fft"))], other.time)
    assert kept.details["algorithm"] == "direct" and kept.details["fft"].startswith("skipped: hung")


def test_an_error_names_the_innermost_candidate_it_left() -> None:
    def inner() -> Built:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def outer() -> Built:
        return fastest_path(("only", inner), [], lambda k: 1.0)

    with attempts("conv2d cupy", None, {}), pytest.raises(RuntimeError) as caught:
        fastest_path(("tma", outer), [], lambda k: 1.0)
    assert candidate_of(caught.value) == "conv2d cupy > tma > only"
    try:  # a later error raised while handling it (a synchronize) still names it
        try:
            raise caught.value
        except RuntimeError:
            raise RuntimeError("synchronize failed")
    except RuntimeError as later:
        assert candidate_of(later) == "conv2d cupy > tma > only"


def test_cupy_variants_avoided_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    support = pytest.importorskip("kernels.cupy.support")
    launched: list[str] = []
    found = {name: (lambda n=name: launched.append(n)) for name in ("patch_128", "im2col_128")}
    times = {"patch_128": 2.0, "im2col_128": 1.0}
    monkeypatch.setattr(support, "selection_ms", lambda kernel, device: (kernel(), times[launched[-1]])[1])
    monkeypatch.setattr(support, "check_result", lambda kernel, *a: kernel())
    spec = Conv2d(1, 8, 8, 6, 6, 3, 3, padding=1)
    tensors, out = {"x": torch.zeros(1, 8, 6, 6), "weight": torch.zeros(8, 8, 3, 3)}, torch.zeros(1, 8, 6, 6)
    dtype = get_dtype("bf16")
    avoid = {"conv2d cupy > im2col_128": "left the CUDA context unusable on conv3_b earlier in this run"}
    with attempts("conv2d cupy", None, avoid):
        built = support.fastest_right_variant(found, spec, dtype, "NHWC", tensors, out, "the TMA convolution")
    assert built.details["variant"] == "patch_128" and "im2col_128" not in launched
    assert built.details["skipped"].startswith("im2col_128: left the CUDA context unusable")
    with attempts("conv2d cupy", None, {**avoid, "conv2d cupy > patch_128": "hung"}), \
            pytest.raises(Unsupported, match="every variant of the TMA convolution was left out"):
        support.fastest_right_variant(found, spec, dtype, "NHWC", tensors, out, "the TMA convolution")


def test_a_candidate_that_crashed_a_worker_is_left_out_of_the_rest_of_the_run(tmp_path: Path) -> None:
    """The first point's build crashes in its candidate "fast": that record names it, the next
    point's build leaves it out and runs its other path."""
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent("""
        layer = "relu"
        implementations = ["two_paths:build", "torch"]
        [params]
        batch = 1
        channels = 2
        [axes]
        size = [4, 5]
        [timing]
        fixed_samples = 2
        warmup = 0
        [energy]
        enabled = false
    """))
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "two_paths.py").write_text(textwrap.dedent("""
        import os
        import torch
        from layerbench.builders import fastest_path, remark

        def build(spec, dtype, layout, t, out):
            remark("built by two_paths")
            def safe():
                return lambda: torch.clamp_min(t["x"], 0, out=out)
            def fast():
                os._exit(9)  # a kernel that takes the process down
            return fastest_path(("safe", safe), [("fast", fast)], lambda kernel: 1.0)
    """))
    sys.path.insert(0, str(mods))
    try:
        opts = RunOptions(device="cpu", out=tmp_path / "run", in_process=False, progress=False,
                          point_timeout_s=300, argv=["t"])
        run_dir = run_sweep(sweep.load_sweep(path), opts)
    finally:
        sys.path.remove(str(mods))
    recs = [r for r in results.read_records(run_dir / results.RESULTS_FILE) if r["impl"] == "two_paths:build"]
    assert [r["status"] for r in recs] == ["error", "ok"]
    assert "exit code 9" in recs[0]["message"]
    assert "candidate relu two_paths:build > fast, left out of the rest of the run" in recs[0]["message"]
    assert recs[1]["detail_path"] == "safe" and recs[1]["detail_remarks"] == "built by two_paths"
    assert recs[1]["detail_fast"].startswith("skipped: crashed the worker on relu size=4 fp32 NCHW earlier")
    assert all(r["status"] == "ok" for r in results.read_records(run_dir / results.RESULTS_FILE) if r["impl"] == "torch")


def test_a_ray_task_that_poisoned_its_context_names_its_candidate() -> None:
    """Ray returns a group's messages at its end: the replay follows the announcements in them."""
    from layerbench.run.ray_executor import _Replay
    from layerbench.run.suspects import Suspects

    point = sweep.parse_sweep('experiment = "t"\nlayer = "relu"\nimplementations = ["torch"]\n'
                              "[params]\nbatch = 1\nchannels = 2\nsize = 4\n").points[0]
    messages = [("phase", {"impl": "torch", "phase": "build"}), ("attempt", ("trying", "relu torch > v2")),
                ("attempt", ("failed", "relu torch > v2")), ("record", "the culprit's record")]
    result = {"messages": messages, "outcome": "poisoned", "detail": "RuntimeError: CUDA error: misaligned address"}
    suspects, handled = Suspects(), []
    outcome = _Replay(result, None, lambda p, i: {}, suspects).run(point, ["torch"], lambda k, p: handled.append(k))
    assert outcome.kind == "poisoned" and handled == ["phase", "record"]
    assert suspects.snapshot()["relu torch > v2"].startswith("left the CUDA context unusable on relu fp32 NCHW")


def test_triton_configs_are_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tuned config is announced, one that took a worker down is left out, one that fails to
    compile or run is passed over; nothing left: Unsupported (all left out) or the failures."""
    support = pytest.importorskip("kernels.triton.support")
    monkeypatch.setattr(support, "quick_bench", lambda kernel: kernel())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)  # the device is fine

    def launcher(config: dict[str, object]) -> Callable[[], float]:
        def run() -> float:
            if config["BLOCK"] == 64:
                raise RuntimeError("out of resources: shared memory")
            return {16: 2.0, 32: 1.0, 128: 0.5}[config["BLOCK"]]  # type: ignore[index]
        return run

    configs = [{"BLOCK": b, "num_warps": 4, "maxnreg": None} for b in (16, 32, 64, 128)]
    events: list[tuple[str, str]] = []
    avoid = {"linear triton > gemm[BLOCK=128,num_warps=4]": "crashed the worker on fc6 earlier in this run"}
    with attempts("linear triton", lambda e, p: events.append((e, p)), avoid) as remarks:
        best, ms, passed_over = support.fastest_config("kernels.triton.linear.gemm", configs, launcher)
    assert (best["BLOCK"], ms) == (32, 1.0)
    assert passed_over == ["gemm[BLOCK=64,num_warps=4]: RuntimeError: out of resources: shared memory"]
    assert remarks == [f"passed over {passed_over[0]}"]  # the record says so (detail_remarks)
    assert ("failed", "linear triton > gemm[BLOCK=64,num_warps=4]") in events
    assert not any("BLOCK=128" in p for _, p in events)
    only, ms, _ = support.fastest_config("gemm", configs[2:3], launcher)  # one config: nothing to time
    assert only["BLOCK"] == 64 and ms != ms
    hung = {f"linear triton > gemm[BLOCK={b},num_warps=4]": "hung" for b in (16, 32, 128)}
    with attempts("linear triton", None, hung):
        with pytest.raises(RuntimeError, match=r"no config of gemm compiled and ran: gemm\[BLOCK=64,num_warps=4\]"):
            support.fastest_config("gemm", configs, launcher)
        with pytest.raises(Unsupported, match="every config of gemm was left out"):
            support.fastest_config("gemm", [c for c in configs if c["BLOCK"] != 64], launcher)
