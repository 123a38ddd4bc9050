"""The registry's helpers for builders."""

from __future__ import annotations

import time

import pytest
import torch

from layerbench.builders import Built, check_workspace, faster_of, fastest_of, in_order, selection_mode, selection_ms, selection_timing
from layerbench.errors import Unsupported
from layerbench.run import group


def test_in_order_launches_each_kernel_once_in_order() -> None:
    calls: list[str] = []
    first, second = (lambda: calls.append("copy")), (lambda: calls.append("gemm"))
    kernel = in_order(first, second)
    kernel()
    kernel()
    assert calls == ["copy", "gemm", "copy", "gemm"]
    assert in_order(first) is first  # nothing to chain: the kernel itself, no wrapper call


def _build_refused() -> None:
    raise Unsupported("no such algorithm here")


def test_faster_of_keeps_the_faster_and_records_both_times() -> None:
    calls: list[str] = []
    slow, fast = (lambda: calls.append("slow")), (lambda: calls.append("fast"))
    times = {slow: 2.0, fast: 1.0}
    kernel = faster_of("direct", slow, "fft", lambda: fast, times.__getitem__)
    kernel()
    assert calls == ["fast"]
    assert kernel.details == {"algorithm": "fft", "fft_ms": 1.0, "direct_ms": 2.0}
    kernel = faster_of("direct", fast, "fft", lambda: slow, times.__getitem__)
    kernel()
    assert calls == ["fast", "fast"]
    assert kernel.details["algorithm"] == "direct"


def test_faster_of_records_why_the_other_was_not_built() -> None:
    calls: list[str] = []
    kernel = faster_of("direct", lambda: calls.append("direct"), "fft", _build_refused,
                       lambda k: pytest.fail("nothing to time"))
    kernel()
    assert calls == ["direct"]
    assert kernel.details == {"algorithm": "direct", "fft": "no such algorithm here"}


def test_fastest_of_times_every_candidate_that_builds() -> None:
    calls: list[str] = []
    default, fft, tma = (lambda: calls.append("direct")), (lambda: calls.append("fft")), (lambda: calls.append("tma"))
    times = {default: 3.0, fft: 2.0, tma: 1.0}
    kernel = fastest_of("direct", default, [("fft", lambda: fft), ("pointwise", _build_refused), ("tma", lambda: tma)],
                        times.__getitem__)
    kernel()
    assert calls == ["tma"]
    assert kernel.details == {"algorithm": "tma", "direct_ms": 3.0, "fft_ms": 2.0, "tma_ms": 1.0,
                              "pointwise": "no such algorithm here"}


def test_fastest_of_keeps_the_details_of_the_winner_only() -> None:
    slow, fast = Built(lambda: None, {"tile": "slow"}), Built(lambda: None, {"tile": "fast", "algorithm": "x"})
    times = {slow.launch: 2.0, fast.launch: 1.0}
    kernel = fastest_of("direct", slow, [("tma", lambda: fast)], times.__getitem__)
    assert kernel.details == {"algorithm": "tma", "direct_ms": 2.0, "tma_ms": 1.0, "tile": "fast"}
    kernel = fastest_of("direct", fast, [("tma", lambda: slow)], times.__getitem__)
    assert kernel.details == {"algorithm": "direct", "direct_ms": 1.0, "tma_ms": 2.0, "tile": "fast"}


def test_fastest_of_records_a_candidate_that_fails_and_keeps_the_point() -> None:
    default = Built(lambda: None, {})
    checked: list[str] = []

    def broken() -> Built:
        raise RuntimeError("wrong result")

    def slow_to_time(kernel: object) -> float:
        if kernel is not default.launch:
            raise ValueError("launch failed")
        return 1.0

    kernel = fastest_of("direct", default, [("wgmma", broken), ("tma", lambda: Built(lambda: None, {}))],
                        slow_to_time, after_failure=lambda: checked.append("synced"))
    assert kernel.launch is default.launch
    assert kernel.details == {"algorithm": "direct", "direct_ms": 1.0, "wgmma": "failed: RuntimeError: wrong result",
                              "tma": "failed when timed: ValueError: launch failed"}
    assert checked == ["synced", "synced"]


def test_selection_timing_is_scoped() -> None:
    assert selection_mode() == "hot"
    with selection_timing(lambda: None):
        assert selection_mode() == "cold"
        with selection_timing(None):
            assert selection_mode() == "hot"
        assert selection_mode() == "cold"
    assert selection_mode() == "hot"


def test_a_point_measured_cold_on_a_gpu_chooses_its_paths_cold(monkeypatch: pytest.MonkeyPatch) -> None:
    flush = lambda: None  # noqa: E731
    monkeypatch.setattr(group, "l2_flush", lambda device: flush)
    assert group.selection_flush(torch.device("cuda", 0), "cold") is flush
    assert group.selection_flush(torch.device("cuda", 0), "hot") is None
    assert group.selection_flush(torch.device("cpu"), "cold") is None


@pytest.mark.gpu
def test_selection_ms_flushes_before_each_launch_when_cold() -> None:
    flushes: list[int] = []
    x = torch.ones(1024, device="cuda")
    with selection_timing(lambda: flushes.append(1)):
        assert selection_ms(lambda: x.add_(1), x.device, warmup=2, reps=5) > 0
    assert len(flushes) == 5
    assert selection_ms(lambda: x.add_(1), x.device, warmup=1, reps=3) > 0 and len(flushes) == 5


@pytest.mark.gpu
def test_selection_ms_leaves_out_the_hosts_enqueue_time() -> None:
    x = torch.ones(1024, device="cuda")

    def slow_to_enqueue() -> None:  # 3 ms of host work, then a kernel of a few microseconds
        time.sleep(0.003)
        x.add_(1)

    assert selection_ms(slow_to_enqueue, x.device, warmup=2, reps=5) < 1.0


@pytest.mark.gpu
def test_triton_tuning_uses_the_selection_timer() -> None:
    from kernels.triton.support import quick_bench

    x = torch.ones(1024, device="cuda")

    def slow_to_enqueue() -> None:
        time.sleep(0.003)
        x.add_(1)

    assert 0 < quick_bench(slow_to_enqueue) < 1.0


def test_check_workspace_refuses_over_half_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 2**30, 80 * 2**30))
    check_workspace(2 * 2**30, torch.device("cuda", 0), "the FFT convolution")  # exactly half: fine
    with pytest.raises(Unsupported, match=r"the FFT convolution needs 2\.0 GiB of workspace, over half "
                                          r"of the 4\.0 GiB free"):
        check_workspace(2 * 2**30 + 1, torch.device("cuda", 0), "the FFT convolution")


# ---------------------------------------------------------------- declared support, entry points

from importlib import metadata  # noqa: E402

from layerbench import registry  # noqa: E402
from layerbench.layers import Conv2d, ReLU  # noqa: E402


def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_load_errors", {})
    monkeypatch.setattr(registry, "_loaded", False)


def test_register_declares_dtypes_layouts_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    _fresh_registry(monkeypatch)
    monkeypatch.setattr(registry, "_loaded", True)

    def small_only(spec: object, dtype: str, layout: str) -> str | None:
        return "kernels above 5x5 are not implemented" if spec.kernel_h > 5 else None  # type: ignore[attr-defined]

    registry.register("conv2d", "mine", backend="user", devices=("cuda", "cpu"), dtypes=("fp16", "bf16"),
                      layouts=("NHWC",), supports=small_only)(lambda *a: None)
    impl = registry.get("conv2d", "mine")
    small, big = Conv2d(1, 3, 4, 8, 8, 3, 3), Conv2d(1, 3, 4, 8, 8, 7, 7)
    assert impl.unsupported_reason(small, "fp16", "NHWC", "cuda:0") is None
    assert impl.unsupported_reason(small, "fp32", "NHWC", "cuda") == "mine supports fp16, bf16 for conv2d, not fp32"
    assert impl.unsupported_reason(small, "fp16", "NCHW", "cpu") == "mine supports the NHWC layout for conv2d, not NCHW"
    assert impl.unsupported_reason(big, "bf16", "NHWC", torch.device("cpu")) == "kernels above 5x5 are not implemented"
    registry.register("relu", "gpu_only", backend="user")(lambda *a: None)
    plain = registry.get("relu", "gpu_only")
    assert plain.supported_dtypes == ReLU.dtypes and plain.supported_layouts == ReLU.layouts
    assert plain.unsupported_reason(ReLU(1, 1), "fp32", "NCHW", "cpu") == "gpu_only runs on cuda only, not cpu"
    assert registry.unsupported_reason("relu", "gpu_only", ReLU(1, 1), "bf16", "NCHW", "cuda") is None
    with pytest.raises(ValueError, match="dtypes 'int8' not allowed for relu"):
        registry.register("relu", "bad", backend="user", dtypes=("int8",))
    with pytest.raises(ValueError, match="layouts 'NHWC' not allowed for relu"):
        registry.register("relu", "bad", backend="user", layouts=("NHWC",))


class _Dist:
    def __init__(self, name: str):
        self.metadata = {"Name": name}


def _ep(name: str, value: str, dist: str) -> metadata.EntryPoint:
    ep = metadata.EntryPoint(name, value, registry.ENTRY_POINT_GROUP)
    return ep._for(_Dist(dist))  # type: ignore[attr-defined]


def test_builtins_load_through_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    monkeypatch.setattr(registry.importlib, "import_module", lambda m: imported.append(m))
    # Installed: layerbench's own entry points name the built-in modules; a user's package adds its own.
    eps = [_ep("torch", "kernels.reference.torch_ref", "layerbench"), _ep("mine", "mypkg.kernels", "mypkg")]
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else [])
    _fresh_registry(monkeypatch)
    registry.load_errors()
    assert imported == ["kernels.reference.torch_ref"]
    assert set(registry.load_errors()) == {"entry point mine"}  # mypkg is not installed: reported, not fatal

    # A checkout without install (no layerbench entry points): the built-in module list.
    imported.clear()
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [])
    _fresh_registry(monkeypatch)
    registry.load_errors()
    assert imported == list(registry.BUILTIN_MODULES.values())


def test_pyproject_declares_the_builtin_backends() -> None:
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][registry.ENTRY_POINT_GROUP] == registry.BUILTIN_MODULES


def test_check_name_refuses_unknown_and_unloadable_names() -> None:
    registry.check_name("conv2d", "triton")
    with pytest.raises(ValueError, match=r"unknown implementation 'tritn' for conv2d; known: .*triton"):
        registry.check_name("conv2d", "tritn")
    with pytest.raises(ValueError, match=r"'cublas' has no conv2d kernel \(it has linear\)"):
        registry.check_name("conv2d", "cublas")
    with pytest.raises(ValueError, match=r"cannot import no_such_module_xyz"):
        registry.check_name("conv2d", "no_such_module_xyz:build")
    with pytest.raises(ValueError, match=":build: must look like package.module:function"):
        registry.check_name("conv2d", ":build")
