"""The build cache's keying (layerbench version, GPU model, library versions; each backend's code in its
choices) and the autotuning choices on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from layerbench import build_cache
from layerbench.build_cache import (
    AutotuneChoices,
    cache_base,
    cache_key,
    choice_key,
    source_hash,
    use_build_cache,
)

GPU = {"name": "NVIDIA H200", "capability": "9.0"}
VERSIONS = {"torch": "2.13.0", "triton": "3.9.0"}


def test_any_change_of_code_gpu_or_versions_gives_another_key() -> None:
    key = cache_key("0.1.0-abc", GPU, VERSIONS)
    assert key == cache_key("0.1.0-abc", dict(GPU), dict(VERSIONS))  # stable
    assert key != cache_key("0.1.0-abd", GPU, VERSIONS)
    assert key != cache_key("0.1.0-abc", {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}, VERSIONS)
    assert key != cache_key("0.1.0-abc", GPU, {**VERSIONS, "triton": "3.9.1"})


def test_source_hash_follows_contents_and_names(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.cu").write_text("__global__ void k() {}\n")
    files = lambda: sorted(tmp_path.iterdir())  # noqa: E731
    h = source_hash(files(), tmp_path)
    assert h == source_hash(reversed(files()), tmp_path)
    (tmp_path / "b.cu").write_text("__global__ void k() { }\n")
    assert source_hash(files(), tmp_path) != h
    assert build_cache.backend_version("triton") != build_cache.backend_version("reference")  # the real kernels/


def test_an_edit_retunes_its_own_backend_only(tmp_path: Path) -> None:
    """Choices key on the code of the backend that made them (its directory, the shared modules):
    editing a Triton kernel leaves the cuDNN reference's searches valid."""
    for rel in ("triton/linear.py", "reference/cudnn.py", "shared.py"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    version = lambda backend: build_cache.backend_version.__wrapped__(backend, tmp_path)  # noqa: E731
    triton, reference = version("triton"), version("reference")
    (tmp_path / "triton/linear.py").write_text("x = 2\n")
    assert version("triton") != triton and version("reference") == reference
    (tmp_path / "shared.py").write_text("x = 2\n")
    assert version("reference") != reference


def test_cache_base_and_off(tmp_path: Path) -> None:
    assert cache_base({"LAYERBENCH_CACHE": str(tmp_path)}) == tmp_path
    assert cache_base({"LAYERBENCH_CACHE": "off"}) is None
    assert cache_base({}) == Path.home() / ".cache" / "layerbench"


def test_use_build_cache_points_triton_and_cupy_into_the_keyed_dir(tmp_path: Path) -> None:
    env = {"LAYERBENCH_CACHE": str(tmp_path), "CUPY_CACHE_DIR": "/mine"}
    d = use_build_cache(GPU, env)
    assert d is not None and d.parent == tmp_path and d.is_dir()
    assert env["TRITON_CACHE_DIR"] == str(d / "triton")
    assert env["CUPY_CACHE_DIR"] == "/mine"  # one the user set stays
    other = use_build_cache({"name": "NVIDIA A100", "capability": "8.0"}, {"LAYERBENCH_CACHE": str(tmp_path)})
    assert other != d
    assert use_build_cache(GPU, {"LAYERBENCH_CACHE": "off"}) is None


def test_choice_key_depends_on_shapes_dtypes_and_meta_not_addresses() -> None:
    a, b = torch.zeros(4, 8), torch.ones(4, 8)
    k = choice_key("conv_kernel", (a, 3), {"BLOCK": 16}, "triton")
    assert k == choice_key("conv_kernel", (b, 3), {"BLOCK": 16}, "triton")
    assert k != choice_key("conv_kernel", (torch.zeros(4, 9), 3), {"BLOCK": 16}, "triton")
    assert k != choice_key("conv_kernel", (a.half(), 3), {"BLOCK": 16}, "triton")
    assert k != choice_key("conv_kernel", (a.t(), 3), {"BLOCK": 16}, "triton")  # other strides
    assert k != choice_key("pool_kernel", (a, 3), {"BLOCK": 16}, "triton")
    assert k != choice_key("conv_kernel", (a, 4), {"BLOCK": 16}, "triton")
    assert k != choice_key("conv_kernel", (a, 3), {"BLOCK": 16}, "reference")  # another backend's code


def test_choices_persist_across_processes(tmp_path: Path) -> None:
    first = AutotuneChoices(tmp_path)
    assert first.get("k") is None
    first.put("k", {"BLOCK_M": 64, "num_warps": 4})
    assert AutotuneChoices(tmp_path).get("k") == {"BLOCK_M": 64, "num_warps": 4}  # a new process
    first.put("f", {"hook": os.getpid})  # not JSON: kept in memory only
    assert first.get("f") is not None and AutotuneChoices(tmp_path).get("f") is None
    (tmp_path / "autotune" / "k.json").write_text("{torn")
    assert AutotuneChoices(tmp_path).get("k") is None  # a broken entry is retuned, not fatal


def test_an_unwritable_cache_is_no_cache(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    env = {"LAYERBENCH_CACHE": str(tmp_path / "file" / "sub")}
    assert use_build_cache(GPU, env) is None and "TRITON_CACHE_DIR" not in env


def test_triton_bind_tunes_once_per_shape(tmp_path: Path, monkeypatch: Any) -> None:
    """kernels.triton.support.bind on a (pretend) GPU: the second build of the same kernel and
    shapes takes the stored choice, in this process and in a new one (a fresh AutotuneChoices)."""
    import triton

    from kernels.triton import support
    monkeypatch.setenv("LAYERBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build_cache, "_CHOICES", {})
    monkeypatch.setattr(support, "interpreting", lambda fn: False)
    monkeypatch.setattr(support, "_precompile", lambda *a: None)
    timed: list[int] = []  # the BLOCK of each config timed
    monkeypatch.setattr(support, "quick_bench", lambda kernel: (kernel(), {16: 2.0, 32: 1.0}[timed[-1]])[1])

    def my_kernel() -> None: ...

    class Fn:
        fn = my_kernel

        def __getitem__(self, grid: Any) -> Any:
            def launch(*a: Any, BLOCK: int, **kw: Any) -> None:  # noqa: N803
                timed.append(BLOCK)
            return launch

    configs = [triton.Config({"BLOCK": 16}, num_warps=4), triton.Config({"BLOCK": 32}, num_warps=8)]
    x = torch.zeros(4, 8)
    for _ in range(2):
        support.bind(Fn(), configs, lambda c: (1,), (x, 3), {}, {"BLOCK": 16})
    assert timed == [16, 32]
    monkeypatch.setattr(build_cache, "_CHOICES", {})  # as a new process
    support.bind(Fn(), configs, lambda c: (1,), (torch.ones(4, 8), 3), {}, {"BLOCK": 16})
    assert timed == [16, 32]
    support.bind(Fn(), configs, lambda c: (1,), (torch.ones(5, 8), 3), {}, {"BLOCK": 16})
    assert timed == [16, 32, 16, 32]  # another shape: tuned
    [entry] = [p for p in (tmp_path / "autotune").iterdir() if "my_kernel" in p.read_text()][:1]
    assert '"BLOCK": 32' in entry.read_text()
