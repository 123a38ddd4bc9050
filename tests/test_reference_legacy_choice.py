"""The legacy cuDNN path's algorithm search and its cached choice, on the CPU: a fake library
stands in for cuDNN's search and calls, and CPU tensors for the buffers (the GPU tests run the
real one)."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kernels.reference import cudnn as cudnn_ref
from kernels.reference import cudnn_api as api
from kernels.reference.cudnn_api import CudnnError, MathType
from layerbench.build_cache import AutotuneChoices
from layerbench.dtypes import get_dtype

CP = api.CONV_FORWARD


class FakeCudnn:
    """cuDNN's legacy forward calls: ``times`` is the search's ranking (algorithm -> ms), ``wrong``
    the algorithms whose result the check rejects, ``inapplicable`` those it says do not apply."""

    def __init__(self, times: dict[int, float], wrong: set[int] = frozenset(),
                 inapplicable: set[int] = frozenset()) -> None:
        self.times, self.wrong, self.inapplicable = times, set(wrong), set(inapplicable)
        self.finds = 0
        self.ran: list[int] = []
        self.math: int | None = None

    @property
    def version(self) -> int:
        return 91900

    def cudnnSetConvolutionMathType(self, conv: Any, math: int) -> None:  # noqa: N802 - cuDNN's name
        self.math = math

    def __getattr__(self, name: str) -> Any:
        calls = {CP.workspace_size: self._workspace, CP.max_count: self._max_count, CP.find: self._find,
                 CP.run: self._run}
        if name in calls:
            return calls[name]
        raise AttributeError(name)

    def _workspace(self, h: Any, a: Any, b: Any, conv: Any, o: Any, algo: int, size: Any) -> None:
        if algo in self.inapplicable or algo not in self.times:
            raise CudnnError("workspace", 3000, "CUDNN_STATUS_NOT_SUPPORTED")
        size._obj.value = 64 * algo

    def _max_count(self, h: Any, count: Any) -> None:
        count._obj.value = len(CP.algos)

    def _find(self, h: Any, a_d: Any, a: Any, b_d: Any, b: Any, conv: Any, o_d: Any, o: Any, requested: int,
              returned: Any, perfs: Any, ws: Any, ws_size: int) -> None:
        self.finds += 1
        ranked = sorted((ms, algo) for algo, ms in self.times.items() if algo not in self.inapplicable)
        for i, (ms, algo) in enumerate(ranked):
            perfs[i].algo, perfs[i].status, perfs[i].time = algo, 0, ms
            perfs[i].memory, perfs[i].mathType = 64 * algo, int(MathType.FMA)
        returned._obj.value = len(ranked)

    def _run(self, *args: Any) -> None:
        self.ran.append(args[7])


@pytest.fixture
def cpu_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the search touches of CUDA, on the CPU, and an empty store of choices."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1 << 30, 1 << 30))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(cudnn_ref, "selection_mode", lambda: "hot")
    choices = AutotuneChoices(None)  # this test's own, in memory
    monkeypatch.setattr(cudnn_ref, "autotune_choices", lambda: choices)


def _operands() -> tuple[Any, ...]:
    def operand(*shape: int) -> tuple[Any, torch.Tensor]:
        return SimpleNamespace(ptr=None), torch.zeros(shape)
    return operand(2, 3, 8, 8), operand(4, 3, 3, 3), SimpleNamespace(ptr=None), operand(2, 4, 6, 6)


def _choose(lib: FakeCudnn, monkeypatch: pytest.MonkeyPatch, identity: str = "conv A") -> Any:
    last: dict[str, int] = {}

    def timed(kernel: Any, device: Any, **kw: Any) -> float:
        kernel()
        last["algo"] = lib.ran[-1]
        return lib.times[lib.ran[-1]] * 0.9  # timed again: a little faster than the search said

    def check() -> str | None:
        return "off by 1e-3" if lib.ran[-1] in lib.wrong else None

    monkeypatch.setattr(cudnn_ref, "selection_ms", timed)
    a, b, conv, o = _operands()
    handle = SimpleNamespace(ptr=None, use_stream=lambda s: None)
    built, _ = cudnn_ref._fastest_algorithm(lib, handle, torch.device("cpu"), CP, a, b, conv, o, get_dtype("fp32"),
                                            check, identity)
    return built


def test_a_second_build_reuses_the_search_s_choice(cpu_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeCudnn({0: 3.0, 1: 1.0, 5: 1.5}, wrong={1})
    first = _choose(lib, monkeypatch)
    assert lib.finds == 1 and first.details["algorithm"] == "FFT_TILING" and first.details["rejected"] == 1
    assert first.details["search_ms"] == 1.5 and "reused_choice" not in first.details
    again = _choose(lib, monkeypatch)
    assert lib.finds == 1, "the cached choice must not search again"
    assert again.details["algorithm"] == "FFT_TILING" and again.details["reused_choice"] is True
    assert again.details["retimed_ms"] == pytest.approx(1.35) and lib.math == int(MathType.FMA)
    lib.ran.clear()
    again()
    assert lib.ran == [5]  # the kernel runs the cached algorithm
    other = _choose(lib, monkeypatch, identity="conv B")  # another convolution: its own search
    assert lib.finds == 2 and "search_ms" in other.details


@pytest.mark.parametrize("change", ["wrong", "inapplicable"])
def test_a_cached_choice_that_no_longer_holds_is_searched_again(cpu_cuda: None, monkeypatch: pytest.MonkeyPatch,
                                                                change: str) -> None:
    lib = FakeCudnn({0: 3.0, 5: 1.5})
    _choose(lib, monkeypatch, identity=f"conv {change}")
    getattr(lib, change).add(5)
    again = _choose(lib, monkeypatch, identity=f"conv {change}")
    assert lib.finds == 2 and again.details["algorithm"] == "IMPLICIT_GEMM" and "reused_choice" not in again.details
