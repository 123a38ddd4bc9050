"""The registry's helpers for builders."""

from __future__ import annotations

from layerbench.registry import in_order


def test_in_order_launches_each_kernel_once_in_order() -> None:
    calls: list[str] = []
    first, second = (lambda: calls.append("copy")), (lambda: calls.append("gemm"))
    kernel = in_order(first, second)
    kernel()
    kernel()
    assert calls == ["copy", "gemm", "copy", "gemm"]
    assert in_order(first) is first  # nothing to chain: the kernel itself, no wrapper call
