"""What the reference tests share: optional packages missing on purpose or not, fake builds, and
running a build through the correctness check while keeping what it built."""

from __future__ import annotations

import sys

import pytest

from kernels.reference import cublaslt, cudnn_graph
from layerbench.builders import Built
from layerbench.dtypes import get_dtype, precision
from layerbench.errors import Unavailable
from layerbench.measure.provenance import kernel_names
from layerbench.testing import CheckResult, check_implementation


def no_module(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError


def fake_built(name: str, calls: list[str]) -> Built:
    """A build whose launch appends its name to ``calls``."""
    return Built(lambda: calls.append(name), {"chose": name})


def frontend_importable() -> bool:
    try:
        cudnn_graph.load_frontend()
    except Unavailable:
        return False
    return True


def nvmath_importable() -> bool:
    try:
        cublaslt.load_nvmath()
    except Unavailable:
        return False
    return True


def check_keeping_built(build, spec, dtype: str, layout: str) -> tuple[CheckResult, dict[str, object], object]:
    """check_implementation on a build that keeps its Built: (result, details, launch)."""
    kept: dict[str, Built] = {}

    def keep(*args):
        built = build(*args)
        kept["built"] = built if isinstance(built, Built) else Built(built)
        return kept["built"]

    result = check_implementation(keep, spec, dtype, layout, "cuda")
    return result, kept["built"].details, kept["built"].launch


def launched_kernels(launch, dtype: str) -> list[str]:
    """The GPU kernels one launch ran, under the dtype's precision settings."""
    with precision(get_dtype(dtype)):
        return kernel_names(launch, "cuda")
