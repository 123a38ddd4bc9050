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
* ``register`` declares what the implementation runs: ``devices``, ``dtypes`` and ``layouts``
  (default: all the layer allows) and ``supports(spec, dtype, layout) -> str | None`` for limits of
  shape (the reason when a point is out of reach).  ``plan`` shows such rows with the reason and the
  runner skips them (``Implementation.unsupported_reason``) before building anything.
* ``build`` still raises ``layerbench.errors.Unsupported`` for a point it finds it cannot run.
  It never falls back silently to another library.
* The harness calls ``build`` and ``kernel`` inside ``layerbench.dtypes.precision(dtype)``.

Backends load through the entry-point group ``layerbench.implementations``: the built-in ones are
declared in layerbench's own ``pyproject.toml`` exactly as a user's package declares its own
(``[project.entry-points."layerbench.implementations"] mykernels = "mypackage.kernels"``).  Run from
a checkout whose package metadata lists no built-in entry points, the built-ins load from
``BUILTIN_MODULES`` instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Protocol

import torch

from layerbench.builders import Built, Kernel, Tensors
from layerbench.dtypes import DType
from layerbench.layers import LAYERS, LayerSpec

ENTRY_POINT_GROUP = "layerbench.implementations"
DISTRIBUTION = "layerbench"

# The built-in backends as pyproject.toml declares them in ENTRY_POINT_GROUP; used when the package
# metadata has none (a checkout run without install, or installed from an older pyproject).
# Each backend is imported on first use, so that a missing CuPy or a broken Triton only takes its own
# implementations away (the reason is kept in ``load_errors``).
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


# supports(spec, dtype name, layout) -> None when the implementation runs it, else the reason.
SupportCheck = Callable[[LayerSpec, str, str], "str | None"]


def _name_of(value: Any) -> str:
    """A dtype as its name ("fp32"), a device as its type ("cuda" for torch.device("cuda", 1))."""
    if isinstance(value, torch.device):
        return value.type
    name = getattr(value, "name", value)
    return str(name).split(":", 1)[0]


@dataclass(frozen=True)
class Implementation:
    layer: str
    name: str
    backend: str  # triton | cupy | cudnn | cublas | torch | user
    build: Builder
    devices: tuple[str, ...] = ("cuda",)
    reference: bool = False  # a library path that custom kernels are compared against
    description: str = ""
    dtypes: tuple[str, ...] = ()   # empty: every dtype the layer allows
    layouts: tuple[str, ...] = ()  # empty: every layout the layer allows
    supports: SupportCheck | None = None

    @property
    def supported_dtypes(self) -> tuple[str, ...]:
        return self.dtypes or tuple(LAYERS[self.layer].dtypes)

    @property
    def supported_layouts(self) -> tuple[str, ...]:
        return self.layouts or tuple(LAYERS[self.layer].layouts)

    def unsupported_reason(self, spec: LayerSpec | None, dtype: DType | str, layout: str,
                           device: torch.device | str) -> str | None:
        """Why this implementation cannot run the point (device, dtype, layout, then its own
        ``supports`` limits), or None when it can.  Nothing is built or launched."""
        dev, dt = _name_of(device), _name_of(dtype)
        if dev not in self.devices:
            return f"{self.name} runs on {', '.join(self.devices)} only, not {dev}"
        if dt not in self.supported_dtypes:
            return f"{self.name} supports {', '.join(self.supported_dtypes)} for {self.layer}, not {dt}"
        if layout not in self.supported_layouts:
            return (f"{self.name} supports the {', '.join(self.supported_layouts)} layout"
                    f"{'s' if len(self.supported_layouts) > 1 else ''} for {self.layer}, not {layout}")
        if self.supports is not None and spec is not None:
            return self.supports(spec, dt, layout)
        return None


_REGISTRY: dict[tuple[str, str], Implementation] = {}
_load_errors: dict[str, str] = {}
_loaded = False


def _declared(key: str, layer: str, values: Iterable[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(values)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"register({layer!r}, ...): {key} {', '.join(map(repr, bad))} not allowed for "
                         f"{layer}; allowed: {', '.join(allowed)}")
    return values


def register(layer: str, name: str, *, backend: str, devices: tuple[str, ...] = ("cuda",),
             reference: bool = False, description: str = "", dtypes: Iterable[str] = (),
             layouts: Iterable[str] = (), supports: SupportCheck | None = None
             ) -> Callable[[Builder], Builder]:
    """Decorator that registers ``build`` as implementation ``name`` of ``layer``.

    ``dtypes`` and ``layouts`` default to all the layer allows; ``supports(spec, dtype, layout)``
    returns the reason a point is out of the implementation's reach (None: it runs it).
    """
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    if not name or ":" in name or "=" in name or "," in name:
        raise ValueError(f"register({layer!r}, {name!r}): a name is a non-empty word without ':', '=' or ','")
    cls = LAYERS[layer]
    dts = _declared("dtypes", layer, dtypes, tuple(cls.dtypes))
    lts = _declared("layouts", layer, layouts, tuple(cls.layouts))

    def wrap(build: Builder) -> Builder:
        _REGISTRY[(layer, name)] = Implementation(layer, name, backend, build, tuple(devices), reference,
                                                  description, dts, lts, supports)
        return build

    return wrap


def _entry_points() -> tuple[dict[str, str], list[metadata.EntryPoint]]:
    """(built-in backend -> module, the other packages' entry points) of ENTRY_POINT_GROUP."""
    builtins: dict[str, str] = {}
    others = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.metadata["Name"] == DISTRIBUTION:
            builtins[ep.name] = ep.value
        else:
            others.append(ep)
    return builtins or dict(BUILTIN_MODULES), others


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    builtins, others = _entry_points()
    for backend, module in builtins.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure disables just this backend
            _load_errors[backend] = f"{type(exc).__name__}: {exc}"
    for ep in others:
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


def _import_user_module(module_name: str) -> Any:
    # A user's module in the current directory imports, as with `python -m`: the console script's
    # sys.path starts at its own bin directory, not the working directory.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(module_name)


def load_user(target: str, layer: str) -> Implementation:
    """Load ``package.module:function``: a registered builder or a plain one, for ``layer``."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{target}: must look like package.module:function")
    before = set(_REGISTRY)
    try:
        module = _import_user_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported alike
        raise ValueError(f"{target}: cannot import {module_name} ({type(exc).__name__}: {exc})") from exc
    if not hasattr(module, attr):
        raise ValueError(f"{target}: module {module_name} has no {attr!r}")
    fn = getattr(module, attr)
    for key in set(_REGISTRY) - before:
        if key[0] == layer and _REGISTRY[key].build is fn:
            return _REGISTRY[key]
    if not callable(fn):
        raise ValueError(f"{target}: {attr} is not callable")
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


def known_names() -> list[str]:
    """Every implementation name of any layer, with the built-in backends that failed to load."""
    _load_builtins()
    return sorted({n for (_, n) in _REGISTRY} | {b for b in _load_errors if not b.startswith("entry point")})


def check_name(layer: str, name: str) -> None:
    """Raise ``ValueError`` (one line) unless ``name`` can stand in a sweep of ``layer``.

    A registered name passes, and so does a built-in backend that failed to load here (its rows
    are recorded as unavailable, with the reason); ``module:function`` must import.
    """
    _load_builtins()
    if not name:
        raise ValueError("an implementation name is empty")
    if (layer, name) in _REGISTRY or (name in _load_errors and not name.startswith("entry point")):
        return
    if ":" in name:
        load_user(name, layer)
        return
    elsewhere = sorted(l for (l, n) in _REGISTRY if n == name)
    if elsewhere:
        raise ValueError(f"implementation {name!r} has no {layer} kernel (it has {', '.join(elsewhere)}); "
                         f"{layer} implementations: {', '.join(names(layer)) or 'none'}")
    raise ValueError(f"unknown implementation {name!r} for {layer}; known: {', '.join(names(layer)) or 'none'}")


def unsupported_reason(layer: str, name: str, spec: LayerSpec | None, dtype: DType | str, layout: str,
                       device: torch.device | str) -> str | None:
    """Why (layer, name) cannot run this point, or None; unknown or unloadable names return None
    (they are recorded as unavailable when run)."""
    try:
        impl = get(layer, name)
    except ValueError:
        return None
    return impl.unsupported_reason(spec, dtype, layout, device)
