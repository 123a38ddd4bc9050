"""What identifies a result row, and its hashes.

* ``config_hash``: one (point, implementation, measurement options, device); a resumed run skips
  the configs already recorded, so this hash must stay the same across versions (it is the
  SHA-256 of canonical JSON, cut to 16 hex digits, of ``identity_config``).
* ``point_hash``: the point without the implementation: the rows that ``compare`` sets side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from layerbench.sweep import Measure, Point


def stable_hash(obj: Any) -> str:
    """16 hex digits of SHA-256 over canonical JSON: the same config hashes alike everywhere."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def layer_params(point: Point) -> dict[str, Any]:
    """The layer's parameters: every field of a valid spec, else the parameters as given (and the
    pass, forward unless given, so that every row has its ``direction``)."""
    if point.spec is not None:
        return dataclasses.asdict(point.spec)
    return dict(sorted(({"direction": "forward"} | point.params).items()))


def identity_params(point: Point) -> dict[str, Any]:
    """The layer's parameters as the hashes see them: a spec may leave out fields added after the
    first release while they are at their defaults (``identity_params`` of the spec), so that points
    recorded before hash as they did."""
    own = getattr(point.spec, "identity_params", None)
    params = own() if own is not None else layer_params(point)
    if params.get("direction") == "forward":  # the forward pass hashes as it did before passes existed
        params = {k: v for k, v in params.items() if k != "direction"}
    return params


def identity_config(point: Point, impl: str, measure: Measure, device: str) -> dict[str, Any]:
    """Everything that changes the measured quantity of one row."""
    cfg = {"layer": point.layer, "params": identity_params(point), "dtype": point.dtype,
           "layout": point.layout, "impl": impl, "device": device,
           "measure": measure.to_dict() | {"energy": impl in point.energy_impls}}
    gpus = point.axes.get("gpus", 1)
    if gpus != 1:  # split over several GPUs (the gpus axis); on one GPU it is the plain point
        cfg["gpus"] = gpus
    if point.settings:  # only where a sweep varies GPU settings: other hashes stay as they were
        cfg["gpu_settings"] = dict(sorted(point.settings.items()))
    return cfg


def config_hash(point: Point, impl: str, measure: Measure, device: str) -> str:
    return stable_hash(identity_config(point, impl, measure, device))


def point_hash(point: Point, measure: Measure, device: str) -> str:
    cfg = identity_config(point, "", measure, device)
    del cfg["impl"]
    cfg["measure"]["energy"] = measure.energy
    return stable_hash(cfg)
