"""Hypothesis strategies that draw valid layer specs within size bounds (the only module that imports
hypothesis).  Each takes the pass to draw specs of as ``direction`` (default: forward)."""

from __future__ import annotations

from hypothesis import strategies as st

from layerbench.layers import Conv2d, Linear, Pool2d, ReLU


@st.composite
def conv2d_specs(draw: st.DrawFn, max_batch: int = 2, max_channels: int = 8, max_hw: int = 12,
                 max_kernel: int = 5, max_stride: int = 4, max_padding: int = 2, max_dilation: int = 1,
                 max_groups: int = 1, per_axis: bool = False, direction: str = "forward") -> Conv2d:
    """Conv2d specs; by default one stride and padding for both axes, no dilation, one group (the
    plain convolution), as before these options existed.  ``per_axis`` draws each axis's stride,
    padding and dilation apart; ``max_dilation`` and ``max_groups`` add dilation and groups (the
    channel counts are then multiples of the groups, at most ``max_channels`` where the groups allow).
    ``direction`` is the pass the specs ask for (``layers.passes``)."""
    h = draw(st.integers(1, max_hw))
    w = draw(st.integers(1, max_hw))
    groups = draw(st.integers(1, max_groups))
    per_group = max(1, max_channels // groups)
    pad_h = draw(st.integers(0, max_padding))
    pad_w = draw(st.integers(0, max_padding)) if per_axis else pad_h
    dil_h = draw(st.integers(1, max_dilation))
    dil_w = draw(st.integers(1, max_dilation)) if per_axis else dil_h
    stride_h = draw(st.integers(1, max_stride))
    stride_w = draw(st.integers(1, max_stride)) if per_axis else stride_h
    kh = draw(st.integers(1, min(max_kernel, (h + 2 * pad_h - 1) // dil_h + 1)))
    kw = draw(st.integers(1, min(max_kernel, (w + 2 * pad_w - 1) // dil_w + 1)))
    return Conv2d(batch=draw(st.integers(1, max_batch)),
                  in_channels=groups * draw(st.integers(1, per_group)),
                  out_channels=groups * draw(st.integers(1, per_group)),
                  height=h, width=w, kernel_h=kh, kernel_w=kw,
                  stride_h=stride_h, stride_w=stride_w, padding_h=pad_h, padding_w=pad_w,
                  dilation_h=dil_h, dilation_w=dil_w, groups=groups,
                  bias=draw(st.booleans()), direction=direction)


@st.composite
def pool2d_specs(draw: st.DrawFn, max_batch: int = 2, max_channels: int = 8, max_hw: int = 16,
                 max_kernel: int = 4, max_stride: int = 3, direction: str = "forward") -> Pool2d:
    h = draw(st.integers(1, max_hw))
    w = draw(st.integers(1, max_hw))
    kernel = draw(st.integers(1, max_kernel))
    padding = draw(st.integers(0, kernel // 2))
    if kernel > min(h, w) + 2 * padding:
        kernel = min(h, w) + 2 * padding
        padding = min(padding, kernel // 2)
    return Pool2d(batch=draw(st.integers(1, max_batch)), channels=draw(st.integers(1, max_channels)),
                  height=h, width=w, kernel=kernel, stride=draw(st.integers(1, max_stride)),
                  padding=padding, method=draw(st.sampled_from(["max", "avg"])), direction=direction)


@st.composite
def relu_specs(draw: st.DrawFn, max_batch: int = 3, max_channels: int = 8, max_hw: int = 16,
               direction: str = "forward") -> ReLU:
    # In place is a forward-only option.
    return ReLU(batch=draw(st.integers(1, max_batch)), channels=draw(st.integers(1, max_channels)),
                height=draw(st.integers(1, max_hw)), width=draw(st.integers(1, max_hw)),
                inplace=draw(st.booleans()) if direction == "forward" else False, direction=direction)


@st.composite
def linear_specs(draw: st.DrawFn, max_batch: int = 8, max_features: int = 48,
                 direction: str = "forward") -> Linear:
    return Linear(batch=draw(st.integers(1, max_batch)),
                  in_features=draw(st.integers(1, max_features)),
                  out_features=draw(st.integers(1, max_features)), bias=draw(st.booleans()),
                  direction=direction)


SPEC_STRATEGIES = {"conv2d": conv2d_specs, "pool2d": pool2d_specs, "relu": relu_specs,
                   "linear": linear_specs}


def specs(layer: str, **bounds: int | bool | str) -> st.SearchStrategy:
    """A strategy of valid specs for ``layer`` within the given size bounds (and ``direction``)."""
    if layer not in SPEC_STRATEGIES:
        raise ValueError(f"layer must be one of {', '.join(SPEC_STRATEGIES)}, got {layer!r}")
    return SPEC_STRATEGIES[layer](**bounds)
