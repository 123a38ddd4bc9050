"""Test set-up: the gpu marker, the Triton interpreter on GPU-less machines, hypothesis profiles,
shards of the suite (tests/shards.py)."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import runner_fakes  # the fake implementations beside this file
import shards

HAS_GPU = torch.cuda.is_available()

# Triton decides at @triton.jit time whether to interpret, so this must happen before any
# kernel module is imported.  With a GPU present the kernels compile for it instead.
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# ci: sized for a 2-core machine running Python-interpreted kernels; gpu: real shapes, more draws.
settings.register_profile("ci", max_examples=12, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("gpu", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpu" if HAS_GPU else "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    has_gpu = pytest.mark.skip(reason="Triton-interpreter test: runs only where no GPU is visible, "
                                      "because TRITON_INTERPRET must be set before kernels compile")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(no_gpu)
        if "interpreter" in item.keywords and HAS_GPU:
            item.add_marker(has_gpu)
    if os.environ.get(shards.ENV):
        shard = shards.parse_shard(os.environ[shards.ENV])
        config.hook.pytest_deselected(items=[item for item in items if not shards.in_shard(item.nodeid, shard)])
        items[:] = [item for item in items if shards.in_shard(item.nodeid, shard)]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake implementations of tests/runner_fakes.py, registered, with their call counts reset."""
    runner_fakes.install(monkeypatch)
    runner_fakes.register_fakes()
    runner_fakes.CALLS.update(interrupt_after=None, builds=0)
