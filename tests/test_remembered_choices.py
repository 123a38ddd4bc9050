"""Builders' choices among paths and variants kept in the build cache (``remember=``): a later run
of the same point builds only what was chosen then, and chooses anew where it is gone or wrong;
outside the harness's ``remembering_choices`` (a test calling a builder) nothing is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from layerbench.build_cache import CACHE_DIR_ENV
from layerbench.builders import (Built, choice_of, fastest_of, fastest_path, remembering_choices,
                                 selection_timing)
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

SPEC = Conv2d(1, 8, 8, 6, 6, 3, 3, padding=1)
TENSORS = {"x": torch.zeros(1, 8, 6, 6), "weight": torch.zeros(8, 8, 3, 3)}
OUT = torch.zeros(1, 8, 6, 6)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))  # the keyed directory a GPU run would choose
    return tmp_path


def _key(what: str = "test conv2d") -> str:
    return choice_of(what, SPEC, "bf16", "NHWC", TENSORS, OUT, "triton")


class Paths:
    """Paths whose builds and timings are counted: ``times`` ms each, None for a path that refuses."""

    def __init__(self, times: dict[str, float | None]) -> None:
        self.times: dict[str, float | None] = times
        self.built: list[str] = []
        self.timed: list[str] = []
        self.kernels = {name: Built(lambda: None, {"tile": name}) for name in times}

    def build(self, name: str) -> Callable[[], Built]:
        def build_it() -> Built:
            self.built.append(name)
            if self.times[name] is None:
                raise Unsupported(f"{name} refuses this point")
            return self.kernels[name]
        return build_it

    def time(self, kernel: object) -> float:
        name = next(n for n, k in self.kernels.items() if k.launch is kernel)
        self.timed.append(name)
        return self.times[name]


def test_fastest_of_reuses_the_path_chosen_by_an_earlier_run(cache: Path) -> None:
    first = Paths({"direct": 3.0, "fft": 2.0, "tma": 1.0})
    with remembering_choices():
        chosen = fastest_of("direct", first.kernels["direct"], [("fft", first.build("fft")), ("tma", first.build("tma"))],
                            first.time, remember=_key())
    assert chosen.details["algorithm"] == "tma" and first.timed == ["direct", "fft", "tma"]
    later = Paths({"direct": 3.0, "fft": 2.0, "tma": 1.0})  # a later run: only tma is built, nothing timed
    with remembering_choices():
        again = fastest_of("direct", later.kernels["direct"], [("fft", later.build("fft")), ("tma", later.build("tma"))],
                           later.time, remember=_key())
    assert (later.built, later.timed) == (["tma"], [])
    assert again.details == {"algorithm": "tma", "reused_choice": True, "tile": "tma"}
    assert again.launch is later.kernels["tma"].launch


def test_a_kept_path_that_no_longer_builds_is_chosen_anew(cache: Path) -> None:
    first = Paths({"direct": 3.0, "tma": 1.0})
    with remembering_choices():
        fastest_of("direct", first.kernels["direct"], [("tma", first.build("tma"))], first.time, remember=_key())
    later = Paths({"direct": 3.0, "tma": None})  # tma refuses the point now
    with remembering_choices():
        again = fastest_of("direct", later.kernels["direct"], [("tma", later.build("tma"))], later.time,
                           remember=_key())
    assert again.details["algorithm"] == "direct" and "reused_choice" not in again.details
    assert again.details["tma"] == "tma refuses this point"


def test_no_choice_is_kept_outside_the_harness_or_without_a_timed_choice(cache: Path) -> None:
    paths = Paths({"direct": 3.0, "tma": 1.0})
    fastest_of("direct", paths.kernels["direct"], [("tma", paths.build("tma"))], paths.time, remember=_key())
    assert not any(cache.rglob("*.json"))  # a builder called directly, as tests do
    with remembering_choices():  # the default alone: nothing was chosen
        fastest_of("direct", paths.kernels["direct"], [("fft", Paths({"fft": None}).build("fft"))], paths.time,
                   remember=_key("alone"))
    assert not any(cache.rglob("*.json"))
    with remembering_choices():
        fastest_of("direct", paths.kernels["direct"], [("tma", paths.build("tma"))], paths.time, remember=_key())
    paths.built.clear()
    again = fastest_of("direct", paths.kernels["direct"], [("tma", paths.build("tma"))], paths.time, remember=_key())
    assert "reused_choice" not in again.details and paths.built == ["tma"]  # timed again, outside


def test_choices_differ_by_point_and_timer_mode() -> None:
    other = Conv2d(1, 8, 8, 6, 6, 3, 3, padding=1, stride=2)
    assert choice_of("c", SPEC, "bf16", "NHWC", TENSORS, OUT, "triton") != choice_of(
        "c", other, "bf16", "NHWC", TENSORS, OUT, "triton")
    assert _key() != choice_of("test conv2d", SPEC, "fp16", "NHWC", TENSORS, OUT, "triton")
    assert _key() != choice_of("test conv2d", SPEC, "bf16", "NCHW", TENSORS, OUT, "triton")
    hot = _key()
    with selection_timing(lambda: None):  # cold: a choice made hot is not reused
        assert _key() != hot


def test_fastest_path_reuses_its_choice(cache: Path) -> None:
    first = Paths({"tiled": 2.0, "tma_persistent": 1.0})
    with remembering_choices():
        fastest_path(("tiled", first.build("tiled")), [("tma_persistent", first.build("tma_persistent"))], first.time,
                     remember=_key("test linear"))
    later = Paths({"tiled": 2.0, "tma_persistent": 1.0})
    with remembering_choices():
        again = fastest_path(("tiled", later.build("tiled")), [("tma_persistent", later.build("tma_persistent"))],
                             later.time, remember=_key("test linear"))
    assert (later.built, later.timed) == (["tma_persistent"], [])
    assert again.details == {"path": "tma_persistent", "reused_choice": True, "tma_persistent": {"tile": "tma_persistent"}}
