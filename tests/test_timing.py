"""Timer: stop rule on synthetic samples, statistics, CPU timing with perf_counter; CUDA on a GPU."""

from __future__ import annotations

import math
import time

import pytest
import torch

from layerbench.measure.timing import StopRule, TimeStats, TimingConfig, robust_noise, summarize_samples, time_first_call, time_kernel


def feed(rule: StopRule, samples: list[float], wall_per_sample: float = 1e-3) -> str | None:
    """Add samples one by one like the timer does; return the first stop reason and where it happened."""
    for i, s in enumerate(samples):
        rule.add(s)
        reason = rule.stop_reason((i + 1) * wall_per_sample)
        if reason:
            return reason
    return None


def test_fixed_count_stops_at_exactly_n() -> None:
    rule = StopRule(TimingConfig(fixed_samples=7, max_time_s=1e-9))
    assert feed(rule, [1.0] * 20, wall_per_sample=100.0) == "fixed-count"
    assert len(rule.samples) == 7  # ignores the time-out and the noise


def test_quiet_samples_stop_on_noise_after_minimums() -> None:
    cfg = TimingConfig(min_samples=10, min_time_s=0.5, max_noise=0.005)
    rule = StopRule(cfg)
    assert feed(rule, [0.01] * 200) == "noise"
    assert len(rule.samples) == 50            # 50 * 10 ms = 0.5 s of kernel time
    rule = StopRule(cfg)
    assert feed(rule, [1.0] * 20) == "noise"
    assert len(rule.samples) == 10            # min_samples dominates


def test_noisy_but_stable_samples_stop_when_noise_settles() -> None:
    # Alternating 0.9/1.1 ms: noise stays at 1.4826 * 0.1/1.0 forever, never below 0.5 %.
    cfg = TimingConfig(min_samples=10, min_time_s=0.0, max_noise=0.005)
    rule = StopRule(cfg)
    samples = [0.9e-3 if i % 2 else 1.1e-3 for i in range(10_000)]
    assert feed(rule, samples) == "noise-stable"
    assert len(rule.noise_history) == 8       # the first 8 estimates already agree
    assert rule.noise_history[-1] == pytest.approx(0.14826, rel=1e-3)


def test_drifting_noise_runs_into_the_timeout() -> None:
    cfg = TimingConfig(min_samples=10, min_time_s=0.0, max_noise=0.0001, max_time_s=2.0)
    rule = StopRule(cfg)
    samples = [1.0 + (i % 50) * i * 1e-4 for i in range(100_000)]  # spread keeps growing
    assert feed(rule, samples, wall_per_sample=1e-3) == "timeout"
    assert len(rule.samples) == 2000          # 2 s of wall time at 1 ms a sample


def test_timeout_before_minimums() -> None:
    rule = StopRule(TimingConfig(min_samples=10, max_time_s=0.005))
    assert feed(rule, [1e-6] * 100, wall_per_sample=1e-3) == "timeout"
    assert len(rule.samples) == 5


def test_outlier_does_not_inflate_robust_noise() -> None:
    base = [1.0, 1.0, 1.0, 1.01, 0.99] * 4
    assert robust_noise(base + [50.0]) == pytest.approx(robust_noise(base), abs=1e-12)
    assert robust_noise([2.0, 2.0, 2.0]) == 0.0
    assert math.isinf(robust_noise([1.0]))


def test_summary_statistics_exact() -> None:
    s = summarize_samples([4.0, 1.0, 3.0, 2.0, 5.0], "noise", "cold", "perf_counter", 1)
    assert (s.median_s, s.mean_s, s.min_s, s.max_s, s.n) == (3.0, 3.0, 1.0, 5.0, 5)
    assert s.iqr_s == 2.0                    # 4 - 2 (linear percentiles)
    assert s.stdev_s == pytest.approx(math.sqrt(2.5))
    assert s.samples_s == [4.0, 1.0, 3.0, 2.0, 5.0]
    rec = s.to_record()
    assert rec["time_median_s"] == 3.0 and rec["time_samples_s"] == [4.0, 1.0, 3.0, 2.0, 5.0]
    assert all(k.startswith("time_") for k in rec)
    with pytest.raises(ValueError, match="no samples"):
        summarize_samples([], "noise", "cold", "perf_counter", 1)


@pytest.mark.parametrize("field, value", [("mode", "warm"), ("min_samples", 0), ("fixed_samples", 0),
                                          ("max_noise", -0.1), ("max_time_s", 0.0), ("warmup", -1),
                                          ("min_time_s", float("nan"))])
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"timing.{field}: must be"):
        TimingConfig(**{field: value})


def _work(x: torch.Tensor) -> None:
    torch.mul(x, 2.0, out=x)


def test_cpu_cold_fixed_count() -> None:
    x = torch.ones(1000)
    calls = []
    s = time_kernel(lambda: calls.append(_work(x)), torch.device("cpu"),
                    TimingConfig(mode="cold", fixed_samples=12, warmup=2))
    assert isinstance(s, TimeStats)
    assert s.clock == "perf_counter" and s.stop_reason == "fixed-count" and s.n == 12
    assert s.launches_per_sample == 1 and len(calls) == 14     # 2 warm-up + 12 samples
    assert s.flush_bytes and s.flush_bytes > 0 and s.flush_source in ("cpu-cache", "cpu-default")
    assert 0 < s.min_s <= s.median_s <= s.max_s


def test_cpu_hot_batches_launches() -> None:
    x = torch.ones(100)
    s = time_kernel(lambda: _work(x), torch.device("cpu"), TimingConfig(mode="hot", fixed_samples=5, warmup=1))
    assert s.mode == "hot" and s.n == 5 and s.launches_per_sample > 1
    assert s.median_s * s.launches_per_sample >= 0.5e-3   # a sample holds ~1 ms of work


def test_cpu_stop_rule_end_to_end() -> None:
    x = torch.ones(100)
    s = time_kernel(lambda: _work(x), torch.device("cpu"),
                    TimingConfig(mode="hot", min_samples=10, min_time_s=0.02, max_time_s=2.0))
    assert s.stop_reason in ("noise", "noise-stable", "timeout") and s.n >= 10


def test_time_first_call_returns_result_and_seconds() -> None:
    result, seconds = time_first_call(lambda: 41 + 1, torch.device("cpu"))
    assert result == 42 and 0 <= seconds < 1.0


def test_unknown_device_type() -> None:
    with pytest.raises(ValueError, match="device"):
        time_kernel(lambda: None, torch.device("meta"))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["cold", "hot"])
def test_cuda_timing_matches_known_copy_time(mode: str) -> None:
    dev = torch.device("cuda")
    a = torch.empty(64 * 1024 * 1024, device=dev)  # 256 MB: far beyond L2 either way
    b = torch.empty_like(a)
    s = time_kernel(lambda: b.copy_(a), dev, TimingConfig(mode=mode, max_time_s=5.0))
    assert s.clock == "cuda-events" and s.n >= 10
    gbps = 2 * a.numel() * 4 / s.median_s / 1e9
    assert 500 < gbps < 5000                     # an H100 copies at ~3 TB/s
    if mode == "hot":
        assert s.launch_mode == "cuda-graph" and s.graph_error is None
    else:
        assert s.flush_source == "device" and s.flush_bytes == torch.cuda.get_device_properties(dev).L2_cache_size


@pytest.mark.gpu
def test_cuda_hot_graph_fallback_is_recorded() -> None:
    dev = torch.device("cuda")
    x = torch.ones(1024, device=dev)
    before = torch.cuda.current_stream(dev)
    s = time_kernel(lambda: x.sum().item(), dev, TimingConfig(mode="hot", fixed_samples=5))  # syncs: no capture
    assert s.launch_mode == "stream" and "graph capture failed" in str(s.graph_error)
    # ... nor the capture stream current (torch leaves it so when capture_end raises).
    assert torch.cuda.current_stream(dev) == before
    # The failed capture must not leave torch's CUDA RNG in capture mode.
    assert torch.randn(4, device=dev).isfinite().all()


@pytest.mark.gpu
def test_cuda_tiny_kernel_hot_vs_cold() -> None:
    dev = torch.device("cuda")
    x = torch.randn(1024, device=dev)
    hot = time_kernel(lambda: torch.relu(x), dev, TimingConfig(mode="hot", max_time_s=3.0))
    assert hot.launches_per_sample > 100 and hot.median_s < 20e-6


@pytest.mark.gpu
def test_cuda_cold_samples_exclude_a_slow_host() -> None:
    """A launcher whose host work now and then takes 2 ms: those samples are dropped, never timed."""
    dev = torch.device("cuda")
    x = torch.randn(1024, device=dev)
    calls = [0]

    def kernel() -> None:
        calls[0] += 1
        t_end = time.perf_counter() + (2e-3 if calls[0] % 7 == 0 else 20e-6)
        while time.perf_counter() < t_end:
            pass
        torch.relu(x)

    s = time_kernel(kernel, dev, TimingConfig(mode="cold", fixed_samples=200))
    assert s.n == 200 and s.exposed == 0
    assert s.dropped > 0     # the first batches' hold was sized for the usual 20 us
    assert s.max_s < 1e-3    # no sample holds a 2 ms host stall
    assert s.median_s < 50e-6
