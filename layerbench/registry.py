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
  instead return that tensor, or for a pass with several results a dict of part name -> tensor
  (parts it leaves out are read from ``out``); the checker then compares what it returned.
* ``build`` may return ``layerbench.builders.Built(launch, details)`` instead of the bare kernel,
  to put what it chose (an algorithm, its timings) into the record.
* ``register`` declares what the implementation runs: ``devices``, ``dtypes`` and ``layouts``
  (default: all the layer allows) and ``supports(spec, dtype, layout) -> str | None`` for limits of
  shape (the reason when a point is out of reach).  ``plan`` shows such rows with the reason and the
  runner skips them (``Implementation.unsupported_reason``) before building anything.
* ``register(..., direction=...)`` registers the builder of one pass (``layers.passes``): forward
  (the default), ``backward_data`` or ``backward_weight``.  The backward builders get ``dy`` in
  ``tensors`` and write the pass's results into ``out`` (``layers.passes.split_output`` gives the
  views of a pass with several).  An implementation with every single pass of a layer runs its
  ``training`` pass too: the passes' kernels one after another, each into its part of ``out``.
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

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable, Protocol

import torch

from layerbench.builders import Built, Kernel, Tensors, as_built
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import DIRECTIONS, LAYERS, LayerSpec, passes

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
    direction: str = "forward"  # the pass this entry's own ``build`` runs
    # Every single pass registered under this (layer, name), each with its own build and limits;
    # the entry in the registry builds whichever pass a spec asks for (see ``for_direction``).
    passes: dict[str, "Implementation"] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def directions(self) -> tuple[str, ...]:
        """The passes this implementation runs (training: when it has every single pass)."""
        return tuple(d for d in DIRECTIONS if self.for_direction(d) is not None)

    def for_direction(self, direction: str) -> "Implementation | None":
        """The entry that builds ``direction``, or None when this implementation has no such pass."""
        own = self.passes or {self.direction: self}
        if direction in own:
            return own[direction]
        if direction != "training" or "forward" not in own or "backward_data" not in own:
            return None
        return _training(self, own)

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
        direction = passes.direction_of(spec)
        if direction != self.direction:
            entry = self.for_direction(direction)
            if entry is None:
                return (f"{self.name} runs the {', '.join(self.directions)} pass"
                        f"{'es' if len(self.directions) > 1 else ''} of {self.layer}, not {direction}")
            return entry.unsupported_reason(spec, dtype, layout, device)
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


def _training(impl: Implementation, own: dict[str, Implementation]) -> Implementation | None:
    """The training pass of ``impl``: its single passes' kernels in order, each writing its part."""
    singles = [own["forward"], own["backward_data"]]
    if passes.has_weights(LAYERS[impl.layer]):  # a layer with weights has a weight pass too
        if "backward_weight" not in own:
            return None
        singles.append(own["backward_weight"])

    def build(spec: LayerSpec, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
        launches, details = [], {}
        for single in singles:
            sub = passes.at_direction(spec, single.direction)
            built = as_built(single.build(sub, dtype, layout, tensors, passes.sub_output(spec, sub, out, layout)))
            launches.append((built.launch, passes.result_parts(sub)[0][0]))
            details.update({f"{single.direction}_{k}": v for k, v in built.details.items()})

        def kernel() -> dict[str, torch.Tensor] | None:
            returned: dict[str, torch.Tensor] = {}
            for launch, first_part in launches:
                result = launch()  # a library path may return its results (see the contract)
                if isinstance(result, torch.Tensor):
                    returned[first_part] = result
                elif isinstance(result, dict):
                    returned.update(result)
            return returned or None

        return Built(kernel, details)

    def supports(spec: LayerSpec, dtype: str, layout: str) -> str | None:
        for single in singles:
            why = single.unsupported_reason(passes.at_direction(spec, single.direction), dtype, layout,
                                            single.devices[0])
            if why:
                return f"{single.direction}: {why}"
        return None

    devices = tuple(d for d in singles[0].devices if all(d in s.devices for s in singles))
    dtypes = tuple(d for d in singles[0].supported_dtypes if all(d in s.supported_dtypes for s in singles))
    layouts = tuple(l for l in singles[0].supported_layouts if all(l in s.supported_layouts for s in singles))
    return Implementation(impl.layer, impl.name, impl.backend, build, devices, impl.reference,
                          impl.description, dtypes, layouts, supports, direction="training")


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
             layouts: Iterable[str] = (), supports: SupportCheck | None = None,
             direction: str = "forward") -> Callable[[Builder], Builder]:
    """Decorator that registers ``build`` as the ``direction`` pass of implementation ``name`` of
    ``layer``.  A ``training`` builder is needed only where the single passes in a row are not the
    implementation's training iteration (torch's autograd).

    ``dtypes`` and ``layouts`` default to all the layer allows; ``supports(spec, dtype, layout)``
    returns the reason a point is out of the implementation's reach (None: it runs it).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"register({layer!r}, {name!r}): direction must be one of {', '.join(DIRECTIONS)}, "
                         f"got {direction!r}")
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    if not name or ":" in name or "=" in name or "," in name:
        raise ValueError(f"register({layer!r}, {name!r}): a name is a non-empty word without ':', '=' or ','")
    cls = LAYERS[layer]
    dts = _declared("dtypes", layer, dtypes, tuple(cls.dtypes))
    lts = _declared("layouts", layer, layouts, tuple(cls.layouts))

    def wrap(build: Builder) -> Builder:
        entry = Implementation(layer, name, backend, build, tuple(devices), reference, description, dts, lts,
                               supports, direction=direction)
        old = _REGISTRY.get((layer, name))
        singles = dict(old.passes or {old.direction: old}) if old is not None else {}
        singles[direction] = entry
        main = singles.get("forward", entry)
        _REGISTRY[(layer, name)] = dataclasses.replace(main, build=_dispatch(layer, name), passes=singles)
        return build

    return wrap


def _dispatch(layer: str, name: str) -> Builder:
    """The build of an implementation with several passes: the one the spec's direction asks for."""
    def build(spec: LayerSpec, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel | Built:
        impl = _REGISTRY[(layer, name)]
        entry = impl.for_direction(passes.direction_of(spec))
        if entry is None:
            raise Unsupported(f"{name} has no {passes.direction_of(spec)} pass of {layer}")
        return entry.build(spec, dtype, layout, tensors, out)

    return build


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
        if key[0] == layer and any(p.build is fn for p in _REGISTRY[key].passes.values()):
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
