"""The layer catalogue: one module per layer (spec, FLOP and byte counts, float64 reference, sweep
shorthands, the thesis's workload formulas), gathered here by layer name.

Each spec is a frozen dataclass that validates itself on construction and raises ``ValueError``
naming the field and its allowed range.  Shapes are logical NCHW (the memory layout is a separate
axis of a benchmark point, see each spec's ``layouts``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from layerbench.layers import conv2d, linear, pool2d, relu
from layerbench.layers.common import LAYOUTS_4D, MAX_ELEMENTS
from layerbench.layers.conv2d import Conv2d
from layerbench.layers.linear import Linear
from layerbench.layers.passes import DIRECTIONS
from layerbench.layers.pool2d import POOL_METHODS, Pool2d
from layerbench.layers.relu import ReLU

LayerSpec = Union[Conv2d, Pool2d, ReLU, Linear]

LAYERS: dict[str, type] = {cls.layer: cls for cls in (Conv2d, Pool2d, ReLU, Linear)}

# Sweep-file shorthands per layer: one key (``size``) sets several spec fields (``height``, ``width``);
# ``pass`` names the ``direction`` field in every layer (``pass`` is a Python keyword).
SHORTHANDS: dict[str, dict[str, tuple[str, ...]]] = {
    module.__name__.rsplit(".", 1)[1]: module.SHORTHANDS | {"pass": ("direction",)}
    for module in (conv2d, pool2d, relu, linear)}

__all__ = ["DIRECTIONS", "LAYERS", "LAYOUTS_4D", "MAX_ELEMENTS", "POOL_METHODS", "SHORTHANDS", "Conv2d", "LayerSpec",
           "Linear", "Pool2d", "ReLU", "is_exact", "required_fields", "spec_from_dict"]


def required_fields(layer: str) -> set[str]:
    """The fields of ``layer``'s spec that have no default."""
    return {f.name for f in dataclasses.fields(LAYERS[layer])
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def is_exact(spec: LayerSpec) -> bool:
    """Whether the layer selects input values (ReLU, max pooling): its output must be bit-exact."""
    return bool(getattr(spec, "exact", False))


def spec_from_dict(layer: str, params: dict[str, Any]) -> LayerSpec:
    """Build a spec from plain values (sweep files, CLI); unknown or missing keys name the field."""
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    cls = LAYERS[layer]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}; fields are {', '.join(sorted(fields))}")
    missing = sorted(required_fields(layer) - set(params))
    if missing:
        raise ValueError(f"{cls.__name__} needs {', '.join(missing)}")
    return cls(**params)
