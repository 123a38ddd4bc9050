"""Environment collection works on a GPU-less host and never raises."""

from __future__ import annotations

import re
from importlib import metadata

import pytest
import torch

from layerbench.measure.environment import collect_environment

KEYS = {"device", "python", "platform", "host_cpu", "layerbench_version", "git_commit", "cuda_runtime", "cudnn",
        "torch_version", "triton_version", "cupy_version", "numpy_version", "gpu_name", "gpu_uuid",
        "gpu_compute_capability", "gpu_memory_bytes", "gpu_l2_bytes", "gpu_sm_count", "driver_version",
        "gpu_power_limit_w"}


def test_cpu_environment() -> None:
    env = collect_environment(torch.device("cpu"))
    assert set(env) == KEYS
    assert env["torch_version"] == torch.__version__.split("+")[0] or env["torch_version"] == torch.__version__
    assert env["numpy_version"] == metadata.version("numpy")
    assert env["layerbench_version"] == metadata.version("layerbench")
    assert env["gpu_name"] is None and env["driver_version"] is None and env["gpu_uuid"] is None
    commit = env["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", str(commit))


def test_missing_library_reads_none(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version

    def version(dist: str) -> str:
        if dist.startswith("cupy"):
            raise metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(metadata, "version", version)
    monkeypatch.delitem(__import__("sys").modules, "cupy", raising=False)
    assert collect_environment(torch.device("cpu"))["cupy_version"] is None


def test_git_commit_none_outside_a_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import layerbench.measure.environment as envmod

    fake = tmp_path / "pkg" / "layerbench" / "environment.py"
    fake.parent.mkdir(parents=True)
    monkeypatch.setattr(envmod, "__file__", str(fake))
    assert envmod._git_commit() is None


@pytest.mark.gpu
def test_gpu_environment() -> None:
    env = collect_environment(torch.device("cuda"))
    assert env["gpu_name"] and str(env["gpu_uuid"]).startswith("GPU-") and env["driver_version"]
    assert env["cudnn"] and env["gpu_power_limit_w"]
