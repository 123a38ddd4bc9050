"""What the kernels fed by Hopper's tensor-memory accelerator (TMA) share: the host descriptors,
the copy engine's alignment rule, and choosing a tile config by timing.

A TMA kernel's arguments depend on its config (each descriptor is made for the config's tile
shape), so Triton's autotuner, which reuses one argument list for every config, cannot tune it;
``choose_config`` compiles every config's launch at once on a thread pool, times each, and keeps
the choice in the build cache (``layerbench.build_cache``) like the autotuner's.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from layerbench.build_cache import autotune_choices, choice_key
from layerbench.errors import Unsupported

from kernels.triton.support import compile_all, config_label, fastest_config, interpreting

try:  # host-side descriptors: Triton 3.4 and later
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: the TMA paths refuse every point
    TensorDescriptor = None

ALIGN_BYTES = 16  # the copy engine's alignment of base addresses and of every stride but the last


def check_tma(fn: object, device: torch.device, tensors: dict[str, torch.Tensor]) -> None:
    """Raise Unsupported unless the copy engine can address ``tensors`` (dense, last stride 1,
    16-byte aligned base and other strides) on this device (Hopper or later; any device under the
    interpreter)."""
    if TensorDescriptor is None:
        raise Unsupported("this Triton has no host tensor descriptors (3.4 or later)")
    if not interpreting(fn) and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0)):
        raise Unsupported("the TMA kernels need a Hopper or later GPU (compute capability 9.0+)")
    for name, t in tensors.items():
        size = t.element_size()
        if t.stride()[-1] != 1 or t.data_ptr() % ALIGN_BYTES or any(s * size % ALIGN_BYTES for s in t.stride()[:-1]):
            raise Unsupported(f"the copy engine needs {name} with unit last stride and {ALIGN_BYTES}-byte aligned "
                              f"base and strides; got strides {tuple(t.stride())} of {size}-byte elements")


class Launch:
    """One config's launch of ``fn`` on ``grid`` with its own arguments (descriptors made for the
    config's tiles)."""

    def __init__(self, fn: Any, grid: tuple[int, ...], args: tuple, meta: dict[str, Any], device: torch.device):
        self.fn, self.grid, self.args, self.meta, self.device = fn, grid, args, meta, device
        self.launch = fn[grid]

    def __call__(self) -> None:
        self.launch(*self.args, **self.meta)

    def compile(self) -> None:
        """Compile without running; an error is left for the timing, which skips the config."""
        with torch.cuda.device(self.device):
            try:
                self.fn.warmup(*self.args, grid=self.grid, **self.meta)
            except Exception:  # noqa: BLE001, S110 - see the docstring
                pass


def choose_config(name: str, key_tensors: Iterable[torch.Tensor | None], key_meta: dict[str, Any],
                  configs: list[dict[str, Any]], make: Callable[[dict[str, Any]], Launch]) -> dict[str, Any]:
    """The fastest of ``configs`` on this GPU (``make`` builds a config's launch); a choice made
    before for the same key is taken as it is."""
    key = choice_key(name, list(key_tensors), {**key_meta, "candidates": repr(configs)}, "triton")
    choices = autotune_choices()
    chosen = choices.get(key)
    if chosen is not None:
        return chosen
    launches = {config_label(c): make(c) for c in configs}
    compile_all([launch.compile for launch in launches.values()])
    best, best_ms, passed_over = fastest_config(name, configs, lambda c: launches[config_label(c)])
    choices.put(key, best, {"kernel": name, "ms": best_ms, "passed_over": passed_over})
    return best
