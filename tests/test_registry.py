"""The registry's helpers for builders."""

from __future__ import annotations

import pytest
import torch

from layerbench.builders import check_workspace, faster_of, in_order
from layerbench.errors import Unsupported


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


def test_check_workspace_refuses_over_half_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 2**30, 80 * 2**30))
    check_workspace(2 * 2**30, torch.device("cuda", 0), "the FFT convolution")  # exactly half: fine
    with pytest.raises(Unsupported, match=r"the FFT convolution needs 2\.0 GiB of workspace, over half "
                                          r"of the 4\.0 GiB free"):
        check_workspace(2 * 2**30 + 1, torch.device("cuda", 0), "the FFT convolution")
