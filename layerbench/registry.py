"""The implementation registry: (layer, name) -> how to build a runnable kernel.

Contract of a builder (every implementation, ours or a user's)::

    build(spec, dtype, layout, tensors, out) -> kernel

* ``tensors`` holds ``"x"`` and, for conv2d and linear, ``"weight"`` and (when ``spec.bias``)
  ``"bias"``: fresh random tensors on the target device in ``dtype.torch_dtype``; 4-D tensors are
  in ``layout``'s memory format (NCHW: contiguous, NHWC: ``torch.channels_last``).
* ``out`` is preallocated with ``spec.output_shape``, the same dtype and memory format; the harness
  poisons it (NaN) before checks.  For an in-place ReLU, ``out is tensors["x"]``.
* ``build`` does all setup (JIT compile, autotuning, descriptors, plans, algorithm search) and
  may launch the kernel; the harness times ``build`` separately as first-call cost.
* ``kernel()`` launches the work on ``torch.cuda.current_stream()`` (or computes on the CPU),
  writes every element of ``out`` and returns None, without synchronising.  It is called many
  times.  A library path that allocates its own result (torch's default functional path) may
  instead return that tensor; the checker then compares the returned tensor.
* ``build`` may return ``layerbench.builders.Built(launch, details)`` instead of the bare kernel,
  to put what it chose (an algorithm, its timings) into the record.
* ``build`` raises ``layerbench.errors.Unsupported`` for a dtype, layout or shape it cannot run.
  It never falls back silently to another library.
* The harness calls ``build`` and ``kernel`` inside ``layerbench.dtypes.precision(dtype)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Protocol

import torch

from layerbench.builders import Built, Kernel, Tensors
from layerbench.dtypes import DType
from layerbench.layers import LAYERS, LayerSpec

ENTRY_POINT_GROUP = "layerbench.implementations"

# Built-in backends, imported on first use so that a missing CuPy or a broken Triton only
# takes its own implementations away (the reason is kept in ``load_errors``).
BUILTIN_MODULES = {
    "triton": "kernels.triton",
    "cupy": "kernels.cupy",
    "torch": "kernels.reference.torch_ref",
    "cudnn": "kernels.reference.cudnn",
    "cublas": "kernels.reference.cublas",
}


class Builder(Protocol):
    def __call__(self, spec: LayerSpec, dtype: DType, layout: str, tensors: Tensors,
                 out: torch.Tensor) -> Kernel | Built: ...


@dataclass(frozen=True)
class Implementation:
    layer: str
    name: str
    backend: str  # triton | cupy | cudnn | cublas | torch | user
    build: Builder
    devices: tuple[str, ...] = ("cuda",)
    reference: bool = False  # a library path that custom kernels are compared against
    description: str = ""


_REGISTRY: dict[tuple[str, str], Implementation] = {}
_load_errors: dict[str, str] = {}
_loaded = False


def register(layer: str, name: str, *, backend: str, devices: tuple[str, ...] = ("cuda",),
             reference: bool = False, description: str = "") -> Callable[[Builder], Builder]:
    """Decorator that registers ``build`` as implementation ``name`` of ``layer``."""
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")

    def wrap(build: Builder) -> Builder:
        _REGISTRY[(layer, name)] = Implementation(layer, name, backend, build, devices, reference,
                                                  description)
        return build

    return wrap


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for backend, module in BUILTIN_MODULES.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure disables just this backend
            _load_errors[backend] = f"{type(exc).__name__}: {exc}"
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001
            _load_errors[f"entry point {ep.name}"] = f"{type(exc).__name__}: {exc}"


def load_errors() -> dict[str, str]:
    """Backends or plugins that failed to import, with the reason."""
    _load_builtins()
    return dict(_load_errors)


def names(layer: str) -> list[str]:
    _load_builtins()
    return sorted(n for (l, n) in _REGISTRY if l == layer)


def all_implementations() -> list[Implementation]:
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def load_user(target: str, layer: str) -> Implementation:
    """Load ``package.module:function``: a registered builder or a plain one, for ``layer``."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--impl must look like package.module:function, got {target!r}")
    before = set(_REGISTRY)
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--impl {target}: cannot load it ({exc})") from exc
    for key in set(_REGISTRY) - before:
        if key[0] == layer and _REGISTRY[key].build is fn:
            return _REGISTRY[key]
    if not callable(fn):
        raise ValueError(f"--impl {target}: {attr} is not callable")
    impl = Implementation(layer, target, "user", fn, devices=("cuda", "cpu"))
    _REGISTRY[(layer, target)] = impl
    return impl


def get(layer: str, name: str) -> Implementation:
    """The implementation ``name`` of ``layer``; ``name`` may also be ``package.module:function``."""
    _load_builtins()
    if (layer, name) in _REGISTRY:
        return _REGISTRY[(layer, name)]
    if ":" in name:
        return load_user(name, layer)
    known = ", ".join(names(layer)) or "none"
    why = "".join(f"; {b} failed to load: {e}" for b, e in _load_errors.items() if b == name)
    raise ValueError(f"no implementation {name!r} for layer {layer!r}; known: {known}{why}")
