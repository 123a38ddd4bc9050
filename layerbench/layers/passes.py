"""The passes of a layer: forward, the backward passes, and one training iteration of the layer.

Every spec has a ``direction`` field (sweep files may call it ``pass``):

* ``forward``: y from x (and the weights);
* ``backward_data``: dx from the upstream gradient dy (and the weights; pooling and ReLU read x);
* ``backward_weight``: dweight and dbias from x and dy (layers with weights only);
* ``training``: forward and every backward pass of the layer, as one training iteration of that
  layer costs (no optimizer step).

A pass writes one or more results (its *parts*, see ``result_parts``).  A single part is written
into an output tensor of its shape, in the point's memory format (as the forward's y always was).
Several parts are written into one flat buffer, part after part, each part dense in the memory
format of the tensor it is the gradient of (``split_output`` gives the views): the harness poisons
and checks them all as one output, and compares each part under its own tolerance.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

DIRECTIONS = ("forward", "backward_data", "backward_weight", "training")

# The single passes a direction runs, in order (training runs them all).
PASSES = {"forward": ("forward",), "backward_data": ("backward_data",),
          "backward_weight": ("backward_weight",),
          "training": ("forward", "backward_data", "backward_weight")}

# Each result part and the tensor whose shape and memory format it has.
PART_LIKE = {"y": "dy", "dx": "x", "dweight": "weight", "dbias": "bias"}


def direction_of(spec: Any) -> str:
    return getattr(spec, "direction", "forward")


def has_weights(spec: Any) -> bool:
    return hasattr(spec, "weight_shape")


def layer_directions(layer: Any) -> tuple[str, ...]:
    """The passes a layer (its spec class or a spec) has: backward_weight only with weights."""
    return tuple(d for d in DIRECTIONS if d != "backward_weight" or has_weights(layer))


def check_direction(spec: Any) -> None:
    """Raise ``ValueError`` naming the field unless the spec's direction is one its layer has."""
    d = spec.direction
    name = f"{type(spec).__name__}.direction"
    if d not in DIRECTIONS:
        raise ValueError(f"{name} must be one of {', '.join(DIRECTIONS)}, got {d!r}")
    if d not in layer_directions(spec):
        raise ValueError(f"{name} backward_weight needs a layer with weights; {spec.layer} has "
                         f"{', '.join(layer_directions(spec))}")


def passes_of(spec: Any) -> tuple[str, ...]:
    """The single passes that the spec's direction runs (training: all its layer has)."""
    return tuple(p for p in PASSES[direction_of(spec)] if p != "backward_weight" or has_weights(spec))


def weight_parts(spec: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    parts: tuple[tuple[str, tuple[int, ...]], ...] = (("dweight", tuple(spec.weight_shape)),)
    if spec.bias:
        parts += (("dbias", (spec.weight_shape[0],)),)
    return parts


def result_parts(spec: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, logical shape) of each result the spec's pass writes, in buffer order."""
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    for p in passes_of(spec):
        if p == "forward":
            parts += (("y", tuple(spec.output_shape)),)
        elif p == "backward_data":
            parts += (("dx", tuple(spec.input_shape)),)
        else:
            parts += weight_parts(spec)
    return parts


def total_flops(spec: Any) -> int:
    """The FLOPs of every pass the direction runs (each spec's ``pass_cost``)."""
    return sum(spec.pass_cost(p)[0] for p in passes_of(spec))


def total_elements(spec: Any) -> int:
    """The elements every pass must read or write at least once, summed over the passes."""
    return sum(spec.pass_cost(p)[1] for p in passes_of(spec))


def weighted_pass_cost(spec: Any, single: str, macs: int) -> tuple[int, int]:
    """(FLOPs, elements) of one pass of a layer with weights that does ``macs`` multiply-adds per pass:
    the forward adds the bias to every output, the weight pass sums dy into dbias; each pass reads
    its two operands and writes its result once."""
    out, x = math.prod(spec.output_shape), math.prod(spec.input_shape)
    weight = math.prod(spec.weight_shape)
    bias_adds = out if spec.bias else 0
    if single == "forward":
        return 2 * macs + bias_adds, x + spec.parameters + out
    if single == "backward_data":
        return 2 * macs, out + weight + x
    return 2 * macs + bias_adds, x + out + spec.parameters


def output_numel(spec: Any) -> int:
    return sum(math.prod(shape) for _, shape in result_parts(spec))


def _dense_view(flat: torch.Tensor, shape: tuple[int, ...], channels_last: bool) -> torch.Tensor:
    if channels_last and len(shape) == 4:
        n, c, h, w = shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(shape)


def split_output(spec: Any, out: torch.Tensor, layout: str) -> dict[str, torch.Tensor]:
    """The views of ``out`` that hold each result part (a single part: ``out`` itself).

    4-D parts of a flat buffer are dense in ``layout``'s memory format (NHWC: channels last).
    """
    parts = result_parts(spec)
    if len(parts) == 1:
        return {parts[0][0]: out}
    return {name: _dense_view(out[sl], shape, layout == "NHWC")
            for (name, shape), sl in zip(parts, part_slices(spec).values())}


def part_slices(spec: Any) -> dict[str, slice]:
    """Where each part lies in a flat buffer of all parts."""
    slices, offset = {}, 0
    for name, shape in result_parts(spec):
        n = math.prod(shape)
        slices[name] = slice(offset, offset + n)
        offset += n
    return slices


def sub_output(spec: Any, single: Any, out: torch.Tensor, layout: str) -> torch.Tensor:
    """The output of ``single`` (the same layer at one of the passes of ``spec``'s direction) inside
    ``spec``'s output: a part's view, or the flat run of its parts."""
    names = [n for n, _ in result_parts(single)]
    if len(names) == 1:
        return split_output(spec, out, layout)[names[0]]
    slices = part_slices(spec)
    return out[slices[names[0]].start:slices[names[-1]].stop]


def at_direction(spec: Any, direction: str) -> Any:
    return dataclasses.replace(spec, direction=direction)


def reference_parts(spec: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each result part in float64, by autograd through the spec's forward reference.

    ``tensors`` are float64 copies of the inputs (and of the upstream gradient ``dy``).
    """
    wanted = {name for name, _ in result_parts(spec)}
    grads = {"dx": "x", "dweight": "weight", "dbias": "bias"}
    leaves = dict(tensors)
    for g, k in grads.items():
        if g in wanted:
            leaves[k] = tensors[k].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = spec.reference(leaves)
        out: dict[str, torch.Tensor] = {}
        if "y" in wanted:
            out["y"] = y.detach()
        need = [g for g in ("dx", "dweight", "dbias") if g in wanted]
        if need:
            found = torch.autograd.grad(y, [leaves[grads[g]] for g in need], tensors["dy"],
                                        allow_unused=True)
            for g, t in zip(need, found):
                out[g] = torch.zeros_like(leaves[grads[g]]) if t is None else t.detach()
    return out


def pack_like(spec: Any, parts: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The parts in one flat buffer, each dense in the memory format of the tensor it belongs to
    (as the kernels write them); a single part is returned as it is."""
    order = result_parts(spec)
    if len(order) == 1:
        return parts[order[0][0]]
    return torch.cat([pack_part(name, parts[name], tensors) for name, _ in order])


def pack_part(name: str, part: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """One part as a flat tensor, in the memory order of the tensor it belongs to."""
    like = tensors.get(PART_LIKE[name])
    channels_last = (like is not None and like.dim() == 4 and not like.is_contiguous()
                     and like.is_contiguous(memory_format=torch.channels_last))
    if channels_last and part.dim() == 4:
        return part.permute(0, 2, 3, 1).reshape(-1)
    return part.reshape(-1)


def reduction_length(spec: Any, part: str) -> int:
    """How many products each element of a weight-gradient part sums (its error grows with it)."""
    if part not in ("dweight", "dbias"):
        return 1
    shape = spec.output_shape
    return math.prod(shape) // shape[1] if len(shape) == 4 else shape[0]


def exact_part(spec: Any, part: str) -> bool:
    """Whether a part selects (and at most adds disjoint) values: it must match bit for bit.

    ReLU's y and dx select; max pooling's y selects, and its dx adds the gradients of the windows
    an element wins, which is a selection only where windows do not overlap.
    """
    if spec.layer == "relu":
        return True
    if spec.layer == "pool2d" and spec.method == "max":
        return part == "y" or spec.stride >= spec.kernel
    return False
